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
//! The session is built with the first CPU worker's session of the model and dropped with the
//! last one (every worker holds an [`Arc`] of it; the factory keeps a [`Weak`]). It costs one
//! more copy of the model in memory. When it is busy (two lone batches at once), the second runs
//! on its worker's own session.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};

use crate::backend::{Device, OrtBackend, SessionSpec};

/// A worker's handle on its model's lone session.
#[derive(Clone, Debug)]
pub(crate) struct Lone(Arc<Mutex<OrtBackend>>);

impl Lone {
  /// The session, unless another worker is running a batch on it.
  pub(crate) fn try_take(&self) -> Option<MutexGuard<'_, OrtBackend>> {
    match self.0.try_lock() {
      Ok(guard) => Some(guard),
      // A panic in a run left it poisoned: the session itself is still usable.
      Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
      Err(TryLockError::WouldBlock) => None,
    }
  }
}

/// Per model, the lone session while some worker holds it.
pub(crate) struct LoneSessions(Vec<Mutex<Weak<Mutex<OrtBackend>>>>);

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
    let backend = OrtBackend::build(&spec.onnx, Device::Cpu, spec.options.clone(), threads, true);
    let shared = Arc::new(Mutex::new(backend.ok()?));
    *slot = Arc::downgrade(&shared);
    Some(Lone(shared))
  }
}
