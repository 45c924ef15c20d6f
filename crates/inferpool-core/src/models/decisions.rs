//! The model manager's decisions as pure functions over a snapshot of what one worker sees:
//! which model it runs next, whether loading one is justified, and what a load evicts. The
//! worker takes the snapshot (atomics, its own slots) and acts on the answer; the decisions
//! themselves are tested here without threads.

use std::time::Duration;

/// One model as a worker sees it when it decides.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ModelView {
  /// The model's priority (higher runs first while workers are scarce, is evicted last).
  pub(crate) priority: i32,
  /// Items queued for it (the injectors and every worker's deque), not running.
  pub(crate) queued: usize,
  /// Whether this worker holds it.
  pub(crate) held: bool,
  /// Whether interactive items of it wait.
  pub(crate) interactive: bool,
  /// How long its queued work has gone unserved.
  pub(crate) unserved: Duration,
  /// Workers holding it, or loading it, other than this one.
  pub(crate) holders: usize,
  /// How long this worker has held it (zero when it does not).
  pub(crate) held_for: Duration,
}

/// Which model a worker runs next and which it would load, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ranking {
  /// Among the models it holds that have work: the highest priority, then one with interactive
  /// work, then the one unserved longest (then the highest index, for a total order).
  pub(crate) current: Option<usize>,
  /// The models with work that it does not hold: highest priority first, then unserved longest.
  pub(crate) candidates: Vec<usize>,
}

/// Ranks `views` (`None`: a model this worker may not run, or already found empty this round).
pub(crate) fn rank(views: &[Option<ModelView>]) -> Ranking {
  let with_work =
    || views.iter().enumerate().filter_map(|(m, v)| v.filter(|v| v.queued > 0).map(|v| (m, v)));
  let current = with_work()
    .filter(|(_, v)| v.held)
    .max_by_key(|&(m, v)| (v.priority, v.interactive, v.unserved, m))
    .map(|(m, _)| m);
  let mut candidates: Vec<(usize, ModelView)> = with_work().filter(|(_, v)| !v.held).collect();
  candidates.sort_by_key(|&(_, v)| std::cmp::Reverse((v.priority, v.unserved)));
  Ranking { current, candidates: candidates.into_iter().map(|(m, _)| m).collect() }
}

/// Whether the work queued for `model` (not held here) justifies loading it, while the worker
/// could run `current` instead:
/// * idle, or `model` outranks `current`: unless its holders take its work (it has no more
///   than `max_batch_size` items per holder);
/// * busy with a model of the same or higher priority: only for a model of the same priority
///   that no worker holds, unserved for `switch_delay`, away from a model held that long.
pub(crate) fn load_justified(
  model: &ModelView,
  current: Option<&ModelView>,
  max_batch_size: usize,
  switch_delay: Duration,
) -> bool {
  match current {
    Some(running) if model.priority <= running.priority => {
      model.priority == running.priority
        && model.holders == 0
        && model.unserved >= switch_delay
        && running.held_for >= switch_delay
    }
    _ => model.holders == 0 || model.queued > max_batch_size.max(1) * model.holders,
  }
}

/// A model a worker holds, as eviction sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Resident {
  pub(crate) model: usize,
  pub(crate) priority: i32,
  /// Its usage score (items embedded, halving every half-life).
  pub(crate) score: f64,
  pub(crate) memory: u64,
  /// Items queued for it.
  pub(crate) queued: usize,
}

/// Why a load cannot happen on this worker now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
  /// It needs more than the worker's whole budget.
  TooLarge,
  /// It fits only by evicting this model of higher priority, which has queued work (`busy`)
  /// or is idle but may not be evicted now.
  Outranked { by: usize, busy: bool },
}

/// What loading a model of `priority` needing `need` bytes evicts from `held` (lowest priority
/// first, then lowest usage score), given the worker's `budget` and what it `used`. A model of
/// higher priority is evicted only when `may_evict_higher` (an on-demand load whose work has
/// waited the switch delay) and it has no queued work.
pub(crate) fn victims(
  held: &[Resident],
  need: u64,
  priority: i32,
  budget: u64,
  mut used: u64,
  may_evict_higher: bool,
) -> Result<Vec<usize>, Refusal> {
  if need > budget {
    return Err(Refusal::TooLarge);
  }
  let mut order: Vec<&Resident> = held.iter().collect();
  order.sort_by(|a, b| {
    (a.priority, a.score).partial_cmp(&(b.priority, b.score)).unwrap_or(std::cmp::Ordering::Equal)
  });
  let mut chosen = Vec::new();
  for resident in order {
    if used.saturating_add(need) <= budget {
      break;
    }
    if resident.priority > priority && !(may_evict_higher && resident.queued == 0) {
      return Err(Refusal::Outranked { by: resident.model, busy: resident.queued > 0 });
    }
    chosen.push(resident.model);
    used = used.saturating_sub(resident.memory);
  }
  Ok(chosen)
}

#[cfg(test)]
mod tests {
  use super::*;

  const MS: Duration = Duration::from_millis(1);

  fn view(priority: i32, queued: usize, held: bool) -> ModelView {
    ModelView { priority, queued, held, ..ModelView::default() }
  }

  #[test]
  fn runs_the_best_held_model_and_lists_the_others_by_priority_then_wait() {
    let views = [
      Some(view(0, 5, true)),
      Some(ModelView { interactive: true, ..view(0, 1, true) }),
      Some(ModelView { unserved: 9 * MS, ..view(1, 3, false) }),
      Some(ModelView { unserved: 20 * MS, ..view(1, 3, false) }),
      Some(view(2, 0, false)), // no work
      None,                    // not allowed here
      Some(ModelView { unserved: 50 * MS, ..view(0, 7, false) }),
    ];
    let ranking = rank(&views);
    assert_eq!(ranking.current, Some(1), "interactive work wins among equal priorities");
    assert_eq!(ranking.candidates, vec![3, 2, 6]);
    assert_eq!(rank(&[Some(view(0, 0, true))]), Ranking::default());
  }

  #[test]
  fn an_idle_worker_loads_a_model_nobody_holds_or_one_its_holders_cannot_keep_up_with() {
    let alone = view(0, 1, false);
    assert!(load_justified(&alone, None, 8, MS));
    // One text, one holder: the holder takes it; a second copy would be wasted.
    let held_elsewhere = ModelView { holders: 1, ..alone };
    assert!(!load_justified(&held_elsewhere, None, 8, MS));
    assert!(load_justified(&ModelView { queued: 9, ..held_elsewhere }, None, 8, MS));
    assert!(!load_justified(&ModelView { queued: 16, holders: 2, ..alone }, None, 8, MS));
  }

  #[test]
  fn a_busy_worker_switches_for_priority_or_after_the_delay() {
    let running = ModelView { held_for: 10 * MS, ..view(1, 4, true) };
    let higher = view(2, 1, false);
    assert!(load_justified(&higher, Some(&running), 8, 5 * MS));
    assert!(!load_justified(&view(0, 100, false), Some(&running), 8, 5 * MS), "lower waits");
    let same = ModelView { unserved: 6 * MS, ..view(1, 1, false) };
    assert!(load_justified(&same, Some(&running), 8, 5 * MS));
    assert!(!load_justified(&ModelView { unserved: 4 * MS, ..same }, Some(&running), 8, 5 * MS));
    assert!(!load_justified(&ModelView { holders: 1, ..same }, Some(&running), 8, 5 * MS));
    let fresh = ModelView { held_for: 2 * MS, ..running };
    assert!(!load_justified(&same, Some(&fresh), 8, 5 * MS), "no switch away from a fresh load");
  }

  fn resident(model: usize, priority: i32, score: f64, queued: usize) -> Resident {
    Resident { model, priority, score, memory: 100, queued }
  }

  #[test]
  fn evicts_lowest_priority_then_least_used_and_only_what_is_needed() {
    let held = [resident(0, 0, 12.0, 0), resident(1, 0, 1.0, 0), resident(2, 1, 0.5, 0)];
    assert_eq!(victims(&held, 100, 0, 300, 300, false), Ok(vec![1]));
    assert_eq!(victims(&held, 200, 0, 300, 300, false), Ok(vec![1, 0]));
    assert_eq!(victims(&held, 50, 0, 300, 200, false), Ok(vec![]));
    assert_eq!(victims(&held, 400, 5, 300, 300, false), Err(Refusal::TooLarge));
  }

  #[test]
  fn a_higher_priority_model_is_evicted_only_when_idle_and_allowed() {
    let held = [resident(0, 1, 0.0, 0)];
    assert_eq!(
      victims(&held, 100, 0, 100, 100, false),
      Err(Refusal::Outranked { by: 0, busy: false })
    );
    assert_eq!(victims(&held, 100, 0, 100, 100, true), Ok(vec![0]));
    let busy = [resident(0, 1, 0.0, 3)];
    assert_eq!(
      victims(&busy, 100, 0, 100, 100, true),
      Err(Refusal::Outranked { by: 0, busy: true })
    );
  }
}
