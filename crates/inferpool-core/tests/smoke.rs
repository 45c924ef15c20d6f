//! The pool answers requests with the right rows in the right order, and survives failures.

use std::{
  sync::{Arc, mpsc},
  time::Duration,
};

use inferpool_core::{
  BackendErrorKind, BatchPolicy, CloseMode, Pool, PoolConfig, PoolError,
  sim::{SimBackend, SimTokenizer, expected_row},
};

const DIM: usize = 4;

fn pool(workers: usize, backend: SimBackend) -> Pool {
  let config =
    PoolConfig { workers, policy: BatchPolicy { max_batch_size: 8, ..BatchPolicy::default() } };
  Pool::new(&config, Arc::new(SimTokenizer), Box::new(move |_| Ok(Box::new(backend.clone()))))
    .expect("pool starts")
}

fn embed(pool: &Pool, texts: &[String]) -> Result<Vec<f32>, PoolError> {
  let (tx, rx) = mpsc::channel();
  pool.submit(texts, Box::new(move |result| tx.send(result).expect("receiver alive")))?;
  rx.recv_timeout(Duration::from_secs(10)).expect("request answered")
}

fn expected(texts: &[String]) -> Vec<f32> {
  texts.iter().flat_map(|t| expected_row(t, DIM)).collect()
}

#[test]
fn answers_in_input_order() {
  let pool = pool(2, SimBackend { dimension: DIM, ..SimBackend::default() });
  let texts: Vec<String> = (0..200).map(|i| "x".repeat(1 + (i * 37) % 50)).collect();
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  let stats = pool.stats();
  assert_eq!(stats.items, 200);
  assert_eq!(stats.queued, 0);
}

#[test]
fn empty_request_completes() {
  let pool = pool(1, SimBackend { dimension: DIM, ..SimBackend::default() });
  assert!(embed(&pool, &[]).unwrap().is_empty());
}

#[test]
fn failed_and_panicking_batches_become_errors() {
  let pool = pool(2, SimBackend { dimension: DIM, ..SimBackend::default() });
  let err = embed(&pool, &["this will fail".to_owned()]).unwrap_err();
  assert!(matches!(err, PoolError::Backend(ref e) if e.kind == BackendErrorKind::Run), "{err:?}");
  let err = embed(&pool, &["panic now".to_owned()]).unwrap_err();
  assert!(matches!(err, PoolError::Backend(ref e) if e.kind == BackendErrorKind::Panic), "{err:?}");
  // The workers carry on.
  let texts = vec!["fine".to_owned(), "also fine".to_owned()];
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
}

#[test]
fn close_cancels_queued_items_and_rejects_new_ones() {
  let pool = pool(
    1,
    SimBackend { dimension: DIM, per_batch: Duration::from_millis(20), ..SimBackend::default() },
  );
  let (tx, rx) = mpsc::channel();
  for i in 0..20 {
    let tx = tx.clone();
    pool
      .submit(&[format!("text {i}")], Box::new(move |result| tx.send(result.is_ok()).unwrap()))
      .unwrap();
  }
  drop(tx);
  pool.close(CloseMode::Cancel);
  let outcomes: Vec<bool> = rx.iter().collect();
  assert_eq!(outcomes.len(), 20, "every request answered exactly once");
  assert!(outcomes.iter().any(|ok| !ok), "queued requests were cancelled");
  assert!(matches!(embed(&pool, &["late".to_owned()]), Err(PoolError::Closed)));
}

#[test]
fn close_drains_when_asked() {
  let pool = pool(
    2,
    SimBackend { dimension: DIM, per_batch: Duration::from_millis(5), ..SimBackend::default() },
  );
  let (tx, rx) = mpsc::channel();
  for i in 0..50 {
    let tx = tx.clone();
    pool
      .submit(&[format!("text {i}")], Box::new(move |result| tx.send(result.is_ok()).unwrap()))
      .unwrap();
  }
  drop(tx);
  pool.close(CloseMode::Drain);
  let outcomes: Vec<bool> = rx.iter().collect();
  assert_eq!(outcomes, vec![true; 50]);
}

#[test]
fn backend_build_failure_is_reported() {
  let config = PoolConfig { workers: 2, policy: BatchPolicy::default() };
  let result = Pool::new(
    &config,
    Arc::new(SimTokenizer),
    Box::new(|index| {
      if index == 1 {
        Err(inferpool_core::BackendError::new(BackendErrorKind::Device, "no such device"))
      } else {
        Ok(Box::new(SimBackend::default()))
      }
    }),
  );
  assert_eq!(result.unwrap_err().message, "no such device");
}
