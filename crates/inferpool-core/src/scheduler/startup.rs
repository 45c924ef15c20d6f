//! Starting a pool's workers (their preloads) and ending each worker's life.

use std::sync::{Arc, atomic::Ordering, mpsc};

use crate::{
  BackendError, BackendErrorKind, MAX_MODELS, Models, PoolConfig, PoolError, WorkerState,
  scheduler::{
    registry::{Command, Registry},
    sleep::Wake,
    worker::WorkerThread,
  },
};

/// Checks that `models` can run on the workers of `config`.
pub(crate) fn validate(config: &PoolConfig, models: &Models) -> Result<(), BackendError> {
  let invalid = |message: String| BackendError::new(BackendErrorKind::InvalidInput, message);
  if config.workers == 0 || config.workers > MAX_MODELS {
    return Err(invalid(format!("a pool has 1 to {MAX_MODELS} workers, not {}", config.workers)));
  }
  if models.models.is_empty() || models.models.len() > MAX_MODELS {
    return Err(invalid(format!(
      "a pool has 1 to {MAX_MODELS} models, not {}",
      models.models.len()
    )));
  }
  for &index in &models.preload {
    let Some(model) = models.models.get(index) else { continue };
    let fits = (0..config.workers).any(|w| config.fits(model, w));
    if !fits {
      return Err(invalid(format!(
        "model {:?} can load on no worker: it needs {} bytes, and the workers it may use ({}) have less memory budget",
        model.name,
        model.memory,
        model.workers.as_ref().map_or_else(
          || "all".to_owned(),
          |w| w.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
      )));
    }
  }
  if let Some(&bad) = models.preload.iter().find(|&&m| m >= models.models.len()) {
    return Err(invalid(format!("no model {bad} to preload")));
  }
  Ok(())
}

/// A worker thread's life: its preloads (reported on `ready`), then its loop.
pub(crate) fn start_worker(
  mut worker: WorkerThread,
  preload: &[usize],
  ready: &mpsc::Sender<Result<(), BackendError>>,
) {
  let index = worker.index;
  for &model in preload {
    let config = &worker.registry.models[model].config;
    if !worker.registry.config.fits(config, index) {
      continue;
    }
    if let Err(error) = worker.load_claimed(model) {
      let error = match error {
        PoolError::Backend(error) => error,
        other => BackendError::new(BackendErrorKind::InvalidInput, other.to_string()),
      };
      if worker.registry.config.tolerate_device_failures && error.kind == BackendErrorKind::Device {
        let _ = worker.shared().failure.set(error.message.clone());
        let _ = ready.send(Ok(()));
      } else {
        let _ = ready.send(Err(error));
      }
      return;
    }
  }
  let _ = ready.send(Ok(()));
  worker.run();
}

/// A model left without a worker because the devices of all its workers failed.
pub(crate) fn orphaned_model(registry: &Registry) -> Option<BackendError> {
  let failed = |w: usize| registry.workers[w].failure.get();
  registry.models.iter().find_map(|model| {
    let mut allowed = (0..registry.workers.len()).filter(|&w| model.config.allows(w)).peekable();
    allowed.peek()?;
    let mut reasons = Vec::new();
    for worker in allowed {
      reasons.push(format!("worker {worker}: {}", failed(worker)?));
    }
    Some(BackendError::new(
      BackendErrorKind::Device,
      format!("model {:?} has no worker left: {}", model.config.name, reasons.join("; ")),
    ))
  })
}

/// Ends a worker thread's life however it ends (a panic included): answers the commands still
/// pending, marks the worker stopped (unless its device failed) and counts it out, so `close`
/// and the other workers are never left waiting for it.
pub(crate) struct ExitGuard {
  pub(crate) registry: Arc<Registry>,
  pub(crate) index: usize,
}

impl Drop for ExitGuard {
  fn drop(&mut self) {
    let registry = &self.registry;
    let pending = registry.commands[self.index]
      .lock()
      .map_or_else(|poisoned| poisoned.into_inner().take(), |mut c| c.take())
      .unwrap_or_default();
    for command in pending {
      match command {
        Command::Load { done, .. } => {
          let _ = done.send(Err(PoolError::Closed));
        }
        Command::Unload { done, .. } => {
          let _ = done.send(false);
        }
      }
    }
    let worker = &registry.workers[self.index];
    let state = if worker.failure.get().is_some() || std::thread::panicking() {
      WorkerState::Failed
    } else {
      WorkerState::Stopped
    };
    worker.state.store(state as u8, Ordering::Relaxed);
    worker.loaded.store(0, Ordering::Relaxed);
    // They may be waiting for the last item or for the close to be noticed.
    registry.sleep.notify(Wake::All);
    let mut exited = registry.exited.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *exited += 1;
    registry.exited_changed.notify_all();
  }
}
