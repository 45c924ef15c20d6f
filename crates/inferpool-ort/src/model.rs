//! Model folders: where the files are, the tokenizer, the maximum sequence length.
//!
//! A model is a Hugging Face style folder (`tokenizer.json`, optional `config.json` and
//! `tokenizer_config.json`, and an ONNX file as `model.onnx`, `onnx/model.onnx` or the first
//! `onnx/*.onnx`), or a path to the ONNX file itself inside such a folder.

use std::path::{Path, PathBuf};

use inferpool_core::{BackendError, BackendErrorKind, Tokenize, TokenizedText};
use tokenizers::{Tokenizer, TruncationParams};

/// Where a model's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
  /// The folder holding `tokenizer.json`.
  pub dir: PathBuf,
  /// The ONNX graph.
  pub onnx: PathBuf,
  /// The tokenizer definition.
  pub tokenizer: PathBuf,
}

fn model_error(message: impl Into<String>) -> BackendError {
  BackendError::new(BackendErrorKind::Model, message)
}

fn first_onnx_in(dir: &Path) -> Option<PathBuf> {
  let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
    .ok()?
    .filter_map(|entry| entry.ok().map(|e| e.path()))
    .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "onnx"))
    .collect();
  found.sort();
  found.into_iter().next()
}

impl ModelFiles {
  /// Finds the files of the model at `path` (a folder or an `.onnx` file).
  pub fn resolve(path: &Path) -> Result<Self, BackendError> {
    if !path.exists() {
      return Err(BackendError::new(
        BackendErrorKind::ModelNotFound,
        format!("no model at {}", path.display()),
      ));
    }
    let (dir, onnx) = if path.is_file() {
      let parent = path.parent().unwrap_or(Path::new("."));
      let dir = if parent.join("tokenizer.json").is_file() {
        parent.to_path_buf()
      } else {
        parent
          .parent()
          .filter(|p| p.join("tokenizer.json").is_file())
          .unwrap_or(parent)
          .to_path_buf()
      };
      (dir, path.to_path_buf())
    } else {
      let onnx = [path.join("model.onnx"), path.join("onnx").join("model.onnx")]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| first_onnx_in(&path.join("onnx")))
        .or_else(|| first_onnx_in(path))
        .ok_or_else(|| {
          BackendError::new(
            BackendErrorKind::ModelNotFound,
            format!(
              "no ONNX file in {} (looked for model.onnx, onnx/model.onnx, onnx/*.onnx, *.onnx)",
              path.display()
            ),
          )
        })?;
      (path.to_path_buf(), onnx)
    };
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
      return Err(model_error(format!("no tokenizer.json in {}", dir.display())));
    }
    Ok(Self { dir, onnx, tokenizer })
  }
}

impl ModelFiles {
  /// Bytes of the ONNX graph and its external data files (`<name>.onnx_data`, `<name>.onnx.data`
  /// and the like beside it): a first estimate of the memory a loaded copy takes.
  #[must_use]
  pub fn weight_bytes(&self) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let Some(name) = self.onnx.file_name().map(|n| n.to_string_lossy().into_owned()) else {
      return 0;
    };
    let dir = self.onnx.parent().unwrap_or(Path::new("."));
    let external: u64 = std::fs::read_dir(dir).map_or(0, |entries| {
      entries
        .filter_map(Result::ok)
        .filter(|e| {
          let other = e.file_name().to_string_lossy().into_owned();
          other != name && other.starts_with(&name)
        })
        .map(|e| size(&e.path()))
        .sum()
    });
    size(&self.onnx) + external
  }
}

/// Reads `key` as an unsigned integer from the JSON file at `path`, if both exist.
fn json_usize(path: &Path, key: &str) -> Option<usize> {
  let text = std::fs::read_to_string(path).ok()?;
  let value: serde_json::Value = serde_json::from_str(&text).ok()?;
  value.get(key)?.as_u64().and_then(|v| usize::try_from(v).ok())
}

/// A model's tokenizer, configured for batching: no padding (batches are padded to their longest
/// item by the backend) and truncation at the model's maximum length.
#[derive(Debug)]
pub struct EmbeddingModel {
  /// The model's files.
  pub files: ModelFiles,
  /// Longest sequence (special tokens included) fed to the model.
  pub max_length: usize,
  tokenizer: Tokenizer,
}

impl EmbeddingModel {
  /// Loads the tokenizer of `files`. The maximum length is, in order: `max_length` when given,
  /// the truncation length in `tokenizer.json`, `model_max_length` from `tokenizer_config.json`,
  /// 512; always capped by `max_position_embeddings` from `config.json`.
  pub fn load(files: ModelFiles, max_length: Option<usize>) -> Result<Self, BackendError> {
    // Batches already run on several threads; the tokenizer's own pool would fight them.
    tokenizers::utils::parallelism::set_parallelism(false);
    let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
      .map_err(|e| model_error(format!("cannot read {}: {e}", files.tokenizer.display())))?;
    let positions = json_usize(&files.dir.join("config.json"), "max_position_embeddings");
    let configured = tokenizer.get_truncation().map(|t| t.max_length).or_else(|| {
      json_usize(&files.dir.join("tokenizer_config.json"), "model_max_length")
        .filter(|&n| n <= 1 << 20)
    });
    let mut max_length = max_length.or(configured).unwrap_or(512);
    if let Some(positions) = positions {
      max_length = max_length.min(positions);
    }
    if max_length < 2 {
      return Err(model_error(format!("maximum sequence length {max_length} is too short")));
    }
    tokenizer.with_padding(None);
    tokenizer
      .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
      .map_err(|e| model_error(format!("cannot set truncation to {max_length}: {e}")))?;
    Ok(Self { files, max_length, tokenizer })
  }
}

impl Tokenize for EmbeddingModel {
  fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedText>, BackendError> {
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encodings = self.tokenizer.encode_batch_fast(inputs, true).map_err(|e| {
      BackendError::new(BackendErrorKind::InvalidInput, format!("tokenization failed: {e}"))
    })?;
    Ok(
      encodings
        .into_iter()
        .map(|e| TokenizedText { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() })
        .collect(),
    )
  }
}
