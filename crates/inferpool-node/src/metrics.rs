//! `BindingHistogram` and `BindingModelHistograms`: what `metrics()` returns.

use inferpool_core::{HistogramSnapshot, PoolStats};
use napi_derive::napi;

use crate::numbers::number;

/// A histogram in `metrics()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingHistogram {
  /// Upper bounds of the buckets, increasing.
  pub bounds: Vec<f64>,
  /// Observations at or below each bound (cumulative).
  pub counts: Vec<f64>,
  /// Observations.
  pub count: f64,
  /// Sum of the observations.
  pub sum: f64,
}

impl From<&HistogramSnapshot> for BindingHistogram {
  fn from(h: &HistogramSnapshot) -> Self {
    Self {
      bounds: h.buckets.iter().map(|b| b.0).collect(),
      counts: h.buckets.iter().map(|b| number(b.1)).collect(),
      count: number(h.count),
      sum: h.sum,
    }
  }
}

/// One model's histograms in `metrics()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingModelHistograms {
  /// Per text: queued to the start of its batch, seconds.
  pub queue_wait: BindingHistogram,
  /// Per call: tokenizing, seconds.
  pub tokenize: BindingHistogram,
  /// Per call: submitted to answered, seconds.
  pub end_to_end: BindingHistogram,
  /// Per worker, by index: batch run time, seconds.
  pub inference: Vec<BindingHistogram>,
  /// Per worker, by index: texts per batch.
  pub batch_size: Vec<BindingHistogram>,
  /// A seq2seq model's: per prompt, queued to its first token, seconds.
  pub first_token: Option<BindingHistogram>,
  /// A seq2seq model's: per token after a prompt's first, the time since the previous one.
  pub per_token: Option<BindingHistogram>,
}

impl BindingModelHistograms {
  /// Every model's histograms in `stats`, by model index.
  pub(crate) fn all(stats: &PoolStats) -> Vec<Self> {
    stats
      .models
      .iter()
      .enumerate()
      .map(|(m, model)| Self {
        queue_wait: (&model.queue_wait).into(),
        tokenize: (&model.tokenize).into(),
        end_to_end: (&model.end_to_end).into(),
        inference: stats.workers.iter().map(|w| (&w.models[m].inference).into()).collect(),
        batch_size: stats.workers.iter().map(|w| (&w.models[m].batch_size).into()).collect(),
        first_token: model.generation.as_ref().map(|g| (&g.first_token).into()),
        per_token: model.generation.as_ref().map(|g| (&g.per_token).into()),
      })
      .collect()
  }
}
