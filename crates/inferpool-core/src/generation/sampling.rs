//! The next token of a row from its logits: repetition penalty, the minimum length, then the
//! most likely token (greedy) or a draw from the tempered, top-k / top-p filtered distribution.
//! Pure functions over a row's logits, so they are tested without a model.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::GenerateParams;

/// A row's random source: seeded from the call's seed (or the row's place in line) and the
/// row's index, so the same call gives the same tokens.
pub(crate) fn rng(params: &GenerateParams, fallback: u64, row: usize) -> ChaCha8Rng {
  let seed = params.seed.unwrap_or(fallback);
  let mut rng = ChaCha8Rng::seed_from_u64(seed);
  rng.set_stream(row as u64);
  rng
}

/// Chooses the next token from `logits` (one row, modified in place) after `history` (the
/// tokens generated so far). EOS is masked until `min_new_tokens` tokens exist.
pub(crate) fn next_token(
  logits: &mut [f32],
  history: &[u32],
  params: &GenerateParams,
  eos: u32,
  rng: &mut ChaCha8Rng,
) -> u32 {
  let penalty = params.repetition_penalty;
  if penalty > 0.0 && (penalty - 1.0).abs() > f32::EPSILON {
    let mut seen = history.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for token in seen {
      if let Some(logit) = logits.get_mut(token as usize) {
        *logit = if *logit < 0.0 { *logit * penalty } else { *logit / penalty };
      }
    }
  }
  if history.len() < params.min_new_tokens
    && let Some(logit) = logits.get_mut(eos as usize)
  {
    *logit = f32::NEG_INFINITY;
  }
  if params.temperature <= 0.0 || params.top_k == 1 {
    return argmax(logits);
  }
  sample(logits, params, rng)
}

/// The index of the largest value (the lowest index among equals; NaN never wins).
pub(crate) fn argmax(values: &[f32]) -> u32 {
  let mut best = 0;
  let mut best_value = f32::NEG_INFINITY;
  for (index, &value) in values.iter().enumerate() {
    if value > best_value {
      best = index;
      best_value = value;
    }
  }
  u32::try_from(best).unwrap_or(0)
}

/// A draw from the softmax of `logits / temperature`, restricted to the `top_k` most likely
/// tokens and then to the smallest set whose probability reaches `top_p`.
fn sample(logits: &[f32], params: &GenerateParams, rng: &mut ChaCha8Rng) -> u32 {
  let mut order: Vec<(u32, f32)> = logits
    .iter()
    .enumerate()
    .filter(|(_, l)| l.is_finite())
    .map(|(i, &l)| (u32::try_from(i).unwrap_or(0), l / params.temperature))
    .collect();
  if order.is_empty() {
    return argmax(logits);
  }
  // Most likely first; equal scores by id, so the order (and the draw) is reproducible.
  order.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
  if params.top_k > 0 {
    order.truncate(params.top_k);
  }
  let top = order[0].1;
  let weights: Vec<f64> = order.iter().map(|&(_, l)| f64::from(l - top).exp()).collect();
  let total: f64 = weights.iter().sum();
  let mut keep = weights.len();
  if params.top_p < 1.0 {
    let mut cumulative = 0.0;
    for (index, weight) in weights.iter().enumerate() {
      cumulative += weight / total;
      if cumulative >= f64::from(params.top_p) {
        keep = index + 1;
        break;
      }
    }
  }
  let kept: f64 = weights[..keep].iter().sum();
  #[expect(clippy::cast_precision_loss, reason = "53 random bits make a uniform float")]
  let uniform = (rng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
  let mut target = uniform * kept;
  for (index, weight) in weights[..keep].iter().enumerate() {
    target -= weight;
    if target < 0.0 {
      return order[index].0;
    }
  }
  order[keep - 1].0
}

#[cfg(test)]
mod tests {
  use super::*;

  fn params(temperature: f32) -> GenerateParams {
    GenerateParams { temperature, ..GenerateParams::default() }
  }

  #[test]
  fn greedy_takes_the_largest_and_the_lowest_id_on_ties() {
    let mut rng = super::rng(&params(0.0), 0, 0);
    assert_eq!(next_token(&mut [0.1, 3.0, 3.0, -1.0], &[], &params(0.0), 9, &mut rng), 1);
    assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), 1);
  }

  #[test]
  fn eos_waits_for_the_minimum_length() {
    let p = GenerateParams { min_new_tokens: 2, ..params(0.0) };
    let mut rng = super::rng(&p, 0, 0);
    assert_eq!(next_token(&mut [0.0, 5.0, 1.0], &[2], &p, 1, &mut rng), 2);
    assert_eq!(next_token(&mut [0.0, 5.0, 1.0], &[2, 2], &p, 1, &mut rng), 1);
  }

  #[test]
  fn repetition_penalty_lowers_tokens_already_generated() {
    let p = GenerateParams { repetition_penalty: 2.0, ..params(0.0) };
    let mut rng = super::rng(&p, 0, 0);
    // 3.0 / 2 < 2.0: the repeated token loses; a negative logit is multiplied instead.
    assert_eq!(next_token(&mut [3.0, 2.0], &[0], &p, 9, &mut rng), 1);
    let mut logits = [-1.0, -1.5];
    next_token(&mut logits, &[0], &p, 9, &mut rng);
    assert!((logits[0] + 2.0).abs() < 1e-6);
  }

  #[test]
  fn sampling_is_reproducible_with_a_seed_and_follows_the_distribution() {
    let p = GenerateParams { seed: Some(7), ..params(1.0) };
    let logits = [0.0_f32, (3.0_f32).ln(), f32::NEG_INFINITY];
    let draw = |p: &GenerateParams, row| {
      let mut rng = super::rng(p, 0, row);
      (0..4000).map(|_| next_token(&mut logits.clone(), &[], p, 9, &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(&p, 0), draw(&p, 0));
    assert_ne!(draw(&p, 0), draw(&p, 1));
    let ones = draw(&p, 0).iter().filter(|&&t| t == 1).count();
    // Probabilities 1/4 and 3/4; token 2 is impossible.
    assert!((2800..3200).contains(&ones), "{ones}");
    assert!(!draw(&p, 0).contains(&2));
  }

  #[test]
  fn top_k_and_top_p_cut_the_tail() {
    let logits = [2.0_f32, 1.9, 1.8, -5.0];
    let k = GenerateParams { top_k: 2, seed: Some(1), ..params(1.0) };
    let mut rng = super::rng(&k, 0, 0);
    let drawn: Vec<u32> =
      (0..500).map(|_| next_token(&mut logits.clone(), &[], &k, 9, &mut rng)).collect();
    assert!(drawn.iter().all(|&t| t < 2) && drawn.contains(&0) && drawn.contains(&1));
    let p = GenerateParams { top_p: 0.3, seed: Some(1), ..params(1.0) };
    let mut rng = super::rng(&p, 0, 0);
    assert!((0..200).all(|_| next_token(&mut logits.clone(), &[], &p, 9, &mut rng) == 0));
  }
}
