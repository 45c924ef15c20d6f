//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, reason = "each test file uses a different subset")]

use std::{
  sync::{Arc, Mutex, mpsc},
  time::Duration,
};

use inferpool_core::{
  Backend, BackendError, BatchPolicy, Event, ModelConfig, Models, Pool, PoolConfig, PoolError,
  SubmitOptions, Ticket,
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

/// One model of a multi-model test pool (its tokenizer is [`SimTokenizer`]).
pub struct ModelSpec {
  pub name: &'static str,
  pub memory: u64,
  pub priority: i32,
  pub workers: Option<Vec<usize>>,
}

/// The events a test pool emitted, in order.
pub type Log = Arc<Mutex<Vec<Event>>>;

/// Builds model `model` for worker `worker`.
pub type Build = Arc<dyn Fn(usize, usize) -> Result<SimBackend, BackendError> + Send + Sync>;

/// `count` workers of `budget` bytes each, quick back-offs and a short switch delay.
pub fn multi_config(count: usize, budget: u64) -> PoolConfig {
  PoolConfig {
    workers: count,
    memory_budget: vec![budget; count],
    backoff_initial: Duration::from_millis(1),
    backoff_max: Duration::from_millis(20),
    switch_delay: Duration::from_millis(5),
    ..PoolConfig::default()
  }
}

/// A pool of `specs`, preloading `preload`, whose backends `build` makes; and its event log.
pub fn start_models(
  config: &PoolConfig,
  specs: Vec<ModelSpec>,
  preload: Vec<usize>,
  build: Build,
) -> Result<(Pool, Log), BackendError> {
  let log: Log = Arc::default();
  let sink = Arc::clone(&log);
  let models = specs
    .into_iter()
    .map(|s| ModelConfig {
      priority: s.priority,
      memory: s.memory,
      workers: s.workers,
      ..ModelConfig::new(s.name, Arc::new(SimTokenizer))
    })
    .collect();
  let pool = Pool::with_models(
    config,
    Models {
      models,
      factory: Box::new(move |worker, model| {
        build(worker, model).map(|b| Box::new(b) as Box<dyn Backend>)
      }),
      preload,
      events: Some(Arc::new(move |event| sink.lock().unwrap().push(event))),
    },
  )?;
  Ok((pool, log))
}

/// Waits until `done` holds (polling the pool's state instead of guessing a sleep); panics
/// after 10 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
  let deadline = std::time::Instant::now() + Duration::from_secs(10);
  while !done() {
    assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
    std::thread::sleep(Duration::from_millis(1));
  }
}
