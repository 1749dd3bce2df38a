//! One unit (a GPU, kernel and shape): its rows in column vectors, and its
//! judgement by the schema's [`judge`] on exact quantiles.

use slicetrace_schema::{
    event_eligible, event_mcycles, judge, sku_reference, Contention, Faults, LearnedBaseline,
    ProbeRecord, Reason, WindowStats,
};

use crate::stats::{median_mad, quantile_sorted, sort_values};

use super::{FleetArgs, KernelFinding};

#[derive(Default)]
pub(super) struct Unit {
    pub(super) gpu_name: String,
    pub(super) precision: String,
    pub(super) ts: Vec<i64>,
    pub(super) wall: Vec<f64>,
    pub(super) gpu: Vec<f64>,
    pub(super) clk: Vec<f64>,
    pub(super) correct: Vec<Option<bool>>,
    pub(super) tenants: Vec<Option<u32>>,
    pub(super) inflated: Vec<Option<bool>>,
    pub(super) throttle: Vec<u64>,
}

impl Unit {
    /// Row `i` as a record, with the fields the schema's row rules read.
    fn record(&self, i: usize) -> ProbeRecord {
        let opt = |x: f64| (!x.is_nan()).then_some(x);
        ProbeRecord {
            gpu_ms: opt(self.gpu[i]),
            wall_ms: self.wall[i],
            sm_clock_mhz: opt(self.clk[i]).map(|c| c as u32),
            gpu_processes: self.tenants[i],
            event_inflated: self.inflated[i],
            ..Default::default()
        }
    }
}

pub(super) type UnitKey = (String, String, String, String);

pub(super) fn p(v: &mut Vec<f64>, q: f64) -> Option<f64> {
    quantile_sorted(sort_values(v), q)
}

pub(super) fn robust_z(x: Option<f64>, peers: &[f64], floor_frac: f64) -> Option<f64> {
    let x = x?;
    let (m, mad) = median_mad(peers)?;
    let scale = (1.4826 * mad).max(floor_frac * m.abs());
    (scale > 0.0).then(|| (x - m) / scale)
}

pub(super) fn ts_rfc3339(ns: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Judges one unit (GPU, kernel, shape) over `[start, ..]`: the schema's
/// [`judge`] on exact quantiles.
pub(super) fn judge_unit(
    kernel: &str,
    shape: &str,
    u: &Unit,
    start: i64,
    a: &FleetArgs,
) -> KernelFinding {
    let th = a.thresholds();
    let idx: Vec<usize> = (0..u.ts.len()).filter(|&i| u.ts[i] >= start).collect();
    let mut wall: Vec<f64> = idx.iter().map(|&i| u.wall[i]).collect();
    let mut gpu: Vec<f64> = idx.iter().map(|&i| u.gpu[i]).collect();
    let mut clk: Vec<f64> = idx.iter().map(|&i| u.clk[i]).collect();
    let mut event: Vec<f64> = idx
        .iter()
        .map(|&i| u.record(i))
        .filter(|r| event_eligible(r, &th))
        .filter_map(|r| event_mcycles(&r))
        .collect();
    let fails = idx.iter().filter(|&&i| u.correct[i] == Some(false)).count();
    let stats = WindowStats {
        samples: idx.len() as u64,
        wall_p99_ms: p(&mut wall, 0.99),
        event_samples: event.len() as u64,
        event_mcycles_p50: p(&mut event, 0.5),
        correctness_failures: fails as u64,
        throttle_reasons: idx.iter().fold(0u64, |acc, &i| acc | u.throttle[i]),
        hw_throttled_runs: idx
            .iter()
            .filter(|&&i| u.throttle[i] & th.throttle_unhealthy_mask != 0)
            .count() as u64,
        max_tenants: idx.iter().filter_map(|&i| u.tenants[i]).max(),
    };
    // The GPU's own quiet baseline, over all its runs in the data.
    let quiet: Vec<usize> = (0..u.ts.len())
        .filter(|&i| u.tenants[i] == Some(0))
        .collect();
    let mut learned = LearnedBaseline::default();
    let min = a.baseline_min_samples;
    if quiet.len() >= min {
        let mut qw: Vec<f64> = quiet.iter().map(|&i| u.wall[i]).collect();
        learned.wall_p50_ms = p(&mut qw, 0.5);
        learned.wall_p99_ms = p(&mut qw, 0.99);
        let mut qe: Vec<f64> = quiet
            .iter()
            .filter_map(|&i| event_mcycles(&u.record(i)))
            .collect();
        if qe.len() >= min {
            learned.event_mcycles_p50 = p(&mut qe, 0.5);
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
    KernelFinding {
        kernel: kernel.to_string(),
        shape: shape.to_string(),
        verdict: j.verdict,
        health_reason: j.health_reason,
        health_baseline_source: j.health_source,
        contention: j.contention,
        contention_reason: j.contention_reason,
        contention_baseline_source: j.contention_source,
        window_runs: idx.len(),
        max_tenants: stats.max_tenants,
        wall_p99_ms: stats.wall_p99_ms.filter(|_| idx.len() >= a.min_samples),
        gpu_p50_ms: p(&mut gpu, 0.5).filter(|_| idx.len() >= a.min_samples),
        event_p50_mcycles: stats.event_mcycles_p50,
        event_baseline_mcycles: j.event_baseline_mcycles,
        baseline_p99_ms: j.wall_reference_p99_ms,
        inflation: j.inflation,
        peer_z_wall: None,
        peer_z_gpu: None,
        peer_z_norm: None,
        sm_clock_mhz: p(&mut clk, 0.5),
        correctness_failures: fails,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slicetrace_schema::BaselineSource;

    use crate::fleet::Verdict;

    fn unit(n: usize, wall: f64, gpu: f64, tenants: u32, t0: i64) -> Unit {
        let mut u = Unit {
            gpu_name: "NVIDIA H100 80GB HBM3".into(),
            precision: "fp32".into(),
            ..Default::default()
        };
        for i in 0..n {
            u.ts.push(t0 + i as i64);
            u.wall.push(wall);
            u.gpu.push(gpu);
            u.clk.push(1980.0);
            u.correct.push(Some(true));
            u.tenants.push(Some(tenants));
            u.inflated.push(None);
            u.throttle.push(0);
        }
        u
    }

    #[test]
    fn a_gpu_with_no_runs_in_the_window_is_unknown_never_healthy() {
        let u = unit(200, 0.1, 0.01, 0, 0);
        let f = judge_unit(
            "fft",
            "c2c 1d n=4096 batch=16",
            &u,
            1_000,
            &FleetArgs::default(),
        );
        assert_eq!(f.window_runs, 0);
        assert_eq!(
            (f.verdict, f.health_reason),
            (Verdict::Unknown, Reason::NoData)
        );
    }

    #[test]
    fn a_shared_gpu_is_healthy_and_contended_against_the_sku_reference() {
        let u = unit(200, 6.0, 0.007, 3, 0);
        let f = judge_unit(
            "fft",
            "c2c 1d n=4096 batch=16",
            &u,
            0,
            &FleetArgs::default(),
        );
        assert_eq!(f.verdict, Verdict::Healthy, "{:?}", f.reasons);
        assert_eq!(f.health_baseline_source, Some(BaselineSource::Sku));
        assert_eq!(f.contention, Contention::Contended, "{:?}", f.reasons);
        assert!(
            f.reasons.iter().any(|r| r.contains("3 tenants")),
            "{:?}",
            f.reasons
        );
    }
}
