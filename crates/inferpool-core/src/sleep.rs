//! How idle workers park and how producers wake them, without lost wake-ups and without timers.
//!
//! Protocol (the names match the code):
//! 1. A worker reads the `epoch` (Acquire) **before** it searches for work.
//! 2. Finding nothing, it takes the lock and compares the epoch with what it read: if it has not
//!    moved, it counts itself in `sleepers` and waits on the condition variable (which releases
//!    the lock atomically); otherwise it searches again.
//! 3. A producer first makes its work visible (pushes it), then takes the lock, bumps the epoch
//!    (Release), and notifies if anyone sleeps.
//!
//! Why no wake-up is lost: the epoch only changes under the lock, so step 2's comparison and
//! step 3's bump are ordered by the lock. If the bump came first, the worker sees a new epoch and
//! searches again, and since the push happened before the bump, which its Acquire read of step 1
//! or the lock makes visible, it finds the work. If the comparison came first, the worker is
//! already waiting when the producer gets the lock, so the notify reaches it. A loom model
//! (`RUSTFLAGS="--cfg loom" cargo test --release --lib sleep`) checks this.
//!
//! An idle pool is a set of threads blocked in `Condvar::wait`: no timer, no spinning. A
//! producer pays one uncontended lock per notification (per request or per batch, never per
//! item).

#[cfg(loom)]
use loom::sync::{
  Condvar, Mutex,
  atomic::{AtomicU64, Ordering},
};
#[cfg(not(loom))]
use std::sync::{
  Condvar, Mutex,
  atomic::{AtomicU64, Ordering},
};

/// The park/wake state shared by the workers of one pool.
#[derive(Debug, Default)]
pub(crate) struct Sleep {
  /// Bumped (under `sleepers`' lock) by every producer after it published work (step 3).
  epoch: AtomicU64,
  /// Workers waiting on `condvar`; the lock also orders epoch bumps against step 2.
  sleepers: Mutex<usize>,
  /// Where workers wait.
  condvar: Condvar,
}

/// How many sleepers a producer wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
  /// One worker: a single small piece of work.
  One,
  /// Every worker: much work, or a state change (closing) everyone must see.
  All,
}

impl Sleep {
  /// Step 1: the epoch to pass to [`Sleep::sleep`] after an unsuccessful search.
  pub(crate) fn epoch(&self) -> u64 {
    // Acquire pairs with the Release bump in `notify`: work published before a bump this load
    // sees is visible to the search that follows.
    self.epoch.load(Ordering::Acquire)
  }

  /// Step 3: call after publishing work or a state change.
  pub(crate) fn notify(&self, wake: Wake) {
    let sleepers = self.sleepers.lock().expect("sleep lock poisoned. This is a bug.");
    self.epoch.fetch_add(1, Ordering::Release);
    if *sleepers > 0 {
      match wake {
        Wake::One => self.condvar.notify_one(),
        Wake::All => self.condvar.notify_all(),
      }
    }
  }

  /// Step 2: parks the calling worker unless work was published since `seen`. May return
  /// spuriously; callers search again either way.
  pub(crate) fn sleep(&self, seen: u64) {
    let mut sleepers = self.sleepers.lock().expect("sleep lock poisoned. This is a bug.");
    if self.epoch.load(Ordering::Relaxed) == seen {
      *sleepers += 1;
      sleepers = self.condvar.wait(sleepers).expect("sleep lock poisoned. This is a bug.");
      *sleepers -= 1;
    }
  }

  /// Like [`Sleep::sleep`] but gives up after `timeout` (used only when a batch is held open by
  /// `max_wait`).
  #[cfg(not(loom))]
  pub(crate) fn sleep_for(&self, seen: u64, timeout: std::time::Duration) {
    let mut sleepers = self.sleepers.lock().expect("sleep lock poisoned. This is a bug.");
    if self.epoch.load(Ordering::Relaxed) == seen {
      *sleepers += 1;
      sleepers = self
        .condvar
        .wait_timeout(sleepers, timeout)
        .expect("sleep lock poisoned. This is a bug.")
        .0;
      *sleepers -= 1;
    }
  }

  /// Loom cannot model time: the timed wait is a plain wait there.
  #[cfg(loom)]
  pub(crate) fn sleep_for(&self, seen: u64, _timeout: std::time::Duration) {
    self.sleep(seen);
  }
}

#[cfg(all(test, loom))]
mod loom_model {
  use loom::{
    sync::{
      Arc,
      atomic::{AtomicUsize, Ordering},
    },
    thread,
  };

  use super::{Sleep, Wake};

  /// One producer publishes work once; one worker must find it whatever the interleaving. A
  /// lost wake-up leaves the worker waiting forever, which loom reports as a deadlock.
  #[test]
  fn no_lost_wakeup_one_worker() {
    loom::model(|| {
      let sleep = Arc::new(Sleep::default());
      let work = Arc::new(AtomicUsize::new(0));
      let worker = {
        let (sleep, work) = (Arc::clone(&sleep), Arc::clone(&work));
        thread::spawn(move || {
          loop {
            let seen = sleep.epoch();
            if work.load(Ordering::SeqCst) > 0 {
              return;
            }
            sleep.sleep(seen);
          }
        })
      };
      work.store(1, Ordering::SeqCst);
      sleep.notify(Wake::One);
      worker.join().unwrap();
    });
  }

  /// Two workers, two pieces of work published separately: both workers finish.
  #[test]
  fn no_lost_wakeup_two_workers() {
    loom::model(|| {
      let sleep = Arc::new(Sleep::default());
      let work = Arc::new(AtomicUsize::new(0));
      let workers: Vec<_> = (0..2)
        .map(|_| {
          let (sleep, work) = (Arc::clone(&sleep), Arc::clone(&work));
          thread::spawn(move || {
            loop {
              let seen = sleep.epoch();
              let available = work.load(Ordering::SeqCst);
              if available == 0 {
                sleep.sleep(seen);
              } else if work
                .compare_exchange(available, available - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
              {
                return;
              }
              // A lost race for the item is a retry, not a reason to sleep.
            }
          })
        })
        .collect();
      for _ in 0..2 {
        work.fetch_add(1, Ordering::SeqCst);
        sleep.notify(Wake::One);
      }
      for w in workers {
        w.join().unwrap();
      }
    });
  }
}
