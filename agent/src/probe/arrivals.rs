//! When probe runs start: the sampling design ([`ArrivalPlan`]) built from
//! the `[probe]` table, and the exponential gaps of its Poisson process.

use std::time::Duration;

use rand::Rng;
use slicetrace_probe::ProbeSpec;

use super::config::{Arrivals, ProbeConfig, DEFAULT_RATE_HZ};

/// When runs start: the probe's sampling design.
///
/// Only runs that arrive at moments independent of the probe's own previous
/// run sample what a caller sees. A run issued right after the probe's own
/// previous run finds the driver has just rotated away from it and waits
/// about a full rotation; fixed periods phase-lock with the rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalPlan {
    /// One run per arrival; gaps are exponential with mean `1 / rate_hz`
    /// (a Poisson process), measured from the end of the previous run so
    /// that a run never follows the previous one back to back. Arrivals
    /// alternate FFT and GEMM, so both kernels get the same share.
    Poisson {
        /// Mean arrivals per second per GPU (both kernels together).
        rate_hz: f64,
    },
    /// The first version's cycles: an FFT burst then a GEMM burst every
    /// jittered interval. Only the first run of a cycle is an arrival.
    Burst {
        /// Mean interval between cycles.
        interval: Duration,
        /// ± jitter percent of the interval.
        jitter_pct: u32,
        /// Runs per kernel per cycle.
        burst_runs: u32,
    },
}

impl ArrivalPlan {
    /// The arrival plan `config` asks for, on a backend running `spec`.
    pub fn new(config: &ProbeConfig, spec: &ProbeSpec) -> Self {
        match config.arrivals.unwrap_or_default() {
            Arrivals::Poisson => ArrivalPlan::Poisson {
                rate_hz: config.rate_hz.unwrap_or(DEFAULT_RATE_HZ),
            },
            Arrivals::Burst => ArrivalPlan::Burst {
                interval: Duration::from_millis(config.interval_ms),
                jitter_pct: config.jitter_pct,
                burst_runs: spec.burst_runs,
            },
        }
    }

    /// Rows one arrival or cycle produces (to size queues).
    pub fn rows_per_send(&self) -> usize {
        match self {
            ArrivalPlan::Poisson { .. } => 1,
            ArrivalPlan::Burst { burst_runs, .. } => 2 * (*burst_runs).max(1) as usize,
        }
    }
}

/// An exponential gap with mean `1 / rate_hz` (inverse transform sampling).
pub fn exponential_gap(rate_hz: f64, rng: &mut impl Rng) -> Duration {
    // 1 - U is in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    Duration::from_secs_f64(-u.ln() / rate_hz.max(1e-9))
}
