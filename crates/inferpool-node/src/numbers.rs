//! Rust counts and indices as JavaScript numbers.

/// A counter as a JavaScript number.
#[expect(clippy::cast_precision_loss, reason = "counters stay far below 2^53")]
pub(crate) fn number(n: impl TryInto<u64>) -> f64 {
  n.try_into().unwrap_or(u64::MAX) as f64
}

/// An index or a count as a JavaScript `u32` (saturating).
pub(crate) fn index(n: usize) -> u32 {
  u32::try_from(n).unwrap_or(u32::MAX)
}

/// A non-negative JavaScript number as `u64`: negative and NaN become 0, `Infinity` and numbers
/// beyond `u64::MAX` become `u64::MAX`.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "saturating")]
pub(crate) fn saturating_u64(n: f64) -> u64 {
  n.max(0.0) as u64
}
