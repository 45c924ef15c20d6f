//! Many threads submit at once; every request gets exactly its own rows, and requests of
//! different callers share batches.

mod common;

use std::{sync::Arc, thread, time::Duration};

use common::{config, embed, expected, pool_with, sim, submit};
use inferpool_core::{SubmitOptions, sim::SimBackend};

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

#[test]
fn a_held_batch_takes_what_arrives_while_it_waits() {
  // With `max_wait`, an idle worker holds a partial batch open: calls that come meanwhile join
  // it, whatever share of the queue the worker had worked out before they came.
  let mut config = config(1, 16);
  config.policy.max_wait = Duration::from_millis(300);
  let pool = pool_with(&config, sim());
  let warm = vec!["measures the worker's speed".to_owned()];
  assert_eq!(embed(&pool, &warm).unwrap(), expected(&warm));
  // Of one length: the default padding rule would keep texts of different lengths apart.
  let (first, second) = (vec!["first caller".to_owned()], vec!["other caller".to_owned()]);
  let (_a, answer_a) = submit(&pool, &first, SubmitOptions::default()).unwrap();
  thread::sleep(Duration::from_millis(30));
  let (_b, answer_b) = submit(&pool, &second, SubmitOptions::default()).unwrap();
  assert_eq!(answer_a.recv().unwrap().unwrap(), expected(&first));
  assert_eq!(answer_b.recv().unwrap().unwrap(), expected(&second));
  let stats = pool.stats();
  assert_eq!((stats.items(), stats.batches()), (3, 2), "the two calls ran in one batch");
}
