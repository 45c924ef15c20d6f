//! One ONNX Runtime session per worker.
//!
//! The session is created on the worker's own thread ([`model_factory`]). Its inputs must be
//! `input_ids` and `attention_mask`, optionally `token_type_ids`; its token-level output is
//! `last_hidden_state` (or `token_embeddings`, or the first rank-3 output). A batch is padded to
//! its longest item; pooling only reads the real tokens of each row.

use std::{borrow::Cow, path::PathBuf, sync::OnceLock};

use inferpool_core::{
  Backend, BackendError, BackendErrorKind, ModelFactory, Placement, TokenizedText,
};
use ort::{
  ep,
  session::{Session, SessionInputValue, builder::GraphOptimizationLevel},
  value::Tensor,
};

pub use crate::device::{Device, Provider};
use crate::{
  pooling::{Pooling, normalize, pool_into},
  runtime::environment,
};

/// How each session is built and how its output is reduced.
#[derive(Clone, Debug)]
pub struct SessionOptions {
  /// ONNX Runtime intra-op threads per session.
  pub intra_threads: usize,
  /// Threads of the model's lone session on the CPU, shared by the pool's CPU workers: a batch
  /// that starts while every other worker is idle runs there, over the cores the others leave
  /// free ([`Backend::run_alone`]). At most `intra_threads`: no lone session.
  pub lone_threads: usize,
  /// Token states → one vector.
  pub pooling: Pooling,
  /// Scale every result to unit length.
  pub normalize: bool,
}

/// A session on one device, ready to run batches.
pub struct OrtBackend {
  session: Session,
  /// The model's lone session, for CPU workers of a pool with cores to spare.
  pub(crate) lone: Option<crate::lone::Lone>,
  device: Device,
  /// Why it was built on the CPU instead of its worker's GPU, when this load fell back.
  fallback: Option<String>,
  feeds_token_type_ids: bool,
  output: String,
  hidden: usize,
  options: SessionOptions,
}

impl std::fmt::Debug for OrtBackend {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("OrtBackend")
      .field("device", &self.device)
      .field("hidden", &self.hidden)
      .finish_non_exhaustive()
  }
}

fn model_error(message: impl Into<String>) -> BackendError {
  BackendError::new(BackendErrorKind::Model, message)
}

pub(crate) fn run_error(message: impl Into<String>) -> BackendError {
  BackendError::new(BackendErrorKind::Run, message)
}

/// How a failed `Session::run` is reported: an allocation failure (the CPU arena's or the
/// device's) is [`BackendErrorKind::OutOfMemory`], so the pool retries the texts in smaller
/// batches and caps its budget; anything else is a run failure.
pub(crate) fn inference_error(message: String) -> BackendError {
  /// Phrases ONNX Runtime and CUDA use for a failed allocation, lower case.
  const OUT_OF_MEMORY: &[&str] = &[
    "out of memory",
    "failed to allocate memory",
    "available memory of",
    "bad_alloc",
    "bad allocation",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
  ];
  let lower = message.to_lowercase();
  let kind = if OUT_OF_MEMORY.iter().any(|phrase| lower.contains(phrase)) {
    BackendErrorKind::OutOfMemory
  } else {
    BackendErrorKind::Run
  };
  BackendError::new(kind, message)
}

const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const TOKEN_TYPE_IDS: &str = "token_type_ids";

impl OrtBackend {
  /// Creates the session for `onnx` on `device`.
  pub fn new(
    onnx: &std::path::Path,
    device: Device,
    options: SessionOptions,
  ) -> Result<Self, BackendError> {
    let threads = Threading::plain(options.intra_threads);
    Self::build(onnx, device, options, &threads)
  }

  /// Creates a session with the given threads.
  pub(crate) fn build(
    onnx: &std::path::Path,
    device: Device,
    options: SessionOptions,
    threads: &Threading,
  ) -> Result<Self, BackendError> {
    let session = open_session(onnx, device, threads)?;

    let names: Vec<&str> = session.inputs().iter().map(ort::value::Outlet::name).collect();
    for required in [INPUT_IDS, ATTENTION_MASK] {
      if !names.contains(&required) {
        return Err(model_error(format!(
          "{} has inputs {names:?}; an embedding model needs {INPUT_IDS:?} and {ATTENTION_MASK:?} (and optionally {TOKEN_TYPE_IDS:?})",
          onnx.display()
        )));
      }
    }
    if let Some(extra) =
      names.iter().find(|n| ![INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS].contains(n))
    {
      return Err(model_error(format!(
        "{} has an input {extra:?} that inferpool cannot feed (it feeds {INPUT_IDS:?}, {ATTENTION_MASK:?}, {TOKEN_TYPE_IDS:?})",
        onnx.display()
      )));
    }
    let feeds_token_type_ids = names.contains(&TOKEN_TYPE_IDS);

    let rank3 = |o: &&ort::value::Outlet| o.dtype().tensor_shape().is_some_and(|s| s.len() == 3);
    let outputs = session.outputs();
    let output = outputs
      .iter()
      .find(|o| o.name() == "last_hidden_state" || o.name() == "token_embeddings")
      .filter(rank3)
      .or_else(|| outputs.iter().find(rank3))
      .ok_or_else(|| {
        let names: Vec<&str> = outputs.iter().map(ort::value::Outlet::name).collect();
        model_error(format!(
          "{} has no token-level output of rank 3 (outputs: {names:?})",
          onnx.display()
        ))
      })?;
    let output_name = output.name().to_owned();
    let declared_hidden =
      output.dtype().tensor_shape().and_then(|s| usize::try_from(s[2]).ok()).filter(|&h| h > 0);

    let mut backend = Self {
      session,
      lone: None,
      device,
      fallback: None,
      feeds_token_type_ids,
      output: output_name,
      hidden: 0,
      options,
    };
    backend.hidden = if let Some(h) = declared_hidden {
      h
    } else {
      // The hidden size is symbolic: learn it from one tiny run.
      let probe = TokenizedText { ids: vec![0], type_ids: vec![0] };
      backend.forward(&[&probe], |_, hidden, _| hidden)?
    };
    Ok(backend)
  }

  /// Runs the batch and returns what `read` makes of the token states (a view of the session's
  /// output: `[rows, seq, hidden]`, row after row), given the hidden size and the padded length.
  fn forward<R>(
    &mut self,
    batch: &[&TokenizedText],
    read: impl FnOnce(&[f32], usize, usize) -> R,
  ) -> Result<R, BackendError> {
    let rows = batch.len();
    let seq = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![0_i64; rows * seq];
    let mut mask = vec![0_i64; rows * seq];
    let mut types = vec![0_i64; rows * seq];
    for (r, item) in batch.iter().enumerate() {
      let base = r * seq;
      for (j, (&id, &ty)) in item.ids.iter().zip(&item.type_ids).enumerate() {
        ids[base + j] = i64::from(id);
        types[base + j] = i64::from(ty);
        mask[base + j] = 1;
      }
    }
    let dim = |n: usize| {
      i64::try_from(n).map_err(|_| run_error(format!("a batch dimension of {n} is too large")))
    };
    let shape = [dim(rows)?, dim(seq)?];
    let tensor = |data: Vec<i64>| -> Result<SessionInputValue<'static>, BackendError> {
      Tensor::from_array((shape, data))
        .map(Into::into)
        .map_err(|e| run_error(format!("cannot create an input tensor: {e}")))
    };
    let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
      vec![(INPUT_IDS.into(), tensor(ids)?), (ATTENTION_MASK.into(), tensor(mask)?)];
    if self.feeds_token_type_ids {
      inputs.push((TOKEN_TYPE_IDS.into(), tensor(types)?));
    }
    let device = self.device;
    let outputs = self
      .session
      .run(inputs)
      .map_err(|e| inference_error(format!("inference on {device} failed: {e}")))?;
    let value = outputs
      .get(self.output.as_str())
      .ok_or_else(|| run_error(format!("the model produced no {:?}", self.output)))?;
    let (out_shape, data) = value
      .try_extract_tensor::<f32>()
      .map_err(|e| run_error(format!("output {:?} is not a float tensor: {e}", self.output)))?;
    let dims: &[i64] = out_shape;
    if dims.len() != 3 || dims[0] != shape[0] || dims[1] != shape[1] || dims[2] <= 0 {
      return Err(run_error(format!(
        "output {:?} has shape {dims:?}, expected [{rows}, {seq}, hidden]",
        self.output
      )));
    }
    let hidden = usize::try_from(dims[2]).expect("checked positive above");
    Ok(read(data, hidden, seq))
  }
}

/// The intra-op threads of a session.
#[derive(Clone, Debug, Default)]
pub(crate) struct Threading {
  /// Threads, the caller's included.
  pub(crate) threads: usize,
  /// The threads spin while a run goes on (no sleep between two operators) and stop as soon as
  /// it returns: idle, they sleep.
  pub(crate) spin: bool,
  /// One core (0-based) per pool thread (`threads - 1` of them), or none: not pinned.
  pub(crate) pinned: Vec<usize>,
}

impl Threading {
  /// `threads` threads that sleep between operators and are not pinned.
  pub(crate) fn plain(threads: usize) -> Self {
    Self { threads, ..Self::default() }
  }
}

/// A session of `onnx` on `device` with the given intra-op threads.
pub(crate) fn open_session(
  onnx: &std::path::Path,
  device: Device,
  threading: &Threading,
) -> Result<Session, BackendError> {
  let Threading { threads, spin, ref pinned } = *threading;
  let env = environment()?;
  let builder_error = |e: ort::Error<_>| model_error(format!("cannot configure a session: {e}"));
  let mut builder = Session::builder(env)
    .map_err(|e| model_error(format!("cannot create a session builder: {e}")))?
    .with_optimization_level(GraphOptimizationLevel::All)
    .map_err(builder_error)?
    .with_intra_threads(threads.max(1))
    .map_err(builder_error)?
    .with_inter_threads(1)
    .map_err(builder_error)?
    .with_intra_op_spinning(spin)
    .map_err(builder_error)?
    .with_config_entry("session.force_spinning_stop", if spin { "1" } else { "0" })
    .map_err(builder_error)?
    .with_inter_op_spinning(false)
    .map_err(builder_error)?;
  if !pinned.is_empty() {
    // ONNX Runtime numbers cores from 1, one group per pool thread.
    let cores: Vec<String> = pinned.iter().map(|core| (core + 1).to_string()).collect();
    builder = builder
      .with_config_entry("session.intra_op_thread_affinities", cores.join(";"))
      .map_err(builder_error)?;
  }
  if let Device::Cuda(id) = device {
    builder = builder
      .with_execution_providers([ep::CUDA::default().with_device_id(id).build().error_on_failure()])
      .map_err(|e| {
        BackendError::new(
          BackendErrorKind::Device,
          format!("cannot use {device}: the CUDA execution provider failed: {e}"),
        )
      })?;
  }
  let session = builder.commit_from_file(onnx).map_err(|e| {
    let kind = if matches!(device, Device::Cuda(_)) && e.to_string().contains("CUDA") {
      BackendErrorKind::Device
    } else {
      BackendErrorKind::Model
    };
    BackendError::new(kind, format!("cannot load {} on {device}: {e}", onnx.display()))
  })?;
  Ok(session)
}

impl Backend for OrtBackend {
  fn dimension(&self) -> usize {
    self.hidden
  }

  fn placement(&self) -> Placement {
    self.device.placement(self.fallback.as_deref())
  }

  fn run_alone(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<bool, BackendError> {
    if let Some(ran) = self.lone.as_ref().and_then(|lone| lone.run(batch, out)) {
      return ran.map(|()| true);
    }
    self.run(batch, out).map(|()| false)
  }

  fn can_spread(&self) -> bool {
    self.lone.is_some()
  }

  fn shares_cores(&self) -> bool {
    self.device == Device::Cpu
  }

  fn run(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<(), BackendError> {
    let expected = self.hidden;
    let SessionOptions { pooling, normalize: unit, .. } = self.options;
    self.forward(batch, |states, hidden, seq| {
      if hidden != expected {
        return Err(run_error(format!(
          "the model returned {hidden} values per token, expected {expected}"
        )));
      }
      for ((item, row), token_states) in
        batch.iter().zip(out.chunks_exact_mut(hidden)).zip(states.chunks_exact(seq * hidden))
      {
        pool_into(pooling, token_states, hidden, item.len(), row);
        if unit {
          normalize(row);
        }
      }
      Ok(())
    })?
  }
}

/// One model a factory can load: its ONNX file and how its sessions run.
#[derive(Clone, Debug)]
pub struct SessionSpec {
  /// The ONNX graph.
  pub onnx: PathBuf,
  /// Threads, pooling, normalisation.
  pub options: SessionOptions,
  /// For an encoder-decoder model: its files and configuration (`onnx` is then its encoder).
  pub seq2seq: Option<(crate::seq2seq::Seq2SeqFiles, crate::seq2seq::Seq2SeqConfig)>,
}

/// Builds a backend with `open` on `device`. With `cpu_fallback`, a GPU backend that cannot
/// be built is built on the CPU instead, and the GPU's error is returned with it.
fn open_or_fall_back<B>(
  device: Device,
  cpu_fallback: bool,
  open: impl Fn(Device) -> Result<B, BackendError>,
) -> Result<(B, Option<String>), BackendError> {
  match open(device) {
    Err(error) if cpu_fallback && device != Device::Cpu => {
      // A model that cannot load fails on the CPU too, and that error is the one reported.
      let backend = open(Device::Cpu)?;
      Ok((backend, Some(error.message.trim_end().to_owned())))
    }
    built => built.map(|backend| (backend, None)),
  }
}

/// A factory that gives worker `w` a session of `models[m]` on `devices[w]`. With
/// `cpu_fallback`, a worker whose GPU session cannot be built gets a CPU session instead, which
/// reports why ([`Backend::placement`]), and its later loads go to the CPU directly; without,
/// the error is returned.
#[must_use]
pub fn model_factory(
  models: Vec<SessionSpec>,
  devices: Vec<Device>,
  cpu_fallback: bool,
) -> ModelFactory {
  let lone = crate::lone::LoneSessions::new(models.len());
  // Why each worker fell back to the CPU, set by its first load that did.
  let fallbacks: Vec<OnceLock<String>> = devices.iter().map(|_| OnceLock::new()).collect();
  Box::new(move |worker, model| {
    let spec = models.get(model).ok_or_else(|| model_error(format!("no model {model}")))?;
    // A worker that fell back once loads on the CPU directly; the core keeps the reason its
    // first fallback reported (`WorkerStats::fallback`).
    let fell_back = fallbacks.get(worker).is_some_and(|slot| slot.get().is_some());
    let device =
      if fell_back { Device::Cpu } else { devices.get(worker).copied().unwrap_or(Device::Cpu) };
    let remember = |fell: Option<String>| {
      if let (Some(reason), Some(slot)) = (&fell, fallbacks.get(worker)) {
        let _ = slot.set(reason.clone());
      }
      fell
    };
    if let Some((files, config)) = &spec.seq2seq {
      let threads = spec.options.intra_threads;
      let (mut backend, fell) = open_or_fall_back(device, cpu_fallback, |device| {
        crate::seq2seq::Seq2SeqBackend::new(files, config.clone(), device, threads)
      })?;
      backend.fallback = remember(fell);
      return Ok(Box::new(backend) as Box<dyn Backend>);
    }
    let (mut backend, fell) = open_or_fall_back(device, cpu_fallback, |device| {
      OrtBackend::new(&spec.onnx, device, spec.options.clone())
    })?;
    backend.fallback = remember(fell);
    if backend.device == Device::Cpu {
      backend.lone = lone.attach(model, spec);
    }
    Ok(Box::new(backend) as Box<dyn Backend>)
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn allocation_failures_are_out_of_memory_and_the_rest_run_failures() {
    // Messages as ONNX Runtime's CPU arena, its CUDA allocator, cuBLAS and the C++ runtime
    // word them.
    for message in [
      "Non-zero status code returned while running MatMul node. Name:'/MatMul' Status Message: \
       /onnxruntime/core/framework/bfc_arena.cc:359 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 4294967296",
      "Available memory of 1048576 is smaller than requested bytes of 8388608",
      "CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; expr=cudaMalloc((void**)&p, size);",
      "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0",
      "std::bad_alloc",
    ] {
      assert_eq!(
        inference_error(message.to_owned()).kind,
        BackendErrorKind::OutOfMemory,
        "{message}"
      );
    }
    for message in [
      "Non-zero status code returned while running Gather node. Status Message: indices element out of data bounds, idx=30522",
      "Got invalid dimensions for input: input_ids for the following indices",
    ] {
      assert_eq!(inference_error(message.to_owned()).kind, BackendErrorKind::Run, "{message}");
    }
  }

  #[test]
  fn a_gpu_that_fails_falls_back_to_the_cpu_only_when_allowed_and_says_why() {
    let open = |device: Device| match device {
      Device::Cpu => Ok(device),
      Device::Cuda(_) => Err(BackendError::new(BackendErrorKind::Device, "no CUDA for cuda:1\n")),
    };
    let (built, fell) = open_or_fall_back(Device::Cuda(1), true, open).unwrap();
    assert_eq!((built, fell.as_deref()), (Device::Cpu, Some("no CUDA for cuda:1")));
    let error = open_or_fall_back(Device::Cuda(1), false, open).unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Device);
    assert_eq!(open_or_fall_back(Device::Cpu, true, open).unwrap(), (Device::Cpu, None));
    let placement = Device::Cpu.placement(fell.as_deref());
    assert_eq!((placement.provider.as_str(), placement.fallback), ("cpu", fell));
    assert_eq!(
      Device::Cuda(0).placement(None),
      Placement { provider: "cuda".into(), fallback: None }
    );
  }
}
