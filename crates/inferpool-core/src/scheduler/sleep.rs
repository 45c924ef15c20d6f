//! How idle workers park and how producers wake them, without lost wake-ups and without timers.
//!
//! Protocol (the names match the code):
//! 1. A worker reads the `epoch` (Acquire) **before** it reads anything else of the pool's state
//!    (the lifecycle flag, the queues) in a round of its loop ([`run_worker`]).
//! 2. Finding nothing to do, it takes the lock and compares the epoch with what it read: if it
//!    has not moved, it sets its bit in `sleeping` and waits on its own condition variable (which
//!    releases the lock atomically); otherwise it looks again.
//! 3. A producer first makes its work (or a state change such as closing) visible, then takes
//!    the lock, bumps the epoch (Release), and wakes sleepers: every one ([`Wake::All`]), or one
//!    ([`Wake::One`]), chosen among the sleepers it prefers (the workers holding the model the
//!    work is for) when any of them sleeps, else any sleeper. The chosen worker's bit is cleared
//!    under the lock, so the next `Wake::One` picks another.
//!
//! Why no wake-up is lost: the epoch only changes under the lock, so step 2's comparison and
//! step 3's bump are ordered by the lock. If the bump came first, the worker sees a new epoch and
//! looks again, and since the publication happened before the bump, which its Acquire read of
//! step 1 or the lock makes visible, it finds it. If the comparison came first, the worker is
//! already waiting when the producer gets the lock, so the wake reaches a sleeper.
//!
//! Why a `Wake::One` cannot strand work: it goes to a sleeping worker that can run the work
//! without loading anything when there is one. Otherwise every worker that holds the model is
//! awake, and an awake worker looks at the queues again before it sleeps (step 1 is read before
//! the look, so work published during the look moves the epoch and sends it round again); a
//! woken worker that does not hold the model loads it when no worker holds it.
//!
//! Reading the lifecycle flag *after* the epoch matters: a `close` that lands between the two
//! reads bumps the epoch, so the worker's sleep returns at once and it sees the flag. A loom model
//! (`RUSTFLAGS="--cfg loom" cargo test --release --lib sleep`) checks both properties on
//! [`run_worker`], the loop the real workers run.
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
use std::time::Duration;

/// The park/wake state shared by the workers of one pool (at most 64 workers: one bit each).
#[derive(Debug)]
pub(crate) struct Sleep {
  /// Bumped (under `sleeping`'s lock) by every producer after it published work (step 3).
  epoch: AtomicU64,
  /// One bit per worker waiting on its condition variable; the lock also orders epoch bumps
  /// against step 2.
  sleeping: Mutex<u64>,
  /// Where each worker waits, by index.
  condvars: Box<[Condvar]>,
}

/// Whom a producer wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
  /// One worker, for a single small piece of work: a sleeper among `prefer` (a bit set of
  /// workers) when one sleeps, else any sleeper.
  One {
    /// Workers that can take the work at once (they hold its model).
    prefer: u64,
  },
  /// As many workers as there are batches of new work (`count`), those in `prefer` first.
  Many {
    /// Workers to wake at most.
    count: usize,
    /// Workers that can take the work at once (they hold its model).
    prefer: u64,
  },
  /// Every worker: a state change (closing, a load) everyone must see.
  All,
}

/// What one round of a worker's loop found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Round {
  /// It did something; it looks again at once.
  Worked,
  /// Nothing to do: it sleeps until woken, or at most the time given.
  Idle(Option<Duration>),
  /// The worker leaves its loop.
  Exit,
}

/// A worker's loop: step 1 before each round, step 2 after an idle one. `round` reads the
/// lifecycle flag and the queues, and does the work.
pub(crate) fn run_worker(sleep: &Sleep, worker: usize, mut round: impl FnMut() -> Round) {
  loop {
    let seen = sleep.epoch();
    match round() {
      Round::Worked => {}
      Round::Idle(timeout) => sleep.sleep(worker, seen, timeout),
      Round::Exit => return,
    }
  }
}

impl Sleep {
  /// The state for `workers` workers.
  pub(crate) fn new(workers: usize) -> Self {
    Self {
      epoch: AtomicU64::new(0),
      sleeping: Mutex::new(0),
      condvars: (0..workers).map(|_| Condvar::new()).collect(),
    }
  }

  /// Step 1: the epoch to pass to [`Sleep::sleep`] after an unsuccessful search.
  pub(crate) fn epoch(&self) -> u64 {
    // Acquire pairs with the Release bump in `notify`: work published before a bump this load
    // sees is visible to the search that follows.
    self.epoch.load(Ordering::Acquire)
  }

  /// Step 3: call after publishing work or a state change.
  pub(crate) fn notify(&self, wake: Wake) {
    let mut sleeping = self.sleeping.lock().expect("sleep lock poisoned. This is a bug.");
    self.epoch.fetch_add(1, Ordering::Release);
    if *sleeping == 0 {
      return;
    }
    match wake {
      Wake::All => {
        let mut bits = std::mem::take(&mut *sleeping);
        while bits != 0 {
          self.condvars[bits.trailing_zeros() as usize].notify_one();
          bits &= bits - 1;
        }
      }
      Wake::One { prefer } => self.wake(&mut sleeping, 1, prefer),
      Wake::Many { count, prefer } => self.wake(&mut sleeping, count, prefer),
    }
  }

  /// Wakes up to `count` of the `sleeping` workers, those in `prefer` first, clearing their bits.
  fn wake(&self, sleeping: &mut u64, count: usize, prefer: u64) {
    for _ in 0..count {
      if *sleeping == 0 {
        return;
      }
      let preferred = *sleeping & prefer;
      let pool = if preferred == 0 { *sleeping } else { preferred };
      let worker = pool.trailing_zeros() as usize;
      *sleeping &= !(1 << worker);
      self.condvars[worker].notify_one();
    }
  }

  /// Step 2: parks worker `worker` unless work was published since `seen`, at most for
  /// `timeout`. May return spuriously; callers look again either way.
  pub(crate) fn sleep(&self, worker: usize, seen: u64, timeout: Option<Duration>) {
    let mut sleeping = self.sleeping.lock().expect("sleep lock poisoned. This is a bug.");
    if self.epoch.load(Ordering::Relaxed) != seen {
      return;
    }
    *sleeping |= 1 << worker;
    sleeping = match timeout {
      None => self.condvars[worker].wait(sleeping).expect("sleep lock poisoned. This is a bug."),
      Some(timeout) => self.wait_for(worker, sleeping, timeout),
    };
    *sleeping &= !(1 << worker);
  }

  #[cfg(not(loom))]
  fn wait_for<'a>(
    &self,
    worker: usize,
    guard: std::sync::MutexGuard<'a, u64>,
    timeout: Duration,
  ) -> std::sync::MutexGuard<'a, u64> {
    self.condvars[worker]
      .wait_timeout(guard, timeout)
      .expect("sleep lock poisoned. This is a bug.")
      .0
  }

  /// Loom cannot model time: the timed wait is a plain wait there.
  #[cfg(loom)]
  fn wait_for<'a>(
    &self,
    worker: usize,
    guard: loom::sync::MutexGuard<'a, u64>,
    _timeout: Duration,
  ) -> loom::sync::MutexGuard<'a, u64> {
    self.condvars[worker].wait(guard).expect("sleep lock poisoned. This is a bug.")
  }
}

#[cfg(all(test, loom))]
mod loom_model {
  use loom::{
    sync::{
      Arc,
      atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
  };

  use super::{Round, Sleep, Wake, run_worker};

  /// One producer publishes work once; one worker must find it whatever the interleaving. A
  /// lost wake-up leaves the worker waiting forever, which loom reports as a deadlock.
  #[test]
  fn no_lost_wakeup_one_worker() {
    loom::model(|| {
      let sleep = Arc::new(Sleep::new(1));
      let work = Arc::new(AtomicUsize::new(0));
      let worker = {
        let (sleep, work) = (Arc::clone(&sleep), Arc::clone(&work));
        thread::spawn(move || {
          run_worker(&sleep, 0, || {
            if work.load(Ordering::SeqCst) > 0 { Round::Exit } else { Round::Idle(None) }
          });
        })
      };
      work.store(1, Ordering::SeqCst);
      sleep.notify(Wake::One { prefer: 0 });
      worker.join().unwrap();
    });
  }

  /// Two workers; only worker 0 holds the model the work is for, worker 1 never takes it (it
  /// leaves the work to the holder, as a worker does that would otherwise load a second copy).
  /// A single wake must reach the holder whichever of them sleeps when.
  #[test]
  fn a_single_wake_reaches_a_worker_that_can_run_the_work() {
    loom::model(|| {
      let sleep = Arc::new(Sleep::new(2));
      let work = Arc::new(AtomicUsize::new(0));
      let closing = Arc::new(AtomicBool::new(false));
      let holder = {
        let (sleep, work) = (Arc::clone(&sleep), Arc::clone(&work));
        thread::spawn(move || {
          run_worker(&sleep, 0, || {
            if work.load(Ordering::SeqCst) > 0 { Round::Exit } else { Round::Idle(None) }
          });
        })
      };
      let other = {
        let (sleep, closing) = (Arc::clone(&sleep), Arc::clone(&closing));
        thread::spawn(move || {
          run_worker(&sleep, 1, || {
            if closing.load(Ordering::SeqCst) { Round::Exit } else { Round::Idle(None) }
          });
        })
      };
      work.store(1, Ordering::SeqCst);
      sleep.notify(Wake::One { prefer: 0b01 });
      holder.join().unwrap();
      closing.store(true, Ordering::SeqCst);
      sleep.notify(Wake::All);
      other.join().unwrap();
    });
  }

  /// `close` sets the lifecycle flag, then notifies: a worker between its reads of the two must
  /// not sleep through it (the flag is read after the epoch).
  #[test]
  fn close_reaches_a_worker_whatever_the_interleaving() {
    loom::model(|| {
      let sleep = Arc::new(Sleep::new(2));
      let closing = Arc::new(AtomicBool::new(false));
      let workers: Vec<_> = (0..2)
        .map(|index| {
          let (sleep, closing) = (Arc::clone(&sleep), Arc::clone(&closing));
          thread::spawn(move || {
            run_worker(&sleep, index, || {
              if closing.load(Ordering::SeqCst) { Round::Exit } else { Round::Idle(None) }
            });
          })
        })
        .collect();
      closing.store(true, Ordering::SeqCst);
      sleep.notify(Wake::All);
      for w in workers {
        w.join().unwrap();
      }
    });
  }
}
