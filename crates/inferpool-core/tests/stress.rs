//! Thousands of random requests with random priorities, deadlines, cancellations and injected
//! failures: every request is answered exactly once, and a successful answer has every row in
//! input order.

mod common;

use std::{
  sync::{Arc, mpsc},
  thread,
  time::{Duration, Instant},
};

use common::{config, expected, pool_with};
use inferpool_core::{CloseMode, PoolError, Priority, SubmitOptions, sim::SimBackend};

struct Rng(u64);
impl Rng {
  fn next(&mut self) -> u64 {
    self.0 ^= self.0 << 13;
    self.0 ^= self.0 >> 7;
    self.0 ^= self.0 << 17;
    self.0
  }
  fn below(&mut self, n: usize) -> usize {
    usize::try_from(self.next() % n as u64).expect("below n")
  }
}

#[test]
fn every_request_is_answered_exactly_once() {
  let backend = SimBackend {
    dimension: common::DIM,
    per_token: Duration::from_micros(2),
    flaky: 0.05,
    memory_tokens: Some(400),
    ..SimBackend::default()
  };
  let mut config = config(4, 32);
  config.max_queued_items = 8_000;
  let pool = Arc::new(pool_with(&config, backend));
  let (tx, rx) = mpsc::channel::<(usize, Vec<String>, Result<Vec<f32>, PoolError>)>();
  let requests = 2_000;
  let submitters: Vec<_> = (0..4)
    .map(|t| {
      let pool = Arc::clone(&pool);
      let tx = tx.clone();
      thread::spawn(move || {
        let mut rng = Rng(0x1234_5678 + t as u64);
        let mut rejected = 0;
        for r in 0..requests / 4 {
          let id = t * (requests / 4) + r;
          let count = 1 + rng.below(12);
          let texts: Vec<String> =
            (0..count).map(|i| format!("{id}:{i}:{}", "y".repeat(rng.below(40)))).collect();
          let options = SubmitOptions {
            priority: if rng.below(3) == 0 { Priority::Interactive } else { Priority::Bulk },
            deadline: (rng.below(10) == 0)
              .then(|| Instant::now() + Duration::from_micros(rng.below(3_000) as u64)),
            ..SubmitOptions::default()
          };
          let tx = tx.clone();
          let sent = texts.clone();
          match pool.submit(
            &texts,
            options,
            Box::new(move |result| tx.send((id, sent, result)).unwrap()),
          ) {
            Ok(ticket) => {
              if rng.below(10) == 0 {
                ticket.cancel();
              }
            }
            Err(PoolError::Overloaded { .. }) => rejected += 1,
            Err(other) => panic!("unexpected submit error {other:?}"),
          }
        }
        rejected
      })
    })
    .collect();
  drop(tx);
  let rejected: usize = submitters.into_iter().map(|s| s.join().unwrap()).sum();
  let mut answered = vec![0_u32; requests];
  let (mut ok, mut timeouts, mut cancelled, mut failed) = (0, 0, 0, 0);
  while let Ok((id, texts, result)) = rx.recv_timeout(Duration::from_secs(30)) {
    answered[id] += 1;
    match result {
      Ok(values) => {
        assert_eq!(values, expected(&texts), "request {id}");
        ok += 1;
      }
      Err(PoolError::Timeout) => timeouts += 1,
      Err(PoolError::Cancelled) => cancelled += 1,
      Err(PoolError::Backend(_)) => failed += 1,
      Err(other) => panic!("request {id}: unexpected error {other:?}"),
    }
  }
  assert!(answered.iter().all(|&n| n <= 1), "a request was answered twice");
  let total = answered.iter().filter(|&&n| n == 1).count();
  assert_eq!(total + rejected, requests, "every accepted request was answered");
  eprintln!(
    "{ok} ok, {timeouts} timeouts, {cancelled} cancelled, {failed} failed, {rejected} rejected"
  );
  assert!(
    ok > requests / 10 && cancelled > 0,
    "{ok} ok, {timeouts} timeouts, {cancelled} cancelled, {failed} failed, {rejected} rejected"
  );
  pool.close(CloseMode::Drain);
  assert_eq!(pool.stats().outstanding, 0);
}
