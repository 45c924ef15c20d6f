//! Interactive work is served first, and bulk keeps flowing under interactive load.

mod common;

use std::{
  sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
  },
  thread,
  time::{Duration, Instant},
};

use common::{config, embed, pool_with, sim, submit};
use inferpool_core::{Priority, SubmitOptions, sim::SimBackend};

#[test]
fn bulk_progresses_under_constant_interactive_load() {
  let backend = SimBackend { per_batch: Duration::from_millis(2), ..sim() };
  let pool = Arc::new(pool_with(&config(2, 4), backend));
  let stop = Arc::new(AtomicBool::new(false));
  let flooders: Vec<_> = (0..4)
    .map(|t| {
      let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
      thread::spawn(move || {
        let options = SubmitOptions { priority: Priority::Interactive, ..SubmitOptions::default() };
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
          let texts: Vec<String> = (0..4).map(|k| format!("i{t}-{i}-{k}")).collect();
          let (_, rx) = submit(&pool, &texts, options.clone()).unwrap();
          rx.recv().unwrap().unwrap();
          i += 1;
        }
      })
    })
    .collect();
  thread::sleep(Duration::from_millis(50));
  // Bulk requests still complete while interactive traffic never stops.
  let started = Instant::now();
  for r in 0..10 {
    let texts: Vec<String> = (0..8).map(|k| format!("bulk-{r}-{k}")).collect();
    embed(&pool, &texts).unwrap();
  }
  let bulk_time = started.elapsed();
  stop.store(true, Ordering::Relaxed);
  for f in flooders {
    f.join().unwrap();
  }
  assert!(bulk_time < Duration::from_secs(5), "bulk took {bulk_time:?}");
}

#[test]
fn bulk_gets_its_turn_while_an_interactive_backlog_waits() {
  let backend = SimBackend {
    per_batch: Duration::from_micros(50),
    per_token: Duration::from_micros(10),
    ..sim()
  };
  let pool = pool_with(&config(2, 32), backend);
  // Lengths differ by a token or two: batches split by padding, and what a worker gathered and
  // did not run waits in its own deque.
  let flood: Vec<String> =
    (0..3000).map(|i| format!("interactive {}", "x".repeat(i % 7))).collect();
  let interactive = SubmitOptions { priority: Priority::Interactive, ..SubmitOptions::default() };
  let (_, flood_rx) = submit(&pool, &flood, interactive).unwrap();
  let texts: Vec<String> = (0..8).map(|k| format!("bulk {k}")).collect();
  let (_, bulk_rx) = submit(&pool, &texts, SubmitOptions::default()).unwrap();
  bulk_rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
  // Every few batches are bulk's: the bulk call is done long before the backlog.
  let done: u64 = pool.stats().workers.iter().map(|w| w.items).sum();
  assert!(done < 1500, "{done} items ran before the bulk call was answered");
  flood_rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
}

#[test]
fn interactive_jumps_the_bulk_queue() {
  let backend = SimBackend { per_batch: Duration::from_millis(5), ..sim() };
  let pool = pool_with(&config(1, 4), backend);
  // A long bulk backlog: 200 items in batches of 4 take about 250 ms.
  let backlog: Vec<String> = (0..200).map(|i| format!("bulk {i}")).collect();
  let (_, bulk_rx) = submit(&pool, &backlog, SubmitOptions::default()).unwrap();
  thread::sleep(Duration::from_millis(10));
  let started = Instant::now();
  let options = SubmitOptions { priority: Priority::Interactive, ..SubmitOptions::default() };
  let (_, rx) = submit(&pool, &["urgent".to_owned()], options).unwrap();
  rx.recv().unwrap().unwrap();
  let waited = started.elapsed();
  assert!(waited < Duration::from_millis(100), "interactive waited {waited:?} behind bulk");
  assert!(bulk_rx.try_recv().is_err(), "the backlog is still running");
  bulk_rx.recv().unwrap().unwrap();
}
