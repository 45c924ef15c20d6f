//! `BindingCall`: one `embed` call, its answer and the means to cancel it.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{Arc, Mutex, PoisonError},
};

use inferpool_core::{CallHandle, Pool, PoolError, Reply, SubmitOptions, Ticket, TokenCounts};
use napi::{
  Env,
  bindgen_prelude::{Float32Array, PromiseRaw, Uint32Array},
};
use napi_derive::napi;
use tokio::sync::oneshot;

use crate::{
  errors::{BindingErrorCode, Result, coded, pool_error, promise},
  numbers::index,
};

/// What a call is answered with.
pub(crate) type Outcome = std::result::Result<Vec<f32>, PoolError>;

/// One `embed` call: its answer, and the means to cancel it. Belongs to that call alone, so a
/// cancel can never reach another one, and nothing is kept once it is collected.
#[napi]
#[derive(Debug)]
pub struct BindingCall {
  /// Cancels the call in the core.
  handle: Arc<CallHandle>,
  /// Where the answer arrives; taken by the first `result()`.
  answer: Mutex<Option<oneshot::Receiver<Outcome>>>,
  /// Each text's token count, when the call was asked to count them.
  token_counts: Option<TokenCounts>,
}

/// Sends `outcome` through `sender` unless an answer went through it already.
fn answer(sender: &Mutex<Option<oneshot::Sender<Outcome>>>, outcome: Outcome) {
  let taken = sender.lock().unwrap_or_else(PoisonError::into_inner).take();
  // The receiver is gone only when the call object was collected; nothing to tell.
  if let Some(tx) = taken {
    let _ = tx.send(outcome);
  }
}

/// Runs `submit` with `options` (given the call's own cancel handle) on a blocking thread, off
/// the event loop (tokenization runs inside it), and returns the handle and where the answer
/// arrives: whichever answers first, the pool's reply or the submit's own error.
pub(crate) fn dispatch(
  options: SubmitOptions,
  submit: impl FnOnce(SubmitOptions, Reply) -> std::result::Result<Ticket, PoolError> + Send + 'static,
) -> (Arc<CallHandle>, oneshot::Receiver<Outcome>) {
  let handle = Arc::new(CallHandle::new());
  let options = SubmitOptions { handle: Some(Arc::clone(&handle)), ..options };
  let (tx, rx) = oneshot::channel();
  let sender = Arc::new(Mutex::new(Some(tx)));
  napi::bindgen_prelude::spawn_blocking(move || {
    let reply_sender = Arc::clone(&sender);
    let reply: Reply = Box::new(move |outcome| answer(&reply_sender, outcome));
    let submitted = catch_unwind(AssertUnwindSafe(|| submit(options, reply)))
      .unwrap_or_else(|_| Err(PoolError::Internal("the submit panicked".to_owned())));
    if let Err(error) = submitted {
      answer(&sender, Err(error));
    }
  });
  (handle, rx)
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
    let (handle, rx) =
      dispatch(options, move |options, reply| pool.submit_to(model, &texts, options, reply));
    Self { handle, answer: Mutex::new(Some(rx)), token_counts }
  }
}

#[napi]
impl BindingCall {
  /// Resolves with the call's rows, or rejects with its error (once; a second call rejects).
  #[napi]
  pub fn result<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Float32Array>> {
    let answer = self.answer.lock().unwrap_or_else(PoisonError::into_inner).take();
    promise(env, async move {
      let Some(answer) = answer else {
        return Err(coded(BindingErrorCode::Internal, "the result of a call was asked for twice"));
      };
      let lost = |_| coded(BindingErrorCode::Internal, "a call was dropped without an answer");
      answer.await.map_err(lost)?.map(Float32Array::new).map_err(|e| pool_error(&e))
    })
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
  pub fn cancel(&self, timed_out: bool) -> bool {
    let error = if timed_out { PoolError::Timeout } else { PoolError::Cancelled };
    catch_unwind(AssertUnwindSafe(|| self.handle.cancel(error))).unwrap_or(false)
  }
}
