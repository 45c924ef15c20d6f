//! `BindingGeneration`: one `generate` call (one or more prompts), its answer, its stream of
//! deltas and the means to cancel it.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::Arc,
};

use crate::{
  call::{Answer, dispatch, inline},
  enums::BindingFinishReason,
  errors::{BindingErrorCode, Result, coded},
  numbers::index,
  options::BindingGenerateOptions,
};
use inferpool_core::{
  CallHandle, Pool, PoolError, Sequence, SubmitOptions, TokenCounts, TokenSink,
};
use inferpool_ort::{Generator, seq2seq::TextSink};
use napi::{
  Env, Status,
  bindgen_prelude::PromiseRaw,
  threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
};
use napi_derive::napi;

/// One prompt's result.
#[napi(object)]
#[derive(Debug)]
pub struct BindingGenerated {
  /// The text (up to, not including, a stop sequence).
  pub text: String,
  /// The generated token ids (EOS excluded).
  pub tokens: Vec<u32>,
  /// Why it ended.
  pub finish_reason: BindingFinishReason,
  /// Tokens of its prompt as the encoder was fed them (special tokens included, after
  /// truncation).
  pub prompt_tokens: u32,
}

/// A piece of a streamed prompt: its new text and the token that made it, or, last, why it
/// ended.
#[napi(object)]
#[derive(Debug)]
pub struct BindingDelta {
  /// Which prompt of the call.
  pub index: u32,
  /// New text (whole characters only).
  pub text: String,
  /// The token; absent on the last delta.
  pub token: Option<u32>,
  /// Set on the last delta of the prompt.
  pub finish_reason: Option<BindingFinishReason>,
  /// Tokens of the prompt as the encoder was fed them; on the last delta only.
  pub prompt_tokens: Option<u32>,
}

/// Where a stream's deltas go: does not keep the process alive.
pub(crate) type DeltaCallback =
  ThreadsafeFunction<BindingDelta, (), BindingDelta, Status, false, true>;

/// One `generate` call.
#[napi]
#[derive(Debug)]
pub struct BindingGeneration {
  handle: Arc<CallHandle>,
  answer: Arc<Answer>,
  sinks: Vec<Arc<TextSink>>,
  token_counts: TokenCounts,
}

impl BindingGeneration {
  /// Submits `prompts` to seq2seq model `model` of `pool` and returns the call at once.
  pub(crate) fn submit(
    pool: Arc<Pool>,
    (model, generator): (usize, &Generator),
    prompts: Vec<String>,
    options: BindingGenerateOptions,
    submit: SubmitOptions,
    on_delta: Option<DeltaCallback>,
  ) -> Self {
    let params = Arc::new(options.params(generator.config.max_new_tokens));
    let stop = options.stop;
    let on_delta = on_delta.map(Arc::new);
    let token_counts = TokenCounts::default();
    let sinks: Vec<Arc<TextSink>> = (0..prompts.len())
      .map(|i| {
        let stream = on_delta.as_ref().map(|callback| {
          let callback = Arc::clone(callback);
          let counts = Arc::clone(&token_counts);
          Box::new(move |delta: inferpool_ort::seq2seq::Delta| {
            // Counted when the prompts were tokenized, before any of them was queued.
            let prompt_tokens =
              delta.finish.and_then(|_| counts.get().and_then(|c| c.get(i).copied())).map(index);
            let delta = BindingDelta {
              index: index(i),
              text: delta.text,
              token: delta.token,
              finish_reason: delta.finish.map(Into::into),
              prompt_tokens,
            };
            let _ = callback.call(delta, ThreadsafeFunctionCallMode::NonBlocking);
          }) as Box<dyn Fn(inferpool_ort::seq2seq::Delta) + Send + Sync>
        });
        Arc::new(TextSink::new(Arc::clone(&generator.tokenizer), stop.clone(), stream))
      })
      .collect();
    let sequences: Vec<Sequence> = sinks
      .iter()
      .map(|sink| Sequence {
        params: Arc::clone(&params),
        sink: Arc::clone(sink) as Arc<dyn TokenSink>,
      })
      .collect();
    let submit = SubmitOptions { token_counts: Some(Arc::clone(&token_counts)), ..submit };
    let (handle, answer) = dispatch(submit, inline(&prompts), move |options, reply| {
      pool.generate(model, &prompts, sequences, options, reply)
    });
    Self { handle, answer, sinks, token_counts }
  }
}

#[napi]
impl BindingGeneration {
  /// Resolves with one result per prompt, in order, or rejects with the call's error (once).
  #[napi]
  pub fn result<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Vec<BindingGenerated>>> {
    let sinks = self.sinks.clone();
    let counts = Arc::clone(&self.token_counts);
    self.answer.promise(env, move |_| {
      let counts = counts.get().cloned().unwrap_or_default();
      sinks
        .iter()
        .enumerate()
        .map(|(i, sink)| {
          let done = sink.generated().ok_or_else(|| {
            coded(BindingErrorCode::Internal, "a prompt was answered without its text")
          })?;
          Ok(BindingGenerated {
            text: done.text,
            tokens: done.tokens,
            finish_reason: done.finish.into(),
            prompt_tokens: counts.get(i).copied().map_or(0, index),
          })
        })
        .collect()
    })
  }

  /// Answers the call with `TIMEOUT` when `timedOut`, else with `ABORTED`, unless it has been
  /// answered; its rows leave their cohorts at the next step. Returns whether this decided the
  /// outcome.
  #[napi]
  #[must_use]
  pub fn cancel(&self, timed_out: bool) -> bool {
    let error = if timed_out { PoolError::Timeout } else { PoolError::Cancelled };
    catch_unwind(AssertUnwindSafe(|| self.handle.cancel(error))).unwrap_or(false)
  }
}
