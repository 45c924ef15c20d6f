//! The cores of a spread batch.
//!
//! A batch that starts while every other worker is idle and nothing is queued may run over their
//! cores too ([`crate::Backend::run_alone`]). A batch that another such worker started meanwhile
//! would take one of those cores back, and the spread batch would wait for the thread it took it
//! from: its run stalls until that batch ends, then the next, as long as work keeps coming. So a
//! spread batch holds the cores until it ends: every worker whose backend runs on those cores
//! ([`crate::Backend::shares_cores`]) waits for it before it runs anything, an embedding batch,
//! a seq2seq model's encoder batch or decoder step alike (it uses every core, so it is also the
//! fastest way through the work that waits). Workers on a GPU do not wait.
//!
//! The protocol, which no interleaving can get wrong because both halves go through one mutex:
//! - the spreading worker claims ([`Spread::claim`]), *then* checks that every other worker is
//!   idle, and gives the claim back at once if one is not;
//! - every other worker marks itself busy, *then* waits until no claim is held
//!   ([`Spread::wait`]).
//!
//! Either the claim comes first in the mutex's order, and the other worker waits for it, or the
//! other worker's wait does, and then its busy state (set before) is what the claimant reads.

use std::{
  sync::{Condvar, Mutex, MutexGuard, PoisonError},
  time::Duration,
};

/// How long a waiting worker sleeps before it looks at the claim again, should a wake-up go
/// astray: a spread batch ends with a notification, so this only bounds the damage of a bug.
const RECHECK: Duration = Duration::from_millis(100);

/// Whether a spread batch holds the cores, and the signal that it let them go.
#[derive(Debug, Default)]
pub(crate) struct Spread {
  held: Mutex<bool>,
  released: Condvar,
}

/// A held claim on the cores: released on drop, which wakes the workers waiting for them.
#[derive(Debug)]
pub(crate) struct Claim<'a>(&'a Spread);

impl Spread {
  fn held(&self) -> MutexGuard<'_, bool> {
    self.held.lock().unwrap_or_else(PoisonError::into_inner)
  }

  /// Claims the cores for a spread batch; `None` when another batch holds them.
  pub(crate) fn claim(&self) -> Option<Claim<'_>> {
    let mut held = self.held();
    if *held {
      return None;
    }
    *held = true;
    Some(Claim(self))
  }

  /// Returns once no spread batch holds the cores.
  pub(crate) fn wait(&self) {
    let mut held = self.held();
    while *held {
      held = self.released.wait_timeout(held, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
    }
  }
}

impl Drop for Claim<'_> {
  fn drop(&mut self) {
    *self.0.held() = false;
    self.0.released.notify_all();
  }
}

#[cfg(test)]
mod tests {
  use std::{
    sync::{
      Arc,
      atomic::{AtomicBool, Ordering},
    },
    thread,
  };

  use super::*;

  #[test]
  fn one_claim_at_a_time_and_a_wait_ends_with_it() {
    let spread = Arc::new(Spread::default());
    let claim = spread.claim().expect("nothing holds the cores");
    assert!(spread.claim().is_none(), "a second claim while the first is held");
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
      let (spread, released) = (Arc::clone(&spread), Arc::clone(&released));
      thread::spawn(move || {
        spread.wait();
        // The wait may only end once the claim is gone.
        assert!(released.load(Ordering::SeqCst));
      })
    };
    thread::sleep(Duration::from_millis(20));
    released.store(true, Ordering::SeqCst);
    drop(claim);
    waiter.join().expect("the waiter saw the claim released");
    assert!(spread.claim().is_some(), "the cores are free again");
    // With no claim held, a wait returns at once.
    spread.wait();
  }
}
