//! Live health: a rolling window of tail latency per GPU and kernel, judged
//! against a baseline learned while the GPU had no other tenant (or against an
//! SLO), into `healthy`, `degraded` or `unhealthy` with a one-line reason.
//!
//! The evaluator is fed through its own bounded channel like any sink, so a
//! slow evaluation never delays a probe. Verdicts are published to
//! [`LiveState`], which the probe threads read to stamp rows and spans, and
//! which `/metrics` renders; each evaluation also becomes a row of the small
//! `health` Parquet table.
//!
//! Runs with `burst_seq = 0` are left out of windows and baselines: the first
//! run after an idle gap measures clock ramp-up, not contention.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use slicetrace_schema::{HealthRecord, ProbeRecord};

/// Health configuration (the `[health]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Length of the rolling window, ms.
    pub window_ms: u64,
    /// How often verdicts are evaluated and published, ms.
    pub evaluate_interval_ms: u64,
    /// p99 inflation over the baseline at or above which a GPU is `degraded`.
    pub degraded_factor: f64,
    /// p99 inflation at or above which it is `unhealthy`.
    pub unhealthy_factor: f64,
    /// A fixed p99 `wall_ms` target used instead of the learned baseline.
    pub slo_p99_ms: Option<f64>,
    /// Runs needed in the window before a latency verdict is given.
    pub min_samples: u64,
    /// Quiet runs needed before a learned baseline is trusted.
    pub baseline_min_samples: u64,
    /// NVML throttle-reason bits that make a GPU `degraded` (default: SW
    /// power cap 0x4, HW slowdown 0x8, SW thermal 0x20, HW thermal 0x40, HW
    /// power brake 0x80).
    pub throttle_mask: u64,
    /// Patch this node's status with a `GPUTailLatencyDegraded` condition.
    pub node_condition: bool,
    /// Minimum time between two node-condition patches, ms.
    pub node_condition_min_interval_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window_ms: 300_000,
            evaluate_interval_ms: 10_000,
            degraded_factor: 1.5,
            unhealthy_factor: 3.0,
            slo_p99_ms: None,
            min_samples: 50,
            baseline_min_samples: 200,
            throttle_mask: 0x4 | 0x8 | 0x20 | 0x40 | 0x80,
            node_condition: false,
            node_condition_min_interval_ms: 60_000,
        }
    }
}

impl HealthConfig {
    /// Returns `(field, reason)` for the first unusable value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.window_ms < 1000 {
            return Err(("window_ms", format!("{} is below 1000", self.window_ms)));
        }
        if self.evaluate_interval_ms == 0 || self.evaluate_interval_ms > self.window_ms {
            return Err((
                "evaluate_interval_ms",
                "must be positive and at most window_ms".into(),
            ));
        }
        if self.degraded_factor.is_nan() || self.degraded_factor <= 1.0 {
            return Err((
                "degraded_factor",
                format!("{} must be above 1", self.degraded_factor),
            ));
        }
        if self.unhealthy_factor.is_nan() || self.unhealthy_factor < self.degraded_factor {
            return Err((
                "unhealthy_factor",
                "must be at least degraded_factor".into(),
            ));
        }
        if let Some(s) = self.slo_p99_ms {
            if s.is_nan() || s <= 0.0 {
                return Err(("slo_p99_ms", format!("{s} must be positive")));
            }
        }
        Ok(())
    }
}

pub use slicetrace_schema::{Contention, Verdict};

/// Latest quantiles of one clock, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    /// p50.
    pub p50: Option<f64>,
    /// p99.
    pub p99: Option<f64>,
}

/// What is published per GPU and kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelHealth {
    /// GPU index.
    pub gpu_index: u32,
    /// Verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
    /// Wall-clock quantiles.
    pub wall: Quantiles,
    /// Event-clock quantiles.
    pub gpu: Quantiles,
    /// Queue quantiles.
    pub queue: Quantiles,
    /// Baseline p99 wall, ms.
    pub baseline_p99_ms: Option<f64>,
    /// p99 / baseline.
    pub inflation: Option<f64>,
    /// Runs in the window.
    pub samples: u64,
    /// Correctness failures since start.
    pub correctness_failures_total: u64,
    /// Contention state (separate from the GPU's health).
    pub contention: Option<Contention>,
    /// p99 of the event clock (`gpu_ms`) of quiet runs, ms: rows whose event
    /// time exceeds 1.5× this while shared are flagged `event_inflated`.
    pub event_baseline_p99_ms: Option<f64>,
}

/// State shared between the evaluator, the probe threads and `/metrics`.
#[derive(Debug, Default)]
pub struct LiveState {
    /// `(gpu_uuid, kernel)` → health.
    pub kernels: RwLock<BTreeMap<(String, String), KernelHealth>>,
    /// gpu_uuid → latest pod count (None = unknown).
    pub pod_count: RwLock<BTreeMap<String, Option<u32>>>,
    /// Set once the first probe cycle completed (for `/readyz`).
    pub ready: std::sync::atomic::AtomicBool,
    /// The occupancy sources the agent started from its config, so that
    /// `/metrics` can report their health at scrape time; unset when the
    /// occupancy was injected.
    pub occupancy: std::sync::OnceLock<Arc<crate::occupancy::CombinedOccupancy>>,
    /// `(gpu_uuid, kernel)` → start-up self-test outcome (`true` = the planted
    /// corruption was caught and a clean run passed).
    pub self_tests: RwLock<BTreeMap<(String, String), bool>>,
}

impl LiveState {
    /// Current verdict of a GPU's kernel, for stamping rows.
    pub fn verdict(&self, gpu_uuid: &str, kernel: &str) -> Option<Verdict> {
        self.kernels
            .read()
            .ok()?
            .get(&(gpu_uuid.to_string(), kernel.to_string()))
            .map(|k| k.verdict)
    }
    /// Current contention state of a GPU's kernel, for stamping rows.
    pub fn contention(&self, gpu_uuid: &str, kernel: &str) -> Option<Contention> {
        self.kernels
            .read()
            .ok()?
            .get(&(gpu_uuid.to_string(), kernel.to_string()))
            .and_then(|k| k.contention)
    }
    /// Quiet-baseline event-clock p99 of a GPU's kernel, ms.
    pub fn event_baseline_p99_ms(&self, gpu_uuid: &str, kernel: &str) -> Option<f64> {
        self.kernels
            .read()
            .ok()?
            .get(&(gpu_uuid.to_string(), kernel.to_string()))
            .and_then(|k| k.event_baseline_p99_ms)
    }
    /// Records the start-up self-test outcome of a GPU's kernel.
    pub fn record_self_test(&self, gpu_uuid: &str, kernel: &str, passed: bool) {
        if let Ok(mut m) = self.self_tests.write() {
            m.insert((gpu_uuid.to_string(), kernel.to_string()), passed);
        }
    }
    /// Worst verdict over all GPUs and kernels, with its reason.
    pub fn worst(&self) -> Option<(Verdict, String)> {
        let k = self.kernels.read().ok()?;
        k.iter()
            .max_by_key(|(_, h)| h.verdict)
            .map(|((uuid, kernel), h)| (h.verdict, format!("{uuid} {kernel}: {}", h.reason)))
    }
}

/// Input to the evaluator besides probe rows.
#[derive(Debug, Clone)]
pub enum HealthEvent {
    /// A probe burst failed on this GPU.
    ProbeError {
        /// GPU.
        gpu_uuid: String,
        /// GPU index.
        gpu_index: u32,
        /// One-line error.
        error: String,
    },
    /// The GPU is probing again after errors.
    ProbeRecovered {
        /// GPU.
        gpu_uuid: String,
    },
}

const BUCKETS: u32 = 10;

/// Largest recordable latency, µs (60 s); larger values are clamped.
const MAX_US: u64 = 60_000_000;

/// 1 µs .. 60 s at 2 significant digits (1 % resolution) with u32 counts:
/// about 20 KiB per histogram. (3 digits over 1 h with u64 counts took
/// ~360 KiB each, and a window holds 3 per sub-bucket per GPU and kernel.)
pub(crate) fn hist() -> Histogram<u32> {
    // The bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

pub(crate) fn us(ms: f64) -> u64 {
    (ms * 1000.0).round().clamp(1.0, MAX_US as f64) as u64
}

struct Bucket {
    start: Instant,
    wall: Histogram<u32>,
    gpu: Histogram<u32>,
    queue: Histogram<u32>,
    failures: u64,
    throttle: u64,
}

impl Bucket {
    fn new(start: Instant) -> Self {
        Self {
            start,
            wall: hist(),
            gpu: hist(),
            queue: hist(),
            failures: 0,
            throttle: 0,
        }
    }
}

/// Baseline of one GPU and kernel, persisted across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Shape the baseline was learned for (a new shape resets it).
    pub shape: String,
    /// p50 wall of quiet runs, ms.
    pub p50_ms: f64,
    /// p99 wall of quiet runs, ms.
    pub p99_ms: f64,
    /// Quiet runs it was learned from.
    pub samples: u64,
}

struct Track {
    gpu_index: u32,
    shape: String,
    buckets: VecDeque<Bucket>,
    quiet: Histogram<u32>,
    quiet_prev: Option<Histogram<u32>>,
    /// Quiet runs arrived since the baseline was last computed.
    quiet_dirty: bool,
    baseline: Option<Baseline>,
    failures_total: u64,
}

/// The evaluator (owned by its task).
pub struct Evaluator {
    cfg: HealthConfig,
    node: String,
    tracks: HashMap<(String, String), Track>,
    errors: HashMap<String, (u32, String, Instant)>,
    state: Arc<LiveState>,
    baseline_path: Option<PathBuf>,
    baseline_dirty: bool,
}

fn quiet(r: &ProbeRecord) -> bool {
    match (r.gpu_processes, r.pod_count) {
        (Some(p), _) => p == 0,
        (None, Some(c)) => c <= 1,
        // No tenant information at all (no NVML, no cluster): no evidence
        // of tenants, so the run counts as quiet.
        (None, None) => true,
    }
}

impl Evaluator {
    /// A new evaluator; loads persisted baselines from `data_dir/state/`.
    pub fn new(
        cfg: HealthConfig,
        node: String,
        state: Arc<LiveState>,
        data_dir: Option<&Path>,
    ) -> Self {
        let baseline_path = data_dir.map(|d| d.join("state").join("health-baseline.json"));
        let mut me = Evaluator {
            cfg,
            node,
            tracks: HashMap::new(),
            errors: HashMap::new(),
            state,
            baseline_path,
            baseline_dirty: false,
        };
        me.load_baselines();
        me
    }

    fn load_baselines(&mut self) {
        let Some(p) = self.baseline_path.clone() else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&p) else {
            return;
        };
        match serde_json::from_str::<BTreeMap<String, BTreeMap<String, Baseline>>>(&text) {
            Ok(m) => {
                for (uuid, ks) in m {
                    for (kernel, b) in ks {
                        let t = self.track(&uuid, &kernel, 0, &b.shape);
                        t.baseline = Some(b);
                    }
                }
                tracing::info!(path = %p.display(), "loaded health baselines");
            }
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable health baseline file")
            }
        }
    }

    /// Writes baselines atomically (temp file + rename).
    pub fn save_baselines(&mut self) {
        self.refresh_baselines();
        if !self.baseline_dirty {
            return;
        }
        let Some(p) = self.baseline_path.clone() else {
            return;
        };
        let mut m: BTreeMap<String, BTreeMap<String, Baseline>> = BTreeMap::new();
        for ((uuid, kernel), t) in &self.tracks {
            if let Some(b) = &t.baseline {
                m.entry(uuid.clone())
                    .or_default()
                    .insert(kernel.clone(), b.clone());
            }
        }
        let write = || -> std::io::Result<()> {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = p.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&m).unwrap_or_default())?;
            std::fs::rename(&tmp, &p)
        };
        match write() {
            Ok(()) => self.baseline_dirty = false,
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "failed to save health baselines")
            }
        }
    }

    fn track(&mut self, uuid: &str, kernel: &str, idx: u32, shape: &str) -> &mut Track {
        self.tracks
            .entry((uuid.to_string(), kernel.to_string()))
            .or_insert_with(|| Track {
                gpu_index: idx,
                shape: shape.to_string(),
                buckets: VecDeque::new(),
                quiet: hist(),
                quiet_prev: None,
                quiet_dirty: false,
                baseline: None,
                failures_total: 0,
            })
    }

    /// Adds rows to the windows (and quiet rows to the baselines).
    pub fn observe(&mut self, rows: &[ProbeRecord], now: Instant) {
        let width = Duration::from_millis((self.cfg.window_ms / BUCKETS as u64).max(1));
        let baseline_min = self.cfg.baseline_min_samples;
        for r in rows {
            if let Ok(mut pc) = self.state.pod_count.write() {
                pc.insert(r.gpu_uuid.clone(), r.pod_count);
            }
            let t = self.track(&r.gpu_uuid, &r.kernel, r.gpu_index, &r.shape);
            t.gpu_index = r.gpu_index;
            if t.shape != r.shape {
                // A new probe shape invalidates the old baseline.
                t.shape = r.shape.clone();
                t.baseline = None;
                t.quiet.reset();
                t.quiet_prev = None;
            }
            if t.buckets
                .back()
                .is_none_or(|b| now.duration_since(b.start) >= width)
            {
                t.buckets.push_back(Bucket::new(now));
            }
            let Some(b) = t.buckets.back_mut() else {
                continue;
            };
            if r.correct == Some(false) {
                b.failures += 1;
                t.failures_total += 1;
            }
            b.throttle |= r.throttle_reasons.unwrap_or(0);
            if r.burst_seq == 0 {
                continue;
            }
            let _ = b.wall.record(us(r.wall_ms));
            if let Some(g) = r.gpu_ms {
                let _ = b.gpu.record(us(g));
            }
            if let Some(q) = r.queue_ms {
                let _ = b.queue.record(us(q));
            }
            if quiet(r) {
                let _ = t.quiet.record(us(r.wall_ms));
                // Two generations so the baseline follows slow drifts
                // (driver updates, new clocks) without forgetting at once.
                if t.quiet.len() >= 20 * baseline_min.max(1) {
                    let full = std::mem::replace(&mut t.quiet, hist());
                    t.quiet_prev = Some(full);
                }
                t.quiet_dirty = true;
            }
        }
    }

    /// Recomputes the baselines that got new quiet runs (once per
    /// evaluation, not per row: merging histograms is the costly part).
    fn refresh_baselines(&mut self) {
        let baseline_min = self.cfg.baseline_min_samples;
        for t in self.tracks.values_mut() {
            if !std::mem::take(&mut t.quiet_dirty) {
                continue;
            }
            let mut merged = t.quiet.clone();
            if let Some(p) = &t.quiet_prev {
                let _ = merged.add(p);
            }
            if merged.len() >= baseline_min {
                t.baseline = Some(Baseline {
                    shape: t.shape.clone(),
                    p50_ms: merged.value_at_quantile(0.5) as f64 / 1000.0,
                    p99_ms: merged.value_at_quantile(0.99) as f64 / 1000.0,
                    samples: merged.len(),
                });
                self.baseline_dirty = true;
            }
        }
    }

    /// Records a probe error or recovery.
    pub fn event(&mut self, ev: HealthEvent, now: Instant) {
        match ev {
            HealthEvent::ProbeError {
                gpu_uuid,
                gpu_index,
                error,
            } => {
                self.errors.insert(gpu_uuid, (gpu_index, error, now));
            }
            HealthEvent::ProbeRecovered { gpu_uuid } => {
                self.errors.remove(&gpu_uuid);
            }
        }
    }

    /// Evaluates every GPU and kernel, publishes to [`LiveState`] and returns
    /// the health rows.
    pub fn evaluate(&mut self, now: Instant, ts_ns: i64) -> Vec<HealthRecord> {
        self.refresh_baselines();
        let window = Duration::from_millis(self.cfg.window_ms);
        let mut out = Vec::new();
        let mut published = BTreeMap::new();
        for ((uuid, kernel), t) in self.tracks.iter_mut() {
            while t
                .buckets
                .front()
                .is_some_and(|b| now.duration_since(b.start) > window)
            {
                t.buckets.pop_front();
            }
            let (mut wall, mut gpu, mut queue) = (hist(), hist(), hist());
            let (mut failures, mut throttle) = (0u64, 0u64);
            for b in &t.buckets {
                let _ = wall.add(&b.wall);
                let _ = gpu.add(&b.gpu);
                let _ = queue.add(&b.queue);
                failures += b.failures;
                throttle |= b.throttle;
            }
            let q = |h: &Histogram<u32>, p: f64| {
                (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0)
            };
            let wall_q = Quantiles {
                p50: q(&wall, 0.5),
                p99: q(&wall, 0.99),
            };
            let gpu_q = Quantiles {
                p50: q(&gpu, 0.5),
                p99: q(&gpu, 0.99),
            };
            let queue_q = Quantiles {
                p50: q(&queue, 0.5),
                p99: q(&queue, 0.99),
            };
            let baseline_p99 = self
                .cfg
                .slo_p99_ms
                .or_else(|| t.baseline.as_ref().map(|b| b.p99_ms));
            let samples = wall.len();
            let inflation = match (wall_q.p99, baseline_p99) {
                (Some(p), Some(b)) if b > 0.0 && samples >= self.cfg.min_samples => Some(p / b),
                _ => None,
            };
            let against = if self.cfg.slo_p99_ms.is_some() {
                "SLO"
            } else {
                "quiet baseline"
            };
            let throttled = throttle & self.cfg.throttle_mask;
            let (verdict, reason) = if let Some((_, err, _)) = self.errors.get(uuid) {
                (Verdict::Unhealthy, format!("probe failing: {err}"))
            } else if failures > 0 {
                (
                    Verdict::Unhealthy,
                    format!("{failures} correctness check failures in the window"),
                )
            } else if let Some(i) = inflation.filter(|i| *i >= self.cfg.unhealthy_factor) {
                (
                    Verdict::Unhealthy,
                    format!(
                        "p99 wall {:.3} ms is {i:.2}x the {against} ({:.3} ms)",
                        wall_q.p99.unwrap_or(0.0),
                        baseline_p99.unwrap_or(0.0)
                    ),
                )
            } else if let Some(i) = inflation.filter(|i| *i >= self.cfg.degraded_factor) {
                (
                    Verdict::Degraded,
                    format!(
                        "p99 wall {:.3} ms is {i:.2}x the {against} ({:.3} ms)",
                        wall_q.p99.unwrap_or(0.0),
                        baseline_p99.unwrap_or(0.0)
                    ),
                )
            } else if throttled != 0 {
                (
                    Verdict::Degraded,
                    format!("throttled: reasons {throttled:#x}"),
                )
            } else if let Some(i) = inflation {
                (
                    Verdict::Healthy,
                    format!("p99 wall is {i:.2}x the {against}"),
                )
            } else if samples < self.cfg.min_samples {
                (
                    Verdict::Healthy,
                    format!("warming up: {samples} of {} runs", self.cfg.min_samples),
                )
            } else {
                (
                    Verdict::Healthy,
                    "no baseline yet: waiting for a quiet period".to_string(),
                )
            };
            out.push(HealthRecord {
                ts_ns,
                node: self.node.clone(),
                gpu_uuid: uuid.clone(),
                gpu_index: t.gpu_index,
                kernel: kernel.clone(),
                verdict: verdict.as_str().to_string(),
                reason: reason.clone(),
                window_secs: self.cfg.window_ms / 1000,
                samples,
                wall_p50_ms: wall_q.p50,
                wall_p99_ms: wall_q.p99,
                gpu_p99_ms: gpu_q.p99,
                queue_p99_ms: queue_q.p99,
                baseline_p99_ms: baseline_p99,
                inflation,
                correctness_failures: failures,
                throttle_reasons: Some(throttle),
            });
            published.insert(
                (uuid.clone(), kernel.clone()),
                KernelHealth {
                    gpu_index: t.gpu_index,
                    verdict,
                    reason,
                    wall: wall_q,
                    gpu: gpu_q,
                    queue: queue_q,
                    baseline_p99_ms: baseline_p99,
                    inflation,
                    samples,
                    correctness_failures_total: t.failures_total,
                    contention: None,
                    event_baseline_p99_ms: None,
                },
            );
        }
        // A GPU that errors before it ever produced a row still gets a verdict.
        for (uuid, (idx, err, _)) in &self.errors {
            for kernel in ["fft", "gemm"] {
                let key = (uuid.clone(), kernel.to_string());
                if published.contains_key(&key) {
                    continue;
                }
                let reason = format!("probe failing: {err}");
                out.push(HealthRecord {
                    ts_ns,
                    node: self.node.clone(),
                    gpu_uuid: uuid.clone(),
                    gpu_index: *idx,
                    kernel: kernel.to_string(),
                    verdict: Verdict::Unhealthy.as_str().into(),
                    reason: reason.clone(),
                    window_secs: self.cfg.window_ms / 1000,
                    ..Default::default()
                });
                published.insert(
                    key,
                    KernelHealth {
                        gpu_index: *idx,
                        verdict: Verdict::Unhealthy,
                        reason,
                        wall: Quantiles::default(),
                        gpu: Quantiles::default(),
                        queue: Quantiles::default(),
                        baseline_p99_ms: None,
                        inflation: None,
                        samples: 0,
                        correctness_failures_total: 0,
                        contention: None,
                        event_baseline_p99_ms: None,
                    },
                );
            }
        }
        if let Ok(mut k) = self.state.kernels.write() {
            for ((uuid, kernel), h) in &published {
                let before = k.get(&(uuid.clone(), kernel.clone())).map(|p| p.verdict);
                if before != Some(h.verdict) {
                    tracing::info!(gpu = %uuid, kernel = %kernel, from = before.map(Verdict::as_str), to = h.verdict.as_str(), reason = %h.reason, "verdict changed");
                }
            }
            *k = published;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(wall: f64, procs: u32, seq: u32) -> ProbeRecord {
        ProbeRecord {
            gpu_uuid: "GPU-a".into(),
            kernel: "fft".into(),
            shape: "s".into(),
            wall_ms: wall,
            gpu_ms: Some(0.05),
            queue_ms: Some(wall - 0.05),
            burst_seq: seq,
            gpu_processes: Some(procs),
            correct: Some(true),
            ..Default::default()
        }
    }

    fn cfg() -> HealthConfig {
        HealthConfig {
            window_ms: 10_000,
            evaluate_interval_ms: 1000,
            min_samples: 20,
            baseline_min_samples: 50,
            ..Default::default()
        }
    }

    #[test]
    fn quiet_baseline_then_contention_degrades_then_unhealthy() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), None);
        let t0 = Instant::now();
        let quiet: Vec<_> = (0..200)
            .map(|i| row(0.1 + (i % 10) as f64 * 0.001, 0, 1))
            .collect();
        e.observe(&quiet, t0);
        let h = e.evaluate(t0, 0);
        assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
        let b = h[0].baseline_p99_ms.expect("baseline");
        assert!((0.105..0.115).contains(&b), "baseline {b}");
        // 11 s later the quiet window has expired; contention at 2x.
        let t1 = t0 + Duration::from_secs(11);
        e.observe(&(0..100).map(|_| row(0.22, 3, 1)).collect::<Vec<_>>(), t1);
        let h = e.evaluate(t1, 1);
        assert_eq!(h[0].verdict, "degraded", "{}", h[0].reason);
        assert_eq!(st.verdict("GPU-a", "fft"), Some(Verdict::Degraded));
        let t2 = t1 + Duration::from_secs(11);
        e.observe(&(0..100).map(|_| row(1.0, 3, 1)).collect::<Vec<_>>(), t2);
        let h = e.evaluate(t2, 2);
        assert_eq!(h[0].verdict, "unhealthy");
        // Contended runs never moved the baseline.
        assert!((h[0].baseline_p99_ms.expect("b") - b).abs() < 1e-9);
    }

    #[test]
    fn correctness_failure_is_unhealthy_and_first_runs_are_ignored() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st, None);
        let t0 = Instant::now();
        let mut rows: Vec<_> = (0..100).map(|_| row(0.1, 0, 1)).collect();
        rows.extend((0..100).map(|_| row(50.0, 0, 0))); // first-after-idle outliers
        e.observe(&rows, t0);
        let h = e.evaluate(t0, 0);
        assert!(
            h[0].wall_p99_ms.expect("p99") < 0.2,
            "burst_seq 0 leaked into the window"
        );
        let mut bad = row(0.1, 0, 1);
        bad.correct = Some(false);
        e.observe(&[bad], t0);
        let h = e.evaluate(t0, 1);
        assert_eq!(h[0].verdict, "unhealthy");
        assert!(h[0].reason.contains("correctness"));
    }

    #[test]
    fn probe_errors_and_throttling_and_slo() {
        let st = Arc::new(LiveState::default());
        let mut c = cfg();
        c.slo_p99_ms = Some(1.0);
        let mut e = Evaluator::new(c, "n".into(), st, None);
        let t0 = Instant::now();
        e.event(
            HealthEvent::ProbeError {
                gpu_uuid: "GPU-b".into(),
                gpu_index: 1,
                error: "CUDA_ERROR_LAUNCH_FAILED".into(),
            },
            t0,
        );
        let mut rows: Vec<_> = (0..50).map(|_| row(0.5, 2, 1)).collect();
        rows[3].throttle_reasons = Some(0x20);
        e.observe(&rows, t0);
        let h = e.evaluate(t0, 0);
        let b = h
            .iter()
            .find(|r| r.gpu_uuid == "GPU-b")
            .expect("lost gpu row");
        assert_eq!(b.verdict, "unhealthy");
        let a = h.iter().find(|r| r.gpu_uuid == "GPU-a").expect("a");
        assert_eq!(a.verdict, "degraded", "{}", a.reason);
        assert!(a.reason.contains("throttled"));
        e.event(
            HealthEvent::ProbeRecovered {
                gpu_uuid: "GPU-b".into(),
            },
            t0,
        );
        assert!(e.evaluate(t0, 1).iter().all(|r| r.gpu_uuid != "GPU-b"));
    }

    #[test]
    fn baselines_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), Some(dir.path()));
        e.observe(
            &(0..100).map(|_| row(0.1, 0, 1)).collect::<Vec<_>>(),
            Instant::now(),
        );
        e.save_baselines();
        let mut e2 = Evaluator::new(cfg(), "n".into(), st, Some(dir.path()));
        let t = Instant::now();
        e2.observe(&(0..30).map(|_| row(0.5, 1, 1)).collect::<Vec<_>>(), t);
        let h = e2.evaluate(t, 0);
        assert_eq!(h[0].verdict, "unhealthy", "{}", h[0].reason);
    }
}
