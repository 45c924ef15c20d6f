//! Generation with encoder-decoder (seq2seq) models: what a caller asks for, the seams to the
//! runtime, and how a worker decodes.
//!
//! A prompt is one queued item, tokenized and batched by length like a text to embed; a worker
//! that takes a batch of a seq2seq model *encodes* it and starts a **cohort**: the rows that
//! decode together, one token each per *step*. The exported decoders have no decoder attention
//! mask, so every row of one decoder run must be at the same step; a cohort is that set of rows.
//! A worker holds several cohorts and interleaves them: between two steps of its cohorts it may
//! take a new batch (of any model), so a new prompt starts decoding at the next step boundary
//! instead of after the running requests ([`crate::scheduler`]'s loop). Rows that finish, are
//! cancelled or pass their deadline leave their cohort's cache at the next step.
//!
//! * [`Seq2Seq`] / [`DecodeState`]: what a backend does (encode, one decoder step, drop rows);
//! * [`sampling`]: the next token from a row's logits (greedy, or seeded sampling);
//! * [`TokenSink`]: where a row's tokens go (text, streaming, stop sequences: the caller's side).

pub(crate) mod cohort;
pub(crate) mod sampling;

use std::sync::Arc;

use crate::{BackendError, TokenizedText};

/// How one prompt is decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
  /// Most tokens generated (EOS excluded); the row ends with [`FinishReason::Length`] there.
  pub max_new_tokens: usize,
  /// EOS cannot end the row before this many tokens.
  pub min_new_tokens: usize,
  /// 0 = greedy (the most likely token, ties to the lowest id); above 0 samples from the
  /// softmax of the logits divided by it.
  pub temperature: f32,
  /// Sample among the `top_k` most likely tokens only (0 = all).
  pub top_k: usize,
  /// Sample among the most likely tokens whose probabilities add up to `top_p` (1 = all).
  pub top_p: f32,
  /// Logits of tokens already generated are divided (when positive) or multiplied (when
  /// negative) by this (1 = off), as in Hugging Face's `repetition_penalty`.
  pub repetition_penalty: f32,
  /// Seed of the sampling; the same seed gives the same tokens. `None`: from the row's place in
  /// line (still reproducible for one call, not across calls).
  pub seed: Option<u64>,
}

impl Default for GenerateParams {
  fn default() -> Self {
    Self {
      max_new_tokens: 64,
      min_new_tokens: 0,
      temperature: 0.0,
      top_k: 0,
      top_p: 1.0,
      repetition_penalty: 1.0,
      seed: None,
    }
  }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
  /// The model chose its end-of-sequence token.
  Eos,
  /// `max_new_tokens` were generated.
  Length,
  /// A stop sequence was produced ([`TokenSink::push`]).
  Stop,
}

/// Where one row's tokens go, in order, from the worker that decodes it. Called outside every
/// lock of the pool; keep it quick.
pub trait TokenSink: Send + Sync {
  /// One more generated token (never EOS). Returns `true` when the text now ends with a stop
  /// sequence: the row finishes with [`FinishReason::Stop`].
  fn push(&self, token: u32) -> bool;
  /// The row finished (called once, before the call's reply).
  fn finish(&self, reason: FinishReason);
  /// The row will be decoded again from the start on another worker (its worker failed):
  /// forget the tokens pushed so far. Returns `false` when that is impossible (they were
  /// already handed to the caller, as a stream): the row then fails instead.
  fn restart(&self) -> bool;
}

/// One prompt of a generation call: its parameters and where its tokens go.
#[derive(Clone)]
pub struct Sequence {
  /// How it is decoded.
  pub params: Arc<GenerateParams>,
  /// Its tokens' destination.
  pub sink: Arc<dyn TokenSink>,
}

impl std::fmt::Debug for Sequence {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Sequence").field("params", &self.params).finish_non_exhaustive()
  }
}

/// The decoder state of one cohort on one worker (encoder output, caches), owned by the
/// backend's code (which gets its own type back by downcasting); row `i` is the cohort's
/// `i`-th row.
pub trait DecodeState: Send + std::any::Any {
  /// Keeps only the rows at `keep` (ascending indices), in that order.
  fn retain(&mut self, keep: &[usize]) -> Result<(), BackendError>;
  /// Bytes its caches take now.
  fn cache_bytes(&self) -> u64;
}

/// What a backend of a seq2seq model does ([`crate::Backend::seq2seq`]).
pub trait Seq2Seq {
  /// The first decoder input of every row.
  fn decoder_start(&self) -> u32;
  /// The end-of-sequence token.
  fn eos(&self) -> u32;
  /// Cache bytes one row adds per token: per prompt token (cross-attention) plus per generated
  /// token (self-attention), each `2 × layers × heads × d_kv × 4`.
  fn cache_bytes_per_token(&self) -> u64;
  /// Encodes `batch` (one row each) and returns the state of a cohort of those rows, before
  /// its first step.
  fn encode(&mut self, batch: &[&TokenizedText]) -> Result<Box<dyn DecodeState>, BackendError>;
  /// Runs one decoder step: `tokens[i]` is row `i`'s latest token (the decoder start on the
  /// first step). On success `logits` holds `rows × vocabulary` values (each row's scores for
  /// the next token) and the vocabulary size is returned.
  fn step(
    &mut self,
    state: &mut dyn DecodeState,
    tokens: &[u32],
    logits: &mut Vec<f32>,
  ) -> Result<usize, BackendError>;
}
