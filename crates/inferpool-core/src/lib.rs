//! inferpool-core: the part of inferpool that knows neither Node.js nor ONNX Runtime.
//!
//! It owns the request bookkeeping (every accepted item completes exactly once, results are
//! placed by index), the shared queue, the batch policy and the worker threads. Models are
//! reached through two seams:
//!
//! * [`Tokenize`]: turns texts into token ids before they are queued, so that every queued item
//!   has a known length and batches can be cut by padded-token cost;
//! * [`Backend`]: runs one batch on one worker's device and returns one row per item; a
//!   backend of an encoder-decoder model also encodes and decodes ([`Seq2Seq`]): generation
//!   is batched in cohorts (`generation`).
//!
//! Tests and the simulation run the real pool against the simulated backend (`sim`, behind the
//! `sim` feature), so nothing here needs ONNX Runtime or a GPU.

mod backend;
mod batch;
mod cancel;
mod config;
mod error;
mod generation;
mod metrics;
mod models;
mod request;
mod scheduler;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod stats;

pub use backend::{Backend, BackendFactory, Placement, Tokenize, TokenizedText};
pub use batch::{BatchPolicy, ShareRule};
pub use cancel::CallHandle;
pub use config::{CloseMode, MAX_MODELS, PoolConfig};
pub use error::{BackendError, BackendErrorKind, PoolError};
pub use generation::{DecodeState, FinishReason, GenerateParams, Seq2Seq, Sequence, TokenSink};
pub use metrics::{HistogramSnapshot, SECONDS_BUCKETS, SIZE_BUCKETS};
pub use models::{
  Event, EventSink, ModelConfig, ModelFactory, ModelKind, Models, USAGE_HALF_LIFE, UnloadReason,
};
pub use request::{Priority, Progress, Reply, SubmitOptions, TokenCounts};
pub use scheduler::{Pool, Ticket};
pub use stats::{
  GenerationStats, ModelStats, PoolStats, WorkerModelStats, WorkerState, WorkerStats,
};
