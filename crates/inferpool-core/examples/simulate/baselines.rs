//! The schedulers Node pools use today, on the simulated backend: (a) least-busy assignment with
//! batches that wait until full, (b) round-robin pre-allocation, (c) one central FIFO queue.

use std::{
  collections::VecDeque,
  sync::{Arc, Condvar, Mutex},
  thread,
  time::{Duration, Instant},
};

use inferpool_core::{Backend, TokenizedText, sim::SimBackend};

use crate::scenario::{Outcome, Scenario, backend, replay, tokens};

/// An item in the baseline schedulers.
#[derive(Clone, Copy)]
pub(crate) struct Item {
  pub(crate) len: usize,
  pub(crate) submitted: Instant,
}

/// Shared bookkeeping of the baselines.
pub(crate) struct Tally {
  pub(crate) done: Mutex<(usize, Vec<Duration>, Instant)>,
  pub(crate) all_done: Condvar,
  pub(crate) total: usize,
  /// Per worker: time spent running batches, items run.
  pub(crate) meters: Mutex<(Vec<Duration>, Vec<usize>)>,
}

impl Tally {
  pub(crate) fn new(total: usize, workers: usize) -> Arc<Self> {
    Arc::new(Self {
      done: Mutex::new((0, Vec::new(), Instant::now())),
      all_done: Condvar::new(),
      total,
      meters: Mutex::new((vec![Duration::ZERO; workers], vec![0; workers])),
    })
  }

  /// Runs `items` on worker `w`'s backend and records it.
  pub(crate) fn run(&self, w: usize, backend: &mut SimBackend, items: &[Item]) {
    let started = Instant::now();
    run_batch(backend, items);
    let mut meters = self.meters.lock().unwrap();
    meters.0[w] += started.elapsed();
    meters.1[w] += items.len();
    drop(meters);
    self.finish(items);
  }

  pub(crate) fn meters(&self) -> (Vec<Duration>, Vec<usize>) {
    self.meters.lock().unwrap().clone()
  }

  pub(crate) fn finish(&self, items: &[Item]) {
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
  pub(crate) fn wait(&self, limit: Duration) -> (usize, Vec<Duration>, Instant) {
    let done = self.done.lock().unwrap();
    let (done, _) = self.all_done.wait_timeout_while(done, limit, |d| d.0 < self.total).unwrap();
    done.clone()
  }
}

pub(crate) fn run_batch(backend: &mut SimBackend, items: &[Item]) {
  let inputs: Vec<TokenizedText> = items.iter().map(|i| tokens(i.len)).collect();
  let refs: Vec<&TokenizedText> = inputs.iter().collect();
  let mut out = vec![0.0; refs.len() * backend.dimension];
  backend.run(&refs, &mut out).expect("the simulated backend does not fail here");
}

/// A queue of the baselines: one per worker in (a) and (b), one shared in (c). The flag is set
/// when the run is over.
pub(crate) struct Assigned {
  pub(crate) queue: Mutex<(VecDeque<Item>, bool)>,
  pub(crate) ready: Condvar,
}

impl Assigned {
  pub(crate) fn new() -> Arc<Self> {
    Arc::new(Self { queue: Mutex::new((VecDeque::new(), false)), ready: Condvar::new() })
  }

  /// The next batch of up to `batch` items: waits for a full one when `full`, else for any
  /// item. `None` once the run is over (a `full` worker then leaves a partial batch behind).
  pub(crate) fn next_batch(&self, batch: usize, full: bool) -> Option<Vec<Item>> {
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

  pub(crate) fn finish(&self) {
    self.queue.lock().unwrap().1 = true;
    self.ready.notify_all();
  }
}

/// Starts one thread per worker that runs the batches `queue_of(worker)` hands it.
pub(crate) fn spawn_baseline_workers(
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
pub(crate) fn preassigned(scenario: &Scenario, least_busy: bool, full: bool) -> Outcome {
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
pub(crate) fn central_queue(scenario: &Scenario) -> Outcome {
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
