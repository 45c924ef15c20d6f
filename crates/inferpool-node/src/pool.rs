//! `createPool` and `BindingPool`: the running pool. Building it is `inferpool-ort`'s
//! [`build_pool`]; every method delegates to the core's [`Pool`].

use std::{
  sync::Arc,
  time::{Duration, Instant},
};

use inferpool_core::{CloseMode, Pool, Progress, SubmitOptions, TokenCounts};
use inferpool_ort::{Generator, PoolSpec, WorkerDevices, build_pool};
use napi::{
  Env, Status,
  bindgen_prelude::PromiseRaw,
  threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
};
use napi_derive::napi;

use crate::{
  call::BindingCall,
  errors::{Result, backend_error, guarded, join_error, pool_error, promise},
  events::{EventCallback, event_sink},
  generation::{BindingGeneration, DeltaCallback},
  metrics::BindingModelHistograms,
  numbers::index,
  options::{BindingCallOptions, BindingGenerateOptions, BindingPoolOptions},
  status::BindingStatus,
};

/// Where a call's progress goes (texts done): does not keep the process alive.
type ProgressCallback = ThreadsafeFunction<u32, (), u32, Status, false, true>;

/// A running pool.
#[napi]
#[derive(Debug)]
pub struct BindingPool {
  /// The core's pool.
  inner: Arc<Pool>,
  /// Longest token sequence of each model.
  max_lengths: Vec<u32>,
  /// The device of each worker.
  workers: WorkerDevices,
  /// Per model: how a seq2seq model's tokens become text.
  generators: Vec<Option<Generator>>,
}

/// Loads every model's tokenizer, starts one worker per device entry, loads the preloaded
/// models and waits until they are ready. `onEvent` receives model and worker events.
#[napi]
pub fn create_pool(
  env: &Env,
  options: BindingPoolOptions,
  on_event: Option<EventCallback>,
) -> Result<PromiseRaw<'_, BindingPool>> {
  promise(env, async move {
    let spec = PoolSpec::try_from(options)?;
    let events = on_event.map(event_sink);
    let built = tokio::task::spawn_blocking(move || build_pool(spec, events))
      .await
      .map_err(|e| join_error(&e))?
      .map_err(|e| backend_error(&e))?;
    Ok(BindingPool {
      inner: Arc::new(built.pool),
      max_lengths: built.max_lengths.into_iter().map(index).collect(),
      workers: built.workers,
      generators: built.generators,
    })
  })
}

#[napi]
impl BindingPool {
  /// Width of model `model`'s embeddings, once it has been loaded.
  #[napi]
  #[must_use]
  pub fn dimension(&self, model: u32) -> Option<u32> {
    self.inner.model_dimension(model as usize).map(index)
  }

  /// Longest token sequence fed to model `model`; longer texts are truncated.
  #[napi]
  #[must_use]
  pub fn max_length(&self, model: u32) -> u32 {
    self.max_lengths.get(model as usize).copied().unwrap_or(0)
  }

  /// Starts embedding `texts` with model `model` and returns the call at once: its `result()`
  /// resolves with `texts.length × dimension` values, row `i` for text `i`; its `cancel()`
  /// answers it at any time, while its texts are tokenized too. `onProgress` is told how many
  /// texts are done every `options.progressEvery` texts (not for the last one: `result()` says
  /// that).
  #[napi]
  pub fn embed(
    &self,
    model: u32,
    texts: Vec<String>,
    options: BindingCallOptions,
    on_progress: Option<ProgressCallback>,
  ) -> Result<BindingCall> {
    let progress = progress(options.progress_every, on_progress);
    let options = SubmitOptions {
      priority: options.priority.into(),
      deadline: options.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(u64::from(ms))),
      handle: None,
      progress,
      // Taken here, on the caller's thread: calls waiting for room keep the order they were
      // made in, whichever is tokenized first.
      turn: Some(self.inner.next_turn()),
      token_counts: options.count_tokens.then(TokenCounts::default),
    };
    Ok(BindingCall::submit(Arc::clone(&self.inner), model as usize, texts, options))
  }

  /// Starts generating text for `prompts` with seq2seq model `model` and returns the call at
  /// once: its `result()` resolves with one result per prompt, in order. `onDelta` receives
  /// each prompt's text as it grows (whole characters only) and, last, its finish reason;
  /// `onProgress` how many prompts are done every `options.progressEvery`.
  #[napi]
  pub fn generate(
    &self,
    model: u32,
    prompts: Vec<String>,
    options: BindingGenerateOptions,
    on_progress: Option<ProgressCallback>,
    on_delta: Option<DeltaCallback>,
  ) -> Result<BindingGeneration> {
    let Some(generator) = self.generators.get(model as usize).and_then(Option::as_ref) else {
      return Err(crate::errors::coded(
        crate::errors::BindingErrorCode::InvalidInput,
        format!("model {model} is not a seq2seq model: it cannot generate text"),
      ));
    };
    let submit = SubmitOptions {
      priority: options.priority.into(),
      deadline: options.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(u64::from(ms))),
      handle: None,
      progress: progress(options.progress_every, on_progress),
      turn: Some(self.inner.next_turn()),
      token_counts: None,
    };
    Ok(BindingGeneration::submit(
      Arc::clone(&self.inner),
      (model as usize, generator),
      prompts,
      options,
      submit,
      on_delta,
    ))
  }

  /// Loads model `model` on `workers` (every worker it may use when absent); resolves when
  /// each has it.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn preload<'env>(
    &self,
    env: &'env Env,
    model: u32,
    workers: Option<Vec<u32>>,
  ) -> Result<PromiseRaw<'env, ()>> {
    let pool = Arc::clone(&self.inner);
    let workers: Option<Vec<usize>> = workers.map(|w| w.into_iter().map(|i| i as usize).collect());
    promise(env, async move {
      tokio::task::spawn_blocking(move || pool.preload(model as usize, workers.as_deref()))
        .await
        .map_err(|e| join_error(&e))?
        .map_err(|e| pool_error(&e))
    })
  }

  /// Unloads model `model` from every worker; resolves with how many held it.
  #[napi]
  pub fn unload<'env>(&self, env: &'env Env, model: u32) -> Result<PromiseRaw<'env, u32>> {
    let pool = Arc::clone(&self.inner);
    promise(env, async move {
      tokio::task::spawn_blocking(move || pool.unload(model as usize))
        .await
        .map_err(|e| join_error(&e))?
        .map(index)
        .map_err(|e| pool_error(&e))
    })
  }

  /// Counters and state of the pool, of every worker and of every model, read without locks.
  #[napi]
  pub fn status(&self) -> Result<BindingStatus> {
    guarded("reading the status", || {
      BindingStatus::new(&self.inner.stats(), &self.max_lengths, &self.workers, &self.generators)
    })
  }

  /// The pool's histograms per model (and per worker within each), read without locks.
  #[napi]
  pub fn metrics(&self) -> Result<Vec<BindingModelHistograms>> {
    guarded("reading the metrics", || BindingModelHistograms::all(&self.inner.stats()))
  }

  /// Stops admission now, on the calling thread, and tells the workers to drain or (unless
  /// `drain`) cancel: what is queued fails with `POOL_CLOSED` at once, and so do calls made
  /// before whose texts have not reached the pool yet. `close` then waits for the threads.
  #[napi]
  pub fn begin_close(&self, drain: bool) -> Result<()> {
    guarded("closing the pool", || self.inner.begin_close(close_mode(drain)))
  }

  /// Stops the pool: `drain` runs what is queued first, otherwise queued items fail with
  /// `POOL_CLOSED`. Resolves once every worker thread has exited.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'env>(&self, env: &'env Env, drain: bool) -> Result<PromiseRaw<'env, ()>> {
    let pool = Arc::clone(&self.inner);
    promise(env, async move {
      tokio::task::spawn_blocking(move || pool.close(close_mode(drain)))
        .await
        .map_err(|e| join_error(&e))
    })
  }
}

/// Progress reports every `every` items (1 when absent) to `callback`, if any.
fn progress(every: Option<u32>, callback: Option<ProgressCallback>) -> Option<Progress> {
  callback.map(|callback| Progress {
    every: every.unwrap_or(1).max(1) as usize,
    report: Arc::new(move |done| {
      let _ = callback.call(index(done), ThreadsafeFunctionCallMode::NonBlocking);
    }),
  })
}

fn close_mode(drain: bool) -> CloseMode {
  if drain { CloseMode::Drain } else { CloseMode::Cancel }
}
