//! Tokenization of a call's texts, with work bounded by the model's maximum length.
//!
//! Only the first `max_length` tokens of a text are kept, so tokenizing the whole of a long text
//! is wasted work: a 60 MB text takes seconds, for 128 tokens. Texts of at most
//! [`BYTES_PER_TOKEN`] × `max_length` bytes (nearly all) are tokenized together with
//! `encode_batch_fast`. A longer text is tokenized by prefixes:
//!
//! 1. Cut the text before a space that follows a non-whitespace character, at or below the
//!    target length (initially the threshold above), else at the first such place beyond it.
//! 2. Tokenize the prefix, with the model's truncation. If truncation dropped tokens (the prefix
//!    alone holds more than `max_length` tokens), that is the result.
//! 3. Otherwise, while text remains, double the target and repeat; past the last cut, the whole
//!    text is tokenized.
//!
//! The result is identical to tokenizing the whole text and truncating it, because a cut before
//! a space is a word boundary for the pre-tokenizers that split at spaces (BERT's, `Whitespace`,
//! `WhitespaceSplit`, GPT-2's `ByteLevel` with its regex, `Metaspace` with `split`: the words
//! before the cut are the same words in the prefix and in the whole text, and each word is
//! tokenized alone), and the tokens kept all come before the prefix's last token. A model whose
//! pre-tokenizer does not split at spaces (or has none) always gets whole texts
//! ([`splits_at_spaces`]). The normalizers in use act on characters or on runs of spaces, so
//! they see the same words either way. A text without such a place (no spaces at all) is
//! tokenized whole.

use inferpool_core::{BackendError, BackendErrorKind, Tokenize, TokenizedText};
use tokenizers::{Encoding, PreTokenizerWrapper};

use crate::model::EmbeddingModel;

/// Texts longer than this many bytes per token of the maximum length are tokenized by prefixes.
/// English averages 4 to 6 bytes per token, so a text this long nearly always holds more tokens
/// than are kept, and the first prefix is usually the last.
pub(crate) const BYTES_PER_TOKEN: usize = 32;

/// Whether `pre_tokenizer` ends a word before every space that follows a non-whitespace
/// character, in every text, so that a prefix cut there tokenizes to a prefix of the whole.
pub(crate) fn splits_at_spaces(pre_tokenizer: Option<&PreTokenizerWrapper>) -> bool {
  pre_tokenizer.is_some_and(|p| match p {
    PreTokenizerWrapper::Sequence(sequence) => {
      // Pre-tokenizers in a sequence only split further what the earlier ones produced, so the
      // first that splits at spaces decides, provided that the ones before it split only on
      // what each character is (not on patterns that may span the cut) and leave spaces alone.
      for member in sequence.as_ref() {
        if splits_at_spaces(Some(member)) {
          return true;
        }
        if !matches!(
          member,
          PreTokenizerWrapper::Punctuation(_)
            | PreTokenizerWrapper::Digits(_)
            | PreTokenizerWrapper::UnicodeScripts(_)
        ) {
          return false;
        }
      }
      false
    }
    PreTokenizerWrapper::BertPreTokenizer(_)
    | PreTokenizerWrapper::Whitespace(_)
    | PreTokenizerWrapper::WhitespaceSplit(_) => true,
    PreTokenizerWrapper::ByteLevel(byte_level) => byte_level.use_regex,
    PreTokenizerWrapper::Metaspace(metaspace) => metaspace.get_split(),
    PreTokenizerWrapper::Delimiter(delimiter) => delimiter.delimiter == ' ',
    PreTokenizerWrapper::Split(_)
    | PreTokenizerWrapper::Punctuation(_)
    | PreTokenizerWrapper::Digits(_)
    | PreTokenizerWrapper::UnicodeScripts(_)
    | PreTokenizerWrapper::FixedLength(_) => false,
  })
}

/// Whether byte `i` of `text` is a space that follows a non-whitespace character: a place to
/// cut. A space byte is always a character boundary in UTF-8.
fn is_cut(text: &str, i: usize) -> bool {
  i > 0
    && text.as_bytes()[i] == b' '
    && text[..i].chars().next_back().is_some_and(|c| !c.is_whitespace())
}

/// The next place to cut `text` after `after`: the last at or below `target`, else the first
/// beyond it, else the end of the text.
fn next_cut(text: &str, after: usize, target: usize) -> usize {
  let bytes = text.as_bytes();
  let target = target.min(bytes.len());
  let below = (after + 1..=target.min(bytes.len() - 1)).rev().find(|&i| is_cut(text, i));
  below
    .or_else(|| (target.max(after + 1)..bytes.len()).find(|&i| is_cut(text, i)))
    .unwrap_or(bytes.len())
}

fn tokenization_error(e: &tokenizers::Error) -> BackendError {
  BackendError::new(BackendErrorKind::InvalidInput, format!("tokenization failed: {e}"))
}

fn tokenized(encoding: &Encoding) -> TokenizedText {
  TokenizedText { ids: encoding.get_ids().to_vec(), type_ids: encoding.get_type_ids().to_vec() }
}

impl EmbeddingModel {
  /// Length in bytes above which a text is tokenized by prefixes.
  fn long_text_bytes(&self) -> usize {
    self.max_length.saturating_mul(BYTES_PER_TOKEN)
  }

  /// Tokenizes one long text by growing prefixes (see the module's documentation); also returns
  /// the length of the last prefix tokenized.
  fn encode_long(&self, text: &str) -> Result<(TokenizedText, usize), BackendError> {
    let mut cut = 0;
    let mut target = self.long_text_bytes();
    loop {
      cut = next_cut(text, cut, target);
      let encoding =
        self.tokenizer.encode_fast(&text[..cut], true).map_err(|e| tokenization_error(&e))?;
      if cut == text.len() || !encoding.get_overflowing().is_empty() {
        return Ok((tokenized(&encoding), cut));
      }
      target = cut.saturating_mul(2);
    }
  }
}

impl Tokenize for EmbeddingModel {
  fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedText>, BackendError> {
    let long = if self.prefix_cuts { self.long_text_bytes() } else { usize::MAX };
    let short: Vec<&str> = texts.iter().filter(|t| t.len() <= long).map(String::as_str).collect();
    let encodings =
      self.tokenizer.encode_batch_fast(short, true).map_err(|e| tokenization_error(&e))?;
    let mut short = encodings.iter().map(tokenized);
    texts
      .iter()
      .map(|text| {
        if text.len() <= long {
          Ok(short.next().expect("one encoding per short text. This is a bug."))
        } else {
          self.encode_long(text).map(|(t, _)| t)
        }
      })
      .collect()
  }
}

#[cfg(test)]
mod tests {
  use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
  };

  use serde_json::json;
  use tokenizers::{
    Tokenizer,
    pre_tokenizers::{
      bert::BertPreTokenizer,
      byte_level::ByteLevel,
      metaspace::{Metaspace, PrependScheme},
      punctuation::Punctuation,
      sequence::Sequence,
      split::Split,
      whitespace::WhitespaceSplit,
    },
  };

  use super::*;
  use crate::model::ModelFiles;

  /// A folder under the system's temporary folder, removed on drop.
  struct TempDir(PathBuf);

  impl TempDir {
    fn new(name: &str) -> Self {
      static NEXT: AtomicUsize = AtomicUsize::new(0);
      let dir = std::env::temp_dir().join(format!(
        "inferpool-ort-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
      ));
      std::fs::create_dir_all(&dir).unwrap();
      Self(dir)
    }
  }

  impl Drop for TempDir {
    fn drop(&mut self) {
      let _ = std::fs::remove_dir_all(&self.0);
    }
  }

  const WORDS: [&str; 12] =
    ["the", "man", "is", "eating", "food", "bread", "piece", "of", "a", "dog", "cat", "runs"];

  /// A tokenizer from its `tokenizer.json` form.
  fn from_json(json: &serde_json::Value) -> Tokenizer {
    json.to_string().parse().unwrap()
  }

  /// Token → id, in order.
  fn ids(tokens: &[String]) -> serde_json::Map<String, serde_json::Value> {
    tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect()
  }

  /// BERT: `BertNormalizer`, `BertPreTokenizer`, `WordPiece` over words and letters.
  fn bert() -> Tokenizer {
    let mut vocab: Vec<String> =
      ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().map(|s| (*s).to_owned()).collect();
    vocab.extend(WORDS.iter().map(|w| (*w).to_owned()));
    for c in ('a'..='z').chain('0'..='9').chain(['.', ',', '!', '?', '日', '本', 'é']) {
      vocab.push(c.to_string());
      vocab.push(format!("##{c}"));
    }
    from_json(&json!({
      "version": "1.0",
      "normalizer": {
        "type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
        "strip_accents": null, "lowercase": true
      },
      "pre_tokenizer": { "type": "BertPreTokenizer" },
      "post_processor": { "type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2] },
      "model": {
        "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
        "max_input_chars_per_word": 100, "vocab": ids(&vocab)
      }
    }))
  }

  /// GPT-2 / `RoBERTa`: `ByteLevel` with its regex, BPE with a few merges.
  fn byte_level() -> Tokenizer {
    let mut vocab: Vec<String> = vec!["<s>".into(), "</s>".into()];
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    vocab.extend(alphabet.iter().map(char::to_string));
    let merges = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("e", "a"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")];
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    from_json(&json!({
      "version": "1.0",
      "pre_tokenizer": {
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
      },
      "post_processor": {
        "type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0],
        "trim_offsets": true, "add_prefix_space": false
      },
      "model": {
        "type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
        "byte_fallback": false, "vocab": ids(&vocab),
        "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()
      }
    }))
  }

  /// XLM-R: NFKC and runs of spaces collapsed, `Metaspace`, a unigram model.
  fn metaspace() -> Tokenizer {
    let mut vocab = vec![json!(["<unk>", 0.0]), json!(["<s>", 0.0]), json!(["</s>", 0.0])];
    vocab.push(json!(["▁", -2.0]));
    for w in WORDS {
      vocab.push(json!([format!("▁{w}"), -3.0]));
      vocab.push(json!([w, -4.0]));
    }
    for c in ('a'..='z').chain(['日', '本', 'é', '.', '!']) {
      vocab.push(json!([c.to_string(), -6.0]));
    }
    from_json(&json!({
      "version": "1.0",
      "normalizer": {
        "type": "Sequence",
        "normalizers": [
          { "type": "NFKC" },
          { "type": "Replace", "pattern": { "Regex": " {2,}" }, "content": " " }
        ]
      },
      "pre_tokenizer": {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true
      },
      "post_processor": {
        "type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1],
        "trim_offsets": true, "add_prefix_space": true
      },
      "model": { "type": "Unigram", "unk_id": 0, "vocab": vocab, "byte_fallback": false }
    }))
  }

  /// Loads `tokenizer` as a model folder would be, with `max_length`.
  fn model(dir: &Path, tokenizer: &Tokenizer, max_length: usize) -> EmbeddingModel {
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).unwrap();
    let files =
      ModelFiles { dir: dir.to_path_buf(), onnx: dir.join("model.onnx"), tokenizer: path };
    EmbeddingModel::load(files, Some(max_length)).unwrap()
  }

  /// What the whole text tokenizes to, truncated: the reference.
  fn whole(model: &EmbeddingModel, text: &str) -> TokenizedText {
    tokenized(&model.tokenizer.encode_fast(text, true).unwrap())
  }

  /// A small deterministic generator (xorshift64*).
  struct Random(u64);

  impl Random {
    fn below(&mut self, n: usize) -> usize {
      self.0 ^= self.0 >> 12;
      self.0 ^= self.0 << 25;
      self.0 ^= self.0 >> 27;
      usize::try_from(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33).unwrap() % n
    }
  }

  /// Long texts whose cuts land in every awkward place: long runs of whitespace of every kind,
  /// multibyte characters next to spaces, words longer than the first prefix, no whitespace.
  fn awkward_texts(long: usize) -> Vec<String> {
    let mut texts = vec![
      "a".repeat(long * 3),
      "日本".repeat(long),
      "é".repeat(long * 2),
      "😀".repeat(long),
      format!("{}{}", " ".repeat(long * 3), "the man runs"),
      format!("the{}man is eating{}", " ".repeat(long * 2), " ".repeat(long * 2)),
      format!("{} {}", "a".repeat(long * 2), "the dog ".repeat(long)),
      "the\u{3000}man\u{a0}is\teating\nfood ".repeat(long / 8),
      "x ".repeat(long * 2),
      format!("{}{}", "\t\n ".repeat(long), "bread ".repeat(long)),
      "e\u{301} ".repeat(long),
      "日本 ".repeat(long),
      "😀 the ".repeat(long),
    ];
    let pieces =
      ["the", "man", "eating", "日本", "é", "e\u{301}", "😀", ".", "!", "ea", "thethe", "a", "ﬁ"];
    let gaps = [" ", "  ", "   ", "\t", "\n", " \n ", "\u{3000}", "\u{a0}", "", "        "];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..60 {
      let len = long + random.below(long * 4);
      let mut text = String::new();
      while text.len() < len {
        if random.below(40) == 0 {
          text.push_str(&" ".repeat(random.below(long)));
        }
        text.push_str(pieces[random.below(pieces.len())]);
        text.push_str(gaps[random.below(gaps.len())]);
      }
      texts.push(text);
    }
    texts
  }

  #[test]
  fn prefixes_tokenize_like_the_whole_text() {
    for (name, tokenizer) in
      [("bert", bert()), ("byte-level", byte_level()), ("metaspace", metaspace())]
    {
      let dir = TempDir::new(name);
      for max_length in [8, 32, 128] {
        let model = model(&dir.0, &tokenizer, max_length);
        assert!(model.prefix_cuts, "{name} splits at spaces");
        let texts = awkward_texts(model.long_text_bytes());
        let mut prefixes = 0;
        for (i, text) in texts.iter().enumerate() {
          assert!(text.len() > model.long_text_bytes());
          let (got, cut) = model.encode_long(text).unwrap();
          assert_eq!(got, whole(&model, text), "{name}, max_length {max_length}, text {i}");
          prefixes += usize::from(cut < text.len());
        }
        // The generated texts mostly stop at a prefix; the others are the no-space cases.
        assert!(prefixes > texts.len() / 2, "{name}: {prefixes} of {} used a prefix", texts.len());
        // And through the batch path, mixed with short texts, in order.
        let mut batch: Vec<String> = texts.iter().take(8).cloned().collect();
        batch.insert(3, "the man is eating".into());
        batch.push(String::new());
        let expected: Vec<TokenizedText> = batch.iter().map(|t| whole(&model, t)).collect();
        assert_eq!(model.encode(&batch).unwrap(), expected, "{name}");
      }
    }
  }

  #[test]
  fn a_60_mb_text_tokenizes_a_small_prefix() {
    let dir = TempDir::new("huge");
    let model = model(&dir.0, &bert(), 128);
    let text = "the man is eating a piece of bread ".repeat(60_000_000 / 35);
    let started = Instant::now();
    let got = model.encode(std::slice::from_ref(&text)).unwrap();
    let took = started.elapsed();
    assert_eq!(got[0].len(), 128);
    let (same, cut) = model.encode_long(&text).unwrap();
    assert_eq!(same, got[0]);
    assert!(cut <= model.long_text_bytes(), "tokenized {cut} bytes of {}", text.len());
    // Milliseconds in a release build; a whole-text pass takes seconds even there.
    assert!(took.as_millis() < 1000, "took {took:?}");
    let head = &text[..cut + 1000];
    assert_eq!(got[0], whole(&model, head));
  }

  #[test]
  fn whole_texts_when_the_pre_tokenizer_may_not_split_at_spaces() {
    let byte_level_without_regex = ByteLevel::default().use_regex(false);
    let split = Split::new(
      tokenizers::pre_tokenizers::split::SplitPattern::String(" ".into()),
      tokenizers::SplitDelimiterBehavior::Removed,
      false,
    )
    .unwrap();
    let no = [
      None,
      Some(PreTokenizerWrapper::ByteLevel(byte_level_without_regex)),
      Some(PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, false))),
      Some(PreTokenizerWrapper::Split(split.clone())),
      Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        split.into(),
        WhitespaceSplit.into(),
      ]))),
      Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        byte_level_without_regex.into(),
        WhitespaceSplit.into(),
      ]))),
    ];
    for pre in &no {
      assert!(!splits_at_spaces(pre.as_ref()), "{pre:?}");
    }
    let yes = [
      PreTokenizerWrapper::BertPreTokenizer(BertPreTokenizer),
      PreTokenizerWrapper::ByteLevel(ByteLevel::default()),
      PreTokenizerWrapper::Metaspace(Metaspace::default()),
      PreTokenizerWrapper::Sequence(Sequence::new(vec![
        Punctuation::default().into(),
        WhitespaceSplit.into(),
      ])),
    ];
    for pre in &yes {
      assert!(splits_at_spaces(Some(pre)), "{pre:?}");
    }

    // Without a pre-tokenizer a unigram model may join words across spaces: whole texts.
    let dir = TempDir::new("no-pre");
    let mut tokenizer = metaspace();
    tokenizer.with_pre_tokenizer(None::<PreTokenizerWrapper>);
    let model = model(&dir.0, &tokenizer, 8);
    assert!(!model.prefix_cuts);
    let text = "the man is eating ".repeat(model.long_text_bytes());
    assert_eq!(model.encode(std::slice::from_ref(&text)).unwrap()[0], whole(&model, &text));
  }

  #[test]
  fn cuts_fall_before_a_space_after_a_word() {
    let text = "ab  c日 d";
    // Byte offsets: a0 b1 ' '2 ' '3 c4 日5..8 ' '8 d9.
    assert!(is_cut(text, 2));
    assert!(!is_cut(text, 3));
    assert!(is_cut(text, 8));
    assert_eq!(next_cut(text, 0, 3), 2);
    assert_eq!(next_cut(text, 2, 3), 8);
    assert_eq!(next_cut(text, 2, 100), 8);
    assert_eq!(next_cut(text, 8, 9), text.len());
    assert_eq!(next_cut("abc", 0, 1), 3);
    assert_eq!(next_cut("     ", 0, 3), 5);
  }
}
