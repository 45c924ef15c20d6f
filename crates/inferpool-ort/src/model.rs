//! Model folders: where the files are, the tokenizer, the maximum sequence length.
//!
//! A model is a Hugging Face style folder (`tokenizer.json`, optional `config.json` and
//! `tokenizer_config.json`, and an ONNX file as `model.onnx`, `onnx/model.onnx` or the first
//! `onnx/*.onnx`), or a path to the ONNX file itself inside such a folder.
//!
//! The JSON files are read whole, so each is read only when it is a regular file (symlinks are
//! followed) no larger than its limit ([`TOKENIZER_JSON_LIMIT`], [`CONFIG_JSON_LIMIT`]): a
//! `config.json` that links to `/dev/zero` or a FIFO is a [`BackendErrorKind::Model`] error, not
//! a read that never ends.

use std::{
  fs::{File, Metadata},
  io::Read,
  path::{Path, PathBuf},
};

use inferpool_core::{BackendError, BackendErrorKind};
use tokenizers::{Tokenizer, TruncationParams};

use crate::tokenization::splits_at_spaces;

/// Most bytes read from `tokenizer.json`. The largest published tokenizers (multilingual
/// vocabularies of 250,000 tokens) take about 17 MB.
pub const TOKENIZER_JSON_LIMIT: u64 = 64 << 20;

/// Most bytes read from `config.json` or `tokenizer_config.json`: a few kB in practice.
pub const CONFIG_JSON_LIMIT: u64 = 1 << 20;

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
    match std::fs::metadata(&tokenizer) {
      Ok(meta) => check_model_file(&tokenizer, &meta, TOKENIZER_JSON_LIMIT)?,
      Err(_) => return Err(model_error(format!("no tokenizer.json in {}", dir.display()))),
    }
    Ok(Self { dir, onnx, tokenizer })
  }
}

impl ModelFiles {
  /// Bytes of the ONNX graph and its external data files (`<name>.onnx_data`, `<name>.onnx.data`
  /// and the like beside it): a first estimate of the memory a loaded copy takes.
  #[must_use]
  pub fn weight_bytes(&self) -> u64 {
    file_bytes(&self.onnx)
  }
}

/// Bytes of the ONNX file at `onnx` and of its external data files beside it.
pub(crate) fn file_bytes(onnx: &Path) -> u64 {
  {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let Some(name) = onnx.file_name().map(|n| n.to_string_lossy().into_owned()) else {
      return 0;
    };
    let dir = onnx.parent().unwrap_or(Path::new("."));
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
    size(onnx) + external
  }
}

/// What a file that is not a regular file is, for error messages.
fn kind_of(meta: &Metadata) -> &'static str {
  let kind = meta.file_type();
  if kind.is_dir() {
    return "a directory";
  }
  #[cfg(unix)]
  {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_char_device() {
      return "a character device";
    }
    if kind.is_block_device() {
      return "a block device";
    }
    if kind.is_fifo() {
      return "a FIFO";
    }
    if kind.is_socket() {
      return "a socket";
    }
  }
  "not a regular file"
}

/// `limit` in words: "64 MiB", "1 MiB", else bytes.
fn describe_limit(limit: u64) -> String {
  if limit >= 1 << 20 && limit.is_multiple_of(1 << 20) {
    format!("{} MiB", limit >> 20)
  } else {
    format!("{limit} bytes")
  }
}

/// Fails unless `meta` (of `path`, symlinks followed) is a regular file of at most `limit` bytes.
fn check_model_file(path: &Path, meta: &Metadata, limit: u64) -> Result<(), BackendError> {
  if !meta.is_file() {
    return Err(model_error(format!(
      "{} is {}; a model file must be a regular file",
      path.display(),
      kind_of(meta)
    )));
  }
  if meta.len() > limit {
    return Err(model_error(format!(
      "{} is {} bytes, more than the {} limit for this file",
      path.display(),
      meta.len(),
      describe_limit(limit)
    )));
  }
  Ok(())
}

/// Reads the model file at `path` whole: `Ok(None)` when there is nothing at `path`, an error of
/// kind [`BackendErrorKind::Model`] when it is not a regular file (after following symlinks), is
/// larger than `limit` bytes, or cannot be read.
///
/// The type is checked before the file is opened (opening a FIFO would block), and again on the
/// opened file, whose read is capped at `limit + 1` bytes: a file swapped or grown in between
/// is caught too.
fn read_model_file(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, BackendError> {
  let unreadable = |e: std::io::Error| model_error(format!("cannot read {}: {e}", path.display()));
  let meta = match std::fs::metadata(path) {
    Ok(meta) => meta,
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
    Err(e) => return Err(unreadable(e)),
  };
  check_model_file(path, &meta, limit)?;
  let file = File::open(path).map_err(unreadable)?;
  let meta = file.metadata().map_err(unreadable)?;
  check_model_file(path, &meta, limit)?;
  let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
  file.take(limit + 1).read_to_end(&mut bytes).map_err(unreadable)?;
  if bytes.len() as u64 > limit {
    return Err(model_error(format!(
      "{} grew past the {} limit for this file while it was read",
      path.display(),
      describe_limit(limit)
    )));
  }
  Ok(Some(bytes))
}

/// Reads the JSON object in the file at `path`: `Ok(None)` when there is no file, an error of
/// kind [`BackendErrorKind::Model`] when it is not a readable JSON object within
/// [`CONFIG_JSON_LIMIT`].
pub(crate) fn read_json(
  path: &Path,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, BackendError> {
  let Some(bytes) = read_model_file(path, CONFIG_JSON_LIMIT)? else { return Ok(None) };
  match serde_json::from_slice::<serde_json::Value>(&bytes) {
    Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
    Ok(_) => Err(model_error(format!("{} is not a JSON object", path.display()))),
    Err(e) => Err(model_error(format!("{} is not valid JSON: {e}", path.display()))),
  }
}

/// Reads `key` as an unsigned integer from the JSON config file at `path`. `Ok(None)` when the
/// file is absent, is not JSON or lacks the key (such files are optional hints); an error when
/// it exists but is not a regular file of at most [`CONFIG_JSON_LIMIT`] bytes.
fn json_usize(path: &Path, key: &str) -> Result<Option<usize>, BackendError> {
  let Some(bytes) = read_model_file(path, CONFIG_JSON_LIMIT)? else { return Ok(None) };
  let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Ok(None) };
  Ok(value.get(key).and_then(serde_json::Value::as_u64).and_then(|v| usize::try_from(v).ok()))
}

/// A model's tokenizer, configured for batching: no padding (batches are padded to their longest
/// item by the backend) and truncation at the model's maximum length.
#[derive(Debug)]
pub struct EmbeddingModel {
  /// The model's files.
  pub files: ModelFiles,
  /// Longest sequence (special tokens included) fed to the model.
  pub max_length: usize,
  /// Configured for batching (see above).
  pub(crate) tokenizer: Tokenizer,
  /// Whether a long text may be tokenized by prefixes cut before a space (see
  /// [`crate::tokenization`]): the pre-tokenizer splits words at spaces.
  pub(crate) prefix_cuts: bool,
}

impl EmbeddingModel {
  /// The tokenizer (configured for batching: truncation at `max_length`, no padding).
  #[must_use]
  pub fn tokenizer(&self) -> &Tokenizer {
    &self.tokenizer
  }
}

impl EmbeddingModel {
  /// Loads the tokenizer of `files`. The maximum length is, in order: `max_length` when given,
  /// the truncation length in `tokenizer.json`, `model_max_length` from `tokenizer_config.json`,
  /// 512; always capped by `max_position_embeddings` from `config.json`.
  pub fn load(files: ModelFiles, max_length: Option<usize>) -> Result<Self, BackendError> {
    // Batches already run on several threads; the tokenizer's own pool would fight them.
    tokenizers::utils::parallelism::set_parallelism(false);
    let bytes = read_model_file(&files.tokenizer, TOKENIZER_JSON_LIMIT)?
      .ok_or_else(|| model_error(format!("no tokenizer.json in {}", files.dir.display())))?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes)
      .map_err(|e| model_error(format!("cannot read {}: {e}", files.tokenizer.display())))?;
    drop(bytes);
    let positions = json_usize(&files.dir.join("config.json"), "max_position_embeddings")?;
    let model_max_length =
      json_usize(&files.dir.join("tokenizer_config.json"), "model_max_length")?;
    let configured = tokenizer
      .get_truncation()
      .map(|t| t.max_length)
      .or_else(|| model_max_length.filter(|&n| n <= 1 << 20));
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
    let prefix_cuts = splits_at_spaces(tokenizer.get_pre_tokenizer());
    Ok(Self { files, max_length, tokenizer, prefix_cuts })
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_folder::ModelFolder as Folder;

  /// What the tests do with a model folder.
  trait Model {
    fn load(&self) -> Result<EmbeddingModel, BackendError>;
    /// Replaces `name` with a file of `len` bytes (sparse: nothing is written).
    fn sized(&self, name: &str, len: u64);
  }

  impl Model for Folder {
    fn load(&self) -> Result<EmbeddingModel, BackendError> {
      EmbeddingModel::load(ModelFiles::resolve(self.dir())?, None)
    }

    fn sized(&self, name: &str, len: u64) {
      let file = File::create(self.path(name)).unwrap();
      file.set_len(len).unwrap();
    }
  }

  fn model_failure(result: Result<EmbeddingModel, BackendError>) -> String {
    let error = result.expect_err("the model must not load");
    assert_eq!(error.kind, BackendErrorKind::Model, "{error}");
    error.message
  }

  #[cfg(unix)]
  #[test]
  fn a_link_to_a_device_is_refused_without_reading_it() {
    for name in ["config.json", "tokenizer_config.json", "tokenizer.json"] {
      let folder = Folder::new(0);
      let _ = std::fs::remove_file(folder.path(name));
      std::os::unix::fs::symlink("/dev/zero", folder.path(name)).unwrap();
      let message = model_failure(folder.load());
      assert!(message.contains(name), "{message}");
      assert!(message.contains("is a character device"), "{message}");
      assert!(message.contains("must be a regular file"), "{message}");
    }
  }

  #[test]
  fn a_directory_is_refused_a_link_to_a_regular_file_followed() {
    let folder = Folder::new(0);
    assert_eq!(folder.load().unwrap().max_length, 64);
    std::fs::remove_file(folder.path("config.json")).unwrap();
    std::fs::create_dir(folder.path("config.json")).unwrap();
    let message = model_failure(folder.load());
    assert!(message.contains("config.json is a directory"), "{message}");

    std::fs::remove_dir(folder.path("config.json")).unwrap();
    #[cfg(unix)]
    {
      let elsewhere = Folder::new(0);
      std::fs::write(elsewhere.path("config.json"), r#"{"max_position_embeddings": 16}"#).unwrap();
      std::os::unix::fs::symlink(elsewhere.path("config.json"), folder.path("config.json"))
        .unwrap();
      assert_eq!(folder.load().unwrap().max_length, 16);
      std::fs::remove_file(folder.path("config.json")).unwrap();
    }
    // Config files are optional, and one that is not JSON is ignored, as before.
    std::fs::write(folder.path("tokenizer_config.json"), "not json").unwrap();
    assert_eq!(folder.load().unwrap().max_length, 512);
  }

  #[test]
  fn files_over_their_limit_are_refused() {
    let folder = Folder::new(0);
    folder.sized("config.json", CONFIG_JSON_LIMIT + 1);
    let message = model_failure(folder.load());
    assert!(message.contains("config.json"), "{message}");
    assert!(message.contains(&format!("is {} bytes", CONFIG_JSON_LIMIT + 1)), "{message}");
    assert!(message.contains("the 1 MiB limit"), "{message}");

    let folder = Folder::new(0);
    folder.sized("tokenizer_config.json", CONFIG_JSON_LIMIT + 1);
    assert!(model_failure(folder.load()).contains("tokenizer_config.json"));

    let folder = Folder::new(0);
    folder.sized("tokenizer.json", TOKENIZER_JSON_LIMIT + 1);
    let message = model_failure(folder.load());
    assert!(message.contains("tokenizer.json"), "{message}");
    assert!(message.contains("the 64 MiB limit"), "{message}");
  }

  #[test]
  fn reads_stop_at_the_limit() {
    let folder = Folder::new(0);
    let path = folder.path("config.json");
    assert_eq!(read_model_file(&path, 1 << 10).unwrap().unwrap().len(), 31);
    let message = read_model_file(&path, 8).unwrap_err().message;
    assert!(message.contains("the 8 bytes limit"), "{message}");
    assert!(read_model_file(&folder.path("absent.json"), 8).unwrap().is_none());
  }
}
