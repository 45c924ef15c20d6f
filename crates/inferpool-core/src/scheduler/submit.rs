//! Submitting work: texts to embed and prompts to generate from, tokenized on the caller's
//! thread, admitted (or refused, or waiting for room) and queued (module docs of
//! [`crate::scheduler`], step 1).

use std::{
  sync::{Arc, atomic::Ordering},
  time::Instant,
};

use crate::{
  ModelKind, PoolError, Reply, Sequence, SubmitOptions, TokenizedText,
  request::Request,
  scheduler::{
    Pool, Ticket,
    admission::Waiting,
    registry::{OPEN, Registry},
    sleep::Wake,
    tokenize,
  },
};

impl Pool {
  /// [`Pool::submit_to`] the first model.
  pub fn submit(
    &self,
    texts: &[String],
    options: SubmitOptions,
    reply: Reply,
  ) -> Result<Ticket, PoolError> {
    self.submit_to(0, texts, options, reply)
  }

  /// Tokenizes `texts` with model `model`'s tokenizer on the calling thread and queues them as
  /// one request. `reply` is called exactly once, from a worker thread (or this one), with
  /// `texts.len() × dimension` values in input order, or with the first error. When `submit_to`
  /// itself returns an error, `reply` is never called.
  pub fn submit_to(
    &self,
    model: usize,
    texts: &[String],
    options: SubmitOptions,
    reply: Reply,
  ) -> Result<Ticket, PoolError> {
    self.check_kind(model, ModelKind::Embedding)?;
    self.submit_request(model, texts, options, reply, Vec::new())
  }

  /// Queues `prompts` for generation with seq2seq model `model`, one row each, tokenized on the
  /// calling thread like [`Pool::submit_to`]'s texts. Row `i` is decoded as `sequences[i]`
  /// says and its tokens go to its sink, which is told how it finished before `reply` is
  /// called, exactly once, with an empty `Ok` when every row has finished, or with the first
  /// error. Cancelling the ticket (or its call handle) drops its rows at their next step.
  pub fn generate(
    &self,
    model: usize,
    prompts: &[String],
    sequences: Vec<Sequence>,
    options: SubmitOptions,
    reply: Reply,
  ) -> Result<Ticket, PoolError> {
    self.check_kind(model, ModelKind::Seq2Seq)?;
    if sequences.len() != prompts.len() {
      return Err(PoolError::InvalidInput(format!(
        "{} prompts but {} sequences",
        prompts.len(),
        sequences.len()
      )));
    }
    if let Some(bad) = sequences.iter().find(|s| s.params.max_new_tokens == 0) {
      return Err(PoolError::InvalidInput(format!(
        "max_new_tokens must be at least 1 (got {})",
        bad.params.max_new_tokens
      )));
    }
    self.submit_request(model, prompts, options, reply, sequences)
  }

  /// What kind model `model` is, or an error naming both kinds when it is not `wanted`.
  fn check_kind(&self, model: usize, wanted: ModelKind) -> Result<(), PoolError> {
    let Some(shared) = self.registry.models.get(model) else {
      return Err(PoolError::InvalidInput(format!("no model {model}")));
    };
    let kind = shared.config.kind;
    if kind == wanted {
      return Ok(());
    }
    let (name, does) = match kind {
      ModelKind::Embedding => ("embedding model", "embed texts"),
      ModelKind::Seq2Seq => ("seq2seq model", "generate text"),
    };
    Err(PoolError::InvalidInput(format!(
      "model {:?} is a {name}: it can only {does}",
      shared.config.name
    )))
  }

  fn submit_request(
    &self,
    model: usize,
    texts: &[String],
    options: SubmitOptions,
    reply: Reply,
    sequences: Vec<Sequence>,
  ) -> Result<Ticket, PoolError> {
    let registry = &self.registry;
    let shared = &registry.models[model];
    let submitted = Instant::now();
    let registry_for_reply = Arc::clone(registry);
    let reply: Reply = Box::new(move |result| {
      registry_for_reply.models[model].histograms.end_to_end.record_duration(submitted.elapsed());
      reply(result);
      // Its items have left: a waiting request may fit now.
      registry_for_reply.admit_waiting();
    });
    let SubmitOptions { priority, deadline, handle, progress, turn, token_counts } = options;
    let request = Arc::new(
      Request::new(texts.len(), model, priority, deadline, progress, reply)
        .with_sequences(sequences),
    );
    if let Some(Err(error)) = handle.map(|h| h.attach(&request)) {
      // Cancelled before it was submitted: the error is the answer, given here.
      request.forget_reply();
      return Err(error);
    }
    let ticket = Ticket { request: Arc::clone(&request) };
    let count = texts.len();
    if count == 0 {
      if registry.closing() != OPEN {
        request.forget_reply();
        return Err(PoolError::Closed);
      }
      request.complete_empty();
      return Ok(ticket);
    }
    let limit = registry.config.max_queued_items;
    let wait = registry.config.wait_when_full && count <= limit;
    let turn = turn.unwrap_or_else(|| self.next_turn());
    // Reserve the places (or, when the request may wait, count it as waiting, in its turn)
    // before looking at `closing` (both SeqCst): a drain that starts after this check then sees
    // it and keeps its workers until these items are done.
    let before = if wait {
      registry.admission.begin(turn, count);
      0
    } else {
      registry.outstanding.items.fetch_add(count, Ordering::SeqCst)
    };
    let release = |registry: &Registry| {
      if wait {
        registry.admission.abandon(turn, count);
      } else {
        registry.outstanding.items.fetch_sub(count, Ordering::SeqCst);
      }
      request.forget_reply();
      // A draining worker may be waiting for the count to reach zero, and waiting requests
      // for room.
      registry.sleep.notify(Wake::All);
      registry.admit_waiting();
    };
    if registry.closing() != OPEN {
      release(registry);
      return Err(PoolError::Closed);
    }
    if let Some(reason) = registry.unplaceable(model) {
      release(registry);
      return Err(PoolError::Unavailable(reason));
    }
    if !wait && before + count > limit {
      release(registry);
      let queued = registry.outstanding.items.load(Ordering::Relaxed);
      return Err(PoolError::Overloaded { queued, requested: count, limit });
    }
    let tokenizing = Instant::now();
    let encoded = match tokenize::tokenize(&shared.config, &request, texts) {
      Ok(Some(encoded)) => encoded,
      Ok(None) => {
        // Answered (cancelled or past its deadline) while it was tokenized.
        release(registry);
        return Ok(ticket);
      }
      Err(error) => {
        release(registry);
        return Err(error);
      }
    };
    shared.histograms.tokenize.record_duration(tokenizing.elapsed());
    if let Some(counts) = token_counts {
      // Set once, here, by the only submit of this request.
      let _ = counts.set(encoded.iter().map(TokenizedText::len).collect());
    }
    if wait {
      registry.admission.enqueue(Waiting { turn, request, model, items: encoded });
      registry.admit_waiting();
    } else {
      registry.enqueue(model, &request, encoded);
    }
    Ok(ticket)
  }
}
