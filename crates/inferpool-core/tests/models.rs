//! Several models in one pool: loading on demand, eviction order, idle unloads, the switch cap,
//! affinity, preload/unload, and no item lost or run twice while models come and go.

mod common;

use common::{Build, Log, ModelSpec, multi_config, start_models};

use std::{
  collections::HashMap,
  sync::{Arc, mpsc},
  thread,
  time::{Duration, Instant},
};

use inferpool_core::{
  BackendError, BackendErrorKind, CloseMode, Event, ModelConfig, Models, Pool, PoolConfig,
  PoolError, SubmitOptions, UnloadReason,
  sim::{SimBackend, SimTokenizer, expected_row},
};

/// A model of the tests: its name, estimated memory, priority, row width.
struct Spec {
  name: &'static str,
  memory: u64,
  priority: i32,
  dimension: usize,
  workers: Option<Vec<usize>>,
}

fn spec(name: &'static str, memory: u64, dimension: usize) -> Spec {
  Spec { name, memory, priority: 0, dimension, workers: None }
}

fn start(config: &PoolConfig, specs: Vec<Spec>, per_token: Duration) -> (Pool, Log) {
  let dimensions: Vec<usize> = specs.iter().map(|s| s.dimension).collect();
  let specs = specs
    .into_iter()
    .map(|s| ModelSpec { name: s.name, memory: s.memory, priority: s.priority, workers: s.workers })
    .collect();
  let build: Build = Arc::new(move |_, model| {
    Ok(SimBackend { dimension: dimensions[model], per_token, ..SimBackend::default() })
  });
  start_models(config, specs, Vec::new(), build).expect("pool starts")
}

fn workers(count: usize, budget: u64) -> PoolConfig {
  multi_config(count, budget)
}

type Outcome = Result<Vec<f32>, PoolError>;

fn submit(
  pool: &Pool,
  model: usize,
  texts: &[String],
  options: SubmitOptions,
) -> mpsc::Receiver<Outcome> {
  let (tx, rx) = mpsc::channel();
  pool
    .submit_to(model, texts, options, Box::new(move |r| tx.send(r).expect("receiver alive")))
    .expect("submitted");
  rx
}

fn embed(pool: &Pool, model: usize, texts: &[String]) -> Outcome {
  submit(pool, model, texts, SubmitOptions::default())
    .recv_timeout(Duration::from_secs(20))
    .expect("answered")
}

fn texts(prefix: &str, count: usize) -> Vec<String> {
  (0..count).map(|i| format!("{prefix} {i}")).collect()
}

fn expected(texts: &[String], dimension: usize) -> Vec<f32> {
  texts.iter().flat_map(|t| expected_row(t, dimension)).collect()
}

/// The (model, reason) of every unload, in order.
fn unloads(log: &Log) -> Vec<(usize, UnloadReason)> {
  log
    .lock()
    .unwrap()
    .iter()
    .filter_map(|e| match e {
      Event::ModelUnloaded { model, reason, .. } => Some((*model, *reason)),
      _ => None,
    })
    .collect()
}

#[test]
fn mixed_load_on_two_models_loses_and_duplicates_nothing() {
  // Each worker holds one model at a time, so the models keep switching under the load.
  let (pool, log) = start(
    &workers(3, 150),
    vec![spec("small", 100, 4), spec("large", 100, 7)],
    Duration::from_micros(5),
  );
  let pool = Arc::new(pool);
  let dimensions = [4, 7];
  let (tx, rx) = mpsc::channel::<(usize, Vec<String>, Outcome)>();
  let submitters: Vec<_> = (0..4)
    .map(|t| {
      let (pool, tx) = (Arc::clone(&pool), tx.clone());
      thread::spawn(move || {
        for r in 0..150 {
          let model = (t + r / 7) % 2;
          let batch = texts(&format!("{t}/{r}"), 1 + (t * 31 + r * 17) % 9);
          let reply = tx.clone();
          let texts = batch.clone();
          pool
            .submit_to(
              model,
              &batch,
              SubmitOptions::default(),
              Box::new(move |result| reply.send((model, texts, result)).unwrap()),
            )
            .unwrap();
          if r % 25 == 0 {
            thread::sleep(Duration::from_millis(2));
          }
        }
      })
    })
    .collect();
  drop(tx);
  for s in submitters {
    s.join().unwrap();
  }
  let mut submitted = [0_u64; 2];
  let mut answers = 0;
  for (model, texts, result) in &rx {
    let rows = result.unwrap_or_else(|e| panic!("model {model} failed: {e}"));
    assert_eq!(rows, expected(&texts, dimensions[model]), "wrong rows for model {model}");
    submitted[model] += texts.len() as u64;
    answers += 1;
  }
  assert_eq!(answers, 600);
  let stats = pool.stats();
  for model in 0..2 {
    // An item run twice would count twice.
    assert_eq!(stats.models[model].items, submitted[model], "items of model {model}");
    let per_worker: u64 = stats.workers.iter().map(|w| w.models[model].items).sum();
    assert_eq!(per_worker, submitted[model]);
    assert_eq!(stats.models[model].outstanding, 0);
    assert_eq!(stats.models[model].dimension, Some(dimensions[model]));
  }
  assert_eq!(stats.items(), submitted.iter().sum::<u64>());
  assert_eq!(stats.outstanding, 0);
  // The events add up to what is loaded now, and no worker went over its budget.
  let events = log.lock().unwrap().clone();
  let loads = events.iter().filter(|e| matches!(e, Event::ModelLoaded { .. })).count();
  let unloaded = events.iter().filter(|e| matches!(e, Event::ModelUnloaded { .. })).count();
  let held: usize = stats.models.iter().map(|m| m.loaded_on.len()).sum();
  assert_eq!(loads - unloaded, held);
  assert!(stats.workers.iter().all(|w| w.memory_used <= 150));
  let switches: u64 = stats.workers.iter().map(|w| w.switches).sum();
  assert!(switches > 0, "the load never made a worker switch models");
  assert_eq!(switches, stats.models.iter().map(|m| m.evictions).sum::<u64>());
}

#[test]
fn eviction_takes_the_least_used_model_first() {
  // Room for two models of 100; "d" needs 200.
  let (pool, log) = start(
    &workers(1, 250),
    vec![spec("a", 100, 4), spec("b", 100, 4), spec("c", 100, 4), spec("d", 200, 4)],
    Duration::ZERO,
  );
  // "a" is used by 12 items, then "b" by 1: "b" is the more recent, "a" the more used.
  embed(&pool, 0, &texts("a", 12)).unwrap();
  embed(&pool, 1, &texts("b", 1)).unwrap();
  embed(&pool, 2, &texts("c", 1)).unwrap();
  assert_eq!(unloads(&log), vec![(1, UnloadReason::Evicted { for_model: 2 })]);
  // "d" needs both places: the less used "c" goes first, then "a".
  embed(&pool, 3, &texts("d", 1)).unwrap();
  assert_eq!(
    unloads(&log)[1..],
    [(2, UnloadReason::Evicted { for_model: 3 }), (0, UnloadReason::Evicted { for_model: 3 })]
  );
  let stats = pool.stats();
  assert_eq!(stats.workers[0].memory_used, 200);
  assert_eq!(stats.workers[0].switches, 2);
  assert_eq!(stats.models[3].loaded_on, vec![0]);
}

#[test]
fn eviction_takes_lower_priority_before_usage_and_never_a_higher_one() {
  let mut urgent = spec("urgent", 100, 4);
  urgent.priority = 5;
  let mut busy = spec("busy", 100, 4);
  busy.priority = 1;
  let (pool, log) =
    start(&workers(1, 200), vec![urgent, busy, spec("plain", 100, 4)], Duration::ZERO);
  embed(&pool, 0, &texts("urgent", 1)).unwrap();
  embed(&pool, 1, &texts("busy", 30)).unwrap();
  // "plain" (priority 0) may evict neither: both outrank it.
  let error = pool.preload(2, None).unwrap_err();
  assert!(matches!(&error, PoolError::Unavailable(m) if m.contains("higher priority")), "{error}");
  assert!(unloads(&log).is_empty());
  // A second "busy"-level model would evict "busy" (priority 1), never "urgent" (priority 5),
  // however much more "busy" was used.
  pool.unload(1).unwrap();
  embed(&pool, 2, &texts("plain", 1)).unwrap();
  embed(&pool, 1, &texts("busy", 1)).unwrap();
  assert_eq!(unloads(&log).last(), Some(&(2, UnloadReason::Evicted { for_model: 1 })));
  assert_eq!(pool.stats().models[0].loaded_on, vec![0]);
}

#[test]
fn idle_models_are_unloaded_and_load_again_on_demand() {
  let mut config = workers(2, u64::MAX);
  config.idle_timeout = Some(Duration::from_millis(60));
  let (pool, log) = start(&config, vec![spec("a", 10, 4), spec("b", 10, 5)], Duration::ZERO);
  embed(&pool, 0, &texts("a", 3)).unwrap();
  assert_eq!(pool.stats().models[0].loaded_on.len(), 1);
  let deadline = Instant::now() + Duration::from_secs(5);
  while !pool.stats().models[0].loaded_on.is_empty() {
    assert!(Instant::now() < deadline, "the idle model was never unloaded");
    thread::sleep(Duration::from_millis(10));
  }
  assert_eq!(unloads(&log), vec![(0, UnloadReason::Idle)]);
  assert_eq!(embed(&pool, 0, &texts("a", 2)).unwrap(), expected(&texts("a", 2), 4));
  assert_eq!(pool.stats().models[0].loads, 2);
}

#[test]
fn the_switch_cap_holds_and_a_drain_still_runs_what_waits() {
  let mut config = workers(1, 100);
  config.max_switches_per_hour = Some(2);
  let (pool, log) = start(&config, vec![spec("a", 100, 4), spec("b", 100, 6)], Duration::ZERO);
  embed(&pool, 0, &texts("a", 1)).unwrap(); // a load into free memory: no switch
  embed(&pool, 1, &texts("b", 1)).unwrap(); // switch 1
  embed(&pool, 0, &texts("a", 1)).unwrap(); // switch 2
  // A third switch is not allowed this hour: a call with a deadline times out ...
  let deadline = Instant::now() + Duration::from_millis(150);
  let options = SubmitOptions { deadline: Some(deadline), ..SubmitOptions::default() };
  let late = submit(&pool, 1, &texts("b late", 1), options);
  // ... and one without waits, queued, while "a" keeps being served.
  let waiting = submit(&pool, 1, &texts("b waits", 2), SubmitOptions::default());
  assert_eq!(embed(&pool, 0, &texts("a more", 3)).unwrap(), expected(&texts("a more", 3), 4));
  thread::sleep(Duration::from_millis(250));
  pool.preload(0, None).unwrap(); // wakes the worker, which meets the expired call
  assert!(matches!(late.recv_timeout(Duration::from_secs(5)).unwrap(), Err(PoolError::Timeout)));
  assert!(waiting.try_recv().is_err(), "the capped call ran");
  let stats = pool.stats();
  assert_eq!(stats.workers[0].switches, 2);
  assert_eq!(stats.models[1].queued(), 2);
  assert_eq!(unloads(&log).len(), 2, "{:?}", log.lock().unwrap());
  // Closing with a drain runs what was accepted, cap or not.
  pool.close(CloseMode::Drain);
  assert_eq!(waiting.recv().unwrap().unwrap(), expected(&texts("b waits", 2), 6));
}

#[test]
fn affinity_keeps_a_model_on_its_workers() {
  let mut pinned = spec("pinned", 10, 4);
  pinned.workers = Some(vec![1]);
  let (pool, _) =
    start(&workers(3, u64::MAX), vec![spec("free", 10, 3), pinned], Duration::from_micros(20));
  let batch = texts("pinned", 200);
  let pinned_rx = submit(&pool, 1, &batch, SubmitOptions::default());
  let free = texts("free", 200);
  assert_eq!(embed(&pool, 0, &free).unwrap(), expected(&free, 3));
  assert_eq!(pinned_rx.recv().unwrap().unwrap(), expected(&batch, 4));
  let stats = pool.stats();
  assert_eq!(stats.models[1].loaded_on, vec![1]);
  assert_eq!(stats.workers[0].models[1].items + stats.workers[2].models[1].items, 0);
  assert_eq!(stats.workers[1].models[1].items, 200);
  assert!(matches!(pool.preload(1, Some(&[0])), Err(PoolError::InvalidInput(_))));
}

#[test]
fn preload_and_unload_keep_queued_work() {
  let (pool, log) =
    start(&workers(2, u64::MAX), vec![spec("a", 1, 4), spec("b", 1, 5)], Duration::ZERO);
  pool.preload(1, Some(&[0])).unwrap();
  assert_eq!(pool.stats().models[1].loaded_on, vec![0]);
  pool.preload(1, None).unwrap();
  assert_eq!(pool.stats().models[1].loaded_on, vec![0, 1]);
  assert_eq!(pool.unload(1).unwrap(), 2);
  assert!(pool.stats().models[1].loaded_on.is_empty());
  assert_eq!(unloads(&log), vec![(1, UnloadReason::Requested), (1, UnloadReason::Requested)]);
  // Work for an unloaded model loads it again.
  assert_eq!(embed(&pool, 1, &texts("b", 5)).unwrap(), expected(&texts("b", 5), 5));
  assert!(matches!(pool.preload(7, None), Err(PoolError::InvalidInput(_))));
}

#[test]
fn a_model_that_cannot_load_fails_its_calls_with_the_reason() {
  let log: Log = Arc::default();
  let sink = Arc::clone(&log);
  let pool = Pool::with_models(
    &workers(2, u64::MAX),
    Models {
      models: vec![
        ModelConfig::new("good", Arc::new(SimTokenizer)),
        ModelConfig::new("broken", Arc::new(SimTokenizer)),
      ],
      factory: Box::new(|_, model| {
        if model == 1 {
          Err(BackendError::new(BackendErrorKind::Model, "broken.onnx is not a model"))
        } else {
          Ok(Box::new(SimBackend::default()))
        }
      }),
      preload: vec![0],
      events: Some(Arc::new(move |event| sink.lock().unwrap().push(event))),
    },
  )
  .unwrap();
  let error = embed(&pool, 1, &texts("x", 3)).unwrap_err();
  assert!(error.to_string().contains("broken.onnx is not a model"), "{error}");
  assert!(log.lock().unwrap().iter().any(|e| matches!(e, Event::ModelLoadFailed { model: 1, .. })));
  assert_eq!(embed(&pool, 0, &texts("x", 3)).unwrap(), expected(&texts("x", 3), 4));
  // The failed call's other items are dropped by whichever worker meets them next.
  let deadline = Instant::now() + Duration::from_secs(5);
  while pool.stats().outstanding != 0 {
    assert!(Instant::now() < deadline, "items of the failed call stay counted");
    thread::sleep(Duration::from_millis(5));
  }
}

#[test]
fn a_model_too_large_for_every_worker_is_refused_at_start() {
  let config = workers(2, 100);
  let error = Pool::with_models(
    &config,
    Models {
      models: vec![ModelConfig { memory: 101, ..ModelConfig::new("big", Arc::new(SimTokenizer)) }],
      factory: Box::new(|_, _| Ok(Box::new(SimBackend::default()))),
      preload: vec![0],
      events: None,
    },
  )
  .unwrap_err();
  assert!(error.message.contains("\"big\" can load on no worker"), "{}", error.message);
}

#[test]
fn a_higher_priority_model_is_served_first_when_workers_are_scarce() {
  let mut urgent = spec("urgent", 1, 4);
  urgent.priority = 1;
  let (pool, _) =
    start(&workers(1, u64::MAX), vec![spec("bulk", 1, 4), urgent], Duration::from_micros(50));
  pool.preload(0, None).unwrap();
  pool.preload(1, None).unwrap();
  // Much bulk work, then one urgent call: it is answered long before the bulk is done.
  let bulk: Vec<_> = (0..40)
    .map(|r| {
      submit(
        &pool,
        0,
        &texts(&format!("bulk {r} with a longer text"), 16),
        SubmitOptions::default(),
      )
    })
    .collect();
  let urgent = embed(&pool, 1, &texts("urgent", 1)).unwrap();
  assert_eq!(urgent, expected(&texts("urgent", 1), 4));
  let left = pool.stats().models[0].outstanding;
  assert!(left > 100, "only {left} bulk items were left when the urgent call finished");
  let mut answered: HashMap<bool, usize> = HashMap::new();
  for rx in bulk {
    *answered.entry(rx.recv().unwrap().is_ok()).or_default() += 1;
  }
  assert_eq!(answered.get(&true), Some(&40));
}
