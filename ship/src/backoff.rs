//! The delay between failed attempts, as a value (kube-rs `DefaultBackoff`):
//! exponential from `retry_initial_ms`, doubling, capped at `retry_max_ms`,
//! with jitter that adds up to as much again so that a fleet of agents
//! whose bucket came back does not retry in step. A success resets it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays between failed attempts: `next()` after each failure, `reset()`
/// after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    cap: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles per failure, never above `max` before
    /// jitter. With `jitter`, each delay `d` becomes a random value in
    /// `[d, 2d)`.
    pub fn new(initial: Duration, max: Duration, jitter: bool) -> Self {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        if jitter {
            builder = builder.with_jitter();
        }
        Self {
            builder,
            current: builder.build(),
            cap: max,
        }
    }

    /// The delay before the next attempt, after a failure.
    pub fn next_delay(&mut self) -> Duration {
        // Built without a limit on attempts or total delay, so the
        // iterator never ends; `cap` is only a fallback.
        self.current.next().unwrap_or(self.cap)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stays_at_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), false);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        for w in delays.windows(2) {
            assert!(w[1] >= w[0], "{delays:?}");
        }
        assert!(delays[3] > delays[0], "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(delays[7], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_twice_the_delay() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), true);
        let mut plain = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), false);
        for _ in 0..12 {
            let (d, base) = (b.next_delay(), plain.next_delay());
            assert!(
                d >= base && d < base * 2 + Duration::from_millis(1),
                "{d:?} vs {base:?}"
            );
        }
    }
}
