//! A batch that starts while every other worker is idle and nothing else is queued may be spread
//! over their cores (`Backend::run_alone`); under load every worker runs its own batches.

mod common;

use std::{
  sync::{Arc, Mutex},
  thread::{self, JoinHandle},
  time::Duration,
};

use common::{Outcome, config, embed, expected, pool_with, sim, wait_until};
use inferpool_core::{
  Backend, FinishReason, GenerateParams, ModelConfig, ModelKind, Models, Pool, Sequence,
  SubmitOptions, TokenSink, WorkerState,
  sim::{SimBackend, SimRun, SimSeq2Seq, SimTokenizer, expected_tokens},
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
  for round in 0..6_u64 {
    let (first, caller) = start_lone_call(&pool, round);
    let second = vec![format!("second {round}")];
    assert_eq!(embed(&pool, &second).unwrap(), expected(&second));
    assert_eq!(caller.join().unwrap().unwrap(), expected(&first));
  }
  let runs = log.lock().unwrap().clone();
  assert_eq!(runs.len(), 12, "{runs:?}");
  let spread = assert_spread_runs_alone(&runs);
  assert!(spread >= 6, "only {spread} of the first calls were spread: {runs:?}");
}

/// Once the pool is idle, starts a call of one text (which runs spread) on a thread of its own,
/// and returns its texts and its thread once it runs and `5 + 5 * round` ms more have passed.
fn start_lone_call(pool: &Arc<Pool>, round: u64) -> (Vec<String>, JoinHandle<Outcome>) {
  wait_until("every worker is idle", || {
    pool.stats().workers.iter().all(|w| w.state == WorkerState::Idle)
  });
  let first = vec![format!("first {round}")];
  let caller = {
    let (pool, first) = (Arc::clone(pool), first.clone());
    thread::spawn(move || embed(&pool, &first))
  };
  wait_until("the first call runs", || {
    pool.stats().workers.iter().any(|w| w.state == WorkerState::Busy)
  });
  thread::sleep(Duration::from_millis(5 + 5 * round));
  (first, caller)
}

/// Panics when a run in `runs` overlaps a spread one; returns how many were spread.
fn assert_spread_runs_alone(runs: &[SimRun]) -> usize {
  let spread: Vec<&SimRun> = runs.iter().filter(|r| r.spread).collect();
  for s in &spread {
    for other in runs.iter().filter(|r| r.started != s.started) {
      assert!(
        other.ended <= s.started || other.started >= s.ended,
        "a run overlapped a spread one: {other:?} overlaps {s:?}"
      );
    }
  }
  spread.len()
}

/// Counts the tokens of one generated row.
#[derive(Default)]
struct Count(Mutex<(usize, Option<FinishReason>)>);

impl TokenSink for Count {
  fn push(&self, _: u32) -> bool {
    self.0.lock().unwrap().0 += 1;
    false
  }

  fn finish(&self, reason: FinishReason) {
    self.0.lock().unwrap().1 = Some(reason);
  }

  fn restart(&self) -> bool {
    self.0.lock().unwrap().0 = 0;
    true
  }
}

#[test]
fn generation_on_the_same_cores_waits_for_a_spread_batch() {
  // Model 0 embeds, and spreads a lone text over both workers' cores; model 1 generates on the
  // same cores. While a spread batch runs, neither an encoder batch nor a decoder step may
  // start: it would take a core from the spread batch's threads.
  let log = Arc::new(Mutex::new(Vec::<SimRun>::new()));
  let (embedder, generator) = (
    SimBackend {
      spreads: true,
      per_batch: Duration::from_millis(40),
      log: Some(Arc::clone(&log)),
      ..sim()
    },
    SimSeq2Seq {
      per_step: Duration::from_millis(2),
      per_prompt: Duration::from_millis(2),
      shares_cores: true,
      log: Some(Arc::clone(&log)),
    },
  );
  let models = Models {
    models: vec![
      ModelConfig::new("embed", Arc::new(SimTokenizer)),
      ModelConfig { kind: ModelKind::Seq2Seq, ..ModelConfig::new("t5", Arc::new(SimTokenizer)) },
    ],
    factory: Box::new(move |_, model| {
      Ok(if model == 0 {
        Box::new(embedder.clone()) as Box<dyn Backend>
      } else {
        Box::new(generator.clone())
      })
    }),
    preload: vec![0, 1],
    events: None,
  };
  let pool = Arc::new(Pool::with_models(&config(2, 8), models).expect("pool starts"));
  for round in 0..5_u64 {
    let (first, caller) = start_lone_call(&pool, round);
    let prompt = format!("prompt {round}");
    let sink = Arc::new(Count::default());
    let sequence = Sequence {
      params: Arc::new(GenerateParams { max_new_tokens: 50, ..GenerateParams::default() }),
      sink: Arc::clone(&sink) as Arc<dyn TokenSink>,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let _ticket = pool
      .generate(
        1,
        std::slice::from_ref(&prompt),
        vec![sequence],
        SubmitOptions::default(),
        Box::new(move |r| tx.send(r).unwrap()),
      )
      .expect("submitted");
    rx.recv_timeout(Duration::from_secs(20)).expect("answered").expect("generated");
    let (tokens, finish) = *sink.0.lock().unwrap();
    assert_eq!((tokens, finish), (expected_tokens(&prompt).len(), Some(FinishReason::Eos)));
    assert_eq!(caller.join().unwrap().unwrap(), expected(&first));
  }
  let runs = log.lock().unwrap().clone();
  let spread = assert_spread_runs_alone(&runs);
  assert!(spread >= 5, "only {spread} of the first calls were spread: {runs:?}");
}
