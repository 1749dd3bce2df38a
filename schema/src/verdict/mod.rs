//! The one definition of a verdict: the agent's live evaluator, its spans,
//! `/metrics`, the node condition and `slicetrace fleet` all call [`judge`]
//! with the same thresholds ([`Thresholds::DEFAULT`]), so the same rows give
//! the same words everywhere.
//!
//! A verdict has two dimensions, judged separately:
//!
//! * **health** ([`Verdict`]): is the GPU itself sound? From the event clock
//!   (`gpu_ms`) normalised by the SM clock (`gpu_ms × sm_clock_mhz / 1000`,
//!   millions of SM cycles, so a throttled GPU is not "slow silicon"),
//!   throttle reasons, correctness checks, probe or device failures and the
//!   start-up self-test. Contention never makes a GPU unhealthy.
//! * **contention** ([`Contention`]): how long callers wait for a time slice.
//!   From the wall clock (`wall_ms`) of arrival runs against an SLO, or
//!   against the quiet baseline plus what the tenant count predicts (a random
//!   arrival waits up to about `tenants × slice_ms` per slice the kernel
//!   needs; measured on an H100: ~2 ms per slice).
//!
//! Which event-clock runs are judged ([`event_eligible`]): a kernel longer
//! than a time slice is preempted mid-kernel beside tenants, so its event
//! time rises although the GPU is fine (the `event_inflated` rows). Health
//! therefore judges the event clock on quiet runs (`tenants = 0`), and on
//! shared runs only when they are not flagged `event_inflated` (or, where
//! nobody could flag them, when the kernel is shorter than a slice).
//!
//! Baselines ([`BaselineSource`]): the event clock is judged against the
//! GPU's own learned quiet baseline when it has one (`learned`), else
//! against the per-SKU reference shipped in [`SKU_REFERENCES`] (`sku`), so a
//! GPU that is never idle still gets a health verdict. The wall clock is
//! judged against `--slo-p99-ms`/`slo_p99_ms` when set (`slo`), else the
//! learned quiet baseline, else the SKU reference.

use serde::{Deserialize, Serialize};

mod judge;
mod thresholds;

pub use judge::{
    event_eligible, event_mcycles, is_quiet, judge, Faults, Judgement, LearnedBaseline, WindowStats,
};
pub use thresholds::{sku_reference, SkuReference, Thresholds, SKU_REFERENCES};

/// Health of the GPU itself, ordered from best to worst (`max` is the worse).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check that could run passed.
    Healthy,
    /// Not judged and nothing found: no arrival runs in the window, fewer
    /// than `min_samples`, or no event-clock baseline (never quiet long
    /// enough to learn one, and no SKU reference). Never read as healthy.
    Unknown,
    /// Slower than it should be: event clock inflated per SM cycle, or
    /// software throttling (power cap, SW thermal).
    Degraded,
    /// Wrong answers, failing probes, a backend that is not up, a failed
    /// self-test, hardware throttling, or an event clock far too slow.
    Unhealthy,
}

impl Verdict {
    /// All verdicts, best first (for labelled gauges).
    pub const ALL: [Verdict; 4] = [
        Verdict::Healthy,
        Verdict::Unknown,
        Verdict::Degraded,
        Verdict::Unhealthy,
    ];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Unknown => "unknown",
            Verdict::Degraded => "degraded",
            Verdict::Unhealthy => "unhealthy",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = crate::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::kinds::parse_name(&Verdict::ALL, Verdict::as_str, s)
    }
}

/// How contended a GPU is for its time slices: a dimension separate from
/// [`Verdict`] (the health of the GPU itself). A GPU that is merely shared by
/// its tenants is `healthy` and `contended`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Contention {
    /// The wait for a slice is within the SLO (or the quiet baseline).
    Ok,
    /// Callers wait for a slice: wall p99 above the SLO, or at least
    /// `degraded_factor` times the quiet baseline and at least half a slice
    /// (`slice_ms / 2`) above it (so jitter of a sub-millisecond kernel on an
    /// idle GPU is not called contention).
    Contended,
    /// The wait exceeds what the tenant count predicts by `degraded_factor`,
    /// or the SLO by `unhealthy_factor`.
    OverShared,
}

impl Contention {
    /// All states, best first (for labelled gauges).
    pub const ALL: [Contention; 3] = [
        Contention::Ok,
        Contention::Contended,
        Contention::OverShared,
    ];

    /// Name as written in columns, labels and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Contention::Ok => "ok",
            Contention::Contended => "contended",
            Contention::OverShared => "over-shared",
        }
    }
}

impl std::str::FromStr for Contention {
    type Err = crate::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::kinds::parse_name(&Contention::ALL, Contention::as_str, s)
    }
}

/// The dimension a [`Reason`] explains (the `dimension` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    /// [`Verdict`].
    Health,
    /// [`Contention`].
    Contention,
}

impl Dimension {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Health => "health",
            Dimension::Contention => "contention",
        }
    }
}

/// Why a dimension has its value: a bounded set, used as a metric label
/// (`slicetrace_gpu_verdict_reason{reason=…}`) and in the `health` table.
/// The one-line detail (with numbers and the tenant count) is separate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Nothing found.
    None,
    /// Fewer runs in the window than `min_samples`.
    WarmingUp,
    /// No arrival runs in the window at all (fleet: stale GPU).
    NoData,
    /// Nothing to judge against (no learned baseline, no SKU reference, no SLO).
    NoBaseline,
    /// Health: event time per SM cycle above the baseline.
    EventSlow,
    /// Health: throttle reasons in the window.
    Throttled,
    /// Health: runs failed their correctness check.
    Correctness,
    /// Health: probe runs fail (device error, lost GPU).
    ProbeFailing,
    /// Health: the start-up self-test did not catch a planted corruption, so
    /// correctness is unverified.
    SelfTestFailed,
    /// Health: the configured backend could not be opened.
    BackendDown,
    /// Health: this GPU's backend failed to open (the agent keeps retrying
    /// it with backoff; the other GPUs probe on).
    OpenFailed,
    /// Health: this GPU's runs failed repeatedly and reopening it failed
    /// (the context or the device is gone).
    Lost,
    /// Health: a run did not finish within its deadline (the watchdog
    /// abandoned it and its context).
    Hung,
    /// Health (`unknown`): the node's driver is being upgraded; the agent
    /// released its CUDA contexts on it and pages nobody.
    DriverUpgrade,
    /// Health: NVML reported Xid 48 (double-bit ECC error).
    #[serde(rename = "xid_48")]
    Xid48,
    /// Health: NVML reported Xid 79 (the GPU fell off the bus).
    #[serde(rename = "xid_79")]
    Xid79,
    /// Health: NVML reported Xid 94 (contained ECC error).
    #[serde(rename = "xid_94")]
    Xid94,
    /// Health: NVML reported Xid 95 (uncontained ECC error).
    #[serde(rename = "xid_95")]
    Xid95,
    /// Contention: wall p99 above the quiet baseline.
    WaitOverBaseline,
    /// Contention: wall p99 above the SLO.
    WaitOverSlo,
    /// Contention: wall p99 above what the tenant count predicts.
    WaitOverPredicted,
    /// Contention: wall p99 far above the peers' with a normal event clock (fleet).
    WaitOverPeers,
}

impl Reason {
    /// The reason for a critical Xid (one that means a lost or wedged GPU),
    /// `None` for any other code.
    pub fn for_xid(code: u64) -> Option<Reason> {
        match code {
            48 => Some(Reason::Xid48),
            79 => Some(Reason::Xid79),
            94 => Some(Reason::Xid94),
            95 => Some(Reason::Xid95),
            _ => None,
        }
    }

    /// Every reason (for documentation and tests).
    pub const ALL: [Reason; 22] = [
        Reason::None,
        Reason::WarmingUp,
        Reason::NoData,
        Reason::NoBaseline,
        Reason::EventSlow,
        Reason::Throttled,
        Reason::Correctness,
        Reason::ProbeFailing,
        Reason::SelfTestFailed,
        Reason::BackendDown,
        Reason::OpenFailed,
        Reason::Lost,
        Reason::Hung,
        Reason::DriverUpgrade,
        Reason::Xid48,
        Reason::Xid79,
        Reason::Xid94,
        Reason::Xid95,
        Reason::WaitOverBaseline,
        Reason::WaitOverSlo,
        Reason::WaitOverPredicted,
        Reason::WaitOverPeers,
    ];

    /// snake_case name (the label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::WarmingUp => "warming_up",
            Reason::NoData => "no_data",
            Reason::NoBaseline => "no_baseline",
            Reason::EventSlow => "event_slow",
            Reason::Throttled => "throttled",
            Reason::Correctness => "correctness",
            Reason::ProbeFailing => "probe_failing",
            Reason::SelfTestFailed => "self_test_failed",
            Reason::BackendDown => "backend_down",
            Reason::OpenFailed => "open_failed",
            Reason::Lost => "lost",
            Reason::Hung => "hung",
            Reason::DriverUpgrade => "driver_upgrade",
            Reason::Xid48 => "xid_48",
            Reason::Xid79 => "xid_79",
            Reason::Xid94 => "xid_94",
            Reason::Xid95 => "xid_95",
            Reason::WaitOverBaseline => "wait_over_baseline",
            Reason::WaitOverSlo => "wait_over_slo",
            Reason::WaitOverPredicted => "wait_over_predicted",
            Reason::WaitOverPeers => "wait_over_peers",
        }
    }
}

/// Where the baseline a dimension was judged against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineSource {
    /// Learned from this GPU's own quiet arrival runs (`tenants = 0`).
    Learned,
    /// The per-SKU reference shipped in [`SKU_REFERENCES`].
    Sku,
    /// The configured SLO (contention only).
    Slo,
}

impl BaselineSource {
    /// Lowercase name (the `source` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineSource::Learned => "learned",
            BaselineSource::Sku => "sku",
            BaselineSource::Slo => "slo",
        }
    }
}

#[cfg(test)]
mod tests;
