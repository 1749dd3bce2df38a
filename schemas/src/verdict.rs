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

use crate::ProbeRecord;

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
    /// Every reason (for documentation and tests).
    pub const ALL: [Reason; 14] = [
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

/// The one set of thresholds (agent `[health]` keys and `fleet` flags default
/// to these).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Health: event p50 per SM cycle ÷ baseline at which a GPU is
    /// `degraded`. Contention: wall p99 ÷ quiet baseline at which it is
    /// `contended`, and wall p99 ÷ predicted at which it is `over-shared`.
    pub degraded_factor: f64,
    /// Health: event ratio at which a GPU is `unhealthy`. Contention: wall
    /// p99 ÷ SLO at which it is `over-shared`.
    pub unhealthy_factor: f64,
    /// Arrival runs needed in the window before latency is judged.
    pub min_samples: u64,
    /// Quiet arrival runs needed before a learned baseline is used.
    pub baseline_min_samples: u64,
    /// Time slice per tenant, ms (about 2 ms on an H100 with the default
    /// time-slicing of the NVIDIA device plugin). A wall p99 less than half
    /// a slice above the quiet baseline is never contention.
    pub slice_ms: f64,
    /// Throttle-reason bits that make a GPU `degraded`: SW power cap 0x4,
    /// SW thermal 0x20.
    pub throttle_degraded_mask: u64,
    /// Throttle-reason bits that make a GPU `unhealthy`: HW slowdown 0x8, HW
    /// thermal 0x40, HW power brake 0x80.
    pub throttle_unhealthy_mask: u64,
}

impl Thresholds {
    /// The defaults, documented in `docs/operations.md`.
    pub const DEFAULT: Thresholds = Thresholds {
        degraded_factor: 1.5,
        unhealthy_factor: 3.0,
        min_samples: 30,
        baseline_min_samples: 100,
        slice_ms: 2.0,
        throttle_degraded_mask: 0x4 | 0x20,
        throttle_unhealthy_mask: 0x8 | 0x40 | 0x80,
    };
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The per-SKU reference of one probe kernel: quiet arrival runs on a known
/// good GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkuReference {
    /// `gpu_name` as NVML reports it.
    pub gpu_name: &'static str,
    /// `fft` or `gemm`.
    pub kernel: &'static str,
    /// `shape` column.
    pub shape: &'static str,
    /// `precision` column.
    pub precision: &'static str,
    /// p50 of `gpu_ms × sm_clock_mhz / 1000` (millions of SM cycles).
    pub event_mcycles_p50: f64,
    /// p50 of `wall_ms`, ms.
    pub wall_p50_ms: f64,
    /// p99 of `wall_ms`, ms.
    pub wall_p99_ms: f64,
}

/// Shipped references. Source: `docs/gpu-results/h100-run/agent-{light,article}`
/// (NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 13.0, graph submission,
/// SM clock 1980 MHz), runs with `burst_seq = 0` (the first run after an idle
/// gap, which is what a Poisson arrival sees) and no tenant; the event p50 is
/// the larger of those and the quiet back-to-back runs, so neither reads as
/// slow. The light GEMM's event p50 is from a later run with Poisson arrivals
/// (2026-11-26, same H100 model, 20 arrivals/s, idle): 1.2x the burst data,
/// because every arrival there follows an idle gap. Extend the table from
/// `slicetrace sql` over quiet arrival runs of a known good GPU.
pub const SKU_REFERENCES: &[SkuReference] = &[
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "fft",
        shape: "c2c 1d n=4096 batch=16",
        precision: "fp32",
        event_mcycles_p50: 0.0195,
        wall_p50_ms: 0.0768,
        wall_p99_ms: 0.1495,
    },
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "gemm",
        shape: "n=1024",
        precision: "fp16",
        event_mcycles_p50: 0.0204,
        wall_p50_ms: 0.0197,
        wall_p99_ms: 0.0585,
    },
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "fft",
        shape: "c2c 2d 4096x4096",
        precision: "fp32",
        event_mcycles_p50: 0.4825,
        wall_p50_ms: 0.304,
        wall_p99_ms: 0.3751,
    },
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "gemm",
        shape: "n=4096",
        precision: "fp32",
        event_mcycles_p50: 5.2771,
        wall_p50_ms: 2.6787,
        wall_p99_ms: 2.7044,
    },
];

/// The shipped reference for a GPU model and probe kernel, if any.
pub fn sku_reference(
    gpu_name: Option<&str>,
    kernel: &str,
    shape: &str,
    precision: &str,
) -> Option<&'static SkuReference> {
    let name = gpu_name?;
    SKU_REFERENCES.iter().find(|r| {
        r.gpu_name == name && r.kernel == kernel && r.shape == shape && r.precision == precision
    })
}

/// A quiet run: no other compute process on the GPU (`tenants = 0`). Runs
/// with an unknown tenant count are not quiet.
pub fn is_quiet(r: &ProbeRecord) -> bool {
    r.tenants() == Some(0)
}

/// Event time per SM cycle: `gpu_ms × sm_clock_mhz / 1000`, millions of SM
/// cycles; `None` without both readings.
pub fn event_mcycles(r: &ProbeRecord) -> Option<f64> {
    Some(r.gpu_ms? * f64::from(r.sm_clock_mhz?) / 1000.0)
}

/// Whether a run's event clock may be judged for health (see the module
/// doc): quiet runs; shared runs not flagged `event_inflated`; shared runs
/// nobody flagged only when the kernel is shorter than a slice.
pub fn event_eligible(r: &ProbeRecord, th: &Thresholds) -> bool {
    if is_quiet(r) {
        return true;
    }
    match r.event_inflated {
        Some(inflated) => !inflated,
        None => r.gpu_ms.is_some_and(|g| g < th.slice_ms),
    }
}

/// What one window of arrival runs of one GPU and kernel looked like (the
/// evaluator and `fleet` compute it each their own way, exact or by
/// histogram, and judge it here).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    /// Arrival runs in the window.
    pub samples: u64,
    /// p99 of `wall_ms`.
    pub wall_p99_ms: Option<f64>,
    /// Runs whose event clock may be judged ([`event_eligible`], with a
    /// clock reading).
    pub event_samples: u64,
    /// p50 of [`event_mcycles`] over those runs.
    pub event_mcycles_p50: Option<f64>,
    /// Runs with `correct = false`.
    pub correctness_failures: u64,
    /// OR of the throttle reasons.
    pub throttle_reasons: u64,
    /// Largest tenant count seen (`None`: never known).
    pub max_tenants: Option<u32>,
}

/// The GPU's own quiet baselines (`None` until enough quiet arrival runs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LearnedBaseline {
    /// p50 of quiet `wall_ms`, ms.
    pub wall_p50_ms: Option<f64>,
    /// p99 of quiet `wall_ms`, ms.
    pub wall_p99_ms: Option<f64>,
    /// p50 of quiet [`event_mcycles`].
    pub event_mcycles_p50: Option<f64>,
}

/// Failures known outside the window's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// The backend could not be opened (with why).
    pub backend_down: Option<String>,
    /// The start-up self-test failed.
    pub self_test_failed: bool,
    /// Probe runs are failing now (with the last error).
    pub probe_failing: Option<String>,
}

/// The outcome of [`judge`].
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Health of the GPU.
    pub verdict: Verdict,
    /// Why (bounded).
    pub health_reason: Reason,
    /// Why, one line with the numbers.
    pub health_detail: String,
    /// Baseline the event clock was judged against.
    pub health_source: Option<BaselineSource>,
    /// Event p50 per SM cycle ÷ its baseline.
    pub event_ratio: Option<f64>,
    /// Baseline event p50, millions of SM cycles.
    pub event_baseline_mcycles: Option<f64>,
    /// Contention state.
    pub contention: Contention,
    /// Why (bounded).
    pub contention_reason: Reason,
    /// Why, one line with the numbers and the tenant count.
    pub contention_detail: String,
    /// Baseline the wall clock was judged against.
    pub contention_source: Option<BaselineSource>,
    /// The wall p99 reference: the SLO or the quiet baseline p99, ms.
    pub wall_reference_p99_ms: Option<f64>,
    /// Wall p99 ÷ that reference.
    pub inflation: Option<f64>,
}

fn tenants_text(t: Option<u32>) -> String {
    match t {
        Some(1) => "1 tenant".into(),
        Some(t) => format!("{t} tenants"),
        None => "tenants unknown".into(),
    }
}

/// Judges one window: both dimensions, with the same rules for the live
/// evaluator and `fleet`.
pub fn judge(
    w: &WindowStats,
    learned: &LearnedBaseline,
    sku: Option<&SkuReference>,
    slo_p99_ms: Option<f64>,
    faults: &Faults,
    th: &Thresholds,
) -> Judgement {
    // ---- health ----
    let (event_base, health_source) = match (learned.event_mcycles_p50, sku) {
        (Some(b), _) => (Some(b), Some(BaselineSource::Learned)),
        (None, Some(s)) => (Some(s.event_mcycles_p50), Some(BaselineSource::Sku)),
        (None, None) => (None, None),
    };
    let event_ratio = match (w.event_mcycles_p50, event_base) {
        (Some(x), Some(b)) if b > 0.0 && w.event_samples >= th.min_samples => Some(x / b),
        _ => None,
    };
    let src = health_source.map_or("", BaselineSource::as_str);
    let slow = |r: f64| {
        format!(
            "event p50 {:.4} Mcycles is {r:.2}x the {src} baseline {:.4} (per SM cycle, {} runs judged)",
            w.event_mcycles_p50.unwrap_or(0.0),
            event_base.unwrap_or(0.0),
            w.event_samples
        )
    };
    let hw = w.throttle_reasons & th.throttle_unhealthy_mask;
    let sw = w.throttle_reasons & th.throttle_degraded_mask;
    let (verdict, health_reason, health_detail) = if let Some(e) = &faults.backend_down {
        (
            Verdict::Unhealthy,
            Reason::BackendDown,
            format!("backend down: {e}"),
        )
    } else if let Some(e) = &faults.probe_failing {
        (
            Verdict::Unhealthy,
            Reason::ProbeFailing,
            format!("probe failing: {e}"),
        )
    } else if w.correctness_failures > 0 {
        (
            Verdict::Unhealthy,
            Reason::Correctness,
            format!(
                "{} runs failed the correctness check in the window",
                w.correctness_failures
            ),
        )
    } else if faults.self_test_failed {
        (
            Verdict::Unhealthy,
            Reason::SelfTestFailed,
            "self-test failed: correctness unverified".to_string(),
        )
    } else if hw != 0 {
        (
            Verdict::Unhealthy,
            Reason::Throttled,
            format!("hardware throttling: reasons {hw:#x}"),
        )
    } else if let Some(r) = event_ratio.filter(|r| *r >= th.unhealthy_factor) {
        (Verdict::Unhealthy, Reason::EventSlow, slow(r))
    } else if let Some(r) = event_ratio.filter(|r| *r >= th.degraded_factor) {
        (Verdict::Degraded, Reason::EventSlow, slow(r))
    } else if sw != 0 {
        (
            Verdict::Degraded,
            Reason::Throttled,
            format!("throttled: reasons {sw:#x}"),
        )
    } else if w.samples == 0 {
        (
            Verdict::Unknown,
            Reason::NoData,
            "no arrival runs in the window".to_string(),
        )
    } else if w.samples < th.min_samples {
        (
            Verdict::Unknown,
            Reason::WarmingUp,
            format!("warming up: {} of {} runs", w.samples, th.min_samples),
        )
    } else if let Some(r) = event_ratio {
        (
            Verdict::Healthy,
            Reason::None,
            format!("event p50 per SM cycle is {r:.2}x the {src} baseline"),
        )
    } else if event_base.is_none() {
        // Correctness, faults and throttling passed, but the GPU's speed
        // cannot be judged: never read that as healthy.
        (
            Verdict::Unknown,
            Reason::NoBaseline,
            "no event-clock baseline (not quiet long enough to learn one, no SKU reference): speed not judged"
                .to_string(),
        )
    } else {
        (
            Verdict::Healthy,
            Reason::None,
            format!(
                "only {} runs with a judgeable event clock: checks without one passed",
                w.event_samples
            ),
        )
    };

    // ---- contention ----
    let tenants = tenants_text(w.max_tenants);
    let (wall_ref, contention_source) = match (slo_p99_ms, learned.wall_p99_ms, sku) {
        (Some(s), _, _) => (Some(s), Some(BaselineSource::Slo)),
        (None, Some(b), _) => (Some(b), Some(BaselineSource::Learned)),
        (None, None, Some(s)) => (Some(s.wall_p99_ms), Some(BaselineSource::Sku)),
        _ => (None, None),
    };
    let judged = w.samples >= th.min_samples;
    let inflation = match (w.wall_p99_ms, wall_ref) {
        (Some(p), Some(b)) if b > 0.0 && judged => Some(p / b),
        _ => None,
    };
    let p99 = w.wall_p99_ms.unwrap_or(0.0);
    let (contention, contention_reason, contention_detail) = if !judged {
        (
            Contention::Ok,
            if w.samples == 0 {
                Reason::NoData
            } else {
                Reason::WarmingUp
            },
            format!(
                "{} of {} runs: wait not judged ({tenants})",
                w.samples, th.min_samples
            ),
        )
    } else if let (Some(BaselineSource::Slo), Some(slo), Some(i)) =
        (contention_source, wall_ref, inflation)
    {
        let text = format!("p99 wall {p99:.3} ms is {i:.2}x the SLO {slo:.3} ms ({tenants})");
        if i > th.unhealthy_factor {
            (Contention::OverShared, Reason::WaitOverSlo, text)
        } else if i > 1.0 {
            (Contention::Contended, Reason::WaitOverSlo, text)
        } else {
            (Contention::Ok, Reason::None, text)
        }
    } else if let (Some(base), Some(i)) = (wall_ref, inflation) {
        let src = contention_source.map_or("", BaselineSource::as_str);
        // A random arrival waits up to tenants × slice per slice the kernel
        // needs (a kernel longer than a slice is preempted and waits again).
        let kernel_ms = learned
            .wall_p50_ms
            .or(sku.map(|s| s.wall_p50_ms))
            .unwrap_or(0.0);
        let slices = (kernel_ms / th.slice_ms).ceil().max(1.0);
        let predicted = w
            .max_tenants
            .filter(|t| *t > 0)
            .map(|t| base + f64::from(t) * th.slice_ms * slices);
        match predicted {
            Some(pred) if p99 > th.degraded_factor * pred => (
                Contention::OverShared,
                Reason::WaitOverPredicted,
                format!(
                    "p99 wall {p99:.3} ms is {:.2}x what {tenants} predict ({pred:.3} ms: {src} baseline {base:.3} ms + {} ms slices)",
                    p99 / pred,
                    th.slice_ms
                ),
            ),
            _ if i >= th.degraded_factor && p99 - base >= th.slice_ms / 2.0 => (
                Contention::Contended,
                Reason::WaitOverBaseline,
                format!("p99 wall {p99:.3} ms is {i:.2}x the {src} quiet baseline {base:.3} ms ({tenants})"),
            ),
            _ => (
                Contention::Ok,
                Reason::None,
                format!("p99 wall is {i:.2}x the {src} quiet baseline ({tenants})"),
            ),
        }
    } else {
        (
            Contention::Ok,
            Reason::NoBaseline,
            format!("no quiet baseline, SKU reference or SLO: wait not judged ({tenants})"),
        )
    };
    Judgement {
        verdict,
        health_reason,
        health_detail,
        health_source,
        event_ratio,
        event_baseline_mcycles: event_base,
        contention,
        contention_reason,
        contention_detail,
        contention_source,
        wall_reference_p99_ms: wall_ref,
        inflation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(wall_p99: f64, cycles: f64, tenants: u32) -> WindowStats {
        WindowStats {
            samples: 100,
            wall_p99_ms: Some(wall_p99),
            event_samples: 100,
            event_mcycles_p50: Some(cycles),
            correctness_failures: 0,
            throttle_reasons: 0,
            max_tenants: Some(tenants),
        }
    }

    fn h100_fft() -> &'static SkuReference {
        sku_reference(
            Some("NVIDIA H100 80GB HBM3"),
            "fft",
            "c2c 1d n=4096 batch=16",
            "fp32",
        )
        .expect("shipped")
    }

    #[test]
    fn h100_tenant_phases_are_healthy_and_contended_not_unhealthy() {
        let th = Thresholds::DEFAULT;
        let learned = LearnedBaseline {
            wall_p50_ms: Some(0.0768),
            wall_p99_ms: Some(0.1495),
            event_mcycles_p50: Some(0.0195),
        };
        // docs/gpu-results/h100-summary.md section 2: 1 and 3 tenants.
        for (wall, cyc, t) in [(2.4285, 0.0139, 1), (6.9961, 0.0139, 3)] {
            let j = judge(
                &w(wall, cyc, t),
                &learned,
                None,
                None,
                &Faults::default(),
                &th,
            );
            assert_eq!(j.verdict, Verdict::Healthy, "{j:?}");
            assert_eq!(j.contention, Contention::Contended, "{j:?}");
            assert!(
                j.contention_detail.contains(&format!("{t} tenant")),
                "{j:?}"
            );
        }
        // A wait far beyond what one tenant explains: over-shared.
        let j = judge(
            &w(9.0, 0.0139, 1),
            &learned,
            None,
            None,
            &Faults::default(),
            &th,
        );
        assert_eq!(
            (j.verdict, j.contention, j.contention_reason),
            (
                Verdict::Healthy,
                Contention::OverShared,
                Reason::WaitOverPredicted
            )
        );
    }

    #[test]
    fn never_idle_gpu_is_judged_against_the_sku_reference() {
        let th = Thresholds::DEFAULT;
        let none = LearnedBaseline::default();
        let j = judge(
            &w(6.9, 0.0139, 3),
            &none,
            Some(h100_fft()),
            None,
            &Faults::default(),
            &th,
        );
        assert_eq!(j.verdict, Verdict::Healthy);
        assert_eq!(j.health_source, Some(BaselineSource::Sku));
        assert_eq!(j.contention_source, Some(BaselineSource::Sku));
        let j = judge(
            &w(6.9, 0.07, 3),
            &none,
            Some(h100_fft()),
            None,
            &Faults::default(),
            &th,
        );
        assert_eq!(
            (j.verdict, j.health_reason),
            (Verdict::Unhealthy, Reason::EventSlow)
        );
        let j = judge(
            &w(6.9, 0.035, 3),
            &none,
            Some(h100_fft()),
            None,
            &Faults::default(),
            &th,
        );
        assert_eq!(
            (j.verdict, j.health_reason),
            (Verdict::Degraded, Reason::EventSlow)
        );
    }

    #[test]
    fn faults_throttling_and_no_data() {
        let th = Thresholds::DEFAULT;
        let b = LearnedBaseline::default();
        let f = Faults {
            self_test_failed: true,
            ..Default::default()
        };
        let j = judge(&w(1.0, 0.01, 0), &b, None, None, &f, &th);
        assert_eq!(
            (j.verdict, j.health_reason),
            (Verdict::Unhealthy, Reason::SelfTestFailed)
        );
        let mut x = w(1.0, 0.01, 0);
        x.throttle_reasons = 0x40;
        let j = judge(&x, &b, None, None, &Faults::default(), &th);
        assert_eq!(
            (j.verdict, j.health_reason),
            (Verdict::Unhealthy, Reason::Throttled)
        );
        x.throttle_reasons = 0x4;
        let j = judge(&x, &b, None, None, &Faults::default(), &th);
        assert_eq!(
            (j.verdict, j.health_reason),
            (Verdict::Degraded, Reason::Throttled)
        );
        let j = judge(
            &WindowStats::default(),
            &b,
            None,
            None,
            &Faults::default(),
            &th,
        );
        assert_eq!(
            (j.verdict, j.health_reason),
            (Verdict::Unknown, Reason::NoData)
        );
        // SLO: contention only, never health.
        let j = judge(
            &w(10.0, 0.01, 2),
            &b,
            None,
            Some(1.0),
            &Faults::default(),
            &th,
        );
        // (No event baseline at all: the GPU's speed is unknown, not healthy.)
        assert_eq!(
            (j.verdict, j.contention, j.contention_source),
            (
                Verdict::Unknown,
                Contention::OverShared,
                Some(BaselineSource::Slo)
            )
        );
    }

    #[test]
    fn preempted_long_kernels_are_not_judged_beside_tenants() {
        let th = Thresholds::DEFAULT;
        let r = |gpu: f64, t: u32, inflated: Option<bool>| ProbeRecord {
            gpu_ms: Some(gpu),
            gpu_processes: Some(t),
            event_inflated: inflated,
            ..Default::default()
        };
        assert!(event_eligible(&r(6.8, 0, None), &th));
        assert!(!event_eligible(&r(6.8, 3, None), &th));
        assert!(!event_eligible(&r(0.01, 3, Some(true)), &th));
        assert!(event_eligible(&r(0.01, 3, None), &th));
        assert!(event_eligible(&r(2.7, 3, Some(false)), &th));
    }

    #[test]
    fn reason_names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!(seen.insert(s), "{s}");
            assert_eq!(serde_json::to_string(&r).expect("json"), format!("\"{s}\""));
        }
    }
}
