//! A batch that starts while every other worker is idle and nothing else is queued may be spread
//! over their cores (`Backend::run_alone`); under load every worker runs its own batches.

mod common;

use std::{
  sync::{Arc, Mutex},
  thread,
  time::Duration,
};

use common::{config, embed, expected, pool_with, sim, wait_until};
use inferpool_core::{
  WorkerState,
  sim::{SimBackend, SimRun},
};

#[test]
fn a_lone_call_is_spread_and_a_busy_pool_runs_its_own_batches() {
  let backend = SimBackend { spreads: true, per_batch: Duration::from_millis(1), ..sim() };
  let pool = pool_with(&config(2, 8), backend);
  let idle = || pool.stats().workers.iter().all(|w| w.state == WorkerState::Idle);
  // One text at a time, each once the pool is idle again: every batch runs alone.
  for i in 0..5 {
    wait_until("every worker is idle", idle);
    let texts = vec![format!("lone text {i}")];
    assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  }
  let stats = pool.stats();
  let spread: u64 = stats.workers.iter().map(|w| w.spread_batches).sum();
  assert_eq!((spread, stats.batches()), (5, 5));
  // A job that keeps both workers busy: no batch whose rest waits in the queue is spread (the
  // first one would be, before the second worker starts); only the last ones can find the other
  // idle and nothing queued.
  let texts: Vec<String> = (0..800).map(|i| format!("bulk text {i}")).collect();
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  let stats = pool.stats();
  let spread: u64 = stats.workers.iter().map(|w| w.spread_batches).sum::<u64>() - 5;
  let batches = stats.batches() - 5;
  assert!(batches >= 100, "{batches} batches");
  assert!(spread <= 2, "{spread} of {batches} batches of a busy pool were spread");
  // Spread batches do not count as the worker's speed; the others do.
  assert!(stats.workers.iter().all(|w| w.items_per_second > 0.0));
}

#[test]
fn one_worker_never_spreads() {
  let pool = pool_with(&config(1, 8), SimBackend { spreads: true, ..sim() });
  let texts = vec!["alone".to_owned()];
  assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts));
  assert_eq!(pool.stats().workers[0].spread_batches, 0);
}

#[test]
fn a_spread_batch_keeps_the_cores_until_it_ends() {
  // Each round: one text, spread over both workers' cores; while it runs, a second call comes.
  // The second must not start before the first ends (it would take a core from the spread
  // batch's threads); then it runs, on either worker.
  let log = Arc::new(Mutex::new(Vec::<SimRun>::new()));
  let backend = SimBackend {
    spreads: true,
    per_batch: Duration::from_millis(40),
    log: Some(Arc::clone(&log)),
    ..sim()
  };
  let pool = Arc::new(pool_with(&config(2, 8), backend));
  let idle = || pool.stats().workers.iter().all(|w| w.state == WorkerState::Idle);
  for round in 0..6_u64 {
    wait_until("every worker is idle", idle);
    let first = vec![format!("first {round}")];
    let caller = {
      let (pool, first) = (Arc::clone(&pool), first.clone());
      thread::spawn(move || embed(&pool, &first))
    };
    wait_until("the first call runs", || {
      pool.stats().workers.iter().any(|w| w.state == WorkerState::Busy)
    });
    thread::sleep(Duration::from_millis(5 + 5 * round));
    let second = vec![format!("second {round}")];
    assert_eq!(embed(&pool, &second).unwrap(), expected(&second));
    assert_eq!(caller.join().unwrap().unwrap(), expected(&first));
  }
  let runs = log.lock().unwrap().clone();
  assert_eq!(runs.len(), 12, "{runs:?}");
  let spread: Vec<&SimRun> = runs.iter().filter(|r| r.spread).collect();
  assert!(spread.len() >= 6, "only {} of the first calls were spread: {runs:?}", spread.len());
  for s in &spread {
    for other in runs.iter().filter(|r| r.started != s.started) {
      assert!(
        other.ended <= s.started || other.started >= s.ended,
        "a batch ran during a spread one: {other:?} overlaps {s:?}"
      );
    }
  }
}
