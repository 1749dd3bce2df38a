//! One unit (a GPU, kernel and shape): the summary of its runs that the
//! fleet query computes (window and baseline period apart), and its
//! judgement by the schema's [`judge`].

use slicetrace_schema::{
    judge, sku_reference, Contention, Faults, LearnedBaseline, Reason, WindowStats,
};

use crate::stats::median_mad;

use super::{FleetArgs, KernelFinding};

/// What the fleet query returns for one unit (`w_`: the window's counted
/// runs; `b_`: the baseline period's quiet counted runs). Quantiles are
/// t-digest estimates (`approx_percentile_cont`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Unit {
    pub(crate) gpu_name: String,
    pub(crate) precision: String,
    /// Newest `ts` of any row in the scanned range, ns.
    pub(crate) newest_ns: Option<i64>,
    /// Rows in the range, and of them arrival runs.
    pub(crate) rows: u64,
    pub(crate) arrivals: u64,
    pub(crate) w_runs: u64,
    pub(crate) w_wall_p99: Option<f64>,
    pub(crate) w_gpu_p50: Option<f64>,
    pub(crate) w_clock_p50: Option<f64>,
    /// p50 of `gpu_ms × sm_clock_mhz / 1000` over every window run.
    pub(crate) w_norm_p50: Option<f64>,
    /// Runs whose event clock may be judged, and the p50 of their Mcycles.
    pub(crate) w_event_runs: u64,
    pub(crate) w_event_p50: Option<f64>,
    pub(crate) w_fails: u64,
    pub(crate) w_throttle: u64,
    /// Window runs with a hardware throttle reason
    /// (`Thresholds::throttle_unhealthy_mask`).
    pub(crate) w_hw_throttled: u64,
    pub(crate) w_max_tenants: Option<u32>,
    pub(crate) b_quiet_runs: u64,
    pub(crate) b_wall_p50: Option<f64>,
    pub(crate) b_wall_p99: Option<f64>,
    pub(crate) b_event_runs: u64,
    pub(crate) b_event_p50: Option<f64>,
}

pub(crate) type UnitKey = (String, String, String, String);

/// The median and scale of one peer group's values, computed once for the
/// group: every member's score divides by the same numbers, and computing
/// them per member made the peer comparison quadratic in the group's size
/// (80,000 GPUs of one model: most of a 10,000-node check's time).
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerScale(Option<(f64, f64)>);

impl PeerScale {
    /// `peers`' median and `max(1.4826 · MAD, floor_frac · |median|)`.
    pub(super) fn of(peers: &[f64], floor_frac: f64) -> Self {
        PeerScale(median_mad(peers).map(|(m, mad)| (m, (1.4826 * mad).max(floor_frac * m.abs()))))
    }

    /// The robust z-score of `x`: `None` without `x`, peers or a positive
    /// scale.
    pub(super) fn z(&self, x: Option<f64>) -> Option<f64> {
        let x = x?;
        let (m, scale) = self.0?;
        (scale > 0.0).then(|| (x - m) / scale)
    }
}

pub(super) fn ts_rfc3339(ns: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Judges one unit (GPU, kernel, shape): the schema's [`judge`] on the
/// window's summary, against the baseline period's quiet runs.
pub(super) fn judge_unit(kernel: &str, shape: &str, u: &Unit, a: &FleetArgs) -> KernelFinding {
    let th = a.thresholds();
    let stats = WindowStats {
        samples: u.w_runs,
        wall_p99_ms: u.w_wall_p99,
        event_samples: u.w_event_runs,
        event_mcycles_p50: u.w_event_p50,
        correctness_failures: u.w_fails,
        throttle_reasons: u.w_throttle,
        hw_throttled_runs: u.w_hw_throttled,
        max_tenants: u.w_max_tenants,
    };
    // The GPU's own quiet baseline, from the baseline period only.
    let min = a.baseline_min_samples as u64;
    let mut learned = LearnedBaseline::default();
    if u.b_quiet_runs >= min {
        learned.wall_p50_ms = u.b_wall_p50;
        learned.wall_p99_ms = u.b_wall_p99;
        if u.b_event_runs >= min {
            learned.event_mcycles_p50 = u.b_event_p50;
        }
    }
    let sku = if a.no_sku_reference {
        None
    } else {
        sku_reference(Some(u.gpu_name.as_str()), kernel, shape, &u.precision)
    };
    let j = judge(&stats, &learned, sku, a.slo_p99_ms, &Faults::default(), &th);
    let mut reasons = Vec::new();
    if j.health_reason != Reason::None {
        reasons.push(j.health_detail.clone());
    }
    if j.contention != Contention::Ok {
        reasons.push(j.contention_detail.clone());
    }
    let enough = u.w_runs >= a.min_samples as u64;
    KernelFinding {
        kernel: kernel.to_string(),
        shape: shape.to_string(),
        verdict: j.verdict,
        health_reason: j.health_reason,
        health_baseline_source: j.health_source,
        contention: j.contention,
        contention_reason: j.contention_reason,
        contention_baseline_source: j.contention_source,
        window_runs: u.w_runs as usize,
        max_tenants: stats.max_tenants,
        wall_p99_ms: stats.wall_p99_ms.filter(|_| enough),
        gpu_p50_ms: u.w_gpu_p50.filter(|_| enough),
        event_p50_mcycles: stats.event_mcycles_p50,
        event_baseline_mcycles: j.event_baseline_mcycles,
        baseline_p99_ms: j.wall_reference_p99_ms,
        inflation: j.inflation,
        peer_z_wall: None,
        peer_z_gpu: None,
        peer_z_norm: None,
        sm_clock_mhz: u.w_clock_p50,
        correctness_failures: u.w_fails as usize,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slicetrace_schema::BaselineSource;

    use crate::fleet::Verdict;

    fn unit(n: u64, wall: f64, gpu: f64, tenants: u32) -> Unit {
        Unit {
            gpu_name: "NVIDIA H100 80GB HBM3".into(),
            precision: "fp32".into(),
            rows: n,
            arrivals: n,
            w_runs: n,
            w_wall_p99: Some(wall),
            w_gpu_p50: Some(gpu),
            w_clock_p50: Some(1980.0),
            w_norm_p50: Some(gpu * 1.98),
            w_event_runs: n,
            w_event_p50: Some(gpu * 1.98),
            w_max_tenants: Some(tenants),
            ..Default::default()
        }
    }

    #[test]
    fn a_gpu_with_no_runs_in_the_window_is_unknown_never_healthy() {
        let u = Unit {
            b_quiet_runs: 200,
            b_wall_p50: Some(0.1),
            b_wall_p99: Some(0.1),
            ..unit(0, 0.1, 0.01, 0)
        };
        let u = Unit {
            w_wall_p99: None,
            w_gpu_p50: None,
            w_event_p50: None,
            w_event_runs: 0,
            ..u
        };
        let f = judge_unit("fft", "c2c 1d n=4096 batch=16", &u, &FleetArgs::default());
        assert_eq!(f.window_runs, 0);
        assert_eq!(
            (f.verdict, f.health_reason),
            (Verdict::Unknown, Reason::NoData)
        );
    }

    #[test]
    fn a_shared_gpu_is_healthy_and_contended_against_the_sku_reference() {
        let u = unit(200, 6.0, 0.007, 3);
        let f = judge_unit("fft", "c2c 1d n=4096 batch=16", &u, &FleetArgs::default());
        assert_eq!(f.verdict, Verdict::Healthy, "{:?}", f.reasons);
        assert_eq!(f.health_baseline_source, Some(BaselineSource::Sku));
        assert_eq!(f.contention, Contention::Contended, "{:?}", f.reasons);
        assert!(
            f.reasons.iter().any(|r| r.contains("3 tenants")),
            "{:?}",
            f.reasons
        );
    }

    #[test]
    fn the_baseline_comes_from_the_baseline_period_only() {
        // Slow in the window, fast quiet runs in the baseline period: the
        // learned baseline (not the window) is the reference.
        let u = Unit {
            b_quiet_runs: 500,
            b_wall_p50: Some(0.05),
            b_wall_p99: Some(0.06),
            b_event_runs: 500,
            b_event_p50: Some(0.05 * 1.98),
            ..unit(500, 0.2, 0.2, 0)
        };
        let f = judge_unit("fft", "c2c 1d n=4096 batch=16", &u, &FleetArgs::default());
        assert_eq!(f.health_baseline_source, Some(BaselineSource::Learned));
        assert_eq!(f.verdict, Verdict::Unhealthy, "{:?}", f.reasons);
    }
}
