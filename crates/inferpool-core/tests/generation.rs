//! Generation in cohorts against the simulated encoder-decoder: every row gets exactly its own
//! tokens whatever it was batched with, rows join and leave cohorts at step boundaries,
//! cancelled rows free their place, failures restart rows elsewhere, and embedding and
//! generation models share workers.

mod common;

use std::{
  sync::{Arc, Mutex, mpsc},
  time::{Duration, Instant},
};

use common::{config, wait_until};
use inferpool_core::{
  Backend, CloseMode, FinishReason, GenerateParams, ModelConfig, ModelKind, Models, Pool,
  PoolConfig, PoolError, Sequence, SubmitOptions, Ticket, TokenSink,
  sim::{SimBackend, SimSeq2Seq, SimTokenizer, expected_tokens},
};

#[derive(Default)]
struct Collect {
  tokens: Mutex<Vec<u32>>,
  finish: Mutex<Option<FinishReason>>,
  stop_at: Option<u32>,
  /// Streams: tokens cannot be taken back.
  streamed: bool,
  restarts: Mutex<usize>,
}

impl TokenSink for Collect {
  fn push(&self, token: u32) -> bool {
    self.tokens.lock().unwrap().push(token);
    self.stop_at == Some(token)
  }

  fn finish(&self, reason: FinishReason) {
    assert!(self.finish.lock().unwrap().replace(reason).is_none(), "finished twice");
  }

  fn restart(&self) -> bool {
    *self.restarts.lock().unwrap() += 1;
    self.tokens.lock().unwrap().clear();
    !self.streamed
  }
}

type Answer = mpsc::Receiver<Result<Vec<f32>, PoolError>>;

fn generate(
  pool: &Pool,
  model: usize,
  prompts: &[&str],
  params: &GenerateParams,
  sink: impl Fn() -> Collect,
) -> (Vec<Arc<Collect>>, Ticket, Answer) {
  let sinks: Vec<Arc<Collect>> = prompts.iter().map(|_| Arc::new(sink())).collect();
  let sequences = sinks
    .iter()
    .map(|s| Sequence {
      params: Arc::new(params.clone()),
      sink: Arc::clone(s) as Arc<dyn TokenSink>,
    })
    .collect();
  let texts: Vec<String> = prompts.iter().map(|p| (*p).to_owned()).collect();
  let (tx, rx) = mpsc::channel();
  let ticket = pool
    .generate(
      model,
      &texts,
      sequences,
      SubmitOptions::default(),
      Box::new(move |r| tx.send(r).unwrap()),
    )
    .expect("submitted");
  (sinks, ticket, rx)
}

fn params(max_new_tokens: usize) -> GenerateParams {
  GenerateParams { max_new_tokens, ..GenerateParams::default() }
}

/// Model 0 generates (the simulated encoder-decoder), model 1 embeds.
fn mixed_pool(config: &PoolConfig, seq2seq: SimSeq2Seq) -> Pool {
  let models = Models {
    models: vec![
      ModelConfig { kind: ModelKind::Seq2Seq, ..ModelConfig::new("t5", Arc::new(SimTokenizer)) },
      ModelConfig::new("embed", Arc::new(SimTokenizer)),
    ],
    factory: Box::new(move |_, model| {
      Ok(if model == 0 {
        Box::new(seq2seq.clone()) as Box<dyn Backend>
      } else {
        Box::new(SimBackend { dimension: 4, ..SimBackend::default() })
      })
    }),
    preload: vec![0],
    events: None,
  };
  Pool::with_models(config, models).expect("pool starts")
}

fn check(prompt: &str, sink: &Collect, max_new: usize) {
  let expected = expected_tokens(prompt);
  let tokens = sink.tokens.lock().unwrap().clone();
  let finish = sink.finish.lock().unwrap().expect("finished");
  if expected.len() < max_new {
    assert_eq!(tokens, expected, "{prompt:?}");
    assert_eq!(finish, FinishReason::Eos, "{prompt:?}");
  } else {
    assert_eq!(tokens, expected[..max_new], "{prompt:?}");
    assert_eq!(finish, FinishReason::Length, "{prompt:?}");
  }
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn every_row_gets_its_own_tokens_from_concurrent_callers() {
  let pool = mixed_pool(
    &config(2, 8),
    SimSeq2Seq { per_step: Duration::from_micros(300), ..SimSeq2Seq::default() },
  );
  let prompts: Vec<String> =
    (0..60).map(|i| format!("prompt {i} {}", "x".repeat(i % 17))).collect();
  std::thread::scope(|scope| {
    for chunk in prompts.chunks(7) {
      let pool = &pool;
      scope.spawn(move || {
        for max_new in [8, 20] {
          let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
          let (sinks, _ticket, answer) =
            generate(pool, 0, &refs, &params(max_new), Collect::default);
          assert_eq!(answer.recv_timeout(WAIT).unwrap().unwrap(), Vec::<f32>::new());
          for (prompt, sink) in refs.iter().zip(&sinks) {
            check(prompt, sink, max_new);
          }
        }
      });
    }
  });
  let stats = pool.stats();
  let generation =
    stats.models[0].generation.clone().expect("a seq2seq model has generation stats");
  assert_eq!((generation.rows, generation.cohorts), (0, 0));
  assert!(generation.tokens > 0 && generation.first_token.count == 120, "{generation:?}");
  assert_eq!(stats.outstanding, 0);
  pool.close(CloseMode::Drain);
}

#[test]
fn stop_and_minimum_lengths_end_rows() {
  let pool = mixed_pool(&config(1, 8), SimSeq2Seq::default());
  let prompt = "a prompt";
  let expected = expected_tokens(prompt);
  let stop_at = expected[1];
  let (sinks, _t, answer) = generate(&pool, 0, &[prompt], &params(50), || Collect {
    stop_at: Some(stop_at),
    ..Collect::default()
  });
  answer.recv_timeout(WAIT).unwrap().unwrap();
  assert_eq!(*sinks[0].tokens.lock().unwrap(), expected[..2]);
  assert_eq!(*sinks[0].finish.lock().unwrap(), Some(FinishReason::Stop));
  pool.close(CloseMode::Drain);
}

#[test]
fn a_prompt_arriving_mid_generation_starts_at_the_next_step() {
  let pool = mixed_pool(
    &config(1, 8),
    SimSeq2Seq { per_step: Duration::from_millis(2), ..SimSeq2Seq::default() },
  );
  let (long, long_ticket, long_answer) =
    generate(&pool, 0, &["long one"], &params(2000), Collect::default);
  wait_until("the long row has tokens", || long[0].tokens.lock().unwrap().len() >= 5);
  let started = Instant::now();
  let (short, _t, answer) = generate(&pool, 0, &["short"], &params(50), Collect::default);
  answer.recv_timeout(WAIT).unwrap().unwrap();
  check("short", &short[0], 50);
  // The long row is still decoding: the short one did not wait for it.
  assert!(long[0].finish.lock().unwrap().is_none());
  assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
  let stats = pool.stats().models[0].generation.clone().unwrap();
  assert_eq!((stats.cohorts, stats.rows), (1, 1));
  assert!(long_ticket.cancel());
  assert_eq!(long_answer.recv_timeout(WAIT).unwrap(), Err(PoolError::Cancelled));
  pool.close(CloseMode::Drain);
}

#[test]
fn cancelled_rows_free_their_place_and_the_others_go_on() {
  let pool = mixed_pool(
    &config(1, 8),
    SimSeq2Seq { per_step: Duration::from_millis(1), ..SimSeq2Seq::default() },
  );
  let (_, cancelled, cancelled_answer) =
    generate(&pool, 0, &["long a", "long b", "long c"], &params(5000), Collect::default);
  let (kept, _t, kept_answer) = generate(&pool, 0, &["long d"], &params(300), Collect::default);
  wait_until("four rows decode", || pool.stats().models[0].generation.as_ref().unwrap().rows == 4);
  assert!(cancelled.cancel());
  assert_eq!(cancelled_answer.recv_timeout(WAIT).unwrap(), Err(PoolError::Cancelled));
  wait_until("one row is left", || pool.stats().models[0].generation.as_ref().unwrap().rows == 1);
  kept_answer.recv_timeout(WAIT).unwrap().unwrap();
  check("long d", &kept[0], 300);
  let stats = pool.stats();
  assert_eq!(stats.models[0].generation.as_ref().unwrap().rows, 0);
  assert_eq!(stats.outstanding, 0);
  pool.close(CloseMode::Drain);
}

#[test]
fn a_failed_step_restarts_its_rows_and_fails_only_the_culprit() {
  let config = PoolConfig { max_attempts: 2, ..config(2, 8) };
  let pool = mixed_pool(&config, SimSeq2Seq::default());
  let prompts = ["one", "it will fail", "three", "four"];
  let (sinks, _t, answer) = generate(&pool, 0, &prompts, &params(30), Collect::default);
  let error = answer.recv_timeout(WAIT).unwrap().unwrap_err();
  assert!(matches!(error, PoolError::Backend(_)), "{error:?}");
  // Separate calls: the others finish with their own tokens, restarted where needed.
  let good = ["one", "three", "four", "five"];
  let (sinks2, _t2, answer2) = generate(&pool, 0, &good, &params(30), Collect::default);
  let (_, _t3, failing) = generate(&pool, 0, &["fail again"], &params(30), Collect::default);
  answer2.recv_timeout(WAIT).unwrap().unwrap();
  for (prompt, sink) in good.iter().zip(&sinks2) {
    check(prompt, sink, 30);
  }
  assert!(failing.recv_timeout(WAIT).unwrap().is_err());
  drop(sinks);
  pool.close(CloseMode::Drain);
}

#[test]
fn streamed_rows_fail_instead_of_restarting() {
  let pool = mixed_pool(&config(1, 8), SimSeq2Seq::default());
  let (sinks, _t, answer) = generate(&pool, 0, &["it will fail"], &params(30), || Collect {
    streamed: true,
    ..Collect::default()
  });
  assert!(matches!(answer.recv_timeout(WAIT).unwrap(), Err(PoolError::Backend(_))));
  assert_eq!(*sinks[0].restarts.lock().unwrap(), 1);
  pool.close(CloseMode::Drain);
}

#[test]
fn embedding_and_generation_share_a_worker() {
  let pool = mixed_pool(
    &config(1, 8),
    SimSeq2Seq { per_step: Duration::from_millis(1), ..SimSeq2Seq::default() },
  );
  let (long, _t, long_answer) =
    generate(&pool, 0, &["a long text"], &params(200), Collect::default);
  let texts: Vec<String> = (0..20).map(|i| format!("text {i}")).collect();
  let (tx, rx) = mpsc::channel();
  pool
    .submit_to(1, &texts, SubmitOptions::default(), Box::new(move |r| tx.send(r).unwrap()))
    .unwrap();
  let rows = rx.recv_timeout(WAIT).unwrap().unwrap();
  assert_eq!(rows.len(), 20 * 4);
  assert_eq!(rows[..3], inferpool_core::sim::expected_row("text 0", 4)[..3]);
  // The embedding call was answered while the long row decoded.
  assert!(long[0].finish.lock().unwrap().is_none());
  long_answer.recv_timeout(WAIT).unwrap().unwrap();
  check("a long text", &long[0], 200);
  pool.close(CloseMode::Drain);
}

#[test]
fn each_kind_refuses_the_other_call() {
  let pool = mixed_pool(&config(1, 8), SimSeq2Seq::default());
  let error =
    pool.submit_to(0, &["x".to_owned()], SubmitOptions::default(), Box::new(|_| {})).unwrap_err();
  assert!(matches!(&error, PoolError::InvalidInput(m) if m.contains("seq2seq")), "{error:?}");
  let sink: Arc<dyn TokenSink> = Arc::new(Collect::default());
  let sequence = Sequence { params: Arc::new(params(4)), sink };
  let error = pool
    .generate(
      1,
      &["x".to_owned()],
      vec![sequence.clone()],
      SubmitOptions::default(),
      Box::new(|_| {}),
    )
    .unwrap_err();
  assert!(matches!(&error, PoolError::InvalidInput(m) if m.contains("embedding")), "{error:?}");
  let zero = Sequence { params: Arc::new(params(0)), ..sequence };
  let error = pool
    .generate(0, &["x".to_owned()], vec![zero], SubmitOptions::default(), Box::new(|_| {}))
    .unwrap_err();
  assert!(matches!(error, PoolError::InvalidInput(_)));
  pool.close(CloseMode::Drain);
}

#[test]
fn the_memory_budget_caps_rows_and_everything_still_finishes() {
  // Each row reserves 8 bytes × (prompt + 40): about 400 bytes; 1000 bytes fit two rows.
  let config = PoolConfig { memory_budget: vec![1000], ..config(1, 16) };
  let pool = mixed_pool(
    &config,
    SimSeq2Seq { per_step: Duration::from_micros(200), ..SimSeq2Seq::default() },
  );
  let prompts: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
  let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
  let (sinks, _t, answer) = generate(&pool, 0, &refs, &params(40), Collect::default);
  let mut most = 0;
  let deadline = Instant::now() + WAIT;
  while answer.try_recv().is_err() {
    most = most.max(pool.stats().models[0].generation.as_ref().unwrap().rows);
    assert!(Instant::now() < deadline);
    std::thread::yield_now();
  }
  assert!((1..=2).contains(&most), "{most}");
  for (prompt, sink) in refs.iter().zip(&sinks) {
    check(prompt, sink, 40);
  }
  pool.close(CloseMode::Drain);
}

#[test]
fn closing_with_cancel_fails_decoding_rows() {
  let pool = mixed_pool(
    &config(1, 8),
    SimSeq2Seq { per_step: Duration::from_millis(1), ..SimSeq2Seq::default() },
  );
  let (long, _t, answer) = generate(&pool, 0, &["long"], &params(5000), Collect::default);
  wait_until("the row has a token", || !long[0].tokens.lock().unwrap().is_empty());
  pool.close(CloseMode::Cancel);
  assert_eq!(answer.recv_timeout(WAIT).unwrap(), Err(PoolError::Closed));
  assert_eq!(pool.stats().outstanding, 0);
}

#[test]
fn one_worker_switches_between_an_embedding_and_a_generation_model() {
  // Room for one model at a time: each call makes the worker switch.
  let config = PoolConfig { memory_budget: vec![150], ..config(1, 8) };
  let models = Models {
    models: vec![
      ModelConfig {
        kind: ModelKind::Seq2Seq,
        memory: 100,
        ..ModelConfig::new("t5", Arc::new(SimTokenizer))
      },
      ModelConfig { memory: 100, ..ModelConfig::new("embed", Arc::new(SimTokenizer)) },
    ],
    factory: Box::new(|_, model| {
      Ok(if model == 0 {
        Box::new(SimSeq2Seq::default()) as Box<dyn Backend>
      } else {
        Box::new(SimBackend { dimension: 4, ..SimBackend::default() })
      })
    }),
    preload: vec![0],
    events: None,
  };
  let pool = Pool::with_models(&config, models).expect("pool starts");
  for round in 0..3 {
    let prompt = format!("round {round}");
    let (sinks, _t, answer) = generate(&pool, 0, &[prompt.as_str()], &params(30), Collect::default);
    answer.recv_timeout(WAIT).unwrap().unwrap();
    check(&prompt, &sinks[0], 30);
    let (tx, rx) = mpsc::channel();
    pool
      .submit_to(
        1,
        std::slice::from_ref(&prompt),
        SubmitOptions::default(),
        Box::new(move |r| tx.send(r).unwrap()),
      )
      .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap().len(), 4);
  }
  let stats = pool.stats();
  assert!(stats.workers[0].switches >= 5, "{:?}", stats.workers[0].switches);
  assert_eq!(stats.workers[0].memory_used, 100);
  pool.close(CloseMode::Drain);
}

#[test]
fn a_burst_of_prompts_decodes_in_few_large_cohorts() {
  let seq2seq = SimSeq2Seq {
    per_step: Duration::from_millis(1),
    per_prompt: Duration::from_micros(200),
    ..SimSeq2Seq::default()
  };
  let pool = mixed_pool(&config(2, 64), seq2seq);
  // Long enough that every row decodes as many steps: rows per step is the cohort size.
  let prompts: Vec<String> = (0..64).map(|i| format!("long prompt {i}")).collect();
  // One call of 64, then 64 calls of one, from many threads at once.
  let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
  let (_, _t, answer) = generate(&pool, 0, &refs, &params(40), Collect::default);
  answer.recv_timeout(WAIT).unwrap().unwrap();
  let one_call = pool.stats().models[0].generation.clone().unwrap();
  assert_eq!(one_call.tokens, 64 * 40);
  // About one cohort per worker (a third may start when the call's prompts reach the queue
  // more slowly than a worker gathers them, on a loaded machine); one per prompt would be 2560
  // steps.
  assert!(one_call.steps <= 4 * 40, "{} steps for one call of 64 prompts", one_call.steps);
  std::thread::scope(|scope| {
    for prompt in &prompts {
      let pool = &pool;
      scope.spawn(move || {
        let (_, _t, answer) = generate(pool, 0, &[prompt.as_str()], &params(40), Collect::default);
        answer.recv_timeout(WAIT).unwrap().unwrap();
      });
    }
  });
  let steps = pool.stats().models[0].generation.as_ref().unwrap().steps - one_call.steps;
  // Calls that arrive together start together (`cohort_gather`): a few cohorts, not 64.
  assert!(steps <= 8 * 40, "{steps} steps for 64 prompts of 40 tokens");
  pool.close(CloseMode::Drain);
}
