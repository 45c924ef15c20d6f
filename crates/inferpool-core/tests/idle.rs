//! An idle pool sleeps: no spinning, no timers.

mod common;

use std::time::Duration;

use common::{embed, pool, sim};

/// CPU time of this process (user + system), from /proc.
#[cfg(target_os = "linux")]
fn cpu_time() -> Duration {
  let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
  // Fields after the command name (which is in parentheses and may contain spaces).
  let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
  let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
  let hz = 100; // _SC_CLK_TCK is 100 on every Linux this runs on.
  Duration::from_millis(ticks * 1000 / hz)
}

#[cfg(target_os = "linux")]
#[test]
fn an_idle_pool_uses_no_cpu() {
  let pool = pool(8, sim());
  embed(&pool, &["warm up".to_owned()]).unwrap();
  std::thread::sleep(Duration::from_millis(100));
  let before = cpu_time();
  std::thread::sleep(Duration::from_secs(1));
  let used = cpu_time().saturating_sub(before);
  eprintln!("idle pool of 8 workers: {used:?} of CPU over 1 s");
  // < 1% of one core over one second; clock ticks are 10 ms, so 0 or 1 tick is all that fits.
  assert!(used <= Duration::from_millis(10), "idle pool used {used:?} of CPU in 1 s");
  drop(pool);
}
