//! The seams between the pool and a model runtime.

use crate::{BackendError, Seq2Seq};

/// One text after tokenization. Its length is what the batch policy reasons about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizedText {
  /// Token ids, special tokens included, already truncated to the model's maximum length.
  pub ids: Vec<u32>,
  /// Token type (segment) ids, one per token.
  pub type_ids: Vec<u32>,
}

impl TokenizedText {
  /// Number of tokens.
  #[must_use]
  pub fn len(&self) -> usize {
    self.ids.len()
  }

  /// Whether there are no tokens at all.
  #[must_use]
  pub fn is_empty(&self) -> bool {
    self.ids.is_empty()
  }
}

/// Turns texts into token ids. Shared by every caller, so it must be `Sync`.
pub trait Tokenize: Send + Sync + 'static {
  /// Encodes `texts`, one [`TokenizedText`] per text, in order.
  fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedText>, BackendError>;
}

/// Where a backend runs, as it reports it once built ([`Backend::placement`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
  /// The backend's own name of what it runs on: `cpu`, `cuda`, …
  pub provider: String,
  /// Why it runs elsewhere than the worker's device was meant to, when it does.
  pub fallback: Option<String>,
}

impl Default for Placement {
  /// The CPU, as asked.
  fn default() -> Self {
    Self { provider: "cpu".to_owned(), fallback: None }
  }
}

/// Runs batches for one worker. Each worker thread owns its backend (ONNX Runtime sessions
/// take `&mut self` to run), so it only needs to be `Send`.
pub trait Backend: Send + 'static {
  /// Width of one output row.
  fn dimension(&self) -> usize;

  /// Runs one batch. On success `out` (of length `batch.len() * dimension()`) holds one row per
  /// item, in batch order.
  fn run(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<(), BackendError>;

  /// Runs one batch, as [`Backend::run`], that started while every other worker of the pool
  /// was idle: a backend may spread it over the cores the others leave free. Returns whether it
  /// did (its time then says nothing of the worker's speed under load). The default runs it as
  /// any other.
  fn run_alone(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<bool, BackendError> {
    self.run(batch, out).map(|()| false)
  }

  /// Whether [`Backend::run_alone`] may spread a batch over the cores of the other workers. While
  /// it does, the workers whose backends run on those cores ([`Backend::shares_cores`]) run
  /// nothing of their own: it would take a core from the spread batch's threads and stall it.
  /// The default: no.
  fn can_spread(&self) -> bool {
    false
  }

  /// Whether its runs (batches, encoder batches, decoder steps) use the cores a spread batch
  /// spreads over, the CPU's: its worker then waits for a spread batch to end before it runs
  /// anything. A backend that can spread does. The default: [`Backend::can_spread`].
  fn shares_cores(&self) -> bool {
    self.can_spread()
  }

  /// The encoder-decoder side of a backend of a seq2seq model ([`crate::ModelKind::Seq2Seq`]):
  /// such a model's batches are encoded and decoded there, never [`Backend::run`]. `None`
  /// (the default) for an embedding model.
  fn seq2seq(&mut self) -> Option<&mut dyn Seq2Seq> {
    None
  }

  /// What it runs on, read once it is built: the worker's statistics report it
  /// ([`crate::WorkerStats::provider`]). The default: the CPU, as asked.
  fn placement(&self) -> Placement {
    Placement::default()
  }
}

/// Builds the backend of worker `index` on that worker's own thread (so that thread-affine
/// runtimes are created where they run).
pub type BackendFactory =
  Box<dyn Fn(usize) -> Result<Box<dyn Backend>, BackendError> + Send + Sync>;
