//! The lone session: one extra CPU session per model, with as many threads as the pool's CPU
//! workers together, shared by those workers.
//!
//! Each CPU worker's own session has a few threads, so that under load the workers together
//! fill the cores without oversubscribing them. A batch that starts while every other worker is
//! idle (a single text at low load) would leave most cores unused; the core then calls
//! [`inferpool_core::Backend::run_alone`] and the batch runs on the lone session instead, over
//! all of the pool's threads. Its threads spin between the operators of a run and sleep as soon
//! as it returns, so an idle pool still uses no CPU.
//!
//! Its spinning threads must not keep the event loop's thread waiting for a core: on Linux the
//! session is built on a short-lived thread of the `SCHED_IDLE` policy, which the session's own
//! threads, created by that thread, inherit. They run only on a core nothing else wants: a
//! thread that wakes up, such as the event loop's, takes their core at once (measured: the
//! event loop's p99 delay in the trickle benchmark went from 3.9 ms, with threads of normal or
//! lowered priority, to 1.7 ms). If they get no core, the worker's own thread, which takes part
//! in the run at normal priority, does their share of it. Under load no batch runs there.
//!
//! Its threads are pinned, one core each, and the worker's thread keeps off those cores while a
//! lone run lasts (`affinity`): unpinned, a woken session thread was often queued on the
//! worker's own core, and the two shared it until the next scheduler tick.
//!
//! The session is built with the first CPU worker's session of the model and dropped with the
//! last one (every worker holds an [`Arc`] of it; the factory keeps a [`Weak`]). It costs one
//! more copy of the model in memory. When it is busy (two lone batches at once), the second runs
//! on its worker's own session.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};

use inferpool_core::{Backend, BackendError, TokenizedText};

use crate::{
  affinity::Pinning,
  backend::{Device, OrtBackend, SessionSpec, Threading},
};

/// Runs `build` on a new thread of the `SCHED_IDLE` policy (Linux, where the threads it creates
/// inherit the policy; elsewhere a thread of normal priority).
fn at_idle_priority<T: Send>(build: impl FnOnce() -> T + Send) -> T {
  std::thread::scope(|scope| {
    scope
      .spawn(|| {
        #[cfg(target_os = "linux")]
        // SAFETY: `sched_setscheduler` on the calling thread (pid 0) only reads `param`, which
        // lives through the call; lowering one's own policy to SCHED_IDLE needs no privilege. A
        // failure leaves the policy as it was.
        unsafe {
          let param = libc::sched_param { sched_priority: 0 };
          libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param);
        }
        build()
      })
      .join()
      .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
  })
}

/// The lone session and where its threads run.
struct Shared {
  session: Mutex<OrtBackend>,
  pinning: Option<Pinning>,
}

/// A worker's handle on its model's lone session.
#[derive(Clone)]
pub(crate) struct Lone(Arc<Shared>);

impl std::fmt::Debug for Lone {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Lone").field("pinning", &self.0.pinning).finish_non_exhaustive()
  }
}

impl Lone {
  /// Runs `batch` on the lone session; `None` when another worker is running a batch on it.
  pub(crate) fn run(
    &self,
    batch: &[&TokenizedText],
    out: &mut [f32],
  ) -> Option<Result<(), BackendError>> {
    let mut session = self.try_take()?;
    let _cores = self.0.pinning.as_ref().map(Pinning::enter);
    Some(session.run(batch, out))
  }

  /// The session, unless another worker is running a batch on it.
  fn try_take(&self) -> Option<MutexGuard<'_, OrtBackend>> {
    match self.0.session.try_lock() {
      Ok(guard) => Some(guard),
      // A panic in a run left it poisoned: the session itself is still usable.
      Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
      Err(TryLockError::WouldBlock) => None,
    }
  }
}

/// Per model, the lone session while some worker holds it.
pub(crate) struct LoneSessions(Vec<Mutex<Weak<Shared>>>);

impl LoneSessions {
  pub(crate) fn new(models: usize) -> Self {
    Self((0..models).map(|_| Mutex::new(Weak::new())).collect())
  }

  /// Model `model`'s lone session, built now if no worker holds it. `None` when the spec asks
  /// for no more threads than a worker's session has, or when the session cannot be built (the
  /// worker then runs every batch on its own session).
  pub(crate) fn attach(&self, model: usize, spec: &SessionSpec) -> Option<Lone> {
    let threads = spec.options.lone_threads;
    if threads <= spec.options.intra_threads {
      return None;
    }
    let mut slot = self.0.get(model)?.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = slot.upgrade() {
      return Some(Lone(shared));
    }
    let pinning = Pinning::plan(threads);
    let threading = Threading {
      threads,
      spin: true,
      pinned: pinning.as_ref().map(|p| p.pool.clone()).unwrap_or_default(),
    };
    let backend = at_idle_priority(|| {
      OrtBackend::build(&spec.onnx, Device::Cpu, spec.options.clone(), &threading)
    });
    let shared = Arc::new(Shared { session: Mutex::new(backend.ok()?), pinning });
    *slot = Arc::downgrade(&shared);
    Some(Lone(shared))
  }
}
