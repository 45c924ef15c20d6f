//! Where admitted items wait until a worker takes them.
//!
//! Interactive items wait in one FIFO injector: they are few, and their latency is what counts.
//!
//! Bulk items wait in *length classes*, one injector per class (created when first used). Lengths
//! below 64 tokens have a class each; above, every octave is cut into 32 classes, so the items
//! of one class differ in length by at most 1/32. Whatever a worker takes from one class batches
//! with almost no padding, whichever callers queued it: the queue as a whole is sorted by length
//! without a lock or a global sort.
//!
//! A worker sweeps the classes downwards from a cursor it keeps, wrapping around, and moves the
//! cursor past each class it took from; every class is visited within one sweep, so no length
//! starves behind busier ones. Within a class, items leave in admission order. Downwards, like
//! longest-first scheduling: the short items come last, so the end of a job is cut into small
//! pieces that even out the workers' finishing times.

use std::sync::OnceLock;

use crossbeam_deque::{Injector, Steal, Worker};

use crate::{batch::Queued, request::Priority};

/// Lengths below this have a class of their own.
const EXACT: usize = 64;
/// Classes per octave above `EXACT` (a power of two).
const PER_OCTAVE: usize = 32;
/// Octaves covered above `EXACT`; longer items share the last class.
const OCTAVES: usize = 14;
/// Number of bulk classes.
pub(crate) const CLASSES: usize = EXACT - 1 + PER_OCTAVE * OCTAVES;

/// The class of an item of `len` tokens.
pub(crate) fn class_of(len: usize) -> usize {
  let len = len.max(1);
  if len < EXACT {
    return len - 1;
  }
  let octave = (len.ilog2() - EXACT.ilog2()) as usize;
  if octave >= OCTAVES {
    return CLASSES - 1;
  }
  // The bits below the leading one, scaled to `PER_OCTAVE` steps.
  let step = (len >> (len.ilog2() - PER_OCTAVE.ilog2())) & (PER_OCTAVE - 1);
  EXACT - 1 + octave * PER_OCTAVE + step
}

/// The shortest length in `class`.
pub(crate) fn class_floor(class: usize) -> usize {
  if class < EXACT - 1 {
    return class + 1;
  }
  let above = class + 1 - EXACT;
  let (octave, step) = (above / PER_OCTAVE, above % PER_OCTAVE);
  (EXACT << octave) + (step << (octave + EXACT.ilog2() as usize - PER_OCTAVE.ilog2() as usize))
}

/// The injectors of the pool.
pub(crate) struct Queues {
  interactive: Injector<Queued>,
  bulk: Box<[OnceLock<Injector<Queued>>]>,
}

impl Default for Queues {
  fn default() -> Self {
    Self { interactive: Injector::new(), bulk: (0..CLASSES).map(|_| OnceLock::new()).collect() }
  }
}

/// What a refill moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
  pub(crate) items: usize,
  /// Tokens, counted at each class's shortest length (a lower bound).
  pub(crate) tokens: usize,
}

impl Queues {
  pub(crate) fn push(&self, item: Queued) {
    match item.request.priority {
      Priority::Interactive => self.interactive.push(item),
      Priority::Bulk => self.bulk[class_of(item.len())].get_or_init(Injector::new).push(item),
    }
  }

  /// Whether interactive items wait.
  pub(crate) fn has_interactive(&self) -> bool {
    !self.interactive.is_empty()
  }

  pub(crate) fn is_empty(&self) -> bool {
    self.interactive.is_empty() && self.bulk.iter().all(|c| c.get().is_none_or(Injector::is_empty))
  }

  /// Moves up to `cap` interactive items into `out`, oldest first.
  pub(crate) fn take_interactive(&self, cap: usize, out: &mut Vec<Queued>) {
    while out.len() < cap {
      match self.interactive.steal() {
        Steal::Success(item) => out.push(item),
        Steal::Retry => {}
        Steal::Empty => break,
      }
    }
  }

  /// Moves bulk items into `deque`, sweeping the classes down from `cursor`, until `items` items
  /// or about `tokens` tokens have moved or every class is empty. Leaves `cursor` at the class
  /// below the last one it took from.
  pub(crate) fn refill(
    &self,
    deque: &Worker<Queued>,
    cursor: &mut usize,
    items: usize,
    tokens: usize,
  ) -> Moved {
    let mut moved = Moved::default();
    if items == 0 || tokens == 0 {
      return moved;
    }
    let start = *cursor % CLASSES;
    for step in 0..CLASSES {
      let class = (start + CLASSES - step) % CLASSES;
      let Some(injector) = self.bulk[class].get() else { continue };
      let floor = class_floor(class);
      let mut took = false;
      while moved.items < items && moved.tokens < tokens {
        let want = (tokens - moved.tokens).div_ceil(floor).min(items - moved.items);
        let before = deque.len();
        match injector.steal_batch_with_limit(deque, want) {
          Steal::Success(()) => {
            // Thieves may take from the other end meanwhile: count what is there at least.
            let got = deque.len().saturating_sub(before).max(1);
            moved.items += got;
            moved.tokens += got * floor;
            took = true;
          }
          Steal::Retry => {}
          Steal::Empty => break,
        }
      }
      if took {
        *cursor = (class + CLASSES - 1) % CLASSES;
      }
      if moved.items >= items || moved.tokens >= tokens {
        break;
      }
    }
    moved
  }

  /// Takes every queued item out and hands it to `settle`.
  pub(crate) fn drain(&self, mut settle: impl FnMut(Queued)) {
    let bulk = self.bulk.iter().filter_map(OnceLock::get);
    for injector in std::iter::once(&self.interactive).chain(bulk) {
      loop {
        match injector.steal() {
          Steal::Success(item) => settle(item),
          Steal::Retry => {}
          Steal::Empty => break,
        }
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn queue_of(lengths: &[usize]) -> Queues {
    let queues = Queues::default();
    for item in crate::batch::tests::items(lengths, Priority::Bulk) {
      queues.push(item);
    }
    queues
  }

  fn lengths_in(deque: &Worker<Queued>) -> Vec<usize> {
    std::iter::from_fn(|| deque.pop()).map(|q| q.len()).collect()
  }

  #[test]
  fn a_refill_sweeps_down_from_the_longest_and_stops_at_the_limits() {
    let queues = queue_of(&[5, 300, 5, 40, 300, 41, 5]);
    let deque = Worker::new_fifo();
    let mut cursor = CLASSES - 1;
    // Two items at most: the two longest, in admission order.
    let moved = queues.refill(&deque, &mut cursor, 2, usize::MAX);
    assert_eq!(moved.items, 2);
    assert_eq!(lengths_in(&deque), vec![300, 300]);
    assert_eq!(cursor, class_of(300) - 1);
    // About 60 tokens: 41, then 40 (each class counted at its shortest length).
    let moved = queues.refill(&deque, &mut cursor, 10, 60);
    assert_eq!(lengths_in(&deque), vec![41, 40]);
    assert_eq!(moved.tokens, 81);
    // The rest; then the sweep wraps around and finds nothing.
    queues.refill(&deque, &mut cursor, 10, usize::MAX);
    assert_eq!(lengths_in(&deque), vec![5, 5, 5]);
    assert!(queues.is_empty());
    assert_eq!(queues.refill(&deque, &mut cursor, 10, usize::MAX), Moved::default());
  }

  #[test]
  fn classes_are_ordered_and_narrow() {
    let mut previous = 0;
    for len in 1..=(EXACT << OCTAVES) {
      let class = class_of(len);
      assert!(class == previous || class == previous + 1, "class of {len} jumps");
      assert!(class < CLASSES);
      let floor = class_floor(class);
      assert!(floor <= len, "floor {floor} of class {class} above {len}");
      // Every length is at most 1/32 above its class's shortest.
      assert!(len * PER_OCTAVE <= floor * (PER_OCTAVE + 1), "{len} too far above {floor}");
      previous = class;
    }
    assert_eq!(previous, CLASSES - 1);
    assert_eq!(class_of(usize::MAX), CLASSES - 1);
    assert_eq!(class_of(0), 0);
    for class in 0..CLASSES {
      assert_eq!(class_of(class_floor(class)), class);
    }
  }
}
