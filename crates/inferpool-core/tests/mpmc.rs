//! Many threads submit at once; every request gets exactly its own rows, and requests of
//! different callers share batches.

mod common;

use std::{sync::Arc, thread, time::Duration};

use common::{config, embed, expected, pool_with, sim};
use inferpool_core::sim::SimBackend;

#[test]
fn many_submitters_many_workers() {
  let pool = Arc::new(pool_with(&config(4, 16), sim()));
  let threads: Vec<_> = (0..8)
    .map(|t| {
      let pool = Arc::clone(&pool);
      thread::spawn(move || {
        for r in 0..50 {
          let texts: Vec<String> = (0..=((t * 7 + r) % 13))
            .map(|i| format!("t{t}-r{r}-i{i}-{}", "x".repeat(i * 3)))
            .collect();
          assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts), "thread {t} request {r}");
        }
      })
    })
    .collect();
  for t in threads {
    t.join().unwrap();
  }
  let stats = pool.stats();
  let submitted: u64 =
    (0..8_u64).flat_map(|t| (0..50_u64).map(move |r| 1 + (t * 7 + r) % 13)).sum();
  assert_eq!(stats.items(), submitted);
  assert_eq!(stats.outstanding, 0);
}

#[test]
fn single_text_requests_of_different_callers_share_batches() {
  // Each request holds one text, so a batch of more than one holds several callers' texts.
  let backend = SimBackend { per_batch: Duration::from_millis(2), ..sim() };
  let pool = Arc::new(pool_with(&config(2, 16), backend));
  let threads: Vec<_> = (0..8)
    .map(|t| {
      let pool = Arc::clone(&pool);
      thread::spawn(move || {
        for r in 0..25 {
          let texts = vec![format!("caller {t} request {r}")];
          assert_eq!(embed(&pool, &texts).unwrap(), expected(&texts), "caller {t} request {r}");
        }
      })
    })
    .collect();
  for t in threads {
    t.join().unwrap();
  }
  let stats = pool.stats();
  assert_eq!(stats.items(), 200);
  assert!(stats.batches() < 200 / 2, "{} batches for 200 single-text requests", stats.batches());
}
