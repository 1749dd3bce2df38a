//! The evaluator: the health consumer's state and the one place verdicts
//! are made. The health consumer's loop (`task.rs`) feeds it probe rows
//! ([`Evaluator::observe`]) and probe errors ([`Evaluator::event`]) from its
//! own bounded queue, and on every `evaluate_interval_ms` calls
//! [`Evaluator::evaluate`]: each GPU and kernel's window (`window.rs`) and
//! baseline (`baseline.rs`) go to [`slicetrace_schema::judge`], the verdicts
//! are published to [`LiveState`] (verdict changes are logged) and returned
//! as rows of the `health` table. A GPU that fails to open, to probe or its
//! self-test gets a verdict even without rows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slicetrace_schema::{
    event_eligible, event_mcycles, is_quiet, judge, sku_reference, BaselineSource, Faults,
    HealthRecord, Kernel, LearnedBaseline, ProbeRecord, Reason, Verdict,
};

use super::baseline::{self, Baselines, Learner};
use super::config::HealthConfig;
use super::window::{attribute, cycles, us, window_of, Bucket, BUCKETS};
use crate::serve::live::{KernelHealth, LiveState};
use crate::topology::ProbeEvent;

/// A GPU (by UUID) and one of its kernels: what the evaluator keys by.
type TrackKey = (String, Kernel);

/// One GPU and kernel: its window, its quiet runs and its baseline.
struct Track {
    gpu_index: u32,
    gpu_name: Option<String>,
    shape: String,
    precision: String,
    buckets: VecDeque<Bucket>,
    learner: Learner,
    failures_total: u64,
}

/// The evaluator (owned by its task).
pub struct Evaluator {
    cfg: HealthConfig,
    node: String,
    tracks: HashMap<TrackKey, Track>,
    errors: HashMap<String, (u32, String, Instant)>,
    state: Arc<LiveState>,
    baseline_path: Option<PathBuf>,
    baseline_dirty: bool,
}

impl Evaluator {
    /// A new evaluator; loads persisted baselines from `data_dir/state/`.
    pub fn new(
        cfg: HealthConfig,
        node: String,
        state: Arc<LiveState>,
        data_dir: Option<&Path>,
    ) -> Self {
        let baseline_path = data_dir.map(baseline::file_in);
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
        let Some(m) = baseline::load(&p) else {
            return;
        };
        for (uuid, ks) in m {
            for (name, b) in ks {
                // The file names kernels by word; one this build does not
                // probe is left out.
                let Ok(kernel) = name.parse::<Kernel>() else {
                    tracing::warn!(path = %p.display(), gpu = %uuid, kernel = %name, "unknown kernel in health baselines; ignored");
                    continue;
                };
                let t = self.track(&uuid, kernel, 0, &b.shape);
                t.learner.baseline = Some(b);
            }
        }
        tracing::info!(path = %p.display(), "loaded health baselines");
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
        let mut m = Baselines::new();
        for ((uuid, kernel), t) in &self.tracks {
            if let Some(b) = &t.learner.baseline {
                m.entry(uuid.clone())
                    .or_default()
                    .insert(kernel.as_str().to_string(), b.clone());
            }
        }
        match baseline::save(&p, &m) {
            Ok(()) => self.baseline_dirty = false,
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "failed to save health baselines")
            }
        }
    }

    fn track(&mut self, uuid: &str, kernel: Kernel, idx: u32, shape: &str) -> &mut Track {
        self.tracks
            .entry((uuid.to_string(), kernel))
            .or_insert_with(|| Track {
                gpu_index: idx,
                gpu_name: None,
                shape: shape.to_string(),
                precision: String::new(),
                buckets: VecDeque::new(),
                learner: Learner::new(),
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
            let t = self.track(&r.gpu_uuid, r.kernel, r.gpu_index, &r.shape);
            t.gpu_index = r.gpu_index;
            if r.gpu_name.is_some() {
                t.gpu_name.clone_from(&r.gpu_name);
            }
            t.precision.clone_from(&r.precision);
            if t.shape != r.shape {
                // A new probe shape invalidates the old baseline.
                t.shape = r.shape.clone();
                t.learner.reset();
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
            b.throttle |= r.device.throttle_reasons.unwrap_or(0);
            if !r.is_arrival() {
                continue;
            }
            b.max_tenants = b.max_tenants.max(r.tenants());
            attribute(b, r.queue_ms, r.busy_tenants.as_ref());
            if r.device.throttle_reasons.unwrap_or(0) & th.throttle_unhealthy_mask != 0 {
                b.hw_throttled += 1;
            }
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
                if r.tenants().is_some_and(|n| n > 0) {
                    t.learner.record_busy_event(mc, baseline_min);
                }
            }
            if is_quiet(r) {
                t.learner.record(r.wall_ms, r.gpu_ms, mc, baseline_min);
            }
        }
    }

    /// Recomputes the baselines that got new quiet runs (once per
    /// evaluation, not per row: merging histograms is the costly part).
    fn refresh_baselines(&mut self) {
        let baseline_min = self.cfg.baseline_min_samples;
        for t in self.tracks.values_mut() {
            if t.learner.refresh(&t.shape, baseline_min) {
                self.baseline_dirty = true;
            }
        }
    }

    /// Records a probe error or recovery (published to [`LiveState::gpus`]
    /// at once, so `/readyz` and `slicetrace_backend_up` follow).
    pub fn event(&mut self, ev: ProbeEvent, now: Instant) {
        match ev {
            ProbeEvent::ProbeError {
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
            ProbeEvent::ProbeRecovered { gpu_uuid } => {
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
        // Down with a bounded reason: a recent critical Xid explains it
        // (or stands alone while runs still answer), then open_failed, lost,
        // hung or backend_down.
        let down = |uuid: &str| -> Option<(Reason, String)> {
            let g = gpus.get(uuid)?;
            let xid = g
                .critical_xid
                .filter(|(_, at)| now.saturating_duration_since(*at) <= window)
                .and_then(|(code, _)| Reason::for_xid(code).map(|r| (code, r)));
            match (xid, g.down_reason(), &g.down) {
                (Some((code, r)), _, d) => Some((
                    r,
                    match d {
                        Some(d) => format!("Xid {code} reported by NVML; {d}"),
                        None => format!("Xid {code} reported by NVML"),
                    },
                )),
                (None, Some(r), Some(d)) => Some((r, d.clone())),
                _ => None,
            }
        };
        let mut out = Vec::new();
        let mut published = BTreeMap::new();
        // Per GPU, all kernels: (wait, wait by tenant) over the window.
        let mut blame: BTreeMap<String, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
        for ((uuid, kernel), t) in self.tracks.iter_mut() {
            while t
                .buckets
                .front()
                .is_some_and(|b| now.duration_since(b.start) > window)
            {
                t.buckets.pop_front();
            }
            let w = window_of(&t.buckets);
            let g = blame.entry(uuid.clone()).or_default();
            for b in &t.buckets {
                g.0 += b.wait_ms;
                for (who, ms) in &b.blame_ms {
                    *g.1.entry(who.clone()).or_insert(0.0) += ms;
                }
            }
            let sku = if self.cfg.sku_reference {
                sku_reference(
                    t.gpu_name.as_deref(),
                    kernel.as_str(),
                    &t.shape,
                    &t.precision,
                )
            } else {
                None
            };
            // The event baseline: quiet runs first; on a GPU never idle, the
            // shipped per-SKU reference where there is one, else the shared
            // runs that were not preempted (every other model).
            let quiet_event = t
                .learner
                .baseline
                .as_ref()
                .and_then(|b| b.event_mcycles_p50);
            let learned = LearnedBaseline {
                wall_p50_ms: t.learner.baseline.as_ref().map(|b| b.p50_ms),
                wall_p99_ms: t.learner.baseline.as_ref().map(|b| b.p99_ms),
                event_mcycles_p50: match (quiet_event, sku) {
                    (Some(q), _) => Some(q),
                    (None, Some(_)) => None,
                    (None, None) => t.learner.event_mcycles_p50(self.cfg.baseline_min_samples),
                },
            };
            let d = down(uuid);
            if d.as_ref().is_some_and(|d| d.0 == Reason::DriverUpgrade) {
                // Judged below, without its window: unknown, not a fault.
                continue;
            }
            let faults = Faults {
                down_reason: d.as_ref().map(|d| d.0),
                backend_down: d.map(|d| d.1),
                self_test_failed: self_tests.get(&(uuid.clone(), *kernel)) == Some(&false),
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
                .learner
                .baseline
                .as_ref()
                .filter(|b| b.gpu_p50_ms.is_some())
                .map(|b| (b.gpu_p50_ms, b.gpu_p99_ms));
            out.push(HealthRecord {
                ts_ns,
                node: self.node.clone(),
                gpu_uuid: uuid.clone(),
                gpu_index: t.gpu_index,
                kernel: *kernel,
                verdict: j.verdict.as_str().into(),
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
                top_tenant: None,
                top_tenant_wait_share: None,
                span_sampled: None,
            });
            published.insert(
                (uuid.clone(), *kernel),
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
                    event_baseline_p99_ms: t.learner.baseline.as_ref().and_then(|b| b.gpu_p99_ms),
                },
            );
        }
        // A GPU that fails (to open, to probe, or its self-test) before it
        // ever produced a row still gets a verdict.
        let mut lost: Vec<(String, Kernel, u32, Reason, String)> = Vec::new();
        for (uuid, (idx, err, _)) in &self.errors {
            for kernel in Kernel::ALL {
                lost.push((
                    uuid.clone(),
                    kernel,
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
                    *kernel,
                    idx,
                    Reason::SelfTestFailed,
                    "self-test failed: correctness unverified".into(),
                ));
            }
        }
        for (uuid, g) in &gpus {
            if let Some((reason, d)) = down(uuid) {
                let text = match reason {
                    Reason::BackendDown => format!("backend {} down: {d}", g.backend),
                    r => format!("{}: {d}", r.as_str()),
                };
                for kernel in Kernel::ALL {
                    lost.push((uuid.clone(), kernel, g.index, reason, text.clone()));
                }
            }
        }
        // Worst first, so the first entry per key wins (a driver upgrade
        // explains everything else).
        lost.sort_by_key(|l| match l.3 {
            Reason::DriverUpgrade => -1,
            Reason::ProbeFailing => 1,
            Reason::SelfTestFailed => 2,
            _ => 0,
        });
        for (uuid, kernel, idx, reason, text) in lost {
            let key = (uuid.clone(), kernel);
            if published.contains_key(&key) {
                continue;
            }
            out.push(HealthRecord {
                ts_ns,
                node: self.node.clone(),
                gpu_uuid: uuid,
                gpu_index: idx,
                kernel,
                verdict: verdict_for(reason).as_str().into(),
                reason: text.clone(),
                window_secs: self.cfg.window_ms / 1000,
                health_reason: Some(reason.as_str().into()),
                contention_reason: Some(Reason::NoData.as_str().into()),
                ..Default::default()
            });
            published.insert(
                key,
                KernelHealth::without_runs(idx, verdict_for(reason), reason, text),
            );
        }
        // Attributed wait shares: on /metrics (a GPU's map is replaced at
        // every evaluation, so a tenant that left the window leaves its
        // series) and the top one on this evaluation's records.
        let shares: BTreeMap<String, Vec<(String, f64)>> = blame
            .into_iter()
            .map(|(uuid, (wait, by))| {
                let mut v: Vec<(String, f64)> = if wait > 0.0 {
                    by.into_iter().map(|(w, ms)| (w, ms / wait)).collect()
                } else {
                    Vec::new()
                };
                v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                (uuid, v)
            })
            .collect();
        for r in &mut out {
            if let Some((who, share)) = shares.get(&r.gpu_uuid).and_then(|v| v.first()) {
                r.top_tenant = Some(who.clone());
                r.top_tenant_wait_share = Some(*share);
            }
        }
        if let Ok(mut m) = self.state.tenant_wait_share.write() {
            *m = shares;
        }
        self.state.publish(published);
        out
    }
}

/// The verdict of a GPU that failed without rows: `unhealthy`, except
/// while its node's driver is upgraded (`unknown`: nothing is wrong with it).
fn verdict_for(reason: Reason) -> Verdict {
    match reason {
        Reason::DriverUpgrade => Verdict::Unknown,
        _ => Verdict::Unhealthy,
    }
}

#[cfg(test)]
mod tests;
