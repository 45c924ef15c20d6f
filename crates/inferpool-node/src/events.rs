//! `BindingEvent`: something that happened to a model or a worker, sent to the `onEvent`
//! callback of `createPool`.

use std::sync::Arc;

use inferpool_core::{Event, EventSink, UnloadReason};
use napi::{
  Status,
  threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
};
use napi_derive::napi;

use crate::{
  enums::{BindingEventKind, BindingUnloadReason},
  errors::BindingError,
  numbers::index,
};

/// Something that happened to a model or a worker.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct BindingEvent {
  /// What happened.
  pub kind: BindingEventKind,
  /// Worker index.
  pub worker: u32,
  /// Model index, for model events.
  pub model: Option<u32>,
  /// Why a model was unloaded.
  pub reason: Option<BindingUnloadReason>,
  /// For an eviction: the model loaded in its place.
  pub for_model: Option<u32>,
  /// For a failure: the error.
  pub error: Option<BindingError>,
  /// For a load: how long it took, milliseconds.
  pub took_ms: Option<f64>,
}

/// Where the binding sends events: does not keep the process alive.
pub(crate) type EventCallback =
  ThreadsafeFunction<BindingEvent, (), BindingEvent, Status, false, true>;

/// The core's event sink that forwards every event to `callback` without blocking.
pub(crate) fn event_sink(callback: EventCallback) -> EventSink {
  Arc::new(move |event: Event| {
    let _ = callback.call(event.into(), ThreadsafeFunctionCallMode::NonBlocking);
  })
}

impl From<Event> for BindingEvent {
  fn from(event: Event) -> Self {
    let base = |kind: BindingEventKind, worker: usize, model: Option<usize>| Self {
      kind,
      worker: index(worker),
      model: model.map(index),
      reason: None,
      for_model: None,
      error: None,
      took_ms: None,
    };
    match event {
      Event::ModelLoaded { model, worker, took } => Self {
        took_ms: Some(took.as_secs_f64() * 1e3),
        ..base(BindingEventKind::ModelLoaded, worker, Some(model))
      },
      Event::ModelUnloaded { model, worker, reason: UnloadReason::Evicted { for_model } } => Self {
        for_model: Some(index(for_model)),
        ..base(BindingEventKind::ModelEvicted, worker, Some(model))
      },
      Event::ModelUnloaded { model, worker, reason } => Self {
        reason: BindingUnloadReason::of(reason),
        ..base(BindingEventKind::ModelUnloaded, worker, Some(model))
      },
      Event::ModelLoadFailed { model, worker, error } => Self {
        error: Some((&error).into()),
        ..base(BindingEventKind::ModelLoadFailed, worker, Some(model))
      },
      Event::WorkerFailed { worker, error } => {
        Self { error: Some((&error).into()), ..base(BindingEventKind::WorkerFailed, worker, None) }
      }
      Event::WorkerRecovered { worker } => base(BindingEventKind::WorkerRecovered, worker, None),
    }
  }
}
