//! How much of the queue a free worker takes: enough to finish when every worker finishes.
//!
//! A worker that becomes free knows the queued tokens, every worker's measured speed (tokens per
//! second) and when each busy worker expects to be free. Pouring the queue into the workers like
//! water into vessels whose floors are those free times gives the moment `T` at which all of
//! them would finish together; this worker's share is its speed × `T`. A slow worker gets less,
//! one that is still busy for a while leaves more to the others, and at the tail every worker
//! gets just enough to finish at `T` instead of one of them taking a whole batch while the
//! others idle. Counting the work still running on the others is what keeps the shares from
//! shrinking geometrically into many small batches.

/// Another worker, as this one sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Peer {
  /// Seconds until it is free (0 when it is free now).
  pub(crate) free_in: f64,
  /// Its speed, tokens per second.
  pub(crate) speed: f64,
}

/// Tokens a worker of speed `mine`, free now, should take out of `queued` tokens so that it and
/// `peers` finish together.
pub(crate) fn fair_share(queued: f64, mine: f64, peers: &mut [Peer]) -> f64 {
  if queued <= 0.0 || mine <= 0.0 {
    return 0.0;
  }
  peers.sort_by(|a, b| a.free_in.total_cmp(&b.free_in));
  // Fill level (time) reached so far, the work poured below it, and the speed pouring now.
  let (mut level, mut poured, mut rate) = (0.0, 0.0, mine);
  for peer in peers.iter().filter(|p| p.speed > 0.0) {
    let free_in = peer.free_in.max(0.0);
    let room = rate * (free_in - level);
    if poured + room >= queued {
      break;
    }
    poured += room;
    level = free_in;
    rate += peer.speed;
  }
  let finish = level + (queued - poured) / rate;
  mine * finish
}

#[cfg(test)]
mod tests {
  use super::*;

  fn free(speed: f64) -> Peer {
    Peer { free_in: 0.0, speed }
  }

  #[test]
  fn equal_free_workers_split_evenly() {
    let mut peers = vec![free(1.0); 3];
    assert!((fair_share(400.0, 1.0, &mut peers) - 100.0).abs() < 1e-9);
  }

  #[test]
  fn speed_scales_the_share() {
    // Speeds 3 (this one) and 1: this one takes three quarters.
    assert!((fair_share(400.0, 3.0, &mut [free(1.0)]) - 300.0).abs() < 1e-9);
  }

  #[test]
  fn busy_peers_leave_more_to_free_ones() {
    // The peer is busy for 100 s at speed 1; 100 tokens queued: this one takes them all, and
    // finishes before the peer is free.
    let mut peers = [Peer { free_in: 100.0, speed: 1.0 }];
    assert!((fair_share(100.0, 1.0, &mut peers) - 100.0).abs() < 1e-9);
    // 300 tokens: 100 until the peer is free, then half of the remaining 200.
    let mut peers = [Peer { free_in: 100.0, speed: 1.0 }];
    assert!((fair_share(300.0, 1.0, &mut peers) - 200.0).abs() < 1e-9);
  }

  #[test]
  fn nothing_queued_means_no_share() {
    assert!(fair_share(0.0, 1.0, &mut [free(1.0)]).abs() < f64::EPSILON);
  }

  #[test]
  fn peers_without_speed_are_ignored() {
    assert!((fair_share(50.0, 1.0, &mut [free(0.0)]) - 50.0).abs() < 1e-9);
  }
}
