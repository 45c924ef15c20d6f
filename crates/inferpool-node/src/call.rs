//! `BindingCall`: one `embed` call, its answer and the means to cancel it; and what every call
//! shares: how it is handed to the pool (`dispatch`) and how its answer reaches its promise
//! (`Answer`).
//!
//! Both are short paths, because at low load they are most of a call's overhead: every thread a
//! call passes through must be woken, which costs tens of microseconds on an idle core. A small
//! call is tokenized and queued on the JavaScript thread itself (tokenizing a few short texts
//! takes less than waking another thread would); a larger one on a blocking thread, off the
//! event loop. The worker that finishes a call settles its promise directly (a threadsafe
//! function call to the JavaScript thread), not through a task of the async runtime.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use inferpool_core::{CallHandle, Pool, PoolError, Reply, SubmitOptions, Ticket, TokenCounts};
use napi::{
  Env, JsError, JsValue,
  bindgen_prelude::{Float32Array, PromiseRaw, ToNapiValue, Uint32Array},
};
use napi_derive::napi;

use crate::{
  errors::{BindingErrorCode, Result, coded, pool_error},
  numbers::index,
};

/// What a call is answered with.
pub(crate) type Outcome = std::result::Result<Vec<f32>, PoolError>;

/// Calls of at most this many texts, of at most [`INLINE_BYTES`] together, are tokenized and
/// queued on the JavaScript thread (tens of microseconds at most); larger ones on a blocking
/// thread.
const INLINE_TEXTS: usize = 4;
/// See [`INLINE_TEXTS`].
const INLINE_BYTES: usize = 2048;

/// Whether a call of `texts` is submitted on the calling thread.
pub(crate) fn inline(texts: &[String]) -> bool {
  texts.len() <= INLINE_TEXTS && texts.iter().map(String::len).sum::<usize>() <= INLINE_BYTES
}

/// What settles a promise on the JavaScript thread.
type Resolve<T> = Box<dyn FnOnce(Env) -> napi::Result<T> + Send>;

/// Where a call's answer goes once it arrives: kept until `result()` asks for it, or handed at
/// once to what `result()` left waiting. The first answer counts; a later one is dropped.
pub(crate) struct Answer(Mutex<Slot>);

enum Slot {
  /// Neither the answer nor `result()` has come.
  Pending,
  /// The answer came first.
  Arrived(Outcome),
  /// `result()` came first: what settles its promise.
  Awaited(Box<dyn FnOnce(Outcome) + Send>),
  /// The answer went to `result()`.
  Taken,
}

impl std::fmt::Debug for Answer {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let state = match &*self.slot() {
      Slot::Pending => "pending",
      Slot::Arrived(_) => "arrived",
      Slot::Awaited(_) => "awaited",
      Slot::Taken => "taken",
    };
    f.debug_tuple("Answer").field(&state).finish()
  }
}

impl Answer {
  fn new() -> Arc<Self> {
    Arc::new(Self(Mutex::new(Slot::Pending)))
  }

  fn slot(&self) -> MutexGuard<'_, Slot> {
    self.0.lock().unwrap_or_else(PoisonError::into_inner)
  }

  /// Gives the call its answer, unless it has one.
  fn deliver(&self, outcome: Outcome) {
    let mut slot = self.slot();
    match std::mem::replace(&mut *slot, Slot::Taken) {
      Slot::Pending => *slot = Slot::Arrived(outcome),
      Slot::Awaited(settle) => {
        drop(slot);
        settle(outcome);
      }
      answered => *slot = answered,
    }
  }

  /// Whether `result()` has been asked for already.
  fn claimed(&self) -> bool {
    matches!(*self.slot(), Slot::Awaited(_) | Slot::Taken)
  }

  /// Hands the answer to `settle` when it arrives (now, when it has). Call once, after
  /// [`Answer::claimed`] said no (both on the JavaScript thread).
  fn claim(&self, settle: Box<dyn FnOnce(Outcome) + Send>) {
    let mut slot = self.slot();
    match std::mem::replace(&mut *slot, Slot::Taken) {
      Slot::Arrived(outcome) => {
        drop(slot);
        settle(outcome);
      }
      _ => *slot = Slot::Awaited(settle),
    }
  }

  /// `result()`'s promise: resolved with `value(outcome)` on the JavaScript thread, or rejected
  /// with the `Error` of the call's code; rejected at once when it was asked for already.
  pub(crate) fn promise<'env, T: ToNapiValue + Send + 'static>(
    &self,
    env: &'env Env,
    value: impl FnOnce(Vec<f32>) -> Result<T> + Send + 'static,
  ) -> Result<PromiseRaw<'env, T>> {
    if self.claimed() {
      return Err(coded(BindingErrorCode::Internal, "the result of a call was asked for twice"));
    }
    let (deferred, promise) = env
      .create_deferred::<T, Resolve<T>>()
      .map_err(|e| coded(BindingErrorCode::Internal, format!("cannot create a promise: {e}")))?;
    self.claim(Box::new(move |outcome| {
      let settled = outcome.map_err(|e| pool_error(&e)).and_then(value);
      deferred.resolve(Box::new(move |env| {
        // On the JavaScript thread: napi-rs rejects with this very object, `code` included.
        settled.map_err(|e| {
          napi::Error::from_unknown_without_coercion(JsError::from(e).into_unknown(env))
        })
      }));
    }));
    Ok(PromiseRaw::new(env.raw(), promise.raw()))
  }
}

impl Drop for Answer {
  fn drop(&mut self) {
    let slot =
      std::mem::replace(self.0.get_mut().unwrap_or_else(PoisonError::into_inner), Slot::Taken);
    if let Slot::Awaited(settle) = slot {
      settle(Err(PoolError::Internal("a call was dropped without an answer".to_owned())));
    }
  }
}

/// Runs `submit` with `options` (given the call's own cancel handle), on the calling thread when
/// `inline`, else on a blocking thread, and returns the handle and where the answer arrives:
/// whichever answers first, the pool's reply or the submit's own error.
pub(crate) fn dispatch(
  options: SubmitOptions,
  inline: bool,
  submit: impl FnOnce(SubmitOptions, Reply) -> std::result::Result<Ticket, PoolError> + Send + 'static,
) -> (Arc<CallHandle>, Arc<Answer>) {
  let handle = Arc::new(CallHandle::new());
  let options = SubmitOptions { handle: Some(Arc::clone(&handle)), ..options };
  let answer = Answer::new();
  let target = Arc::clone(&answer);
  let run = move || {
    let replied = Arc::clone(&target);
    let reply: Reply = Box::new(move |outcome| replied.deliver(outcome));
    let submitted = catch_unwind(AssertUnwindSafe(|| submit(options, reply)))
      .unwrap_or_else(|_| Err(PoolError::Internal("the submit panicked".to_owned())));
    if let Err(error) = submitted {
      target.deliver(Err(error));
    }
  };
  if inline {
    run();
  } else {
    napi::bindgen_prelude::spawn_blocking(run);
  }
  (handle, answer)
}

/// One `embed` call: its answer, and the means to cancel it. Belongs to that call alone, so a
/// cancel can never reach another one, and nothing is kept once it is collected.
#[napi]
#[derive(Debug)]
pub struct BindingCall {
  /// Cancels the call in the core.
  handle: Arc<CallHandle>,
  /// Where the answer arrives.
  answer: Arc<Answer>,
  /// Each text's token count, when the call was asked to count them.
  token_counts: Option<TokenCounts>,
}

impl BindingCall {
  /// Submits `texts` to model `model` of `pool` and returns the call at once ([`dispatch`]).
  pub(crate) fn submit(
    pool: Arc<Pool>,
    model: usize,
    texts: Vec<String>,
    options: SubmitOptions,
  ) -> Self {
    let token_counts = options.token_counts.clone();
    let (handle, answer) = dispatch(options, inline(&texts), move |options, reply| {
      pool.submit_to(model, &texts, options, reply)
    });
    Self { handle, answer, token_counts }
  }
}

#[napi]
impl BindingCall {
  /// Resolves with the call's rows, or rejects with its error (once; a second call rejects).
  #[napi]
  pub fn result<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Float32Array>> {
    self.answer.promise(env, |rows| Ok(Float32Array::new(rows)))
  }

  /// Each text's token count (what the model was fed: special tokens included, after
  /// truncation) once `result()` has resolved, when the call was made with `countTokens`;
  /// `null` before that, or without it.
  #[napi]
  #[must_use]
  pub fn token_counts(&self) -> Option<Uint32Array> {
    let counts = self.token_counts.as_ref()?.get()?;
    Some(Uint32Array::new(counts.iter().map(|&n| index(n)).collect()))
  }

  /// Answers the call with `TIMEOUT` when `timedOut`, else with `ABORTED`, unless it has been
  /// answered; its texts not started yet are not run. Returns whether this decided the outcome.
  #[napi]
  #[must_use]
  pub fn cancel(&self, timed_out: bool) -> bool {
    let error = if timed_out { PoolError::Timeout } else { PoolError::Cancelled };
    catch_unwind(AssertUnwindSafe(|| self.handle.cancel(error))).unwrap_or(false)
  }
}
