//! Pooling of token states into one vector per text, and L2 normalisation.

/// How token states become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
  /// The mean of the states of the real tokens (attention mask = 1).
  #[default]
  Mean,
  /// The state of the first token (`[CLS]`).
  Cls,
}

impl std::str::FromStr for Pooling {
  type Err = String;
  fn from_str(s: &str) -> Result<Self, Self::Err> {
    match s {
      "mean" => Ok(Self::Mean),
      "cls" => Ok(Self::Cls),
      other => Err(format!("unknown pooling {other:?}: expected \"mean\" or \"cls\"")),
    }
  }
}

/// Pools one sequence. `states` is `seq × hidden` (row-major) of which the first `len` rows are
/// real tokens; the result is written to `out` (`hidden` values).
pub fn pool_into(pooling: Pooling, states: &[f32], hidden: usize, len: usize, out: &mut [f32]) {
  debug_assert_eq!(out.len(), hidden);
  match pooling {
    Pooling::Cls => out.copy_from_slice(&states[..hidden]),
    Pooling::Mean => {
      out.fill(0.0);
      let len = len.max(1);
      for token in states.chunks_exact(hidden).take(len) {
        for (acc, &x) in out.iter_mut().zip(token) {
          *acc += x;
        }
      }
      #[expect(clippy::cast_precision_loss, reason = "sequence lengths are far below 2^24")]
      let scale = 1.0 / len as f32;
      for acc in out.iter_mut() {
        *acc *= scale;
      }
    }
  }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
  let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
  if norm > 0.0 {
    for x in v.iter_mut() {
      *x /= norm;
    }
  }
}

#[cfg(test)]
#[expect(clippy::float_cmp, reason = "the expected values are exact in f32")]
mod tests {
  use super::*;

  #[test]
  fn mean_ignores_padding() {
    // Two real tokens and one padding row that must not count.
    let states = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
    let mut out = [0.0; 2];
    pool_into(Pooling::Mean, &states, 2, 2, &mut out);
    assert_eq!(out, [2.0, 3.0]);
  }

  #[test]
  fn cls_takes_the_first_token() {
    let states = [1.0, 2.0, 3.0, 4.0];
    let mut out = [0.0; 2];
    pool_into(Pooling::Cls, &states, 2, 2, &mut out);
    assert_eq!(out, [1.0, 2.0]);
  }

  #[test]
  fn normalize_gives_unit_length() {
    let mut v = [3.0, 4.0];
    normalize(&mut v);
    assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    let mut zero = [0.0; 3];
    normalize(&mut zero);
    assert_eq!(zero, [0.0; 3]);
  }

  #[test]
  fn parses_names() {
    assert_eq!("mean".parse::<Pooling>(), Ok(Pooling::Mean));
    assert_eq!("cls".parse::<Pooling>(), Ok(Pooling::Cls));
    assert!("max".parse::<Pooling>().is_err());
  }
}
