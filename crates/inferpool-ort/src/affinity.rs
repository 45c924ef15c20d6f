//! Which cores the threads of a lone run may use.
//!
//! A lone run has two kinds of threads: the worker's own thread, which calls `Session::run` and
//! takes part in it, and the session's pool threads, which sleep between runs. When the caller
//! wakes a pool thread, Linux tends to queue it on the caller's own core; the two then share one
//! core while the other idles, until a scheduler tick (4 ms) moves one of them. So the lone
//! session's pool threads are pinned, one core each ([`Pinning::plan`]), and the caller keeps
//! off those cores while a lone run lasts ([`Pinning::enter`]), returning to every allowed core
//! afterwards. Measured with single texts every 20 ms (the default model, two cores): 8 words,
//! p50 / p99 1.9 / 6.2 ms before, 1.7 / 2.0 ms after; 32 words, 7.8 / 8.9 ms before (the pool
//! thread hardly ever got a core), 3.3 / 4.3 ms after.
//!
//! Outside Linux, or when the process may use fewer cores than the session has threads, nothing
//! is pinned.

/// Where the threads of a lone session of a given size run.
#[derive(Clone, Debug)]
pub(crate) struct Pinning {
  /// One core per pool thread of the session (0-based).
  pub(crate) pool: Vec<usize>,
  /// The cores the calling thread may use during a run.
  #[cfg(target_os = "linux")]
  caller: libc::cpu_set_t,
}

#[cfg(target_os = "linux")]
impl Pinning {
  /// Pool threads on the last `threads - 1` cores this process may use, the caller on the rest;
  /// `None` when fewer cores are allowed than `threads` or when the mask cannot be read.
  pub(crate) fn plan(threads: usize) -> Option<Self> {
    let allowed = current()?;
    let cores: Vec<usize> =
      (0..libc::CPU_SETSIZE as usize).filter(|&cpu| is_set(cpu, &allowed)).collect();
    if threads < 2 || cores.len() < threads {
      return None;
    }
    let pool = cores[cores.len() - (threads - 1)..].to_vec();
    let mut caller = allowed;
    for &cpu in &pool {
      // SAFETY: `cpu` < CPU_SETSIZE (it came from the set) and `caller` is a valid set.
      unsafe { libc::CPU_CLR(cpu, &mut caller) };
    }
    Some(Self { pool, caller })
  }

  /// Keeps the calling thread off the pool threads' cores until the guard drops; the guard puts
  /// back the mask it found.
  pub(crate) fn enter(&self) -> Restore {
    let previous = current();
    if previous.is_some() {
      set_current(&self.caller);
    }
    Restore(previous)
  }
}

#[cfg(not(target_os = "linux"))]
impl Pinning {
  pub(crate) fn plan(_threads: usize) -> Option<Self> {
    None
  }

  pub(crate) fn enter(&self) -> Restore {
    Restore(())
  }
}

/// Restores the calling thread's cores when dropped.
#[must_use = "the caller's cores are restored when the guard drops"]
pub(crate) struct Restore(
  #[cfg(target_os = "linux")] Option<libc::cpu_set_t>,
  #[cfg(not(target_os = "linux"))] (),
);

impl Drop for Restore {
  fn drop(&mut self) {
    #[cfg(target_os = "linux")]
    if let Some(previous) = &self.0 {
      set_current(previous);
    }
  }
}

#[cfg(target_os = "linux")]
fn is_set(cpu: usize, set: &libc::cpu_set_t) -> bool {
  // SAFETY: `cpu` < CPU_SETSIZE and `set` is a valid set.
  unsafe { libc::CPU_ISSET(cpu, set) }
}

/// The calling thread's allowed cores.
#[cfg(target_os = "linux")]
fn current() -> Option<libc::cpu_set_t> {
  // SAFETY: an all-zero `cpu_set_t` is a valid (empty) set; `sched_getaffinity` writes at most
  // `size_of::<cpu_set_t>()` bytes into it.
  unsafe {
    let mut set: libc::cpu_set_t = std::mem::zeroed();
    (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) == 0).then_some(set)
  }
}

/// Restricts the calling thread to `set` (a failure leaves its cores as they were).
#[cfg(target_os = "linux")]
fn set_current(set: &libc::cpu_set_t) {
  // SAFETY: `sched_setaffinity` on the calling thread (pid 0) only reads `set`.
  unsafe {
    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set);
  }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
  use super::{Pinning, current, is_set};

  fn cores(set: &libc::cpu_set_t) -> Vec<usize> {
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| is_set(cpu, set)).collect()
  }

  #[test]
  fn pool_threads_get_cores_of_their_own_and_the_caller_returns_to_all_of_them() {
    // On its own thread: the test changes the calling thread's cores.
    std::thread::spawn(|| {
      let allowed = cores(&current().expect("the mask is readable"));
      assert!(Pinning::plan(1).is_none(), "one thread: nothing to pin");
      assert!(Pinning::plan(allowed.len() + 1).is_none(), "more threads than cores");
      if allowed.len() < 2 {
        return;
      }
      let pinning = Pinning::plan(2).expect("two cores allowed");
      assert_eq!(pinning.pool, vec![*allowed.last().unwrap()]);
      {
        let _guard = pinning.enter();
        let during = cores(&current().unwrap());
        assert!(!during.is_empty());
        assert!(during.iter().all(|cpu| allowed.contains(cpu) && !pinning.pool.contains(cpu)));
      }
      assert_eq!(cores(&current().unwrap()), allowed, "restored when the guard drops");
      let all = Pinning::plan(allowed.len()).expect("as many threads as cores");
      assert_eq!(all.pool, allowed[1..].to_vec(), "the caller keeps the first core");
    })
    .join()
    .unwrap();
  }
}
