//! Encoder-decoder (T5-style) models exported by Hugging Face Optimum: which files a folder
//! holds, what `config.json` says, and the sessions that encode and decode
//! ([`Seq2SeqBackend`], the core's [`inferpool_core::Seq2Seq`]); the text a row's tokens make
//! ([`TextSink`]).
//!
//! Layouts, files at the folder root or under `onnx/`, beside `encoder_model.onnx`:
//! * **merged**: `decoder_model_merged.onnx`, one graph with an `If` on `use_cache_branch`
//!   (the first step without a cache, the past inputs bound as empty tensors; later steps with
//!   it);
//! * **pair**: `decoder_model.onnx` for the first step, `decoder_with_past_model.onnx` after;
//! * **no past**: `decoder_model.onnx` alone, the whole prefix run again every step.

mod session;
mod text;

use std::path::{Path, PathBuf};

use inferpool_core::{BackendError, BackendErrorKind};

pub use session::Seq2SeqBackend;
pub use text::{Delta, Generated, TextSink};

use crate::model::read_json;

/// How a folder's decoder is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
  /// `decoder_model_merged.onnx`.
  Merged {
    /// The merged decoder.
    decoder: PathBuf,
  },
  /// `decoder_model.onnx` + `decoder_with_past_model.onnx`.
  Pair {
    /// The first step's decoder.
    decoder: PathBuf,
    /// The later steps' decoder.
    with_past: PathBuf,
  },
  /// `decoder_model.onnx` alone.
  NoPast {
    /// The decoder, run on the whole prefix.
    decoder: PathBuf,
  },
}

impl Layout {
  /// `merged`, `pair` or `no-past`.
  #[must_use]
  pub fn name(&self) -> &'static str {
    match self {
      Self::Merged { .. } => "merged",
      Self::Pair { .. } => "pair",
      Self::NoPast { .. } => "no-past",
    }
  }

  fn files(&self) -> Vec<&Path> {
    match self {
      Self::Merged { decoder } | Self::NoPast { decoder } => vec![decoder],
      Self::Pair { decoder, with_past } => vec![decoder, with_past],
    }
  }
}

/// What the model's `config.json` (and `generation_config.json`) say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq2SeqConfig {
  /// The first decoder input.
  pub decoder_start: u32,
  /// End of sequence.
  pub eos: u32,
  /// Padding of encoder inputs.
  pub pad: u32,
  /// Decoder layers.
  pub layers: usize,
  /// Attention heads.
  pub heads: usize,
  /// Width of one head.
  pub d_kv: usize,
  /// `max_new_tokens` from `generation_config.json`, if it says.
  pub max_new_tokens: Option<usize>,
}

/// The files of an encoder-decoder model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq2SeqFiles {
  /// The folder (holding `tokenizer.json` and `config.json`).
  pub dir: PathBuf,
  /// `encoder_model.onnx`.
  pub encoder: PathBuf,
  /// The decoder files.
  pub layout: Layout,
}

fn invalid(message: impl Into<String>) -> BackendError {
  BackendError::new(BackendErrorKind::Model, message)
}

impl Seq2SeqFiles {
  /// Whether `dir` looks like an encoder-decoder export (it has `encoder_model.onnx`).
  #[must_use]
  pub fn detect(dir: &Path) -> bool {
    [dir.to_path_buf(), dir.join("onnx")].iter().any(|d| d.join("encoder_model.onnx").is_file())
  }

  /// Finds the files of the model in `dir` (a layout above, at its root or under `onnx/`).
  pub fn resolve(dir: &Path) -> Result<Self, BackendError> {
    if !dir.is_dir() {
      return Err(BackendError::new(
        BackendErrorKind::ModelNotFound,
        format!("no model folder at {}", dir.display()),
      ));
    }
    let place = [dir.join("onnx"), dir.to_path_buf()]
      .into_iter()
      .find(|d| d.join("encoder_model.onnx").is_file())
      .ok_or_else(|| {
        invalid(format!(
          "{} is not a seq2seq export: no encoder_model.onnx at its root or under onnx/",
          dir.display()
        ))
      })?;
    let file = |name: &str| Some(place.join(name)).filter(|p| p.is_file());
    let layout = if let Some(decoder) = file("decoder_model_merged.onnx") {
      Layout::Merged { decoder }
    } else if let Some(decoder) = file("decoder_model.onnx") {
      match file("decoder_with_past_model.onnx") {
        Some(with_past) => Layout::Pair { decoder, with_past },
        None => Layout::NoPast { decoder },
      }
    } else {
      return Err(invalid(format!(
        "{} has encoder_model.onnx but no decoder: expected decoder_model_merged.onnx, or decoder_model.onnx (with or without decoder_with_past_model.onnx)",
        place.display()
      )));
    };
    if !dir.join("tokenizer.json").is_file() {
      return Err(invalid(format!("no tokenizer.json in {}", dir.display())));
    }
    Ok(Self { dir: dir.to_path_buf(), encoder: place.join("encoder_model.onnx"), layout })
  }

  /// Bytes of every ONNX file (and external data beside it): a first estimate of its memory.
  #[must_use]
  pub fn weight_bytes(&self) -> u64 {
    let mut paths = vec![self.encoder.as_path()];
    paths.extend(self.layout.files());
    paths.iter().map(|p| crate::model::file_bytes(p)).sum()
  }

  /// Reads `config.json` and `generation_config.json`.
  pub fn config(&self) -> Result<Seq2SeqConfig, BackendError> {
    let config_path = self.dir.join("config.json");
    let config = read_json(&config_path)?.ok_or_else(|| {
      invalid(format!("no config.json in {}: a seq2seq model needs one", self.dir.display()))
    })?;
    let generation = read_json(&self.dir.join("generation_config.json"))?.unwrap_or_default();
    // A token id may be given as a list (several EOS ids): the first one is taken.
    let number = |key: &str| {
      let value = generation.get(key).or_else(|| config.get(key))?;
      let value = value.as_array().and_then(|list| list.first()).unwrap_or(value);
      value.as_u64().and_then(|v| usize::try_from(v).ok())
    };
    let required = |keys: &[&str]| {
      keys
        .iter()
        .find_map(|k| number(k))
        .ok_or_else(|| invalid(format!("{} has no {}", config_path.display(), keys.join(" or "))))
    };
    let token = |keys: &[&str]| {
      required(keys).and_then(|v| {
        u32::try_from(v).map_err(|_| invalid(format!("{} is not a token id: {v}", keys[0])))
      })
    };
    let pad = token(&["pad_token_id"])?;
    let decoder_start = token(&["decoder_start_token_id"]).unwrap_or(pad);
    let eos = token(&["eos_token_id"])?;
    let layers = required(&["num_decoder_layers", "decoder_layers", "num_layers"])?;
    let heads = required(&["num_heads", "decoder_attention_heads", "num_attention_heads"])?;
    let d_kv = match number("d_kv") {
      Some(d) => d,
      None => required(&["d_model"])? / heads.max(1),
    };
    Ok(Seq2SeqConfig {
      decoder_start,
      eos,
      pad,
      layers,
      heads,
      d_kv,
      max_new_tokens: number("max_new_tokens"),
    })
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::test_folder::ModelFolder;

  /// A folder with the files `names` (empty), `config` as `config.json`.
  fn folder(names: &[&str], config: &str) -> ModelFolder {
    let folder = ModelFolder::new(0);
    std::fs::remove_file(folder.path("model.onnx")).unwrap();
    std::fs::write(folder.path("config.json"), config).unwrap();
    for name in names {
      let path = folder.path(name);
      std::fs::create_dir_all(path.parent().unwrap()).unwrap();
      std::fs::write(path, b"x").unwrap();
    }
    folder
  }

  const T5: &str = r#"{"d_model": 512, "num_layers": 6, "num_heads": 8, "d_kv": 64,
    "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}"#;

  #[test]
  fn finds_each_layout_at_the_root_or_under_onnx() {
    let cases: [(&[&str], &str); 4] = [
      (
        &["onnx/encoder_model.onnx", "onnx/decoder_model_merged.onnx", "onnx/decoder_model.onnx"],
        "merged",
      ),
      (&["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"], "pair"),
      (&["onnx/encoder_model.onnx", "onnx/decoder_model.onnx"], "no-past"),
      (&["encoder_model.onnx", "decoder_model_merged.onnx"], "merged"),
    ];
    for (names, layout) in cases {
      let folder = folder(names, T5);
      assert!(Seq2SeqFiles::detect(folder.dir()));
      let files = Seq2SeqFiles::resolve(folder.dir()).unwrap();
      assert_eq!(files.layout.name(), layout, "{names:?}");
      assert!(files.encoder.ends_with("encoder_model.onnx"));
      assert_eq!(
        files.weight_bytes(),
        names.len().min(if layout == "pair" { 3 } else { 2 }) as u64
      );
    }
  }

  #[test]
  fn a_folder_without_a_decoder_or_encoder_names_what_is_missing() {
    let folder = folder(&["onnx/encoder_model.onnx"], T5);
    let error = Seq2SeqFiles::resolve(folder.dir()).unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Model);
    assert!(error.message.contains("decoder_model_merged.onnx"), "{error}");
    let folder = folder_without_encoder();
    assert!(!Seq2SeqFiles::detect(folder.dir()));
    let error = Seq2SeqFiles::resolve(folder.dir()).unwrap_err();
    assert!(error.message.contains("no encoder_model.onnx"), "{error}");
  }

  fn folder_without_encoder() -> ModelFolder {
    folder(&["onnx/decoder_model.onnx"], T5)
  }

  #[test]
  fn reads_the_ids_and_shapes_from_the_configs() {
    let folder = folder(&["encoder_model.onnx", "decoder_model.onnx"], T5);
    let files = Seq2SeqFiles::resolve(folder.dir()).unwrap();
    let config = files.config().unwrap();
    assert_eq!((config.decoder_start, config.eos, config.pad), (0, 1, 0));
    assert_eq!((config.layers, config.heads, config.d_kv, config.max_new_tokens), (6, 8, 64, None));
    // generation_config.json wins, an EOS list gives its first id, d_kv falls back to
    // d_model / heads, decoder layers to num_layers.
    std::fs::write(
      folder.path("generation_config.json"),
      r#"{"eos_token_id": [5, 6], "decoder_start_token_id": 3, "max_new_tokens": 40}"#,
    )
    .unwrap();
    std::fs::write(
      folder.path("config.json"),
      r#"{"d_model": 512, "num_layers": 4, "num_decoder_layers": 2, "num_heads": 8, "pad_token_id": 0, "eos_token_id": 1}"#,
    )
    .unwrap();
    let config = files.config().unwrap();
    assert_eq!((config.decoder_start, config.eos, config.layers, config.d_kv), (3, 5, 2, 64));
    assert_eq!(config.max_new_tokens, Some(40));
    std::fs::write(folder.path("config.json"), r#"{"num_heads": 8}"#).unwrap();
    let error = files.config().unwrap_err();
    assert!(error.message.contains("pad_token_id"), "{error}");
    std::fs::write(folder.path("config.json"), "not json").unwrap();
    assert!(files.config().unwrap_err().message.contains("not valid JSON"));
  }
}
