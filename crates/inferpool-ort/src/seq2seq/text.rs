//! The text of one generated row: decoded as it grows with the tokenizer's streaming decoder
//! (a character split over several tokens is emitted once whole), checked for stop sequences,
//! and handed out as deltas to a stream.

use std::sync::{Arc, Mutex, PoisonError};

use inferpool_core::{FinishReason, TokenSink};
use tokenizers::{Tokenizer, tokenizer::step_decode_stream};

/// A piece of a streamed row: one per token, then the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
  /// New text (may be empty when a token completes no character yet).
  pub text: String,
  /// The token that produced it; `None` on the last delta.
  pub token: Option<u32>,
  /// Set on the last delta.
  pub finish: Option<FinishReason>,
}

/// What a finished row produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
  /// Its text (up to, not including, a stop sequence).
  pub text: String,
  /// Its tokens (EOS excluded).
  pub tokens: Vec<u32>,
  /// Why it ended.
  pub finish: FinishReason,
}

#[derive(Default)]
struct State {
  tokens: Vec<u32>,
  /// The text decoded so far (stream chunks joined).
  text: String,
  /// How much of `text` went out as deltas.
  emitted: usize,
  /// The streaming decoder's state.
  ids: Vec<u32>,
  prefix: String,
  prefix_index: usize,
  /// Set once a delta went out: the row can no longer start again.
  streamed: bool,
  done: Option<Generated>,
}

/// Where a row's tokens become text ([`TokenSink`]).
pub struct TextSink {
  tokenizer: Arc<Tokenizer>,
  stop: Vec<String>,
  on_delta: Option<Box<dyn Fn(Delta) + Send + Sync>>,
  state: Mutex<State>,
}

impl std::fmt::Debug for TextSink {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("TextSink").field("stop", &self.stop).finish_non_exhaustive()
  }
}

impl TextSink {
  /// A sink decoding with `tokenizer`, ending the row at any of `stop` (empty strings are
  /// ignored), streaming deltas to `on_delta` when given.
  pub fn new(
    tokenizer: Arc<Tokenizer>,
    stop: Vec<String>,
    on_delta: Option<Box<dyn Fn(Delta) + Send + Sync>>,
  ) -> Self {
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    Self { tokenizer, stop, on_delta, state: Mutex::new(State::default()) }
  }

  /// What the row produced, once it finished.
  pub fn generated(&self) -> Option<Generated> {
    self.lock().done.clone()
  }

  fn lock(&self) -> std::sync::MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(PoisonError::into_inner)
  }

  /// How much of `text` can go out now: all of it but a tail that may still become a stop
  /// sequence.
  fn safe_end(&self, text: &str) -> usize {
    let mut end = text.len();
    for stop in &self.stop {
      for (cut, _) in text.char_indices().rev().take(stop.chars().count()) {
        if stop.starts_with(&text[cut..]) && cut < end {
          end = cut;
        }
      }
    }
    end
  }

  fn emit(&self, state: &mut State, end: usize, token: Option<u32>, finish: Option<FinishReason>) {
    let Some(on_delta) = &self.on_delta else { return };
    let text = state.text[state.emitted..end.max(state.emitted)].to_owned();
    state.emitted = end.max(state.emitted);
    state.streamed = true;
    on_delta(Delta { text, token, finish });
  }
}

impl TokenSink for TextSink {
  fn push(&self, token: u32) -> bool {
    let mut guard = self.lock();
    let state = &mut *guard;
    state.tokens.push(token);
    let chunk = step_decode_stream(
      &self.tokenizer,
      vec![token],
      true,
      &mut state.ids,
      &mut state.prefix,
      &mut state.prefix_index,
    )
    .ok()
    .flatten();
    // Every token makes a delta, empty while the streaming decoder holds a character back.
    let chunk = chunk.unwrap_or_default();
    // A stop sequence may start in text already held back: search from there.
    let from = state.emitted;
    state.text.push_str(&chunk);
    let found =
      self.stop.iter().filter_map(|s| state.text[from..].find(s.as_str()).map(|i| from + i)).min();
    if let Some(at) = found {
      state.text.truncate(at);
      return true;
    }
    let end = self.safe_end(&state.text);
    self.emit(state, end, Some(token), None);
    false
  }

  fn finish(&self, reason: FinishReason) {
    let mut guard = self.lock();
    let state = &mut *guard;
    if reason != FinishReason::Stop {
      // Bytes the streaming decoder still held (an unfinished character) come out as the full
      // decode writes them.
      if let Ok(full) = self.tokenizer.decode(&state.tokens, true)
        && full.starts_with(&state.text)
      {
        state.text = full;
      }
    }
    let end = state.text.len();
    self.emit(state, end, None, Some(reason));
    state.done =
      Some(Generated { text: state.text.clone(), tokens: state.tokens.clone(), finish: reason });
  }

  fn restart(&self) -> bool {
    let mut state = self.lock();
    if state.streamed {
      return false;
    }
    *state = State::default();
    true
  }
}
