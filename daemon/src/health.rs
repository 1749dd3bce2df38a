//! Live health: a rolling window of arrival runs per GPU and kernel, judged
//! by [`slicetrace_schema::judge`] (the one definition `slicetrace fleet`
//! uses too) into two dimensions:
//!
//! * **health** (`healthy`, `unknown`, `degraded`, `unhealthy`) of the GPU
//!   itself: event time per SM cycle against the GPU's learned quiet
//!   baseline or the shipped per-SKU reference, throttling, correctness,
//!   probe failures, a backend that is not up and the start-up self-test;
//! * **contention** (`ok`, `contended`, `over-shared`): the wall-clock wait
//!   of arrival runs against an SLO, or the quiet baseline and what the
//!   tenant count predicts.
//!
//! Only arrival runs ([`ProbeRecord::is_arrival`]) enter windows and
//! baselines: a run right after the probe's own previous run measures the
//! probe's rhythm, not what a caller sees. The first run after an idle gap is
//! an arrival like any other (a sparse caller gets exactly that). Quiet means
//! `tenants() == Some(0)`; correctness failures and throttle reasons count
//! from every run.
//!
//! The evaluator is fed through its own bounded channel like any sink, so a
//! slow evaluation never delays a probe. Verdicts are published to
//! [`LiveState`], which the probe threads read to stamp rows and spans, and
//! which `/metrics`, `/readyz` and the node condition render; each
//! evaluation also becomes a row of the small `health` Parquet table.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use slicetrace_schema::{
    event_eligible, event_mcycles, is_quiet, judge, sku_reference, BaselineSource, Faults,
    HealthRecord, LearnedBaseline, ProbeRecord, Reason, Thresholds, WindowStats,
};

pub use slicetrace_schema::{Contention, Verdict};

/// Health configuration (the `[health]` table). Thresholds default to
/// [`Thresholds::DEFAULT`], the same set `slicetrace fleet` uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Length of the rolling window, ms.
    pub window_ms: u64,
    /// How often verdicts are evaluated and published, ms.
    pub evaluate_interval_ms: u64,
    /// Health: event time per SM cycle over its baseline at which a GPU is
    /// `degraded`. Contention: wall p99 over the quiet baseline at which it
    /// is `contended`, and over what the tenant count predicts at which it is
    /// `over-shared`.
    pub degraded_factor: f64,
    /// Health: event ratio at which a GPU is `unhealthy`. Contention: wall
    /// p99 over `slo_p99_ms` at which it is `over-shared`.
    pub unhealthy_factor: f64,
    /// A p99 `wall_ms` target, ms: the wait is judged against it instead of
    /// the quiet baseline (contention only; it never makes a GPU unhealthy).
    pub slo_p99_ms: Option<f64>,
    /// Arrival runs needed in the window before latency is judged (fewer:
    /// `unknown` unless something else is found).
    pub min_samples: u64,
    /// Quiet arrival runs needed before a learned baseline is used (until
    /// then the per-SKU reference is, where one is shipped).
    pub baseline_min_samples: u64,
    /// Time slice per tenant, ms (about 2 ms on an H100): what one tenant
    /// adds to a random arrival's wait.
    pub slice_ms: f64,
    /// NVML throttle-reason bits that make a GPU `degraded` (default: SW
    /// power cap 0x4, SW thermal 0x20).
    pub throttle_mask: u64,
    /// NVML throttle-reason bits that make a GPU `unhealthy` (default: HW
    /// slowdown 0x8, HW thermal 0x40, HW power brake 0x80).
    pub throttle_unhealthy_mask: u64,
    /// Judge the event clock against the shipped per-SKU reference while the
    /// GPU has no learned quiet baseline (a GPU that is never idle).
    pub sku_reference: bool,
    /// Patch this node's status with a `GPUTailLatencyDegraded` condition.
    pub node_condition: bool,
    /// Minimum time between two node-condition patches, ms.
    pub node_condition_min_interval_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        let t = Thresholds::DEFAULT;
        Self {
            window_ms: 300_000,
            evaluate_interval_ms: 10_000,
            degraded_factor: t.degraded_factor,
            unhealthy_factor: t.unhealthy_factor,
            slo_p99_ms: None,
            min_samples: t.min_samples,
            baseline_min_samples: t.baseline_min_samples,
            slice_ms: t.slice_ms,
            throttle_mask: t.throttle_degraded_mask,
            throttle_unhealthy_mask: t.throttle_unhealthy_mask,
            sku_reference: true,
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
        if self.slice_ms.is_nan() || self.slice_ms <= 0.0 {
            return Err(("slice_ms", format!("{} must be positive", self.slice_ms)));
        }
        Ok(())
    }

    /// The thresholds in the schema's terms.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            degraded_factor: self.degraded_factor,
            unhealthy_factor: self.unhealthy_factor,
            min_samples: self.min_samples,
            baseline_min_samples: self.baseline_min_samples,
            slice_ms: self.slice_ms,
            throttle_degraded_mask: self.throttle_mask,
            throttle_unhealthy_mask: self.throttle_unhealthy_mask,
        }
    }
}

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
    /// Health of the GPU itself.
    pub verdict: Verdict,
    /// Why, one line.
    pub reason: String,
    /// Why, bounded (a metric label).
    pub health_reason: Reason,
    /// Baseline the event clock was judged against.
    pub health_source: Option<BaselineSource>,
    /// Wall-clock quantiles.
    pub wall: Quantiles,
    /// Event-clock quantiles.
    pub gpu: Quantiles,
    /// Queue quantiles.
    pub queue: Quantiles,
    /// The wall p99 reference (SLO or quiet baseline), ms.
    pub baseline_p99_ms: Option<f64>,
    /// Wall p99 / that reference.
    pub inflation: Option<f64>,
    /// Arrival runs in the window.
    pub samples: u64,
    /// Correctness failures since start.
    pub correctness_failures_total: u64,
    /// Contention state (separate from the GPU's health); `None` only for a
    /// kernel that never produced a row.
    pub contention: Option<Contention>,
    /// Why, bounded.
    pub contention_reason: Reason,
    /// Why, one line with the tenant count.
    pub contention_detail: String,
    /// Baseline the wall clock was judged against.
    pub contention_source: Option<BaselineSource>,
    /// Wall-clock baseline `(p50, p99)` in ms and its source (the SLO gives
    /// only a p99).
    pub wall_baseline: Option<(BaselineSource, Option<f64>, Option<f64>)>,
    /// Learned quiet event-clock `(p50, p99)`, ms.
    pub gpu_baseline: Option<(Option<f64>, Option<f64>)>,
    /// p99 of the event clock (`gpu_ms`) of quiet runs, ms: rows whose event
    /// time exceeds 1.5× this while shared are flagged `event_inflated`.
    pub event_baseline_p99_ms: Option<f64>,
}

impl KernelHealth {
    fn lost(gpu_index: u32, verdict: Verdict, reason: Reason, text: String) -> Self {
        KernelHealth {
            gpu_index,
            verdict,
            reason: text,
            health_reason: reason,
            health_source: None,
            wall: Quantiles::default(),
            gpu: Quantiles::default(),
            queue: Quantiles::default(),
            baseline_p99_ms: None,
            inflation: None,
            samples: 0,
            correctness_failures_total: 0,
            contention: None,
            contention_reason: Reason::NoData,
            contention_detail: "no runs".into(),
            contention_source: None,
            wall_baseline: None,
            gpu_baseline: None,
            event_baseline_p99_ms: None,
        }
    }
}

/// A probed GPU as the agent opened it (for `slicetrace_gpu_info`,
/// `slicetrace_backend_up` and `/readyz`).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuEntry {
    /// Device index.
    pub index: u32,
    /// Product name.
    pub name: Option<String>,
    /// Backend probing it (`cuda`, `cpu`), or the one that failed to open.
    pub backend: String,
    /// Why the backend is not up: it failed to open (`None` while up).
    pub down: Option<String>,
    /// The last probe error while probes fail (cleared on recovery).
    pub probe_failing: Option<String>,
}

impl GpuEntry {
    /// Whether the backend is up: opened and not failing.
    pub fn up(&self) -> bool {
        self.down.is_none() && self.probe_failing.is_none()
    }
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
    /// gpu_uuid → the GPU as opened (registered before probing starts).
    pub gpus: RwLock<BTreeMap<String, GpuEntry>>,
    /// This agent's node name (the `node` label of every series).
    pub node: RwLock<String>,
    /// `auto` fell back to the CPU backend, with why.
    pub backend_fallback: RwLock<Option<String>>,
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
    /// Records the start-up self-test outcome of a GPU's kernel. A failure
    /// makes that kernel `unhealthy` (correctness unverified) at the next
    /// evaluation and fails `/readyz` at once.
    pub fn record_self_test(&self, gpu_uuid: &str, kernel: &str, passed: bool) {
        if let Ok(mut m) = self.self_tests.write() {
            m.insert((gpu_uuid.to_string(), kernel.to_string()), passed);
        }
    }
    /// Registers a GPU whose backend opened (or, with `down`, failed to).
    pub fn register_gpu(&self, uuid: &str, entry: GpuEntry) {
        if let Ok(mut g) = self.gpus.write() {
            g.insert(uuid.to_string(), entry);
        }
    }
    /// Sets the node name rendered on every series.
    pub fn set_node(&self, node: &str) {
        if let Ok(mut n) = self.node.write() {
            *n = node.to_string();
        }
    }
    /// The node name.
    pub fn node(&self) -> String {
        self.node.read().map(|n| n.clone()).unwrap_or_default()
    }
    /// Worst verdict over all GPUs and kernels, with its reason.
    pub fn worst(&self) -> Option<(Verdict, String)> {
        let k = self.kernels.read().ok()?;
        k.iter()
            .max_by_key(|(_, h)| h.verdict)
            .map(|((uuid, kernel), h)| (h.verdict, format!("{uuid} {kernel}: {}", h.reason)))
    }
    /// Why the agent is not ready, one entry per cause; empty when ready:
    /// no probe cycle yet, a backend that is not up, a failed self-test.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Ok(g) = self.gpus.read() {
            for (uuid, e) in g.iter() {
                if let Some(d) = &e.down {
                    why.push(format!("{uuid}: backend {} down: {d}", e.backend));
                } else if let Some(p) = &e.probe_failing {
                    why.push(format!("{uuid}: backend {} failing: {p}", e.backend));
                }
            }
        }
        if let Ok(t) = self.self_tests.read() {
            for ((uuid, kernel), passed) in t.iter() {
                if !passed {
                    why.push(format!(
                        "{uuid} {kernel}: self-test failed, correctness unverified"
                    ));
                }
            }
        }
        if why.is_empty() && !self.ready.load(std::sync::atomic::Ordering::Relaxed) {
            why.push("no probe cycle completed yet".into());
        }
        why
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

/// Largest recordable value (µs for latencies, SM cycles for the event
/// clock): 60 s, or 60 M cycles; larger values are clamped.
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

/// Millions of SM cycles → cycles, for a histogram.
fn cycles(mcycles: f64) -> u64 {
    (mcycles * 1e6).round().clamp(1.0, MAX_US as f64) as u64
}

struct Bucket {
    start: Instant,
    wall: Histogram<u32>,
    gpu: Histogram<u32>,
    queue: Histogram<u32>,
    /// Event time per SM cycle of the runs whose event clock is judged.
    event: Histogram<u32>,
    failures: u64,
    throttle: u64,
    max_tenants: Option<u32>,
}

impl Bucket {
    fn new(start: Instant) -> Self {
        Self {
            start,
            wall: hist(),
            gpu: hist(),
            queue: hist(),
            event: hist(),
            failures: 0,
            throttle: 0,
            max_tenants: None,
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
    /// p50 of quiet event time per SM cycle, millions of cycles.
    #[serde(default)]
    pub event_mcycles_p50: Option<f64>,
    /// p50 of quiet `gpu_ms`, ms.
    #[serde(default)]
    pub gpu_p50_ms: Option<f64>,
    /// p99 of quiet `gpu_ms`, ms.
    #[serde(default)]
    pub gpu_p99_ms: Option<f64>,
}

/// Quiet-run histograms in two generations, so a baseline follows slow
/// drifts (driver updates, new clocks) without forgetting at once.
#[derive(Clone)]
struct Quiet {
    wall: Histogram<u32>,
    gpu: Histogram<u32>,
    event: Histogram<u32>,
}

impl Quiet {
    fn new() -> Self {
        Quiet {
            wall: hist(),
            gpu: hist(),
            event: hist(),
        }
    }
}

struct Track {
    gpu_index: u32,
    gpu_name: Option<String>,
    shape: String,
    precision: String,
    buckets: VecDeque<Bucket>,
    quiet: Quiet,
    quiet_prev: Option<Quiet>,
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

/// What one window of a track looked like.
struct Window {
    stats: WindowStats,
    wall: Quantiles,
    gpu: Quantiles,
    queue: Quantiles,
}

fn window_of(t: &Track) -> Window {
    let (mut wall, mut gpu, mut queue, mut event) = (hist(), hist(), hist(), hist());
    let (mut failures, mut throttle, mut tenants) = (0u64, 0u64, None::<u32>);
    for b in &t.buckets {
        let _ = wall.add(&b.wall);
        let _ = gpu.add(&b.gpu);
        let _ = queue.add(&b.queue);
        let _ = event.add(&b.event);
        failures += b.failures;
        throttle |= b.throttle;
        tenants = tenants.max(b.max_tenants);
    }
    let q = |h: &Histogram<u32>, p: f64| {
        (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0)
    };
    let qs = |h: &Histogram<u32>| Quantiles {
        p50: q(h, 0.5),
        p99: q(h, 0.99),
    };
    Window {
        stats: WindowStats {
            samples: wall.len(),
            wall_p99_ms: q(&wall, 0.99),
            event_samples: event.len(),
            event_mcycles_p50: (!event.is_empty())
                .then(|| event.value_at_quantile(0.5) as f64 / 1e6),
            correctness_failures: failures,
            throttle_reasons: throttle,
            max_tenants: tenants,
        },
        wall: qs(&wall),
        gpu: qs(&gpu),
        queue: qs(&queue),
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
                gpu_name: None,
                shape: shape.to_string(),
                precision: String::new(),
                buckets: VecDeque::new(),
                quiet: Quiet::new(),
                quiet_prev: None,
                quiet_dirty: false,
                baseline: None,
                failures_total: 0,
            })
    }

    /// Adds rows to the windows (and quiet arrival rows to the baselines).
    pub fn observe(&mut self, rows: &[ProbeRecord], now: Instant) {
        let width = Duration::from_millis((self.cfg.window_ms / BUCKETS as u64).max(1));
        let baseline_min = self.cfg.baseline_min_samples;
        let th = self.cfg.thresholds();
        for r in rows {
            if let Ok(mut pc) = self.state.pod_count.write() {
                pc.insert(r.gpu_uuid.clone(), r.pod_count);
            }
            let t = self.track(&r.gpu_uuid, &r.kernel, r.gpu_index, &r.shape);
            t.gpu_index = r.gpu_index;
            if r.gpu_name.is_some() {
                t.gpu_name.clone_from(&r.gpu_name);
            }
            t.precision.clone_from(&r.precision);
            if t.shape != r.shape {
                // A new probe shape invalidates the old baseline.
                t.shape = r.shape.clone();
                t.baseline = None;
                t.quiet = Quiet::new();
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
            if !r.is_arrival() {
                continue;
            }
            b.max_tenants = b.max_tenants.max(r.tenants());
            let _ = b.wall.record(us(r.wall_ms));
            if let Some(g) = r.gpu_ms {
                let _ = b.gpu.record(us(g));
            }
            if let Some(q) = r.queue_ms {
                let _ = b.queue.record(us(q));
            }
            let mc = event_mcycles(r);
            if let Some(mc) = mc.filter(|_| event_eligible(r, &th)) {
                let _ = b.event.record(cycles(mc));
            }
            if is_quiet(r) {
                let _ = t.quiet.wall.record(us(r.wall_ms));
                if let Some(g) = r.gpu_ms {
                    let _ = t.quiet.gpu.record(us(g));
                }
                if let Some(mc) = mc {
                    let _ = t.quiet.event.record(cycles(mc));
                }
                if t.quiet.wall.len() >= 20 * baseline_min.max(1) {
                    let full = std::mem::replace(&mut t.quiet, Quiet::new());
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
            let mut m = t.quiet.clone();
            if let Some(p) = &t.quiet_prev {
                let _ = m.wall.add(&p.wall);
                let _ = m.gpu.add(&p.gpu);
                let _ = m.event.add(&p.event);
            }
            if m.wall.len() >= baseline_min {
                let ms = |h: &Histogram<u32>, q: f64| {
                    (h.len() >= baseline_min).then(|| h.value_at_quantile(q) as f64 / 1000.0)
                };
                t.baseline = Some(Baseline {
                    shape: t.shape.clone(),
                    p50_ms: m.wall.value_at_quantile(0.5) as f64 / 1000.0,
                    p99_ms: m.wall.value_at_quantile(0.99) as f64 / 1000.0,
                    samples: m.wall.len(),
                    event_mcycles_p50: (m.event.len() >= baseline_min)
                        .then(|| m.event.value_at_quantile(0.5) as f64 / 1e6),
                    gpu_p50_ms: ms(&m.gpu, 0.5),
                    gpu_p99_ms: ms(&m.gpu, 0.99),
                });
                self.baseline_dirty = true;
            }
        }
    }

    /// Records a probe error or recovery (published to [`LiveState::gpus`]
    /// at once, so `/readyz` and `slicetrace_backend_up` follow).
    pub fn event(&mut self, ev: HealthEvent, now: Instant) {
        match ev {
            HealthEvent::ProbeError {
                gpu_uuid,
                gpu_index,
                error,
            } => {
                if let Ok(mut g) = self.state.gpus.write() {
                    if let Some(e) = g.get_mut(&gpu_uuid) {
                        e.probe_failing = Some(error.clone());
                    }
                }
                self.errors.insert(gpu_uuid, (gpu_index, error, now));
            }
            HealthEvent::ProbeRecovered { gpu_uuid } => {
                if let Ok(mut g) = self.state.gpus.write() {
                    if let Some(e) = g.get_mut(&gpu_uuid) {
                        e.probe_failing = None;
                    }
                }
                self.errors.remove(&gpu_uuid);
            }
        }
    }

    /// Evaluates every GPU and kernel, publishes to [`LiveState`] and returns
    /// the health rows.
    pub fn evaluate(&mut self, now: Instant, ts_ns: i64) -> Vec<HealthRecord> {
        self.refresh_baselines();
        let window = Duration::from_millis(self.cfg.window_ms);
        let th = self.cfg.thresholds();
        let self_tests = self
            .state
            .self_tests
            .read()
            .map(|m| m.clone())
            .unwrap_or_default();
        let gpus = self
            .state
            .gpus
            .read()
            .map(|m| m.clone())
            .unwrap_or_default();
        let down = |uuid: &str| gpus.get(uuid).and_then(|g| g.down.clone());
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
            let w = window_of(t);
            let learned = LearnedBaseline {
                wall_p50_ms: t.baseline.as_ref().map(|b| b.p50_ms),
                wall_p99_ms: t.baseline.as_ref().map(|b| b.p99_ms),
                event_mcycles_p50: t.baseline.as_ref().and_then(|b| b.event_mcycles_p50),
            };
            let sku = if self.cfg.sku_reference {
                sku_reference(t.gpu_name.as_deref(), kernel, &t.shape, &t.precision)
            } else {
                None
            };
            let faults = Faults {
                backend_down: down(uuid),
                self_test_failed: self_tests.get(&(uuid.clone(), kernel.clone())) == Some(&false),
                probe_failing: self.errors.get(uuid).map(|e| e.1.clone()),
            };
            let j = judge(&w.stats, &learned, sku, self.cfg.slo_p99_ms, &faults, &th);
            let wall_baseline = match j.contention_source {
                Some(BaselineSource::Slo) => Some((BaselineSource::Slo, None, self.cfg.slo_p99_ms)),
                Some(BaselineSource::Learned) => Some((
                    BaselineSource::Learned,
                    learned.wall_p50_ms,
                    learned.wall_p99_ms,
                )),
                Some(BaselineSource::Sku) => sku.map(|s| {
                    (
                        BaselineSource::Sku,
                        Some(s.wall_p50_ms),
                        Some(s.wall_p99_ms),
                    )
                }),
                None => None,
            };
            let gpu_baseline = t
                .baseline
                .as_ref()
                .filter(|b| b.gpu_p50_ms.is_some())
                .map(|b| (b.gpu_p50_ms, b.gpu_p99_ms));
            out.push(HealthRecord {
                ts_ns,
                node: self.node.clone(),
                gpu_uuid: uuid.clone(),
                gpu_index: t.gpu_index,
                kernel: kernel.clone(),
                verdict: j.verdict.as_str().to_string(),
                reason: j.health_detail.clone(),
                window_secs: self.cfg.window_ms / 1000,
                samples: w.stats.samples,
                wall_p50_ms: w.wall.p50,
                wall_p99_ms: w.wall.p99,
                gpu_p99_ms: w.gpu.p99,
                queue_p99_ms: w.queue.p99,
                baseline_p99_ms: j.wall_reference_p99_ms,
                inflation: j.inflation,
                correctness_failures: w.stats.correctness_failures,
                throttle_reasons: Some(w.stats.throttle_reasons),
                health_reason: Some(j.health_reason.as_str().into()),
                health_baseline_source: j.health_source.map(|s| s.as_str().into()),
                contention: Some(j.contention.as_str().into()),
                contention_reason: Some(j.contention_reason.as_str().into()),
                contention_detail: Some(j.contention_detail.clone()),
                contention_baseline_source: j.contention_source.map(|s| s.as_str().into()),
                tenants: w.stats.max_tenants,
                event_p50_mcycles: w.stats.event_mcycles_p50,
                event_baseline_mcycles: j.event_baseline_mcycles,
            });
            published.insert(
                (uuid.clone(), kernel.clone()),
                KernelHealth {
                    gpu_index: t.gpu_index,
                    verdict: j.verdict,
                    reason: j.health_detail,
                    health_reason: j.health_reason,
                    health_source: j.health_source,
                    wall: w.wall,
                    gpu: w.gpu,
                    queue: w.queue,
                    baseline_p99_ms: j.wall_reference_p99_ms,
                    inflation: j.inflation,
                    samples: w.stats.samples,
                    correctness_failures_total: t.failures_total,
                    contention: Some(j.contention),
                    contention_reason: j.contention_reason,
                    contention_detail: j.contention_detail,
                    contention_source: j.contention_source,
                    wall_baseline,
                    gpu_baseline,
                    event_baseline_p99_ms: t.baseline.as_ref().and_then(|b| b.gpu_p99_ms),
                },
            );
        }
        // A GPU that fails (to open, to probe, or its self-test) before it
        // ever produced a row still gets a verdict.
        let mut lost: Vec<(String, String, u32, Reason, String)> = Vec::new();
        for (uuid, (idx, err, _)) in &self.errors {
            for kernel in ["fft", "gemm"] {
                lost.push((
                    uuid.clone(),
                    kernel.into(),
                    *idx,
                    Reason::ProbeFailing,
                    format!("probe failing: {err}"),
                ));
            }
        }
        for ((uuid, kernel), passed) in &self_tests {
            if !passed {
                let idx = gpus.get(uuid).map_or(0, |g| g.index);
                lost.push((
                    uuid.clone(),
                    kernel.clone(),
                    idx,
                    Reason::SelfTestFailed,
                    "self-test failed: correctness unverified".into(),
                ));
            }
        }
        for (uuid, g) in &gpus {
            if let Some(d) = &g.down {
                for kernel in ["fft", "gemm"] {
                    lost.push((
                        uuid.clone(),
                        kernel.into(),
                        g.index,
                        Reason::BackendDown,
                        format!("backend {} down: {d}", g.backend),
                    ));
                }
            }
        }
        // Worst first, so the first entry per key wins.
        lost.sort_by_key(|l| match l.3 {
            Reason::BackendDown => 0,
            Reason::ProbeFailing => 1,
            _ => 2,
        });
        for (uuid, kernel, idx, reason, text) in lost {
            let key = (uuid.clone(), kernel.clone());
            if published.contains_key(&key) {
                continue;
            }
            out.push(HealthRecord {
                ts_ns,
                node: self.node.clone(),
                gpu_uuid: uuid,
                gpu_index: idx,
                kernel,
                verdict: Verdict::Unhealthy.as_str().into(),
                reason: text.clone(),
                window_secs: self.cfg.window_ms / 1000,
                health_reason: Some(reason.as_str().into()),
                contention_reason: Some(Reason::NoData.as_str().into()),
                ..Default::default()
            });
            published.insert(
                key,
                KernelHealth::lost(idx, Verdict::Unhealthy, reason, text),
            );
        }
        if let Ok(mut k) = self.state.kernels.write() {
            for ((uuid, kernel), h) in &published {
                let before = k.get(&(uuid.clone(), kernel.clone()));
                if before.map(|p| p.verdict) != Some(h.verdict) {
                    tracing::info!(
                        gpu = %uuid,
                        kernel = %kernel,
                        from = before.map_or("none", |p| p.verdict.as_str()),
                        to = h.verdict.as_str(),
                        reason_code = h.health_reason.as_str(),
                        reason = %h.reason,
                        "health verdict changed"
                    );
                }
                if before.and_then(|p| p.contention) != h.contention {
                    tracing::info!(
                        gpu = %uuid,
                        kernel = %kernel,
                        from = before.and_then(|p| p.contention).map_or("none", Contention::as_str),
                        to = h.contention.map_or("none", Contention::as_str),
                        reason_code = h.contention_reason.as_str(),
                        reason = %h.contention_detail,
                        "contention changed"
                    );
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

    const H100: &str = "NVIDIA H100 80GB HBM3";

    /// An arrival run of the light FFT on an H100 at 1980 MHz.
    fn row(wall: f64, gpu: f64, procs: u32) -> ProbeRecord {
        ProbeRecord {
            gpu_uuid: "GPU-a".into(),
            gpu_name: Some(H100.into()),
            kernel: "fft".into(),
            shape: "c2c 1d n=4096 batch=16".into(),
            precision: "fp32".into(),
            wall_ms: wall,
            gpu_ms: Some(gpu),
            queue_ms: Some(wall - gpu),
            sm_clock_mhz: Some(1980),
            arrival: Some(true),
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

    fn quiet_rows(n: usize) -> Vec<ProbeRecord> {
        (0..n)
            .map(|i| row(0.1 + (i % 10) as f64 * 0.001, 0.01, 0))
            .collect()
    }

    #[test]
    fn tenants_make_a_gpu_contended_never_unhealthy() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), None);
        let t0 = Instant::now();
        e.observe(&quiet_rows(200), t0);
        let h = e.evaluate(t0, 0);
        assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
        assert_eq!(h[0].contention.as_deref(), Some("ok"));
        assert_eq!(h[0].health_baseline_source.as_deref(), Some("learned"));
        let b = h[0].baseline_p99_ms.expect("baseline");
        assert!((0.105..0.115).contains(&b), "baseline {b}");
        // 11 s later the quiet window has expired; 3 tenants, waits as the
        // H100 showed them (p99 ~7 ms), event clock flat.
        let t1 = t0 + Duration::from_secs(11);
        let shared: Vec<_> = (0..100)
            .map(|i| row(0.5 + (i % 50) as f64 * 0.13, 0.007, 3))
            .collect();
        e.observe(&shared, t1);
        let h = e.evaluate(t1, 1);
        assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
        assert_eq!(
            h[0].contention.as_deref(),
            Some("contended"),
            "{:?}",
            h[0].contention_detail
        );
        assert!(h[0]
            .contention_detail
            .as_deref()
            .is_some_and(|d| d.contains("3 tenants")));
        assert_eq!(st.verdict("GPU-a", "fft"), Some(Verdict::Healthy));
        assert_eq!(st.contention("GPU-a", "fft"), Some(Contention::Contended));
        // Far more wait than 3 tenants explain: over-shared, still healthy.
        let t2 = t1 + Duration::from_secs(11);
        e.observe(
            &(0..100).map(|_| row(30.0, 0.007, 3)).collect::<Vec<_>>(),
            t2,
        );
        let h = e.evaluate(t2, 2);
        assert_eq!(h[0].verdict, "healthy");
        assert_eq!(h[0].contention.as_deref(), Some("over-shared"));
        assert_eq!(
            h[0].contention_reason.as_deref(),
            Some("wait_over_predicted")
        );
        // Contended runs never moved the baseline.
        assert!((h[0].baseline_p99_ms.expect("b") - b).abs() < 1e-9);
    }

    #[test]
    fn jitter_of_a_tiny_kernel_on_an_idle_gpu_is_not_contention() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st, None);
        let t0 = Instant::now();
        e.observe(&quiet_rows(200), t0);
        e.evaluate(t0, 0);
        // 11 s later, a tenant appeared: 2.3x the baseline p99, but far
        // less than half a slice above it.
        let t1 = t0 + Duration::from_secs(11);
        e.observe(&(0..50).map(|_| row(0.25, 0.01, 1)).collect::<Vec<_>>(), t1);
        let h = e.evaluate(t1, 1);
        assert_eq!(
            h[0].contention.as_deref(),
            Some("ok"),
            "{:?}",
            h[0].contention_detail
        );
        assert!(h[0].inflation.is_some_and(|i| i > 2.0));
    }

    #[test]
    fn only_arrivals_count_and_correctness_failures_are_unhealthy() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st, None);
        let t0 = Instant::now();
        let mut rows = quiet_rows(100);
        // Back-to-back runs after the probe's own previous run: not arrivals.
        rows.extend((0..100).map(|_| ProbeRecord {
            arrival: Some(false),
            ..row(50.0, 0.01, 0)
        }));
        // The first run after an idle gap is an arrival like any other.
        rows.push(ProbeRecord {
            burst_seq: 0,
            ..row(0.1, 0.01, 0)
        });
        e.observe(&rows, t0);
        let h = e.evaluate(t0, 0);
        assert_eq!(h[0].samples, 101);
        assert!(h[0].wall_p99_ms.expect("p99") < 0.2, "non-arrivals leaked");
        let mut bad = ProbeRecord {
            arrival: Some(false),
            ..row(0.1, 0.01, 0)
        };
        bad.correct = Some(false);
        e.observe(&[bad], t0);
        let h = e.evaluate(t0, 1);
        assert_eq!(h[0].verdict, "unhealthy");
        assert_eq!(h[0].health_reason.as_deref(), Some("correctness"));
    }

    #[test]
    fn probe_errors_throttling_and_the_slo() {
        let st = Arc::new(LiveState::default());
        let mut c = cfg();
        c.slo_p99_ms = Some(1.0);
        let mut e = Evaluator::new(c, "n".into(), st.clone(), None);
        let t0 = Instant::now();
        st.register_gpu(
            "GPU-b",
            GpuEntry {
                index: 1,
                name: None,
                backend: "cuda".into(),
                down: None,
                probe_failing: None,
            },
        );
        e.event(
            HealthEvent::ProbeError {
                gpu_uuid: "GPU-b".into(),
                gpu_index: 1,
                error: "CUDA_ERROR_LAUNCH_FAILED".into(),
            },
            t0,
        );
        assert!(!st.not_ready().is_empty(), "a failing backend is not ready");
        let mut rows: Vec<_> = (0..50).map(|_| row(5.0, 0.01, 2)).collect();
        rows[3].throttle_reasons = Some(0x20);
        e.observe(&rows, t0);
        let h = e.evaluate(t0, 0);
        let b = h.iter().find(|r| r.gpu_uuid == "GPU-b").expect("lost gpu");
        assert_eq!(b.verdict, "unhealthy");
        assert_eq!(b.health_reason.as_deref(), Some("probe_failing"));
        let a = h.iter().find(|r| r.gpu_uuid == "GPU-a").expect("a");
        assert_eq!(a.verdict, "degraded", "{}", a.reason);
        assert_eq!(a.health_reason.as_deref(), Some("throttled"));
        // An SLO breach is contention: 5x the SLO is over-shared.
        assert_eq!(a.contention.as_deref(), Some("over-shared"));
        assert_eq!(a.contention_baseline_source.as_deref(), Some("slo"));
        // Hardware throttling is a broken GPU.
        let mut hw = row(0.5, 0.01, 0);
        hw.throttle_reasons = Some(0x40);
        e.observe(&[hw], t0);
        let h = e.evaluate(t0, 1);
        let a = h.iter().find(|r| r.gpu_uuid == "GPU-a").expect("a");
        assert_eq!(a.verdict, "unhealthy", "{}", a.reason);
        e.event(
            HealthEvent::ProbeRecovered {
                gpu_uuid: "GPU-b".into(),
            },
            t0,
        );
        assert!(e.evaluate(t0, 2).iter().all(|r| r.gpu_uuid != "GPU-b"));
    }

    #[test]
    fn failed_self_test_and_backend_down_are_unhealthy_without_rows() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), None);
        st.record_self_test("GPU-a", "gemm", false);
        st.record_self_test("GPU-a", "fft", true);
        st.register_gpu(
            "GPU-c",
            GpuEntry {
                index: 2,
                name: None,
                backend: "cuda".into(),
                down: Some("libcufft.so.12 not found".into()),
                probe_failing: None,
            },
        );
        let t0 = Instant::now();
        e.observe(&quiet_rows(100), t0);
        let h = e.evaluate(t0, 0);
        let get = |u: &str, k: &str| {
            h.iter()
                .find(|r| r.gpu_uuid == u && r.kernel == k)
                .unwrap_or_else(|| panic!("{u} {k} in {h:?}"))
        };
        assert_eq!(get("GPU-a", "fft").verdict, "healthy");
        assert_eq!(get("GPU-a", "gemm").verdict, "unhealthy");
        assert_eq!(
            get("GPU-a", "gemm").health_reason.as_deref(),
            Some("self_test_failed")
        );
        assert!(get("GPU-a", "gemm")
            .reason
            .contains("correctness unverified"));
        assert_eq!(
            get("GPU-c", "fft").health_reason.as_deref(),
            Some("backend_down")
        );
        let why = st.not_ready();
        assert!(
            why.iter().any(|w| w.contains("self-test failed")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("libcufft")), "{why:?}");
    }

    #[test]
    fn a_never_idle_gpu_is_judged_against_the_sku_reference() {
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st, None);
        let t0 = Instant::now();
        // Always 3 tenants: no quiet run, no learned baseline.
        e.observe(
            &(0..100).map(|_| row(6.0, 0.007, 3)).collect::<Vec<_>>(),
            t0,
        );
        let h = e.evaluate(t0, 0);
        assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
        assert_eq!(h[0].health_baseline_source.as_deref(), Some("sku"));
        assert_eq!(h[0].contention.as_deref(), Some("contended"));
        // The same GPU executing 3x slower per SM cycle: unhealthy.
        let t1 = t0 + Duration::from_secs(11);
        e.observe(&(0..100).map(|_| row(6.0, 0.03, 3)).collect::<Vec<_>>(), t1);
        let h = e.evaluate(t1, 1);
        assert_eq!(h[0].verdict, "unhealthy", "{}", h[0].reason);
        assert_eq!(h[0].health_reason.as_deref(), Some("event_slow"));
        // Too few runs: unknown, not healthy.
        let t2 = t1 + Duration::from_secs(11);
        e.observe(&[row(6.0, 0.007, 3)], t2);
        let h = e.evaluate(t2, 2);
        assert_eq!(h[0].verdict, "unknown", "{}", h[0].reason);
    }

    #[test]
    fn baselines_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let st = Arc::new(LiveState::default());
        let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), Some(dir.path()));
        e.observe(&quiet_rows(100), Instant::now());
        e.save_baselines();
        let mut e2 = Evaluator::new(cfg(), "n".into(), st, Some(dir.path()));
        let t = Instant::now();
        // Quiet again but 3x slower per SM cycle than the learned baseline,
        // and waiting 2 ms (no tenant seen).
        e2.observe(&(0..30).map(|_| row(2.0, 0.04, 0)).collect::<Vec<_>>(), t);
        let h = e2.evaluate(t, 0);
        assert_eq!(h[0].verdict, "unhealthy", "{}", h[0].reason);
        assert_eq!(h[0].health_baseline_source.as_deref(), Some("learned"));
        assert_eq!(h[0].contention.as_deref(), Some("contended"));
    }
}
