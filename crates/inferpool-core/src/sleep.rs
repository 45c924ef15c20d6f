//! How idle workers park and how producers wake them, without lost wake-ups and without timers.
//!
//! Protocol (the names match the code):
//! 1. A worker reads the `epoch` **before** it searches for work.
//! 2. Finding nothing, it takes the lock, counts itself in `sleepers`, then reads `epoch` again;
//!    it waits on the condition variable only if the epoch has not moved. Waiting releases the
//!    lock atomically.
//! 3. A producer first makes its work visible (pushes it), then bumps `epoch`, then reads
//!    `sleepers`; if anyone sleeps it takes the lock and notifies.
//!
//! Why no wake-up is lost: all four operations on `epoch` and `sleepers` are `SeqCst`, so they
//! have one total order. If the producer's bump comes before the worker's second read, the
//! worker sees it and does not wait. Otherwise the worker's increment of `sleepers` came before
//! the bump, so the producer sees a sleeper and takes the lock, which it can only get once the
//! worker is waiting (the worker holds it from step 2 until the wait), so the notify reaches a
//! waiting thread. A loom model (`cargo test --lib --release` with `--cfg loom`) checks this.
//!
//! An idle pool is a set of threads blocked in `Condvar::wait`: no timer, no spinning.

#[cfg(loom)]
use loom::sync::{
  Condvar, Mutex,
  atomic::{AtomicU64, AtomicUsize, Ordering},
};
#[cfg(not(loom))]
use std::sync::{
  Condvar, Mutex,
  atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// The park/wake state shared by the workers of one pool.
#[derive(Debug, Default)]
pub(crate) struct Sleep {
  /// Bumped by every producer after it published work (step 3).
  epoch: AtomicU64,
  /// Workers between step 2 and waking up.
  sleepers: AtomicUsize,
  /// Held from a worker's registration until it waits; producers take it to notify.
  lock: Mutex<()>,
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
    self.epoch.load(Ordering::SeqCst)
  }

  /// Step 3: call after publishing work or a state change.
  pub(crate) fn notify(&self, wake: Wake) {
    self.epoch.fetch_add(1, Ordering::SeqCst);
    if self.sleepers.load(Ordering::SeqCst) > 0 {
      let _guard = self.lock.lock().expect("sleep lock poisoned. This is a bug.");
      match wake {
        Wake::One => self.condvar.notify_one(),
        Wake::All => self.condvar.notify_all(),
      }
    }
  }

  /// Step 2: parks the calling worker unless work was published since `seen`. May return
  /// spuriously; callers search again either way.
  pub(crate) fn sleep(&self, seen: u64) {
    let guard = self.lock.lock().expect("sleep lock poisoned. This is a bug.");
    self.sleepers.fetch_add(1, Ordering::SeqCst);
    let guard = if self.epoch.load(Ordering::SeqCst) == seen {
      self.condvar.wait(guard).expect("sleep lock poisoned. This is a bug.")
    } else {
      guard
    };
    self.sleepers.fetch_sub(1, Ordering::SeqCst);
    drop(guard);
  }

  /// Like [`Sleep::sleep`] but gives up after `timeout` (used only when a batch is held open by
  /// `max_wait`).
  #[cfg(not(loom))]
  pub(crate) fn sleep_for(&self, seen: u64, timeout: std::time::Duration) {
    let guard = self.lock.lock().expect("sleep lock poisoned. This is a bug.");
    self.sleepers.fetch_add(1, Ordering::SeqCst);
    let guard = if self.epoch.load(Ordering::SeqCst) == seen {
      self.condvar.wait_timeout(guard, timeout).expect("sleep lock poisoned. This is a bug.").0
    } else {
      guard
    };
    self.sleepers.fetch_sub(1, Ordering::SeqCst);
    drop(guard);
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
              if available > 0
                && work
                  .compare_exchange(available, available - 1, Ordering::SeqCst, Ordering::SeqCst)
                  .is_ok()
              {
                return;
              }
              sleep.sleep(seen);
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
