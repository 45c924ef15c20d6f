//! inferpool-ort: the ONNX Runtime side of inferpool.
//!
//! * [`runtime`]: loads `libonnxruntime` from an absolute path once per process (the `ort` crate's
//!   `load-dynamic` mode) and reports its version.
//! * [`model`]: finds the files of a Hugging Face style model folder, reads its tokenizer and
//!   decides the maximum sequence length.
//! * [`backend`]: one ONNX Runtime session per worker, pooling and normalisation; implements the
//!   core's [`inferpool_core::Backend`].
//! * `device`: where a worker runs ([`Device`]) and the execution provider that runs it
//!   ([`Provider`]), as its backends report it to the core ([`inferpool_core::Placement`]).
//! * `lone`: the model's lone session, which a batch runs on when the rest of the pool is idle.
//! * [`pooling`]: mean / CLS pooling and L2 normalisation, free of ONNX Runtime.
//! * `tokenization`: a call's texts to token ids, long texts by prefixes (the work bounded by
//!   the maximum length).
//! * [`spec`] and `assembly`: a pool described in plain Rust ([`PoolSpec`]) and
//!   [`build_pool`], which resolves the models, loads their tokenizers and starts the core's pool
//!   with a factory of sessions.

mod affinity;
mod assembly;
pub mod backend;
mod device;
mod lone;
pub mod model;
pub mod pooling;
pub mod runtime;
pub mod seq2seq;
pub mod spec;
#[cfg(test)]
mod test_folder;
mod tokenization;

pub use assembly::{BuiltPool, Generator, WorkerDevices, build_pool};
pub use backend::{Device, Provider, SessionOptions, SessionSpec, model_factory};
pub use model::{EmbeddingModel, ModelFiles};
pub use pooling::Pooling;
pub use runtime::{RuntimeInfo, init_runtime};
pub use spec::{ModelSpec, PoolSpec};
