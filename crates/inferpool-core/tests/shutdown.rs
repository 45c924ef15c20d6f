//! `close` drains or cancels as asked, answers everything, and every worker thread exits.

mod common;

use std::{sync::mpsc, time::Duration};

use common::{config, embed, pool, pool_with, sim};
use inferpool_core::{CloseMode, PoolError, SubmitOptions, WorkerState, sim::SimBackend};

fn flood(pool: &inferpool_core::Pool, n: usize) -> mpsc::Receiver<Result<Vec<f32>, PoolError>> {
  let (tx, rx) = mpsc::channel();
  for i in 0..n {
    let tx = tx.clone();
    pool
      .submit(
        &[format!("text {i}")],
        SubmitOptions::default(),
        Box::new(move |r| tx.send(r).unwrap()),
      )
      .unwrap();
  }
  rx
}

#[test]
fn cancel_fails_queued_items_and_rejects_new_ones() {
  let pool = pool(2, SimBackend { per_batch: Duration::from_millis(20), ..sim() });
  let rx = flood(&pool, 100);
  pool.close(CloseMode::Cancel);
  let outcomes: Vec<_> = rx.iter().collect();
  assert_eq!(outcomes.len(), 100, "every request answered exactly once");
  assert!(
    outcomes.iter().any(|r| matches!(r, Err(PoolError::Closed))),
    "queued requests were cancelled"
  );
  assert!(outcomes.iter().all(|r| r.is_ok() || matches!(r, Err(PoolError::Closed))));
  assert!(matches!(embed(&pool, &["late".to_owned()]), Err(PoolError::Closed)));
  assert!(pool.stats().workers.iter().all(|w| w.state == WorkerState::Stopped));
  assert_eq!(pool.stats().outstanding, 0);
}

#[test]
fn drain_runs_everything_first() {
  let pool = pool_with(&config(3, 4), SimBackend { per_batch: Duration::from_millis(2), ..sim() });
  let rx = flood(&pool, 300);
  pool.close(CloseMode::Drain);
  let outcomes: Vec<_> = rx.iter().collect();
  assert_eq!(outcomes.len(), 300);
  assert!(outcomes.iter().all(Result::is_ok));
  assert!(pool.stats().workers.iter().all(|w| w.state == WorkerState::Stopped));
}

#[test]
fn drain_with_a_failing_backend_still_ends() {
  let mut config = config(2, 4);
  config.max_attempts = 2;
  let pool = pool_with(&config, SimBackend { flaky: 1.0, ..sim() });
  let rx = flood(&pool, 20);
  pool.close(CloseMode::Drain);
  let outcomes: Vec<_> = rx.iter().collect();
  assert_eq!(outcomes.len(), 20);
  assert!(outcomes.iter().all(|r| matches!(r, Err(PoolError::Backend(_)))));
}

#[test]
fn close_is_idempotent_and_drop_closes() {
  let pool = pool(2, sim());
  pool.close(CloseMode::Drain);
  pool.close(CloseMode::Cancel);
  let other =
    pool_with(&config(2, 4), SimBackend { per_batch: Duration::from_millis(10), ..sim() });
  let rx = flood(&other, 50);
  drop(other);
  assert_eq!(rx.iter().count(), 50, "dropping the pool answered every request");
}
