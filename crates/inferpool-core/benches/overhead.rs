//! Pure scheduling overhead: a no-op backend, so what is measured is admission, queueing,
//! batching, stealing and completion. Compared in the same run with the cost of the same work
//! done inline on the calling thread (the floor: tokenizing and writing rows, no pool).
//!
//! `cargo bench -p inferpool-core --bench overhead`
#![expect(clippy::print_stdout, clippy::cast_precision_loss, reason = "a report printed to stdout")]

use std::{
  sync::{Arc, mpsc},
  time::{Duration, Instant},
};

use inferpool_core::{
  Backend, BatchPolicy, CloseMode, Pool, PoolConfig, SubmitOptions, Tokenize,
  sim::{SimBackend, SimTokenizer},
};

fn texts(n: usize) -> Vec<String> {
  (0..n).map(|i| format!("item {i} {}", "x".repeat(i % 48))).collect()
}

fn through_pool(workers: usize, requests: usize, per_request: usize) -> Duration {
  let config = PoolConfig {
    workers,
    policy: BatchPolicy { max_batch_size: 64, ..BatchPolicy::default() },
    ..PoolConfig::default()
  };
  let pool =
    Pool::new(&config, Arc::new(SimTokenizer), Box::new(|_| Ok(Box::new(SimBackend::default()))))
      .expect("pool starts");
  let batch = texts(per_request);
  let (tx, rx) = mpsc::channel();
  let started = Instant::now();
  for _ in 0..requests {
    let tx = tx.clone();
    pool
      .submit(&batch, SubmitOptions::default(), Box::new(move |r| tx.send(r.is_ok()).unwrap()))
      .expect("admission has room");
  }
  drop(tx);
  assert!(rx.iter().all(|ok| ok));
  let elapsed = started.elapsed();
  pool.close(CloseMode::Drain);
  elapsed
}

fn inline(requests: usize, per_request: usize) -> Duration {
  let batch = texts(per_request);
  let mut backend = SimBackend::default();
  let started = Instant::now();
  for _ in 0..requests {
    let encoded = SimTokenizer.encode(&batch).unwrap();
    let refs: Vec<_> = encoded.iter().collect();
    let mut out = vec![0.0; refs.len() * backend.dimension];
    backend.run(&refs, &mut out).unwrap();
    std::hint::black_box(&out);
  }
  started.elapsed()
}

fn main() {
  println!(
    "| workload | items | inline ns/item | pool ns/item | pool items/s | overhead ns/item |"
  );
  println!("|---|---:|---:|---:|---:|---:|");
  for (workers, requests, per_request) in
    [(1, 20_000, 1), (2, 20_000, 1), (4, 20_000, 1), (2, 2_000, 32), (4, 500, 256)]
  {
    let items = requests * per_request;
    // Warm up, then take the best of three.
    let _ = through_pool(workers, requests / 10, per_request);
    let pool = (0..3).map(|_| through_pool(workers, requests, per_request)).min().unwrap();
    let floor = (0..3).map(|_| inline(requests, per_request)).min().unwrap();
    let per = |d: Duration| d.as_nanos() as f64 / items as f64;
    println!(
      "| {workers} workers, requests of {per_request} | {items} | {:.0} | {:.0} | {:.0} | {:.0} |",
      per(floor),
      per(pool),
      items as f64 / pool.as_secs_f64(),
      per(pool) - per(floor)
    );
  }
}
