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
//! Then it runs inferpool again with each of its heuristics switched off in turn (the
//! ablations), every scenario `SIM_REPEAT` times (default 5), and prints the medians and the worst
//! run.
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

mod baselines;
mod scenario;

use std::{
  sync::{Arc, mpsc},
  time::{Duration, Instant},
};

use inferpool_core::{
  BatchPolicy, CloseMode, Pool, PoolConfig, Priority, ShareRule, SubmitOptions, sim::SimTokenizer,
};

use crate::{
  baselines::{central_queue, preassigned},
  scenario::{Outcome, Scenario, backend, replay, scenarios},
};

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
  let variants: [Ablation; 5] = [
    ("all heuristics on", |_| {}),
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
