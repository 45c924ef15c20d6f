//! A model folder for the crate's unit tests: a small `WordPiece` `tokenizer.json`, a
//! `config.json` and a `model.onnx` of a given size (never loaded), removed on drop.

use std::{
  path::{Path, PathBuf},
  sync::atomic::{AtomicUsize, Ordering},
};

pub(crate) struct ModelFolder(PathBuf);

impl ModelFolder {
  /// A new folder whose `model.onnx` has `onnx_bytes` bytes.
  pub(crate) fn new(onnx_bytes: usize) -> Self {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
      "inferpool-ort-test-{}-{}",
      std::process::id(),
      NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let tokenizer = serde_json::json!({
      "version": "1.0",
      "pre_tokenizer": { "type": "BertPreTokenizer" },
      "model": {
        "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
        "max_input_chars_per_word": 100, "vocab": { "[UNK]": 0, "a": 1 }
      }
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"max_position_embeddings": 64}"#).unwrap();
    std::fs::write(dir.join("model.onnx"), vec![0_u8; onnx_bytes]).unwrap();
    Self(dir)
  }

  /// The folder.
  pub(crate) fn dir(&self) -> &Path {
    &self.0
  }

  /// A file in it.
  pub(crate) fn path(&self, name: &str) -> PathBuf {
    self.0.join(name)
  }
}

impl Drop for ModelFolder {
  fn drop(&mut self) {
    let _ = std::fs::remove_dir_all(&self.0);
  }
}
