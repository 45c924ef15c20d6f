//! The sessions of one encoder-decoder model on one worker, and a cohort's decoder state.
//!
//! The state keeps ONNX Runtime's own output values between steps (the encoder's hidden states,
//! the caches), so a step copies nothing but its logits; dropping rows gathers every tensor
//! along the batch axis once.

use std::{borrow::Cow, collections::HashMap};

use inferpool_core::{
  Backend, BackendError, BackendErrorKind, DecodeState, Placement, Seq2Seq, TokenizedText,
};
use ort::{
  session::{Session, SessionInputValue},
  value::{DynValue, Tensor},
};

use crate::{
  backend::{Device, Threading, inference_error, open_session, run_error},
  seq2seq::{Layout, Seq2SeqConfig, Seq2SeqFiles},
};

const USE_CACHE_BRANCH: &str = "use_cache_branch";

/// The sessions of one seq2seq model on one worker.
pub struct Seq2SeqBackend {
  encoder: Session,
  /// The first step's decoder (the merged one does every step).
  decoder: Session,
  /// The later steps' decoder of the pair layout.
  with_past: Option<Session>,
  layout: &'static str,
  config: Seq2SeqConfig,
  device: Device,
  /// Why it was built on the CPU instead of its worker's GPU, when this load fell back.
  pub(crate) fallback: Option<String>,
  /// Names of the decoder inputs, per session (first, later).
  inputs: (Vec<String>, Vec<String>),
}

impl std::fmt::Debug for Seq2SeqBackend {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Seq2SeqBackend")
      .field("layout", &self.layout)
      .field("device", &self.device)
      .finish_non_exhaustive()
  }
}

/// A cohort's state: one row per prompt.
struct CohortState {
  rows: usize,
  /// The encoder's output, `[rows, prompt, d_model]`.
  hidden: DynValue,
  /// The prompt mask, `[rows, prompt]`, and its width.
  mask: Vec<i64>,
  prompt: usize,
  /// Caches by past input name (`past_key_values.{i}.{decoder|encoder}.{key|value}`); empty
  /// before the first step.
  past: HashMap<String, DynValue>,
  /// Every row's decoder inputs so far (the no-past layout runs them all each step).
  history: Vec<Vec<i64>>,
}

/// Gathers rows `keep` of `value` along its first axis.
fn gather_rows(value: &DynValue, keep: &[usize]) -> Result<DynValue, BackendError> {
  let (shape, data) = value
    .try_extract_tensor::<f32>()
    .map_err(|e| run_error(format!("a cache is not a float tensor: {e}")))?;
  let dims: Vec<i64> = shape.iter().copied().collect();
  let rows = usize::try_from(dims.first().copied().unwrap_or(0)).unwrap_or(0);
  let width = data.len().checked_div(rows).unwrap_or(0);
  let mut out = Vec::with_capacity(width * keep.len());
  for &row in keep {
    out.extend_from_slice(&data[row * width..(row + 1) * width]);
  }
  let mut new_dims = dims;
  new_dims[0] = i64::try_from(keep.len()).unwrap_or(0);
  Tensor::from_array((new_dims, out))
    .map(Tensor::into_dyn)
    .map_err(|e| run_error(format!("cannot build a cache tensor: {e}")))
}

impl DecodeState for CohortState {
  fn retain(&mut self, keep: &[usize]) -> Result<(), BackendError> {
    self.hidden = gather_rows(&self.hidden, keep)?;
    let prompt = self.prompt;
    self.mask =
      keep.iter().flat_map(|&r| self.mask[r * prompt..(r + 1) * prompt].to_vec()).collect();
    for value in self.past.values_mut() {
      *value = gather_rows(value, keep)?;
    }
    if !self.history.is_empty() {
      self.history = keep.iter().map(|&r| self.history[r].clone()).collect();
    }
    self.rows = keep.len();
    Ok(())
  }

  fn cache_bytes(&self) -> u64 {
    let bytes = |v: &DynValue| v.try_extract_tensor::<f32>().map_or(0, |(_, d)| d.len() as u64 * 4);
    self.past.values().map(bytes).sum::<u64>() + bytes(&self.hidden)
  }
}

fn dim(n: usize) -> Result<i64, BackendError> {
  i64::try_from(n).map_err(|_| run_error(format!("a dimension of {n} is too large")))
}

fn tensor_i64(
  shape: [usize; 2],
  data: Vec<i64>,
) -> Result<SessionInputValue<'static>, BackendError> {
  Tensor::from_array(([dim(shape[0])?, dim(shape[1])?], data))
    .map(Into::into)
    .map_err(|e| run_error(format!("cannot create an input tensor: {e}")))
}

fn names(session: &Session) -> Vec<String> {
  session.inputs().iter().map(|i| i.name().to_owned()).collect()
}

/// Each row's logits at its last position, from the decoder's `logits` output
/// `[rows, length, vocabulary]`, into `logits`.
fn last_logits(
  outputs: &ort::session::SessionOutputs<'_>,
  rows: usize,
  logits: &mut Vec<f32>,
) -> Result<(), BackendError> {
  let value = outputs.get("logits").ok_or_else(|| run_error("the decoder produced no logits"))?;
  let (shape, data) = value
    .try_extract_tensor::<f32>()
    .map_err(|e| run_error(format!("logits are not a float tensor: {e}")))?;
  let dims: &[i64] = shape;
  if dims.len() != 3 || dims[0] != dim(rows)? || dims[2] <= 0 {
    return Err(run_error(format!(
      "logits have shape {dims:?}, expected [{rows}, length, vocabulary]"
    )));
  }
  let (steps, vocabulary) =
    (usize::try_from(dims[1]).unwrap_or(0), usize::try_from(dims[2]).unwrap_or(0));
  if steps == 0 {
    return Err(run_error("the decoder produced logits for no position"));
  }
  logits.clear();
  logits.reserve(rows * vocabulary);
  for row in 0..rows {
    let last = (row * steps + steps - 1) * vocabulary;
    logits.extend_from_slice(&data[last..last + vocabulary]);
  }
  Ok(())
}

impl Seq2SeqBackend {
  /// Opens the model's sessions on `device`, each with `threads` intra-op threads.
  pub fn new(
    files: &Seq2SeqFiles,
    config: Seq2SeqConfig,
    device: Device,
    threads: usize,
  ) -> Result<Self, BackendError> {
    let encoder = open_session(&files.encoder, device, &Threading::plain(threads))?;
    let encoder_inputs = names(&encoder);
    for required in ["input_ids", "attention_mask"] {
      if !encoder_inputs.iter().any(|n| n == required) {
        return Err(BackendError::new(
          BackendErrorKind::Model,
          format!(
            "{} has inputs {encoder_inputs:?}; an encoder needs {required:?}",
            files.encoder.display()
          ),
        ));
      }
    }
    let (decoder, with_past) = match &files.layout {
      Layout::Merged { decoder } | Layout::NoPast { decoder } => {
        (open_session(decoder, device, &Threading::plain(threads))?, None)
      }
      Layout::Pair { decoder, with_past } => (
        open_session(decoder, device, &Threading::plain(threads))?,
        Some(open_session(with_past, device, &Threading::plain(threads))?),
      ),
    };
    let first = names(&decoder);
    if !first.iter().any(|n| n == "input_ids")
      || !decoder.outputs().iter().any(|o| o.name() == "logits")
    {
      return Err(BackendError::new(
        BackendErrorKind::Model,
        format!(
          "the decoder of {} needs an input_ids input and a logits output",
          files.dir.display()
        ),
      ));
    }
    let later = with_past.as_ref().map_or_else(|| first.clone(), names);
    Ok(Self {
      encoder,
      decoder,
      with_past,
      layout: files.layout.name(),
      config,
      device,
      fallback: None,
      inputs: (first, later),
    })
  }

  fn state(state: &mut dyn DecodeState) -> Result<&mut CohortState, BackendError> {
    let state: &mut dyn std::any::Any = state;
    state.downcast_mut::<CohortState>().ok_or_else(|| run_error("not a state of this model"))
  }
}

impl Backend for Seq2SeqBackend {
  fn dimension(&self) -> usize {
    0
  }

  fn run(&mut self, _: &[&TokenizedText], _: &mut [f32]) -> Result<(), BackendError> {
    Err(BackendError::new(
      BackendErrorKind::InvalidInput,
      "a seq2seq model generates text; it does not embed",
    ))
  }

  fn seq2seq(&mut self) -> Option<&mut dyn Seq2Seq> {
    Some(self)
  }

  fn placement(&self) -> Placement {
    self.device.placement(self.fallback.as_deref())
  }

  fn shares_cores(&self) -> bool {
    self.device == Device::Cpu
  }
}

impl Seq2Seq for Seq2SeqBackend {
  fn decoder_start(&self) -> u32 {
    self.config.decoder_start
  }

  fn eos(&self) -> u32 {
    self.config.eos
  }

  fn cache_bytes_per_token(&self) -> u64 {
    (2 * self.config.layers * self.config.heads * self.config.d_kv * 4) as u64
  }

  fn encode(&mut self, batch: &[&TokenizedText]) -> Result<Box<dyn DecodeState>, BackendError> {
    let rows = batch.len();
    let prompt = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![i64::from(self.config.pad); rows * prompt];
    let mut mask = vec![0_i64; rows * prompt];
    for (r, item) in batch.iter().enumerate() {
      for (j, &id) in item.ids.iter().enumerate() {
        ids[r * prompt + j] = i64::from(id);
        mask[r * prompt + j] = 1;
      }
    }
    let inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
      ("input_ids".into(), tensor_i64([rows, prompt], ids)?),
      ("attention_mask".into(), tensor_i64([rows, prompt], mask.clone())?),
    ];
    let device = self.device;
    let mut outputs = self
      .encoder
      .run(inputs)
      .map_err(|e| inference_error(format!("encoding on {device} failed: {e}")))?;
    let hidden = outputs
      .remove("last_hidden_state")
      .ok_or_else(|| run_error("the encoder produced no last_hidden_state"))?;
    drop(outputs);
    Ok(Box::new(CohortState {
      rows,
      hidden,
      mask,
      prompt,
      past: HashMap::new(),
      history: Vec::new(),
    }))
  }

  fn step(
    &mut self,
    state: &mut dyn DecodeState,
    tokens: &[u32],
    logits: &mut Vec<f32>,
  ) -> Result<usize, BackendError> {
    let state = Self::state(state)?;
    let rows = state.rows;
    if tokens.len() != rows {
      return Err(run_error(format!("{} tokens for {rows} rows", tokens.len())));
    }
    let no_past = self.layout == "no-past";
    let first = state.past.is_empty();
    let (ids, length) = if no_past {
      if state.history.is_empty() {
        state.history = vec![Vec::new(); rows];
      }
      for (history, &token) in state.history.iter_mut().zip(tokens) {
        history.push(i64::from(token));
      }
      let length = state.history[0].len();
      (state.history.concat(), length)
    } else {
      (tokens.iter().map(|&t| i64::from(t)).collect(), 1)
    };
    let (session, input_names) = match (&mut self.with_past, first) {
      (Some(with_past), false) => (with_past, &self.inputs.1),
      _ => (&mut self.decoder, &self.inputs.0),
    };
    let config = &self.config;
    let mut empty: Vec<(String, DynValue)> = Vec::new();
    let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
      Vec::with_capacity(input_names.len());
    for name in input_names {
      let value: SessionInputValue<'_> = match name.as_str() {
        "input_ids" => tensor_i64([rows, length], ids.clone())?,
        "encoder_attention_mask" | "attention_mask" => {
          tensor_i64([rows, state.prompt], state.mask.clone())?
        }
        "encoder_hidden_states" => (&state.hidden).into(),
        USE_CACHE_BRANCH => Tensor::from_array(([1_i64], vec![!first]))
          .map(Into::into)
          .map_err(|e| run_error(format!("cannot create {USE_CACHE_BRANCH}: {e}")))?,
        past if past.starts_with("past_key_values.") => {
          if let Some(value) = state.past.get(past) {
            value.into()
          } else if first {
            // The first step of a merged decoder still binds its past inputs: empty ones.
            let shape = [dim(rows)?, dim(config.heads)?, 0, dim(config.d_kv)?];
            let value = Tensor::from_array((shape, Vec::<f32>::new()))
              .map_err(|e| run_error(format!("cannot create an empty cache: {e}")))?
              .into_dyn();
            empty.push((past.to_owned(), value));
            continue;
          } else {
            return Err(run_error(format!("the decoder wants {past:?}, which no step produced")));
          }
        }
        other => {
          return Err(BackendError::new(
            BackendErrorKind::Model,
            format!("the decoder has an input {other:?} that inferpool cannot feed"),
          ));
        }
      };
      inputs.push((Cow::Owned(name.clone()), value));
    }
    for (name, value) in &empty {
      inputs.push((Cow::Owned(name.clone()), value.into()));
    }
    let device = self.device;
    let mut outputs = session
      .run(inputs)
      .map_err(|e| inference_error(format!("decoding on {device} failed: {e}")))?;
    last_logits(&outputs, rows, logits)?;
    if !no_past {
      let names: Vec<String> =
        outputs.keys().filter(|k| k.starts_with("present.")).map(ToString::to_string).collect();
      for name in names {
        let past = name.replacen("present.", "past_key_values.", 1);
        // After the first step the encoder's (cross-attention) presents are placeholders:
        // the first step's are kept.
        if !first && past.contains(".encoder.") {
          continue;
        }
        if let Some(value) = outputs.remove(&name) {
          state.past.insert(past, value);
        }
      }
    }
    Ok(logits.len() / rows.max(1))
  }
}
