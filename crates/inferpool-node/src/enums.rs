//! The binding's string enums: the generated `.d.cts` carries each as a union of its values.

use inferpool_core::{FinishReason, ModelKind, UnloadReason, WorkerState};
use inferpool_ort::{Pooling, Provider};
use napi_derive::napi;

/// What a worker is doing.
#[napi(string_enum = "kebab-case")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingWorkerState {
  /// Waiting for work.
  Idle,
  /// Running a batch.
  Busy,
  /// Loading a model.
  Loading,
  /// Pausing after a failed batch.
  BackingOff,
  /// Its batches failed `maxAttempts` times in a row, or its device failed at start.
  Failed,
  /// Its thread has exited.
  Stopped,
}

impl From<WorkerState> for BindingWorkerState {
  fn from(state: WorkerState) -> Self {
    match state {
      WorkerState::Idle => Self::Idle,
      WorkerState::Busy => Self::Busy,
      WorkerState::Loading => Self::Loading,
      WorkerState::BackingOff => Self::BackingOff,
      WorkerState::Failed => Self::Failed,
      WorkerState::Stopped => Self::Stopped,
    }
  }
}

/// The execution provider a worker runs on.
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingProvider {
  /// ONNX Runtime's CPU provider.
  Cpu,
  /// ONNX Runtime's CUDA provider.
  Cuda,
}

impl From<Provider> for BindingProvider {
  fn from(provider: Provider) -> Self {
    match provider {
      Provider::Cpu => Self::Cpu,
      Provider::Cuda => Self::Cuda,
    }
  }
}

/// What happened, in an event.
#[napi(string_enum = "kebab-case")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingEventKind {
  /// A worker loaded a model.
  ModelLoaded,
  /// A worker unloaded a model (idle or requested).
  ModelUnloaded,
  /// A worker unloaded a model to make room for another.
  ModelEvicted,
  /// A worker could not load a model.
  ModelLoadFailed,
  /// A worker's batches failed `maxAttempts` times in a row.
  WorkerFailed,
  /// A failed worker ran a batch again.
  WorkerRecovered,
}

/// Why a model was unloaded (not evicted).
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingUnloadReason {
  /// Unused for the idle timeout.
  Idle,
  /// `unload` asked for it.
  Requested,
}

impl BindingUnloadReason {
  /// The reason of an unload that was not an eviction.
  pub(crate) fn of(reason: UnloadReason) -> Option<Self> {
    match reason {
      UnloadReason::Idle => Some(Self::Idle),
      UnloadReason::Requested => Some(Self::Requested),
      UnloadReason::Evicted { .. } => None,
    }
  }
}

/// How token states become one vector per text.
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingPooling {
  /// The mean over the real tokens.
  Mean,
  /// The first token.
  Cls,
}

impl From<BindingPooling> for Pooling {
  fn from(pooling: BindingPooling) -> Self {
    match pooling {
      BindingPooling::Mean => Self::Mean,
      BindingPooling::Cls => Self::Cls,
    }
  }
}

/// What a model does.
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingModelKind {
  /// One vector per text.
  Embedding,
  /// Generates text from a prompt (an encoder-decoder).
  Seq2seq,
}

impl From<BindingModelKind> for ModelKind {
  fn from(kind: BindingModelKind) -> Self {
    match kind {
      BindingModelKind::Embedding => Self::Embedding,
      BindingModelKind::Seq2seq => Self::Seq2Seq,
    }
  }
}

impl From<ModelKind> for BindingModelKind {
  fn from(kind: ModelKind) -> Self {
    match kind {
      ModelKind::Embedding => Self::Embedding,
      ModelKind::Seq2Seq => Self::Seq2seq,
    }
  }
}

/// Why a generated row ended.
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingFinishReason {
  /// The model chose its end-of-sequence token.
  Eos,
  /// `maxNewTokens` were generated.
  Length,
  /// A stop sequence was produced.
  Stop,
}

impl From<FinishReason> for BindingFinishReason {
  fn from(reason: FinishReason) -> Self {
    match reason {
      FinishReason::Eos => Self::Eos,
      FinishReason::Length => Self::Length,
      FinishReason::Stop => Self::Stop,
    }
  }
}
