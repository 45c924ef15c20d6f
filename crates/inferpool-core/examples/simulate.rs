//! Runs the real scheduler threads against the simulated backend and compares them, on the same
//! scenarios and the same cost model, with three schedulers Node pools use today:
//!
//! * (a) least-busy assignment, fixed batches of 160 that wait until full;
//! * (b) round-robin pre-allocation, batches of up to the batch size;
//! * (c) one central FIFO queue, batches of up to the batch size;
//! * (d) inferpool.
//!
//! Cost of a batch = `per_batch + per_token × padded tokens`, times the worker's slowdown, with
//! a CPU-like or a GPU-like pair of constants.
//! Lower bound of a scenario = total token work ÷ total speed (no batch overhead, no padding),
//! plus the largest single item on the fastest worker; for bursts, the work left after the last
//! arrival bounds it too.
//!
//! `cargo run --release -p inferpool-core --example simulate` (`SIM_ONLY=<name part>` runs only
//! matching scenarios, inferpool only; `SIM_DEBUG=1` prints per-worker counters).
#![expect(
  clippy::print_stdout,
  clippy::cast_precision_loss,
  clippy::cast_possible_truncation,
  clippy::cast_sign_loss,
  reason = "a report printed to stdout, with float statistics"
)]

use std::{
  collections::VecDeque,
  sync::{Arc, Condvar, Mutex, mpsc},
  thread,
  time::{Duration, Instant},
};

use inferpool_core::{
  Backend, BatchPolicy, CloseMode, Pool, PoolConfig, Priority, ShareRule, SubmitOptions,
  TokenizedText,
  sim::{SimBackend, SimTokenizer},
};

/// A batch's cost on a CPU-like device: `per_batch + per_token × padded tokens`.
const CPU: Cost =
  Cost { per_batch: Duration::from_micros(500), per_token: Duration::from_micros(20) };
/// On a GPU-like device a batch's fixed cost is worth thousands of tokens.
const GPU: Cost =
  Cost { per_batch: Duration::from_millis(2), per_token: Duration::from_nanos(400) };

#[derive(Clone, Copy)]
struct Cost {
  per_batch: Duration,
  per_token: Duration,
}

/// One request: when it arrives (offset from the start), its item lengths in tokens, and
/// whether it is interactive (the baselines have no priorities and ignore it).
#[derive(Clone)]
struct Request {
  at: Duration,
  lengths: Vec<usize>,
  interactive: bool,
}

struct Scenario {
  name: &'static str,
  requests: Vec<Request>,
  slowdowns: Vec<f64>,
  batch: usize,
  cost: Cost,
}

impl Scenario {
  fn speed(&self) -> f64 {
    self.slowdowns.iter().map(|s| 1.0 / s).sum()
  }

  fn lower_bound(&self) -> Duration {
    let token_time = |n: usize| self.cost.per_token.as_secs_f64() * n as f64;
    let total: usize = self.requests.iter().flat_map(|r| &r.lengths).sum();
    let fastest = self.slowdowns.iter().copied().fold(f64::INFINITY, f64::min);
    let largest = self.requests.iter().flat_map(|r| &r.lengths).copied().max().unwrap_or(0);
    let last = self.requests.iter().max_by_key(|r| r.at).expect("scenarios have requests");
    let after_last = last.at.as_secs_f64() + token_time(last.lengths.iter().sum()) / self.speed();
    let bound = (token_time(total) / self.speed()).max(after_last) + token_time(largest) * fastest;
    Duration::from_secs_f64(bound)
  }

  fn items(&self) -> usize {
    self.requests.iter().map(|r| r.lengths.len()).sum()
  }
}

/// What one strategy did on one scenario.
struct Outcome {
  makespan: Duration,
  busy: Vec<Duration>,
  per_worker: Vec<usize>,
  latencies: Vec<Duration>,
  /// The latencies of bulk items (inferpool only; empty for the baselines).
  bulk_latencies: Vec<Duration>,
  completed: usize,
}

fn backend(cost: Cost, slowdown: f64) -> SimBackend {
  SimBackend {
    dimension: 4,
    per_batch: cost.per_batch,
    per_token: cost.per_token,
    slowdown,
    ..SimBackend::default()
  }
}

fn tokens(len: usize) -> TokenizedText {
  TokenizedText { ids: vec![120; len], type_ids: vec![0; len] }
}

/// Replays the arrivals: calls `submit(request index)` at each request's offset.
fn replay(scenario: &Scenario, start: Instant, mut submit: impl FnMut(usize)) {
  for (i, r) in scenario.requests.iter().enumerate() {
    let due = start + r.at;
    let now = Instant::now();
    if due > now {
      thread::sleep(due - now);
    }
    submit(i);
  }
}

/// An item in the baseline schedulers.
#[derive(Clone, Copy)]
struct Item {
  len: usize,
  submitted: Instant,
}

/// Shared bookkeeping of the baselines.
struct Tally {
  done: Mutex<(usize, Vec<Duration>, Instant)>,
  all_done: Condvar,
  total: usize,
  /// Per worker: time spent running batches, items run.
  meters: Mutex<(Vec<Duration>, Vec<usize>)>,
}

impl Tally {
  fn new(total: usize, workers: usize) -> Arc<Self> {
    Arc::new(Self {
      done: Mutex::new((0, Vec::new(), Instant::now())),
      all_done: Condvar::new(),
      total,
      meters: Mutex::new((vec![Duration::ZERO; workers], vec![0; workers])),
    })
  }

  /// Runs `items` on worker `w`'s backend and records it.
  fn run(&self, w: usize, backend: &mut SimBackend, items: &[Item]) {
    let started = Instant::now();
    run_batch(backend, items);
    let mut meters = self.meters.lock().unwrap();
    meters.0[w] += started.elapsed();
    meters.1[w] += items.len();
    drop(meters);
    self.finish(items);
  }

  fn meters(&self) -> (Vec<Duration>, Vec<usize>) {
    self.meters.lock().unwrap().clone()
  }

  fn finish(&self, items: &[Item]) {
    let now = Instant::now();
    let mut done = self.done.lock().unwrap();
    done.0 += items.len();
    done.1.extend(items.iter().map(|i| now - i.submitted));
    done.2 = now;
    if done.0 == self.total {
      self.all_done.notify_all();
    }
  }

  /// Waits until everything is done or `limit` passes; returns (completed, latencies, last completion).
  fn wait(&self, limit: Duration) -> (usize, Vec<Duration>, Instant) {
    let done = self.done.lock().unwrap();
    let (done, _) = self.all_done.wait_timeout_while(done, limit, |d| d.0 < self.total).unwrap();
    done.clone()
  }
}

fn run_batch(backend: &mut SimBackend, items: &[Item]) {
  let inputs: Vec<TokenizedText> = items.iter().map(|i| tokens(i.len)).collect();
  let refs: Vec<&TokenizedText> = inputs.iter().collect();
  let mut out = vec![0.0; refs.len() * backend.dimension];
  backend.run(&refs, &mut out).expect("the simulated backend does not fail here");
}

/// A queue of the baselines: one per worker in (a) and (b), one shared in (c). The flag is set
/// when the run is over.
struct Assigned {
  queue: Mutex<(VecDeque<Item>, bool)>,
  ready: Condvar,
}

impl Assigned {
  fn new() -> Arc<Self> {
    Arc::new(Self { queue: Mutex::new((VecDeque::new(), false)), ready: Condvar::new() })
  }

  /// The next batch of up to `batch` items: waits for a full one when `full`, else for any
  /// item. `None` once the run is over (a `full` worker then leaves a partial batch behind).
  fn next_batch(&self, batch: usize, full: bool) -> Option<Vec<Item>> {
    let mut q = self.queue.lock().unwrap();
    loop {
      let enough = if full { q.0.len() >= batch } else { !q.0.is_empty() };
      if enough || q.1 {
        break;
      }
      q = self.ready.wait(q).unwrap();
    }
    if q.1 && (q.0.is_empty() || full) {
      return None;
    }
    let take = batch.min(q.0.len());
    Some(q.0.drain(..take).collect())
  }

  fn finish(&self) {
    self.queue.lock().unwrap().1 = true;
    self.ready.notify_all();
  }
}

/// Starts one thread per worker that runs the batches `queue_of(worker)` hands it.
fn spawn_baseline_workers(
  scenario: &Scenario,
  tally: &Arc<Tally>,
  queue_of: impl Fn(usize) -> Arc<Assigned>,
  full: bool,
) -> Vec<thread::JoinHandle<()>> {
  (0..scenario.slowdowns.len())
    .map(|w| {
      let (queue, tally) = (queue_of(w), Arc::clone(tally));
      let mut backend = backend(scenario.cost, scenario.slowdowns[w]);
      let batch = scenario.batch;
      thread::spawn(move || {
        while let Some(items) = queue.next_batch(batch, full) {
          tally.run(w, &mut backend, &items);
        }
      })
    })
    .collect()
}

/// (a) and (b): items are assigned to a worker on arrival; `full` makes a worker wait for a full
/// batch; `least_busy` picks the worker with the fewest queued items per request, else round robin.
fn preassigned(scenario: &Scenario, least_busy: bool, full: bool) -> Outcome {
  let n = scenario.slowdowns.len();
  let tally = Tally::new(scenario.items(), n);
  let queues: Vec<Arc<Assigned>> = (0..n).map(|_| Assigned::new()).collect();
  let workers = spawn_baseline_workers(scenario, &tally, |w| Arc::clone(&queues[w]), full);
  let start = Instant::now();
  let mut next = 0;
  replay(scenario, start, |r| {
    let now = Instant::now();
    let target = if least_busy {
      // Every item of a request goes where the snapshot says is least busy.
      (0..n).min_by_key(|&w| queues[w].queue.lock().unwrap().0.len()).unwrap()
    } else {
      0
    };
    for &len in &scenario.requests[r].lengths {
      let w = if least_busy { target } else { next % n };
      next += 1;
      queues[w].queue.lock().unwrap().0.push_back(Item { len, submitted: now });
      queues[w].ready.notify_one();
    }
  });
  let (completed, latencies, last) =
    tally.wait(scenario.lower_bound() * 10 + Duration::from_millis(500));
  for q in &queues {
    q.finish();
  }
  for w in workers {
    w.join().unwrap();
  }
  let makespan = if completed == scenario.items() { last - start } else { start.elapsed() };
  Outcome {
    makespan,
    busy: tally.meters().0,
    per_worker: tally.meters().1,
    latencies,
    bulk_latencies: Vec::new(),
    completed,
  }
}

/// (c): one shared FIFO queue; a free worker takes up to a batch from its head.
fn central_queue(scenario: &Scenario) -> Outcome {
  let n = scenario.slowdowns.len();
  let tally = Tally::new(scenario.items(), n);
  let shared = Assigned::new();
  let workers = spawn_baseline_workers(scenario, &tally, |_| Arc::clone(&shared), false);
  let start = Instant::now();
  replay(scenario, start, |r| {
    let now = Instant::now();
    let mut q = shared.queue.lock().unwrap();
    q.0.extend(scenario.requests[r].lengths.iter().map(|&len| Item { len, submitted: now }));
    drop(q);
    shared.ready.notify_all();
  });
  let (completed, latencies, last) =
    tally.wait(scenario.lower_bound() * 10 + Duration::from_millis(500));
  shared.finish();
  for w in workers {
    w.join().unwrap();
  }
  Outcome {
    makespan: last - start,
    busy: tally.meters().0,
    per_worker: tally.meters().1,
    latencies,
    bulk_latencies: Vec::new(),
    completed,
  }
}

/// (d): the real pool, with its defaults.
fn inferpool(scenario: &Scenario) -> Outcome {
  inferpool_with(scenario, |_| {})
}

/// The real pool, its configuration changed by `adjust` (the ablations).
fn inferpool_with(scenario: &Scenario, adjust: impl Fn(&mut PoolConfig)) -> Outcome {
  let (slowdowns, cost) = (scenario.slowdowns.clone(), scenario.cost);
  let mut config = PoolConfig {
    workers: slowdowns.len(),
    policy: BatchPolicy {
      max_batch_size: scenario.batch,
      max_batch_tokens: scenario.batch * 256,
      ..BatchPolicy::default()
    },
    ..PoolConfig::default()
  };
  adjust(&mut config);
  let pool = Pool::new(
    &config,
    Arc::new(SimTokenizer),
    Box::new(move |i| Ok(Box::new(backend(cost, slowdowns[i])))),
  )
  .expect("the simulated pool starts");
  let (tx, rx) = mpsc::channel::<(usize, Instant)>();
  let start = Instant::now();
  let mut submitted = Vec::new();
  replay(scenario, start, |r| {
    let texts: Vec<String> =
      scenario.requests[r].lengths.iter().map(|&len| "x".repeat(len)).collect();
    let tx = tx.clone();
    submitted.push(Instant::now());
    let priority =
      if scenario.requests[r].interactive { Priority::Interactive } else { Priority::Bulk };
    pool
      .submit(
        &texts,
        SubmitOptions { priority, ..SubmitOptions::default() },
        Box::new(move |result| {
          result.expect("the simulated backend does not fail here");
          tx.send((r, Instant::now())).unwrap();
        }),
      )
      .expect("admission has room");
  });
  drop(tx);
  let (mut latencies, mut bulk_latencies) = (Vec::new(), Vec::new());
  let mut last = start;
  let mut completed = 0;
  for (r, at) in &rx {
    let items = scenario.requests[r].lengths.len();
    latencies.extend(std::iter::repeat_n(at - submitted[r], items));
    if !scenario.requests[r].interactive {
      bulk_latencies.extend(std::iter::repeat_n(at - submitted[r], items));
    }
    completed += items;
    last = last.max(at);
  }
  let stats = pool.stats();
  if std::env::var_os("SIM_DEBUG").is_some() {
    let busy: f64 = stats.workers.iter().map(|w| w.busy.as_secs_f64()).sum();
    let real: usize = scenario.requests.iter().flat_map(|r| &r.lengths).sum();
    eprintln!(
      "debug: batches {} busy {:.1} ms real work {:.1} ms",
      stats.batches(),
      busy * 1e3,
      scenario.cost.per_token.as_secs_f64() * real as f64 * 1e3
    );
    for w in &stats.workers {
      eprintln!(
        "  worker: busy {:.1} ms, {} items, {} batches, {} steals",
        w.busy.as_secs_f64() * 1e3,
        w.items,
        w.batches,
        w.steals
      );
    }
  }
  pool.close(CloseMode::Drain);
  Outcome {
    makespan: last - start,
    busy: stats.workers.iter().map(|w| w.busy).collect(),
    per_worker: stats
      .workers
      .iter()
      .map(|w| usize::try_from(w.items).unwrap_or(usize::MAX))
      .collect(),
    latencies,
    bulk_latencies,
    completed,
  }
}

/// Deterministic lengths in `lo..=hi`.
fn lengths(count: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
  let mut s = seed;
  (0..count)
    .map(|_| {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      lo + usize::try_from(s % (hi - lo + 1) as u64).unwrap_or(0)
    })
    .collect()
}

/// `items` split into requests of `per_request`, all arriving at once.
fn at_once(items: &[usize], per_request: usize) -> Vec<Request> {
  items
    .chunks(per_request)
    .map(|c| Request { at: Duration::ZERO, lengths: c.to_vec(), interactive: false })
    .collect()
}

fn scenarios() -> Vec<Scenario> {
  let uniform = |n| lengths(n, 48, 80, 7);
  let mut slow_one = vec![1.0; 16];
  slow_one[5] = 3.0;
  let mut two_fast = vec![3.0; 16];
  two_fast[0] = 1.0;
  two_fast[1] = 1.0;
  let bursts: Vec<Request> = (0..40)
    .flat_map(|burst| {
      (0..25).map(move |k| Request {
        at: Duration::from_millis(burst * 15),
        lengths: lengths(1 + (k % 4), 16, 96, burst * 100 + k as u64 + 1),
        interactive: false,
      })
    })
    .collect();
  // A small bulk job, then 300 ms of interactive work arriving faster than the workers can run
  // it: the bulk job must not wait for the flood to end.
  let mut flood = at_once(&uniform(160), 16);
  flood.extend((0..1500_u64).map(|k| Request {
    at: Duration::from_micros(200 * k),
    lengths: lengths(4, 48, 80, 9000 + k),
    interactive: true,
  }));
  vec![
    Scenario {
      name: "1,070 items / 16 workers / batch 160",
      requests: at_once(&uniform(1070), 10),
      slowdowns: vec![1.0; 16],
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "4,288 items / 16 workers",
      requests: at_once(&uniform(4288), 16),
      slowdowns: vec![1.0; 16],
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "2 fast + 14 slow (3x)",
      requests: at_once(&uniform(4288), 16),
      slowdowns: two_fast,
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "one worker 3x slower",
      requests: at_once(&uniform(4288), 16),
      slowdowns: slow_one,
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "bursts of small requests",
      requests: bursts,
      slowdowns: vec![1.0; 16],
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "interactive flood over bulk",
      requests: flood,
      slowdowns: vec![1.0; 16],
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "mixed lengths 10-256",
      requests: at_once(&lengths(4288, 10, 256, 3), 16),
      slowdowns: vec![1.0; 16],
      batch: 160,
      cost: CPU,
    },
    Scenario {
      name: "mixed lengths 10-256, GPU-like cost, 4 workers",
      requests: at_once(&lengths(16384, 10, 256, 5), 64),
      slowdowns: vec![1.0; 4],
      batch: 256,
      cost: GPU,
    },
  ]
}

/// A scheduler under test.
type Strategy = Box<dyn Fn(&Scenario) -> Outcome>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
  if sorted.is_empty() {
    return Duration::ZERO;
  }
  let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
  sorted[rank.min(sorted.len() - 1)]
}

fn main() {
  println!(
    "| scenario | strategy | makespan ms | ÷ lower bound | utilisation | items per worker | p50 ms | p99 ms | done |"
  );
  println!("|---|---|---:|---:|---:|---|---:|---:|---:|");
  let mut worst: f64 = 0.0;
  // SIM_ONLY=text: only the scenarios whose name contains it, only inferpool (for tuning).
  let only = std::env::var("SIM_ONLY").ok();
  for scenario in scenarios() {
    if only.as_deref().is_some_and(|o| !scenario.name.contains(o)) {
      continue;
    }
    let bound = scenario.lower_bound();
    let strategies: [(&str, Strategy); 4] = [
      ("(a) least-busy, wait for 160", Box::new(|s| preassigned(s, true, true))),
      ("(b) round-robin pre-allocation", Box::new(|s| preassigned(s, false, false))),
      ("(c) one central queue", Box::new(central_queue)),
      ("(d) inferpool", Box::new(inferpool)),
    ];
    for (name, run) in strategies {
      if only.is_some() && !name.contains("inferpool") {
        continue;
      }
      let mut outcome = run(&scenario);
      outcome.latencies.sort();
      let ratio = outcome.makespan.as_secs_f64() / bound.as_secs_f64();
      let capacity = outcome.makespan.as_secs_f64() * scenario.slowdowns.len() as f64;
      let busy: f64 = outcome.busy.iter().map(Duration::as_secs_f64).sum();
      let items = scenario.items();
      let stalled = outcome.completed < items;
      if name.starts_with("(d)") {
        worst = worst.max(if stalled { f64::INFINITY } else { ratio });
      }
      println!(
        "| {} | {} | {} | {} | {:.0}% | {}–{} | {:.1} | {:.1} | {} |",
        scenario.name,
        name,
        if stalled {
          format!("stalled ({:.0})", outcome.makespan.as_secs_f64() * 1e3)
        } else {
          format!("{:.0}", outcome.makespan.as_secs_f64() * 1e3)
        },
        if stalled { "∞".to_owned() } else { format!("{ratio:.3}") },
        100.0 * busy / capacity,
        outcome.per_worker.iter().min().unwrap_or(&0),
        outcome.per_worker.iter().max().unwrap_or(&0),
        percentile(&outcome.latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&outcome.latencies, 0.99).as_secs_f64() * 1e3,
        if stalled { format!("{}/{items}", outcome.completed) } else { format!("{items}/{items}") },
      );
    }
  }
  println!("worst makespan/lower-bound for inferpool: {worst:.3}");
  ablations(only.as_deref());
}

/// A heuristic switched off: its name and the change to the defaults.
type Ablation = (&'static str, fn(&mut PoolConfig));

/// The pool with each heuristic switched off in turn, every scenario run `SIM_REPEAT` times
/// (default 5); the medians are printed, and the worst makespan.
fn ablations(only: Option<&str>) {
  let variants: [Ablation; 6] = [
    ("all heuristics on", |_| {}),
    ("adaptive budget off", |c| c.adaptive.enabled = false),
    ("equal split, not water-filling", |c| c.policy.share = ShareRule::Equal),
    ("no smaller first batch", |c| c.policy.first_batch_divisor = 1),
    ("no padding up to one batch's cost", |c| c.policy.pad_within_batch_cost = false),
    ("no fairness tick", |c| c.policy.fairness_interval = 0),
  ];
  let repeat: usize =
    std::env::var("SIM_REPEAT").ok().and_then(|r| r.parse().ok()).unwrap_or(5).max(1);
  println!();
  println!("Ablations (median of {repeat} runs):");
  println!();
  println!(
    "| scenario | variant | ÷ lower bound | worst ÷ lower bound | p50 ms | p99 ms | bulk p99 ms |"
  );
  println!("|---|---|---:|---:|---:|---:|---:|");
  for scenario in scenarios() {
    if only.is_some_and(|o| !scenario.name.contains(o)) {
      continue;
    }
    let bound = scenario.lower_bound().as_secs_f64();
    for (name, adjust) in variants {
      let mut runs: Vec<[f64; 4]> = (0..repeat)
        .map(|_| {
          let mut outcome = inferpool_with(&scenario, adjust);
          outcome.latencies.sort();
          outcome.bulk_latencies.sort();
          let ms = |d: Duration| d.as_secs_f64() * 1e3;
          let ratio = if outcome.completed < scenario.items() {
            f64::INFINITY
          } else {
            outcome.makespan.as_secs_f64() / bound
          };
          [
            ratio,
            ms(percentile(&outcome.latencies, 0.5)),
            ms(percentile(&outcome.latencies, 0.99)),
            ms(percentile(&outcome.bulk_latencies, 0.99)),
          ]
        })
        .collect();
      let worst = runs.iter().map(|r| r[0]).fold(0.0, f64::max);
      let [ratio, p50, p99, bulk_p99] = [0, 1, 2, 3].map(|k| {
        runs.sort_by(|a, b| a[k].total_cmp(&b[k]));
        runs[runs.len() / 2][k]
      });
      println!(
        "| {} | {name} | {ratio:.3} | {worst:.3} | {p50:.1} | {p99:.1} | {bulk_p99:.1} |",
        scenario.name
      );
    }
  }
}
