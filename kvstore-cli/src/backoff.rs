//! Exponential back-off between retries: the one helper every retry loop
//! of the client uses.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Delays that start at a minimum and double up to a maximum, optionally
/// jittered.
///
/// Jitter matters when many clients were turned away at the same moment:
/// without it they all retry together and are turned away together again.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    jitter: Option<StdRng>,
}

impl Backoff {
    /// Delays `min`, `2 * min`, ... capped at `max`, with no jitter.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min.min(max),
            max,
            jitter: None,
        }
    }

    /// The same bounds, each delay drawn uniformly from `[b / 2, b]` for
    /// the current bound `b`, from an RNG seeded with `seed` (so a run can
    /// be replayed).
    pub fn jittered(self, seed: u64) -> Backoff {
        Backoff {
            jitter: Some(StdRng::seed_from_u64(seed)),
            ..self
        }
    }

    /// The bound the next delay is drawn under.
    pub fn bound(&self) -> Duration {
        self.next
    }

    /// The next delay; the bound then doubles, up to the maximum.
    pub fn delay(&mut self) -> Duration {
        let bound = self.next;
        self.next = bound.saturating_mul(2).min(self.max);
        match &mut self.jitter {
            None => bound,
            Some(rng) => {
                let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rng.gen_range(nanos / 2..=nanos))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_backoff_doubles_up_to_its_maximum() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let delays: Vec<u64> = (0..5).map(|_| b.delay().as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
    }

    #[test]
    fn jittered_backoff_stays_within_its_bounds_and_differs_by_seed() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(500));
        let mut a = Backoff::new(min, max).jittered(1);
        let mut b = Backoff::new(min, max).jittered(2);
        let mut differ = false;
        for _ in 0..20 {
            let bound = a.bound();
            let (da, db) = (a.delay(), b.delay());
            for d in [da, db] {
                assert!(
                    d >= bound / 2 && d <= bound,
                    "{d:?} outside [{bound:?}/2, {bound:?}]"
                );
            }
            differ |= da != db;
        }
        assert_eq!(a.bound(), max);
        assert!(differ, "two seeds give different delays");
    }
}
