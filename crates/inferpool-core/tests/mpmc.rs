//! Many threads submit at once; every request gets exactly its own rows.

mod common;

use std::{sync::Arc, thread};

use common::{config, embed, expected, pool_with, sim};

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
  // Cross-caller batching happened: fewer batches than items.
  assert!(stats.batches() < submitted, "{} batches for {submitted} items", stats.batches());
}
