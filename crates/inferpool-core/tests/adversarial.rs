//! Regression tests for ways a multi-model pool could leave a call pending forever, lose work
//! or block its caller: each scenario once hung or misbehaved.

mod common;

use common::{Build, Log, ModelSpec, multi_config, start_models, wait_until};

use std::{
  sync::{Arc, mpsc},
  thread,
  time::{Duration, Instant},
};

use inferpool_core::{
  BackendError, BackendErrorKind, CloseMode, Event, Pool, PoolConfig, PoolError, SubmitOptions,
  sim::{SimBackend, SimTokenizer, expected_row},
};

type Outcome = Result<Vec<f32>, PoolError>;

fn spec(name: &'static str, memory: u64, priority: i32) -> ModelSpec {
  ModelSpec { name, memory, priority, workers: None }
}

fn config(workers: usize, budget: u64) -> PoolConfig {
  multi_config(workers, budget)
}

fn sim(per_token: Duration) -> Build {
  Arc::new(move |_, _| Ok(SimBackend { dimension: 4, per_token, ..SimBackend::default() }))
}

fn start(
  config: &PoolConfig,
  specs: Vec<ModelSpec>,
  preload: Vec<usize>,
  build: Build,
) -> Result<(Pool, Log), BackendError> {
  start_models(config, specs, preload, build)
}

fn submit(
  pool: &Pool,
  model: usize,
  texts: &[String],
  deadline: Duration,
) -> mpsc::Receiver<Outcome> {
  let (tx, rx) = mpsc::channel();
  let options =
    SubmitOptions { deadline: Some(Instant::now() + deadline), ..SubmitOptions::default() };
  pool
    .submit_to(model, texts, options, Box::new(move |r| tx.send(r).expect("receiver alive")))
    .expect("submitted");
  rx
}

/// Embeds and waits; the deadline makes a stranded call fail with `Timeout` instead of hanging.
fn embed(pool: &Pool, model: usize, texts: &[String]) -> Outcome {
  submit(pool, model, texts, Duration::from_secs(3))
    .recv_timeout(Duration::from_secs(10))
    .expect("answered")
}

fn texts(prefix: &str, count: usize) -> Vec<String> {
  (0..count).map(|i| format!("{prefix} {i}")).collect()
}

fn expected(texts: &[String]) -> Vec<f32> {
  texts.iter().flat_map(|t| expected_row(t, 4)).collect()
}

/// A single-text call wakes one sleeping worker. When only some workers hold the model, that
/// wake must reach one of them: a worker without it leaves the work to the holders (it would
/// load a second copy for one text) and goes back to sleep.
#[test]
fn single_calls_for_a_model_held_by_one_worker_all_finish() {
  for (workers, holder) in [(2, 0), (2, 1), (4, 2)] {
    let (pool, _) = start(
      &config(workers, u64::MAX),
      vec![spec("a", 1, 0), spec("b", 1, 0)],
      vec![0],
      sim(Duration::ZERO),
    )
    .unwrap();
    pool.preload(1, Some(&[holder])).unwrap();
    for i in 0..40 {
      let batch = texts(&format!("b{i}"), 1);
      let result = embed(&pool, 1, &batch);
      assert_eq!(result, Ok(expected(&batch)), "call {i} ({workers} workers, holder {holder})");
    }
    assert_eq!(pool.stats().models[1].loaded_on, vec![holder], "no second copy was needed");
  }
}

/// One model fits per worker, the higher-priority one is loaded everywhere and idle: a call for
/// the lower-priority one is served (a worker switches after `switch_delay`), and the
/// higher-priority model takes its place back when its own work comes.
#[test]
fn priority_decides_who_waits_but_does_not_exclude_a_model() {
  let (pool, log) = start(
    &config(2, 100),
    vec![spec("hi", 100, 1), spec("lo", 100, 0)],
    vec![0],
    sim(Duration::ZERO),
  )
  .unwrap();
  assert_eq!(pool.stats().models[0].loaded_on, vec![0, 1]);
  let batch = texts("lo", 3);
  assert_eq!(embed(&pool, 1, &batch), Ok(expected(&batch)));
  let batch = texts("hi", 5);
  assert_eq!(embed(&pool, 0, &batch), Ok(expected(&batch)));
  let evictions = log
    .lock()
    .unwrap()
    .iter()
    .filter(|e| matches!(e, Event::ModelUnloaded { model: 0, .. }))
    .count();
  assert!(evictions >= 1, "\"hi\" was never evicted for \"lo\"");
  // An explicit preload still never evicts a model of higher priority.
  pool.unload(1).unwrap();
  pool.preload(0, None).unwrap();
  let error = pool.preload(1, Some(&[0])).unwrap_err();
  assert!(matches!(&error, PoolError::Unavailable(m) if m.contains("higher priority")), "{error}");
}

/// While the higher-priority model has queued work, the lower one waits (and its deadline
/// still applies); once that work is done, it runs.
#[test]
fn a_lower_priority_call_waits_while_higher_priority_work_is_queued() {
  let (pool, _) = start(
    &config(1, 100),
    vec![spec("hi", 100, 1), spec("lo", 100, 0)],
    vec![0],
    sim(Duration::from_micros(200)),
  )
  .unwrap();
  let hi: Vec<_> = (0..8)
    .map(|i| {
      submit(&pool, 0, &texts(&format!("hi {i} with some length"), 16), Duration::from_secs(20))
    })
    .collect();
  let lo = submit(&pool, 1, &texts("lo", 1), Duration::from_secs(20));
  for rx in hi {
    rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
  }
  assert_eq!(lo.recv_timeout(Duration::from_secs(20)).unwrap(), Ok(expected(&texts("lo", 1))));
}

/// A model no worker can ever hold (larger than every budget it may use) fails its calls at
/// once with `Unavailable` (the pool starts, since it does not preload it); a preloaded one
/// fails the start.
#[test]
fn a_model_no_worker_can_hold_fails_its_calls_at_once() {
  let (pool, _) = start(
    &config(2, 100),
    vec![spec("a", 100, 0), spec("huge", 1000, 0)],
    vec![0],
    sim(Duration::ZERO),
  )
  .unwrap();
  let started = Instant::now();
  let (tx, _rx) = mpsc::channel::<Outcome>();
  let error = pool
    .submit_to(1, &texts("x", 1), SubmitOptions::default(), Box::new(move |r| tx.send(r).unwrap()))
    .unwrap_err();
  assert!(matches!(&error, PoolError::Unavailable(m) if m.contains("\"huge\"")), "{error}");
  assert!(started.elapsed() < Duration::from_secs(1));
  assert!(matches!(pool.preload(1, None), Err(PoolError::Unavailable(_))));
  assert_eq!(embed(&pool, 0, &texts("a", 2)), Ok(expected(&texts("a", 2))));
  let refused = start(
    &config(2, 100),
    vec![spec("a", 100, 0), spec("huge", 1000, 0)],
    vec![0, 1],
    sim(Duration::ZERO),
  )
  .unwrap_err();
  assert!(refused.message.contains("\"huge\" can load on no worker"), "{}", refused.message);
}

/// A load that fails after it evicted another model loads the evicted one again, and is not
/// counted as a switch.
#[test]
fn a_failed_load_puts_back_what_it_evicted() {
  let build: Build = Arc::new(|_, model| {
    if model == 1 {
      Err(BackendError::new(BackendErrorKind::Model, "broken weights"))
    } else {
      Ok(SimBackend { dimension: 4, ..SimBackend::default() })
    }
  });
  let (pool, _) =
    start(&config(1, 100), vec![spec("a", 100, 0), spec("broken", 100, 0)], vec![0], build)
      .unwrap();
  let error = embed(&pool, 1, &texts("x", 1)).unwrap_err();
  assert!(
    matches!(&error, PoolError::Backend(e) if e.message.contains("broken weights")),
    "{error}"
  );
  let stats = pool.stats();
  assert_eq!(stats.models[0].loaded_on, vec![0], "the evicted model is back");
  assert_eq!(stats.workers[0].switches, 0);
  assert_eq!(stats.workers[0].memory_used, 100);
  assert_eq!(embed(&pool, 0, &texts("a", 1)), Ok(expected(&texts("a", 1))));
}

/// With a worker whose device failed at start, preload and unload still work on the others.
#[test]
fn preload_and_unload_skip_a_worker_whose_device_failed() {
  let build: Build = Arc::new(|worker, _| {
    if worker == 1 {
      Err(BackendError::new(BackendErrorKind::Device, "no such GPU"))
    } else {
      Ok(SimBackend { dimension: 4, ..SimBackend::default() })
    }
  });
  let mut config = config(2, u64::MAX);
  config.tolerate_device_failures = true;
  let (pool, _) = start(&config, vec![spec("a", 1, 0), spec("b", 1, 0)], vec![0], build).unwrap();
  pool.preload(1, None).unwrap();
  assert_eq!(pool.stats().models[1].loaded_on, vec![0]);
  let error = pool.preload(1, Some(&[1])).unwrap_err();
  assert!(matches!(&error, PoolError::Backend(e) if e.message.contains("no such GPU")), "{error}");
  assert_eq!(pool.unload(1).unwrap(), 1);
  assert_eq!(embed(&pool, 1, &texts("b", 2)), Ok(expected(&texts("b", 2))));
}

/// Dropping a pool that was not closed cancels its work but never waits for a worker thread
/// (it may be dropped on an event loop).
#[test]
fn dropping_a_pool_does_not_wait_for_its_threads() {
  let (pool, _) =
    start(&config(1, u64::MAX), vec![spec("a", 1, 0)], vec![0], sim(Duration::from_millis(20)))
      .unwrap();
  let running =
    submit(&pool, 0, &texts("a long text for a slow batch", 1), Duration::from_secs(30));
  wait_until("the slow batch runs", || pool.stats().in_flight == 1);
  let queued = submit(&pool, 0, &texts("queued", 4), Duration::from_secs(30));
  let dropped = Instant::now();
  drop(pool);
  assert!(dropped.elapsed() < Duration::from_millis(200), "drop took {:?}", dropped.elapsed());
  assert!(running.recv_timeout(Duration::from_secs(10)).is_ok());
  assert_eq!(queued.recv_timeout(Duration::from_secs(10)).unwrap(), Err(PoolError::Closed));
}

/// A cancel after a drain turns it into a cancel: both `close` calls return once every thread
/// has exited, long before the queued work would have run.
#[test]
fn a_cancel_escalates_a_drain_and_both_closes_return() {
  let (pool, _) =
    start(&config(2, u64::MAX), vec![spec("a", 1, 0)], vec![0], sim(Duration::from_micros(200)))
      .unwrap();
  let pool = Arc::new(pool);
  // About 1.2 s of work over two workers, in batches of at most ~0.25 s.
  let work: Vec<_> = (0..40)
    .map(|i| submit(&pool, 0, &texts(&format!("work {i} ..........."), 8), Duration::from_secs(60)))
    .collect();
  let draining = {
    let pool = Arc::clone(&pool);
    thread::spawn(move || pool.close(CloseMode::Drain))
  };
  wait_until("the drain has run some work", || pool.stats().items() > 0);
  let cancelled = Instant::now();
  pool.close(CloseMode::Cancel);
  draining.join().unwrap();
  assert!(
    cancelled.elapsed() < Duration::from_secs(2),
    "the cancel took {:?}",
    cancelled.elapsed()
  );
  let closed = work
    .into_iter()
    .filter(|rx| rx.recv_timeout(Duration::from_secs(5)).unwrap() == Err(PoolError::Closed))
    .count();
  assert!(closed > 0, "every call had run: the test did not exercise the escalation");
  assert!(pool.stats().workers.iter().all(|w| w.state == inferpool_core::WorkerState::Stopped));
}

/// A tokenizer that panics on a text containing `boom`, and takes `per_text` for every text.
struct Fragile {
  per_text: Duration,
}

impl inferpool_core::Tokenize for Fragile {
  fn encode(&self, texts: &[String]) -> Result<Vec<inferpool_core::TokenizedText>, BackendError> {
    assert!(!texts.iter().any(|t| t.contains("boom")), "the tokenizer met a bomb");
    thread::sleep(self.per_text * u32::try_from(texts.len()).unwrap());
    SimTokenizer.encode(texts)
  }
}

fn fragile_pool(per_text: Duration) -> Pool {
  Pool::new(
    &config(1, u64::MAX),
    Arc::new(Fragile { per_text }),
    Box::new(|_| Ok(Box::new(SimBackend { dimension: 4, ..SimBackend::default() }))),
  )
  .unwrap()
}

/// A tokenizer panic fails the submit and releases its admission reservation: a draining close
/// then returns instead of waiting for texts that were never queued.
#[test]
fn a_tokenizer_panic_fails_the_call_and_leaks_nothing() {
  let pool = fragile_pool(Duration::ZERO);
  let (tx, _rx) = mpsc::channel::<Outcome>();
  let error = pool
    .submit(&texts("boom", 3), SubmitOptions::default(), Box::new(move |r| tx.send(r).unwrap()))
    .unwrap_err();
  assert!(matches!(&error, PoolError::Backend(e) if e.kind == BackendErrorKind::Panic), "{error}");
  assert_eq!(pool.stats().outstanding, 0);
  let batch = texts("fine", 2);
  assert_eq!(
    submit(&pool, 0, &batch, Duration::from_secs(5)).recv_timeout(Duration::from_secs(5)).unwrap(),
    Ok(expected(&batch))
  );
  let closing = Instant::now();
  pool.close(CloseMode::Drain);
  assert!(closing.elapsed() < Duration::from_secs(1));
}

/// A cancel or a deadline answers a call while its texts are still being tokenized, and the
/// tokenizing stops soon after.
#[test]
fn a_cancel_or_deadline_answers_a_call_that_is_still_tokenizing() {
  use inferpool_core::CallHandle;
  let pool = Arc::new(fragile_pool(Duration::from_millis(1)));
  let handle = Arc::new(CallHandle::new());
  let (tx, rx) = mpsc::channel::<Outcome>();
  let submitting = {
    let (pool, handle) = (Arc::clone(&pool), Arc::clone(&handle));
    thread::spawn(move || {
      let options = SubmitOptions { handle: Some(handle), ..SubmitOptions::default() };
      let started = Instant::now();
      pool.submit(&texts("t", 5000), options, Box::new(move |r| tx.send(r).unwrap())).unwrap();
      started.elapsed()
    })
  };
  // Its places are reserved before it tokenizes (1 ms a text here).
  wait_until("the call is being tokenized", || pool.stats().outstanding == 5000);
  let cancelled = Instant::now();
  assert!(handle.cancel(PoolError::Cancelled));
  assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), Err(PoolError::Cancelled));
  assert!(cancelled.elapsed() < Duration::from_millis(100));
  let took = submitting.join().unwrap();
  assert!(took < Duration::from_secs(2), "tokenizing went on for {took:?} (5 s for all)");
  // A deadline during tokenization answers `Timeout`.
  let (tx, rx) = mpsc::channel::<Outcome>();
  let options = SubmitOptions {
    deadline: Some(Instant::now() + Duration::from_millis(50)),
    ..SubmitOptions::default()
  };
  let started = Instant::now();
  pool.submit(&texts("t", 5000), options, Box::new(move |r| tx.send(r).unwrap())).unwrap();
  assert_eq!(rx.recv().unwrap(), Err(PoolError::Timeout));
  assert!(started.elapsed() < Duration::from_secs(2));
  assert_eq!(pool.stats().outstanding, 0);
}

/// One text that makes its batch fail fails only its own call: the batch is run again in
/// halves until the culprit is alone, and the texts batched with it are answered.
#[test]
fn a_failing_text_fails_only_its_own_call() {
  let mut config = config(1, u64::MAX);
  config.policy.max_batch_size = 16;
  let (pool, _) = start(
    &config,
    vec![spec("a", 1, 0)],
    vec![0],
    Arc::new(|_, _| {
      Ok(SimBackend { dimension: 4, per_batch: Duration::from_millis(30), ..SimBackend::default() })
    }),
  )
  .unwrap();
  // Occupies the worker while the others queue, so that they share one batch.
  let busy = submit(&pool, 0, &texts("busy", 1), Duration::from_secs(20));
  wait_until("the busy batch runs", || pool.stats().in_flight == 1);
  // Texts of one length, so that they batch together.
  let same = |range: std::ops::Range<usize>| range.map(|i| format!("good text {i:02}")).collect();
  let calls: Vec<Vec<String>> =
    vec![same(0..3), vec!["fail text 99".to_owned()], same(3..7), same(7..8)];
  let answers: Vec<_> =
    calls.iter().map(|c| submit(&pool, 0, c, Duration::from_secs(20))).collect();
  assert!(busy.recv_timeout(Duration::from_secs(10)).unwrap().is_ok());
  for (call, rx) in calls.iter().zip(answers) {
    let outcome = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    if call[0].contains("fail") {
      assert!(matches!(&outcome, Err(PoolError::Backend(e)) if e.kind == BackendErrorKind::Run));
    } else {
      assert_eq!(outcome, Ok(expected(call)), "{call:?} failed with the culprit");
    }
  }
  assert_eq!(pool.stats().outstanding, 0);
}

/// A pool whose requests wait for room: one worker, `limit` items accepted at most, each batch
/// taking 40 ms.
fn waiting_pool(limit: usize) -> Pool {
  let mut config = config(1, u64::MAX);
  config.max_queued_items = limit;
  config.wait_when_full = true;
  config.policy.max_batch_size = 64;
  start(
    &config,
    vec![spec("a", 1, 0)],
    vec![0],
    Arc::new(|_, _| {
      Ok(SimBackend { dimension: 4, per_batch: Duration::from_millis(40), ..SimBackend::default() })
    }),
  )
  .unwrap()
  .0
}

/// Requests beyond the limit wait in submission order: a small one that would fit does not
/// overtake a larger one that came first, and each is answered correctly once admitted.
#[test]
fn waiting_requests_are_admitted_in_order_as_room_frees() {
  let pool = waiting_pool(10);
  let first = texts("first", 8);
  let large = texts("large", 5);
  let small = texts("small", 1);
  let answers: Vec<_> =
    [&first, &large, &small].iter().map(|t| submit(&pool, 0, t, Duration::from_secs(20))).collect();
  let stats = pool.stats();
  assert_eq!(stats.outstanding, 8, "the small request overtook the large one");
  assert_eq!(stats.waiting, 6);
  for (rx, sent) in answers.into_iter().zip([&first, &large, &small]) {
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(expected(sent)));
  }
  let stats = pool.stats();
  assert_eq!((stats.outstanding, stats.waiting), (0, 0));
  // A request larger than the limit alone is refused at once.
  let (tx, _rx) = mpsc::channel::<Outcome>();
  let error = pool
    .submit(&texts("huge", 11), SubmitOptions::default(), Box::new(move |r| tx.send(r).unwrap()))
    .unwrap_err();
  assert!(matches!(error, PoolError::Overloaded { requested: 11, limit: 10, .. }), "{error}");
}

/// A waiting request answers its cancel at once, and the requests behind it move up.
#[test]
fn a_waiting_request_can_be_cancelled_and_does_not_block_the_queue() {
  use inferpool_core::CallHandle;
  let pool = waiting_pool(4);
  let first = submit(&pool, 0, &texts("first", 4), Duration::from_secs(20));
  let handle = Arc::new(CallHandle::new());
  let (tx, cancelled) = mpsc::channel::<Outcome>();
  let options = SubmitOptions { handle: Some(Arc::clone(&handle)), ..SubmitOptions::default() };
  pool.submit(&texts("second", 3), options, Box::new(move |r| tx.send(r).unwrap())).unwrap();
  let third = submit(&pool, 0, &texts("third", 2), Duration::from_secs(20));
  assert!(handle.cancel(PoolError::Cancelled));
  assert_eq!(
    cancelled.recv_timeout(Duration::from_millis(100)).unwrap(),
    Err(PoolError::Cancelled)
  );
  assert!(first.recv_timeout(Duration::from_secs(10)).unwrap().is_ok());
  assert_eq!(
    third.recv_timeout(Duration::from_secs(10)).unwrap(),
    Ok(expected(&texts("third", 2)))
  );
  assert_eq!(pool.stats().items(), 6, "the cancelled request never ran");
}

/// A draining close runs the waiting requests too; a cancelling one fails them.
#[test]
fn a_close_drains_or_fails_the_waiting_requests() {
  for drain in [true, false] {
    let pool = waiting_pool(3);
    let answers: Vec<_> = (0..4)
      .map(|i| submit(&pool, 0, &texts(&format!("call {i}"), 3), Duration::from_secs(20)))
      .collect();
    pool.close(if drain { CloseMode::Drain } else { CloseMode::Cancel });
    let outcomes: Vec<Outcome> =
      answers.into_iter().map(|rx| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    if drain {
      assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    } else {
      assert!(outcomes[1..].iter().all(|o| *o == Err(PoolError::Closed)), "{outcomes:?}");
    }
    let stats = pool.stats();
    assert_eq!((stats.outstanding, stats.waiting), (0, 0));
  }
}
