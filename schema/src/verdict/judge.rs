//! [`judge`]: one window of arrival runs, its learned baseline and the faults
//! known outside its rows become one [`Judgement`] of both dimensions.

use super::{BaselineSource, Contention, Reason, SkuReference, Thresholds, Verdict};
use crate::ProbeRecord;

/// A quiet run: no other compute process on the GPU (`tenants = 0`). Runs
/// with an unknown tenant count are not quiet.
pub fn is_quiet(r: &ProbeRecord) -> bool {
    r.tenants() == Some(0)
}

/// Event time per SM cycle: `gpu_ms × sm_clock_mhz / 1000`, millions of SM
/// cycles; `None` without both readings.
pub fn event_mcycles(r: &ProbeRecord) -> Option<f64> {
    Some(r.gpu_ms? * f64::from(r.device.sm_clock_mhz?) / 1000.0)
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
    /// Arrival runs whose throttle reasons had a bit of
    /// [`Thresholds::throttle_unhealthy_mask`] (hardware throttling).
    pub hw_throttled_runs: u64,
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
    /// Why the backend is down, bounded ([`Reason::OpenFailed`],
    /// [`Reason::Lost`], [`Reason::Hung`], a critical Xid);
    /// [`Reason::BackendDown`] when `None`.
    pub down_reason: Option<Reason>,
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
    // Hardware throttling pages only when sustained; with no arrival runs
    // in the window there is no share, and a bit seen counts as sustained.
    let hw_share = if w.samples == 0 {
        1.0
    } else {
        w.hw_throttled_runs as f64 / w.samples as f64
    };
    let (verdict, health_reason, health_detail) = if let Some(e) = &faults.backend_down {
        let r = faults.down_reason.unwrap_or(Reason::BackendDown);
        let text = match r {
            Reason::BackendDown => format!("backend down: {e}"),
            r => format!("{}: {e}", r.as_str()),
        };
        (Verdict::Unhealthy, r, text)
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
    } else if hw != 0 && hw_share >= th.throttle_unhealthy_share {
        (
            Verdict::Unhealthy,
            Reason::Throttled,
            format!(
                "hardware throttling: reasons {hw:#x} in {:.0} % of the window's runs",
                hw_share * 100.0
            ),
        )
    } else if let Some(r) = event_ratio.filter(|r| *r >= th.unhealthy_factor) {
        (Verdict::Unhealthy, Reason::EventSlow, slow(r))
    } else if let Some(r) = event_ratio.filter(|r| *r >= th.degraded_factor) {
        (Verdict::Degraded, Reason::EventSlow, slow(r))
    } else if hw != 0 {
        (
            Verdict::Degraded,
            Reason::Throttled,
            format!(
                "brief hardware throttling: reasons {hw:#x} in {:.0} % of the window's runs",
                hw_share * 100.0
            ),
        )
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
