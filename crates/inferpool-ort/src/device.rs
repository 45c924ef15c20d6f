//! Where a worker runs: the device it is given and the execution provider that runs it.

use inferpool_core::Placement;

/// Where a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
  /// The CPU execution provider.
  Cpu,
  /// The CUDA execution provider on this device id.
  Cuda(i32),
}

impl Device {
  /// The execution provider it runs on.
  #[must_use]
  pub fn provider(self) -> Provider {
    match self {
      Self::Cpu => Provider::Cpu,
      Self::Cuda(_) => Provider::Cuda,
    }
  }

  /// Where a backend on it runs, `fallback` saying why it runs there instead of on the device
  /// its worker was given.
  pub(crate) fn placement(self, fallback: Option<&str>) -> Placement {
    Placement { provider: self.provider().as_str().to_owned(), fallback: fallback.map(Into::into) }
  }
}

/// The execution provider a worker runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
  /// ONNX Runtime's CPU provider.
  Cpu,
  /// ONNX Runtime's CUDA provider.
  Cuda,
}

impl Provider {
  /// `cpu` or `cuda`.
  #[must_use]
  pub fn as_str(self) -> &'static str {
    match self {
      Self::Cpu => "cpu",
      Self::Cuda => "cuda",
    }
  }

  /// The provider named `name` ([`Provider::as_str`]).
  #[must_use]
  pub fn from_name(name: &str) -> Option<Self> {
    [Self::Cpu, Self::Cuda].into_iter().find(|p| p.as_str() == name)
  }
}

impl std::str::FromStr for Device {
  type Err = String;
  fn from_str(s: &str) -> Result<Self, Self::Err> {
    match s {
      "cpu" => Ok(Self::Cpu),
      "cuda" => Ok(Self::Cuda(0)),
      _ => s
        .strip_prefix("cuda:")
        .and_then(|id| id.parse::<i32>().ok())
        .filter(|id| *id >= 0)
        .map(Self::Cuda)
        .ok_or_else(|| format!("unknown device {s:?}: expected \"cpu\" or \"cuda:N\"")),
    }
  }
}

impl std::fmt::Display for Device {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      Self::Cpu => f.write_str("cpu"),
      Self::Cuda(id) => write!(f, "cuda:{id}"),
    }
  }
}
