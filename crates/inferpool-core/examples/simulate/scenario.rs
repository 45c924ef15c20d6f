//! The scenarios, their cost model and lower bound, and what a strategy reports.

use std::{
  thread,
  time::{Duration, Instant},
};

use inferpool_core::{TokenizedText, sim::SimBackend};

/// A batch's cost on a CPU-like device: `per_batch + per_token × padded tokens`.
pub(crate) const CPU: Cost =
  Cost { per_batch: Duration::from_micros(500), per_token: Duration::from_micros(20) };
/// On a GPU-like device a batch's fixed cost is worth thousands of tokens.
pub(crate) const GPU: Cost =
  Cost { per_batch: Duration::from_millis(2), per_token: Duration::from_nanos(400) };

#[derive(Clone, Copy)]
pub(crate) struct Cost {
  pub(crate) per_batch: Duration,
  pub(crate) per_token: Duration,
}

/// One request: when it arrives (offset from the start), its item lengths in tokens, and
/// whether it is interactive (the baselines have no priorities and ignore it).
#[derive(Clone)]
pub(crate) struct Request {
  pub(crate) at: Duration,
  pub(crate) lengths: Vec<usize>,
  pub(crate) interactive: bool,
}

pub(crate) struct Scenario {
  pub(crate) name: &'static str,
  pub(crate) requests: Vec<Request>,
  pub(crate) slowdowns: Vec<f64>,
  pub(crate) batch: usize,
  pub(crate) cost: Cost,
}

impl Scenario {
  pub(crate) fn speed(&self) -> f64 {
    self.slowdowns.iter().map(|s| 1.0 / s).sum()
  }

  pub(crate) fn lower_bound(&self) -> Duration {
    let token_time = |n: usize| self.cost.per_token.as_secs_f64() * n as f64;
    let total: usize = self.requests.iter().flat_map(|r| &r.lengths).sum();
    let fastest = self.slowdowns.iter().copied().fold(f64::INFINITY, f64::min);
    let largest = self.requests.iter().flat_map(|r| &r.lengths).copied().max().unwrap_or(0);
    let last = self.requests.iter().max_by_key(|r| r.at).expect("scenarios have requests");
    let after_last = last.at.as_secs_f64() + token_time(last.lengths.iter().sum()) / self.speed();
    let bound = (token_time(total) / self.speed()).max(after_last) + token_time(largest) * fastest;
    Duration::from_secs_f64(bound)
  }

  pub(crate) fn items(&self) -> usize {
    self.requests.iter().map(|r| r.lengths.len()).sum()
  }
}

/// What one strategy did on one scenario.
pub(crate) struct Outcome {
  pub(crate) makespan: Duration,
  pub(crate) busy: Vec<Duration>,
  pub(crate) per_worker: Vec<usize>,
  pub(crate) latencies: Vec<Duration>,
  /// The latencies of bulk items (inferpool only; empty for the baselines).
  pub(crate) bulk_latencies: Vec<Duration>,
  pub(crate) completed: usize,
}

pub(crate) fn backend(cost: Cost, slowdown: f64) -> SimBackend {
  SimBackend {
    dimension: 4,
    per_batch: cost.per_batch,
    per_token: cost.per_token,
    slowdown,
    ..SimBackend::default()
  }
}

pub(crate) fn tokens(len: usize) -> TokenizedText {
  TokenizedText { ids: vec![120; len], type_ids: vec![0; len] }
}

/// Replays the arrivals: calls `submit(request index)` at each request's offset.
pub(crate) fn replay(scenario: &Scenario, start: Instant, mut submit: impl FnMut(usize)) {
  for (i, r) in scenario.requests.iter().enumerate() {
    let due = start + r.at;
    let now = Instant::now();
    if due > now {
      thread::sleep(due - now);
    }
    submit(i);
  }
}

/// Deterministic lengths in `lo..=hi`.
pub(crate) fn lengths(count: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
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
pub(crate) fn at_once(items: &[usize], per_request: usize) -> Vec<Request> {
  items
    .chunks(per_request)
    .map(|c| Request { at: Duration::ZERO, lengths: c.to_vec(), interactive: false })
    .collect()
}

pub(crate) fn scenarios() -> Vec<Scenario> {
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
