//! The pool: a shared queue, one OS thread per worker, and the request lifecycle.
//!
//! Protocol:
//! 1. `submit` tokenizes on the caller's thread, then appends every item to the queue under one
//!    lock acquisition and wakes workers.
//! 2. A worker takes a batch under the lock ([`BatchPolicy::take`]); when nothing is queued it
//!    counts itself idle and waits on the condition variable. There are no timers: a worker
//!    sleeps until `submit` or `close` wakes it.
//! 3. If work is still queued after a worker took its batch and another worker is idle, it wakes
//!    one, so a burst spreads over every worker.
//! 4. The batch runs outside the lock under `catch_unwind`; rows go to their requests by index.
//!    A failed or panicking batch answers each of its requests with the error; the worker goes on.
//! 5. `close` stops admission, then either lets the workers drain the queue or fails every queued
//!    item with [`PoolError::Closed`], and joins every thread.

use std::{
  collections::VecDeque,
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{
    Arc, Condvar, Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
    mpsc,
  },
  thread::JoinHandle,
};

use crate::{
  Backend, BackendError, BackendErrorKind, BackendFactory, BatchPolicy, PoolError, Tokenize,
  batch::Queued,
  request::{Reply, Request},
};

/// How many workers and how they cut batches.
#[derive(Clone, Debug)]
pub struct PoolConfig {
  /// Number of worker threads; each builds its own backend.
  pub workers: usize,
  /// Limits for every batch.
  pub policy: BatchPolicy,
}

/// What `close` does with items still queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
  /// Run everything already accepted, then stop.
  Drain,
  /// Fail every queued item with [`PoolError::Closed`]; batches already running finish.
  Cancel,
}

/// Counters since the pool started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
  /// Items queued and not yet taken by a worker.
  pub queued: usize,
  /// Batches run (successful or not).
  pub batches: u64,
  /// Items run successfully.
  pub items: u64,
  /// Batches that failed or panicked.
  pub failed_batches: u64,
}

/// State under the queue lock.
struct Queue {
  /// Items waiting for a worker, oldest first.
  items: VecDeque<Queued>,
  /// Set by `close`; no item is accepted afterwards.
  closing: Option<CloseMode>,
  /// Workers waiting on `Shared::available`.
  idle: usize,
}

/// What the workers and the pool handle share.
struct Shared {
  queue: Mutex<Queue>,
  /// Signalled when items arrive or the pool closes.
  available: Condvar,
  /// How batches are cut.
  policy: BatchPolicy,
  /// Batches run.
  batches: AtomicU64,
  /// Items run successfully.
  items: AtomicU64,
  /// Batches that failed.
  failed_batches: AtomicU64,
}

impl Shared {
  fn lock(&self) -> MutexGuard<'_, Queue> {
    self.queue.lock().expect("queue lock poisoned. This is a bug.")
  }
}

/// A pool of worker threads that batch items across requests.
pub struct Pool {
  shared: Arc<Shared>,
  tokenizer: Arc<dyn Tokenize>,
  dimension: usize,
  threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Pool")
      .field("dimension", &self.dimension)
      .field("stats", &self.stats())
      .finish_non_exhaustive()
  }
}

impl Pool {
  /// Starts `config.workers` threads, each building its backend with `factory`, and waits until
  /// all are ready. If any backend fails to build, every thread is stopped and the first error
  /// returned.
  pub fn new(
    config: &PoolConfig,
    tokenizer: Arc<dyn Tokenize>,
    factory: BackendFactory,
  ) -> Result<Self, BackendError> {
    assert!(config.workers > 0, "a pool needs at least one worker");
    let shared = Arc::new(Shared {
      queue: Mutex::new(Queue { items: VecDeque::new(), closing: None, idle: 0 }),
      available: Condvar::new(),
      policy: config.policy,
      batches: AtomicU64::new(0),
      items: AtomicU64::new(0),
      failed_batches: AtomicU64::new(0),
    });
    let factory = Arc::new(factory);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, BackendError>>();
    let mut threads = Vec::with_capacity(config.workers);
    for index in 0..config.workers {
      let shared = Arc::clone(&shared);
      let factory = Arc::clone(&factory);
      let ready = ready_tx.clone();
      let spawned =
        std::thread::Builder::new().name(format!("inferpool-worker-{index}")).spawn(move || {
          let built = catch_unwind(AssertUnwindSafe(|| factory(index))).unwrap_or_else(|panic| {
            Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
          });
          match built {
            Ok(backend) => {
              let _ = ready.send(Ok(backend.dimension()));
              drop(ready);
              worker_loop(&shared, backend);
            }
            Err(error) => {
              let _ = ready.send(Err(error));
            }
          }
        });
      match spawned {
        Ok(handle) => threads.push(handle),
        Err(error) => {
          let _ = ready_tx.send(Err(BackendError::new(
            BackendErrorKind::Device,
            format!("cannot start a worker thread: {error}"),
          )));
          break;
        }
      }
    }
    drop(ready_tx);

    let mut dimension = None;
    let mut failure = None;
    for result in ready_rx.iter().take(config.workers) {
      match result {
        Ok(dim) if dimension.is_none_or(|d| d == dim) => dimension = Some(dim),
        Ok(dim) => {
          failure.get_or_insert(BackendError::new(
            BackendErrorKind::Model,
            format!(
              "workers disagree on the output dimension ({} vs {dim})",
              dimension.unwrap_or_default()
            ),
          ));
        }
        Err(error) => {
          failure.get_or_insert(error);
        }
      }
    }
    let pool = Self {
      shared,
      tokenizer,
      dimension: dimension.unwrap_or_default(),
      threads: Mutex::new(threads),
    };
    if let Some(error) = failure {
      pool.close(CloseMode::Cancel);
      return Err(error);
    }
    Ok(pool)
  }

  /// Width of every result row.
  #[must_use]
  pub fn dimension(&self) -> usize {
    self.dimension
  }

  /// Tokenizes `texts` on the calling thread and queues them as one request. `reply` is called
  /// exactly once, from a worker thread, with `texts.len() × dimension` values in input order
  /// or the first error. When `submit` itself returns an error, `reply` is never called.
  pub fn submit(&self, texts: &[String], reply: Reply) -> Result<(), PoolError> {
    if self.shared.lock().closing.is_some() {
      return Err(PoolError::Closed);
    }
    if texts.is_empty() {
      reply(Ok(Vec::new()));
      return Ok(());
    }
    let encoded = self.tokenizer.encode(texts)?;
    if encoded.len() != texts.len() {
      return Err(PoolError::Backend(BackendError::new(
        BackendErrorKind::Model,
        format!("the tokenizer returned {} encodings for {} texts", encoded.len(), texts.len()),
      )));
    }
    let request = Arc::new(Request::new(texts.len(), self.dimension, reply));
    let mut queue = self.shared.lock();
    if queue.closing.is_some() {
      return Err(PoolError::Closed);
    }
    queue.items.extend(encoded.into_iter().enumerate().map(|(index, input)| Queued {
      request: Arc::clone(&request),
      index,
      input,
    }));
    let idle = queue.idle;
    drop(queue);
    if idle > 0 {
      self.shared.available.notify_one();
    }
    Ok(())
  }

  /// Counters and queue depth now.
  #[must_use]
  pub fn stats(&self) -> PoolStats {
    let queued = self.shared.lock().items.len();
    PoolStats {
      queued,
      batches: self.shared.batches.load(Ordering::Relaxed),
      items: self.shared.items.load(Ordering::Relaxed),
      failed_batches: self.shared.failed_batches.load(Ordering::Relaxed),
    }
  }

  /// Stops admission, drains or cancels what is queued, and joins every worker thread. Calling
  /// it again is harmless.
  pub fn close(&self, mode: CloseMode) {
    let cancelled: Vec<Queued> = {
      let mut queue = self.shared.lock();
      if queue.closing.is_none() || mode == CloseMode::Cancel {
        queue.closing = Some(mode);
      }
      if mode == CloseMode::Cancel { queue.items.drain(..).collect() } else { Vec::new() }
    };
    for item in cancelled {
      item.request.fail(PoolError::Closed);
    }
    self.shared.available.notify_all();
    let threads =
      std::mem::take(&mut *self.threads.lock().expect("thread list lock poisoned. This is a bug."));
    for thread in threads {
      // A worker never panics outside `catch_unwind`; a join error would only repeat a panic
      // already reported to the callers of that batch.
      let _ = thread.join();
    }
  }
}

impl Drop for Pool {
  fn drop(&mut self) {
    self.close(CloseMode::Cancel);
  }
}

fn worker_loop(shared: &Shared, mut backend: Box<dyn Backend>) {
  let dimension = backend.dimension();
  let mut out = Vec::new();
  while let Some(batch) = next_batch(shared) {
    let inputs: Vec<_> = batch.iter().map(|q| &q.input).collect();
    out.clear();
    out.resize(inputs.len() * dimension, 0.0);
    let result =
      catch_unwind(AssertUnwindSafe(|| backend.run(&inputs, &mut out))).unwrap_or_else(|panic| {
        Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
      });
    shared.batches.fetch_add(1, Ordering::Relaxed);
    match result {
      Ok(()) => {
        shared.items.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (item, row) in batch.iter().zip(out.chunks_exact(dimension.max(1))) {
          item.request.complete_row(item.index, row);
        }
      }
      Err(error) => {
        shared.failed_batches.fetch_add(1, Ordering::Relaxed);
        for item in &batch {
          item.request.fail(PoolError::Backend(error.clone()));
        }
      }
    }
  }
}

/// Blocks until a batch is available; `None` once the pool is closing and nothing is left.
fn next_batch(shared: &Shared) -> Option<Vec<Queued>> {
  let mut queue = shared.lock();
  loop {
    let idle = queue.idle;
    let batch = shared.policy.take(&mut queue.items, idle);
    if !batch.is_empty() {
      let wake_another = !queue.items.is_empty() && queue.idle > 0;
      drop(queue);
      if wake_another {
        shared.available.notify_one();
      }
      return Some(batch);
    }
    if queue.closing.is_some() {
      return None;
    }
    queue.idle += 1;
    queue = shared.available.wait(queue).expect("queue lock poisoned. This is a bug.");
    queue.idle -= 1;
  }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
  let detail = panic
    .downcast_ref::<&str>()
    .map(ToString::to_string)
    .or_else(|| panic.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "unknown payload".to_owned());
  format!("the backend panicked: {detail}")
}
