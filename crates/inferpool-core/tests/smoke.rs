//! The pool answers requests with the right rows in the right order, and survives failures.

mod common;

use std::{sync::Arc, time::Duration};

use common::{DIM, config, embed, expected, pool, pool_with, sim, submit};
use inferpool_core::{
  BackendError, BackendErrorKind, CloseMode, Pool, PoolConfig, PoolError, SubmitOptions,
  sim::{SimBackend, SimTokenizer},
};

#[test]
fn answers_in_input_order() {
  let pool = pool(2, sim());
  let texts: Vec<String> = (0..200).map(|i| "x".repeat(1 + (i * 37) % 50)).collect();
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  let stats = pool.stats();
  assert_eq!(stats.items(), 200);
  assert_eq!(stats.queued(), 0);
  assert_eq!(stats.outstanding, 0);
}

#[test]
fn empty_request_completes() {
  let pool = pool(1, sim());
  assert!(embed(&pool, &[]).unwrap().is_empty());
}

#[test]
fn failed_and_panicking_batches_become_errors_after_retries() {
  let pool = pool(2, sim());
  let err = embed(&pool, &["this will fail".to_owned()]).unwrap_err();
  assert!(matches!(err, PoolError::Backend(ref e) if e.kind == BackendErrorKind::Run), "{err:?}");
  let err = embed(&pool, &["panic now".to_owned()]).unwrap_err();
  assert!(matches!(err, PoolError::Backend(ref e) if e.kind == BackendErrorKind::Panic), "{err:?}");
  // Each bad item ran `max_attempts` (3) times before its request got the error.
  assert_eq!(pool.stats().failed_batches(), 6);
  // The workers carry on.
  let texts = vec!["fine".to_owned(), "also fine".to_owned()];
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
}

#[test]
fn transient_failures_are_retried_on_another_worker() {
  // Worker 0's device fails every batch; the others work.
  let mut config = config(4, 4);
  config.max_attempts = 50;
  let pool = Pool::new(
    &config,
    Arc::new(SimTokenizer),
    Box::new(|worker| {
      let flaky = if worker == 0 { 1.0 } else { 0.0 };
      Ok(Box::new(SimBackend { flaky, per_batch: Duration::from_millis(1), ..sim() }))
    }),
  )
  .expect("pool starts");
  let texts: Vec<String> = (0..300).map(|i| format!("item {i}")).collect();
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  let workers = pool.stats().workers;
  assert!(workers[0].errors > 0, "worker 0 never took a batch: the test proves nothing");
  assert_eq!(workers[0].items, 0, "worker 0 cannot embed anything");
  assert_eq!(workers[1..].iter().map(|w| w.items).sum::<u64>(), 300);
}

#[test]
fn histograms_count_what_was_submitted() {
  let pool = pool(3, sim());
  let requests: Vec<Vec<String>> =
    (0..20).map(|r| (0..=r).map(|i| format!("request {r} item {i}")).collect()).collect();
  for texts in &requests {
    assert_eq!(embed(&pool, texts).unwrap(), expected(texts));
  }
  let stats = pool.stats();
  let items = requests.iter().map(Vec::len).sum::<usize>() as u64;
  let model = &stats.models[0];
  assert_eq!(model.end_to_end.count, 20);
  assert_eq!(model.tokenize.count, 20);
  assert_eq!(model.queue_wait.count, items);
  assert_eq!(model.items, items);
  let batch_count: u64 = stats.workers.iter().map(|w| w.models[0].batch_size.count).sum();
  assert_eq!(batch_count, stats.batches());
  let item_sum: f64 = stats.workers.iter().map(|w| w.models[0].batch_size.sum).sum();
  assert!((item_sum - f64::from(u32::try_from(items).unwrap())).abs() < f64::EPSILON);
  let inference: u64 = stats.workers.iter().map(|w| w.models[0].inference.count).sum();
  assert_eq!(inference, stats.batches());
  // Cumulative buckets never decrease and end at or below the count.
  for h in [&model.end_to_end, &model.queue_wait] {
    assert!(h.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
    assert!(h.buckets.last().unwrap().1 <= h.count);
    assert!(h.sum > 0.0);
  }
}

#[test]
fn out_of_memory_halves_the_batch_and_caps_the_budget() {
  let backend = SimBackend { memory_tokens: Some(40), ..sim() };
  let pool = pool_with(&config(1, 64), backend);
  let texts: Vec<String> = (0..64).map(|i| format!("{i:>9}")).collect(); // 9 tokens each
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  let worker = pool.stats().workers[0].clone();
  assert!(worker.token_budget <= 40, "budget {} above what fits", worker.token_budget);
  assert!(worker.errors >= 1);
}

#[test]
fn backend_build_failure_is_reported() {
  let config = PoolConfig { workers: 2, ..PoolConfig::default() };
  let result = Pool::new(
    &config,
    Arc::new(SimTokenizer),
    Box::new(|index| {
      if index == 1 {
        Err(BackendError::new(BackendErrorKind::Device, "no such device"))
      } else {
        Ok(Box::new(SimBackend::default()))
      }
    }),
  );
  assert_eq!(result.unwrap_err().message, "no such device");
}

#[test]
fn admission_is_bounded() {
  let mut config = config(1, 4);
  config.max_queued_items = 10;
  let pool = pool_with(&config, SimBackend { per_batch: Duration::from_millis(50), ..sim() });
  let texts: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
  let (_, first) = submit(&pool, &texts, SubmitOptions::default()).unwrap();
  let err = submit(&pool, &texts, SubmitOptions::default()).unwrap_err();
  assert!(matches!(err, PoolError::Overloaded { limit: 10, requested: 8, .. }), "{err:?}");
  assert_eq!(first.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), expected(&texts));
  // Room again once the first request is done.
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
}

#[test]
fn deadlines_and_cancellation_skip_work() {
  let pool = pool_with(&config(1, 1), SimBackend { per_batch: Duration::from_millis(30), ..sim() });
  let busy: Vec<String> = (0..5).map(|i| format!("busy {i}")).collect();
  let (_, busy_rx) = submit(&pool, &busy, SubmitOptions::default()).unwrap();
  let late = SubmitOptions {
    deadline: Some(std::time::Instant::now() + Duration::from_millis(10)),
    ..SubmitOptions::default()
  };
  // Shorter than the busy items, so that it queues behind them (bulk items leave the queue
  // longest first).
  let (_, late_rx) = submit(&pool, &["late".to_owned()], late).unwrap();
  let (ticket, cancelled_rx) =
    submit(&pool, &["cancel me".to_owned()], SubmitOptions::default()).unwrap();
  assert!(ticket.cancel());
  assert!(!ticket.cancel(), "a request is answered once");
  assert!(matches!(cancelled_rx.recv().unwrap(), Err(PoolError::Cancelled)));
  assert!(matches!(late_rx.recv_timeout(Duration::from_secs(5)).unwrap(), Err(PoolError::Timeout)));
  assert!(busy_rx.recv_timeout(Duration::from_secs(5)).unwrap().is_ok());
  pool.close(CloseMode::Drain);
  // Only the five busy items ran.
  assert_eq!(pool.stats().items(), 5);
}

#[test]
fn dimension_is_the_backends() {
  assert_eq!(pool(1, sim()).dimension(), DIM);
}

#[test]
fn a_call_handle_cancels_before_and_after_the_submit() {
  use inferpool_core::CallHandle;
  let pool = pool_with(&config(1, 1), SimBackend { per_batch: Duration::from_millis(30), ..sim() });
  let busy: Vec<String> = (0..4).map(|i| format!("busy {i}")).collect();
  let (_, busy_rx) = submit(&pool, &busy, SubmitOptions::default()).unwrap();
  // Cancelled after the submit: answered at once, with the cancel's error.
  let handle = Arc::new(CallHandle::new());
  let options = SubmitOptions { handle: Some(Arc::clone(&handle)), ..SubmitOptions::default() };
  let (_, rx) = submit(&pool, &["one".to_owned()], options).unwrap();
  assert!(handle.cancel(PoolError::Timeout));
  assert!(!handle.cancel(PoolError::Cancelled), "a call is answered once");
  assert!(matches!(rx.recv().unwrap(), Err(PoolError::Timeout)));
  // Cancelled before the submit: the submit is refused with that error.
  let handle = Arc::new(CallHandle::new());
  assert!(handle.cancel(PoolError::Cancelled));
  let options = SubmitOptions { handle: Some(Arc::clone(&handle)), ..SubmitOptions::default() };
  assert!(matches!(submit(&pool, &["two".to_owned()], options), Err(PoolError::Cancelled)));
  assert!(busy_rx.recv().unwrap().is_ok());
  pool.close(CloseMode::Drain);
  assert_eq!(pool.stats().items(), 4, "the cancelled texts never ran");
  assert_eq!(pool.stats().outstanding, 0);
}

/// Options whose progress reports, every `every` items, are pushed to the list returned.
fn recording_progress(every: usize) -> (SubmitOptions, Arc<std::sync::Mutex<Vec<usize>>>) {
  let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
  let sink = Arc::clone(&seen);
  let progress = inferpool_core::Progress {
    every,
    report: Arc::new(move |done| sink.lock().unwrap().push(done)),
  };
  (SubmitOptions { progress: Some(progress), ..SubmitOptions::default() }, seen)
}

#[test]
fn progress_is_reported_every_n_items_of_one_request() {
  let pool = pool_with(&config(1, 2), sim());
  let (options, seen) = recording_progress(3);
  let texts: Vec<String> = (0..10).map(|i| format!("text {i}")).collect();
  let (_, rx) = submit(&pool, &texts, options).unwrap();
  assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), expected(&texts));
  assert_eq!(*seen.lock().unwrap(), vec![3, 6, 9], "the last item is told by the answer");
}

#[test]
fn progress_of_many_workers_comes_in_order_and_before_the_answer() {
  for round in 0..5 {
    let pool = pool_with(&config(4, 4), sim());
    // `0` stands for the answer: it must come after every report, and the reports in order.
    let (options, seen) = recording_progress(5);
    let texts: Vec<String> = (0..400).map(|i| format!("round {round} text {i}")).collect();
    let answered = Arc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel();
    let _ticket = pool
      .submit(
        &texts,
        options,
        Box::new(move |outcome| {
          answered.lock().unwrap().push(0);
          tx.send(outcome).unwrap();
        }),
      )
      .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap(), expected(&texts));
    let mut wanted: Vec<usize> = (1..80).map(|n| n * 5).collect();
    wanted.push(0);
    assert_eq!(*seen.lock().unwrap(), wanted, "round {round}");
  }
}

#[test]
fn reports_token_counts_of_the_items_it_ran() {
  let pool = pool(2, sim());
  let texts: Vec<String> = vec!["a".to_owned(), "four".to_owned(), String::new(), "x".repeat(70)];
  let counts = inferpool_core::TokenCounts::default();
  let options =
    SubmitOptions { token_counts: Some(Arc::clone(&counts)), ..SubmitOptions::default() };
  let (_, rx) = submit(&pool, &texts, options).unwrap();
  assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap(), expected(&texts));
  // The simulated tokenizer gives one token per byte, and one for an empty text.
  assert_eq!(counts.get(), Some(&vec![1, 4, 1, 70]));
}
