//! Tokenizing a request's texts on the submitting thread, in chunks, so that a cancel or a
//! deadline stops it early.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  time::Instant,
};

use crate::{
  BackendError, BackendErrorKind, ModelConfig, PoolError, TokenizedText, request::Request,
  scheduler::execute::payload_text,
};

/// Texts tokenized at a time by `submit`; a cancel or a deadline is noticed between chunks.
pub(crate) const TOKENIZE_CHUNK: usize = 256;

/// Tokenizes `texts` in chunks of [`TOKENIZE_CHUNK`] with `model`'s tokenizer (a panic becomes
/// an error). `None` when the request was answered meanwhile (cancelled, or its deadline
/// passed: then it is answered with `Timeout` here): a call does not go on tokenizing for a
/// caller that has gone.
pub(crate) fn tokenize(
  model: &ModelConfig,
  request: &Request,
  texts: &[String],
) -> Result<Option<Vec<TokenizedText>>, PoolError> {
  let mut encoded = Vec::with_capacity(texts.len());
  for chunk in texts.chunks(TOKENIZE_CHUNK) {
    if request.deadline.is_some_and(|deadline| deadline <= Instant::now()) {
      request.fail(PoolError::Timeout);
    }
    if request.is_finished() {
      return Ok(None);
    }
    let tokenizer = &model.tokenizer;
    let part = catch_unwind(AssertUnwindSafe(|| tokenizer.encode(chunk))).unwrap_or_else(|p| {
      Err(BackendError::new(
        BackendErrorKind::Panic,
        format!("the tokenizer panicked: {}", payload_text(&*p)),
      ))
    })?;
    if part.len() != chunk.len() {
      return Err(PoolError::Backend(BackendError::new(
        BackendErrorKind::Model,
        format!("the tokenizer returned {} encodings for {} texts", part.len(), chunk.len()),
      )));
    }
    encoded.extend(part);
  }
  Ok(Some(encoded))
}
