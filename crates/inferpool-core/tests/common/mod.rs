//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, reason = "each test file uses a different subset")]

use std::{
  sync::{Arc, mpsc},
  time::Duration,
};

use inferpool_core::{
  BatchPolicy, Pool, PoolConfig, PoolError, SubmitOptions, Ticket,
  sim::{SimBackend, SimTokenizer, expected_row},
};

pub const DIM: usize = 4;

pub fn config(workers: usize, max_batch_size: usize) -> PoolConfig {
  PoolConfig {
    workers,
    policy: BatchPolicy { max_batch_size, ..BatchPolicy::default() },
    backoff_initial: Duration::from_millis(1),
    backoff_max: Duration::from_millis(20),
    ..PoolConfig::default()
  }
}

pub fn pool_with(config: &PoolConfig, backend: SimBackend) -> Pool {
  Pool::new(config, Arc::new(SimTokenizer), Box::new(move |_| Ok(Box::new(backend.clone()))))
    .expect("pool starts")
}

pub fn pool(workers: usize, backend: SimBackend) -> Pool {
  pool_with(&config(workers, 8), backend)
}

pub fn sim() -> SimBackend {
  SimBackend { dimension: DIM, ..SimBackend::default() }
}

pub type Outcome = Result<Vec<f32>, PoolError>;

/// Submits and returns a receiver for the single answer.
pub fn submit(
  pool: &Pool,
  texts: &[String],
  options: SubmitOptions,
) -> Result<(Ticket, mpsc::Receiver<Outcome>), PoolError> {
  let (tx, rx) = mpsc::channel();
  let ticket = pool.submit(
    texts,
    options,
    Box::new(move |result| tx.send(result).expect("receiver alive")),
  )?;
  Ok((ticket, rx))
}

pub fn embed(pool: &Pool, texts: &[String]) -> Outcome {
  let (_, rx) = submit(pool, texts, SubmitOptions::default())?;
  rx.recv_timeout(Duration::from_secs(20)).expect("request answered")
}

pub fn expected(texts: &[String]) -> Vec<f32> {
  texts.iter().flat_map(|t| expected_row(t, DIM)).collect()
}
