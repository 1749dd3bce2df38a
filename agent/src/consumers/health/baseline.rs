//! Learned baselines and their persistence. Every quiet arrival run
//! ([`slicetrace_schema::is_quiet`]) that [`super::Evaluator::observe`] sees
//! goes into its track's [`Learner`]; once per evaluation the learners that
//! got new runs recompute their [`Baseline`], which the judge then reads as
//! the learned reference. Baselines outlive the process in
//! `DIR/state/health-baseline.json` (gpu_uuid → kernel → baseline), loaded
//! when the evaluator starts and written atomically (temp file + rename)
//! when it saves.
//!
//! A GPU whose tenants never leave it idle has no quiet runs. Its event
//! baseline (health) is then learned from shared arrival runs that were not
//! preempted mid-kernel ([`slicetrace_schema::event_eligible`]), in memory
//! only; its wall baseline (contention) is never learned from shared runs,
//! which are contended by definition (the SLO or the SKU reference stands in).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::window::{cycles, hist, us};

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

/// The quiet runs of one GPU and kernel and the baseline learned from them.
pub(super) struct Learner {
    quiet: Quiet,
    quiet_prev: Option<Quiet>,
    /// Event time per SM cycle of shared runs that were not preempted
    /// ([`slicetrace_schema::event_eligible`]), two generations: the event
    /// baseline of a GPU whose tenants never leave it idle.
    busy_event: Histogram<u32>,
    busy_event_prev: Option<Histogram<u32>>,
    /// Quiet runs arrived since the baseline was last computed.
    dirty: bool,
    /// The baseline in use: learned, or loaded from the file.
    pub(super) baseline: Option<Baseline>,
}

impl Learner {
    pub(super) fn new() -> Self {
        Learner {
            quiet: Quiet::new(),
            quiet_prev: None,
            busy_event: hist(),
            busy_event_prev: None,
            dirty: false,
            baseline: None,
        }
    }

    /// Forgets the baseline and the quiet runs (a new probe shape).
    pub(super) fn reset(&mut self) {
        self.baseline = None;
        self.quiet = Quiet::new();
        self.quiet_prev = None;
        self.busy_event = hist();
        self.busy_event_prev = None;
    }

    /// Adds the event time per SM cycle of one shared arrival run that was
    /// not preempted mid-kernel.
    pub(super) fn record_busy_event(&mut self, event_mcycles: f64, baseline_min: u64) {
        let _ = self.busy_event.record(cycles(event_mcycles));
        if self.busy_event.len() >= 20 * baseline_min.max(1) {
            let full = std::mem::replace(&mut self.busy_event, hist());
            self.busy_event_prev = Some(full);
        }
    }

    /// The event baseline health judges against: the quiet runs' p50 when
    /// there are enough of them, else that of the shared runs that were not
    /// preempted (a short probe kernel finishes inside one time slice, so
    /// its event time per SM cycle is the GPU's own speed: checked on an
    /// H100, docs/gpu-results/ §B). `None` with too few of either.
    pub(super) fn event_mcycles_p50(&self, baseline_min: u64) -> Option<f64> {
        if let Some(q) = self.baseline.as_ref().and_then(|b| b.event_mcycles_p50) {
            return Some(q);
        }
        let mut h = self.busy_event.clone();
        if let Some(p) = &self.busy_event_prev {
            let _ = h.add(p);
        }
        (h.len() >= baseline_min.max(1)).then(|| h.value_at_quantile(0.5) as f64 / 1e6)
    }

    /// Adds one quiet arrival run.
    pub(super) fn record(
        &mut self,
        wall_ms: f64,
        gpu_ms: Option<f64>,
        event_mcycles: Option<f64>,
        baseline_min: u64,
    ) {
        let _ = self.quiet.wall.record(us(wall_ms));
        if let Some(g) = gpu_ms {
            let _ = self.quiet.gpu.record(us(g));
        }
        if let Some(mc) = event_mcycles {
            let _ = self.quiet.event.record(cycles(mc));
        }
        if self.quiet.wall.len() >= 20 * baseline_min.max(1) {
            let full = std::mem::replace(&mut self.quiet, Quiet::new());
            self.quiet_prev = Some(full);
        }
        self.dirty = true;
    }

    /// Recomputes the baseline if quiet runs arrived since the last call and
    /// there are enough; returns whether it did.
    pub(super) fn refresh(&mut self, shape: &str, baseline_min: u64) -> bool {
        if !std::mem::take(&mut self.dirty) {
            return false;
        }
        let mut m = self.quiet.clone();
        if let Some(p) = &self.quiet_prev {
            let _ = m.wall.add(&p.wall);
            let _ = m.gpu.add(&p.gpu);
            let _ = m.event.add(&p.event);
        }
        if m.wall.len() < baseline_min {
            return false;
        }
        let ms = |h: &Histogram<u32>, q: f64| {
            (h.len() >= baseline_min).then(|| h.value_at_quantile(q) as f64 / 1000.0)
        };
        self.baseline = Some(Baseline {
            shape: shape.to_string(),
            p50_ms: m.wall.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: m.wall.value_at_quantile(0.99) as f64 / 1000.0,
            samples: m.wall.len(),
            event_mcycles_p50: (m.event.len() >= baseline_min)
                .then(|| m.event.value_at_quantile(0.5) as f64 / 1e6),
            gpu_p50_ms: ms(&m.gpu, 0.5),
            gpu_p99_ms: ms(&m.gpu, 0.99),
        });
        true
    }
}

/// Baselines as the file holds them: gpu_uuid → kernel → baseline.
pub(super) type Baselines = BTreeMap<String, BTreeMap<String, Baseline>>;

/// The baseline file of an agent whose data directory is `data_dir`.
pub(super) fn file_in(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("health-baseline.json")
}

/// Reads the baseline file: `None` when there is none, or when it cannot be
/// parsed (logged, and the agent learns afresh).
pub(super) fn load(p: &Path) -> Option<Baselines> {
    let text = std::fs::read_to_string(p).ok()?;
    match serde_json::from_str::<Baselines>(&text) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable health baseline file");
            None
        }
    }
}

/// Writes the baseline file atomically (temp file + rename), so a crash
/// mid-write leaves the previous file.
pub(super) fn save(p: &Path, m: &Baselines) -> std::io::Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(m).unwrap_or_default())?;
    std::fs::rename(&tmp, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_file_roundtrips_and_a_broken_one_is_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = file_in(dir.path());
        assert_eq!(load(&p), None, "no file yet");
        let mut m = Baselines::new();
        m.entry("GPU-a".into()).or_default().insert(
            "fft".into(),
            Baseline {
                shape: "c2c 1d n=4096 batch=16".into(),
                p50_ms: 0.1,
                p99_ms: 0.11,
                samples: 100,
                event_mcycles_p50: Some(0.02),
                gpu_p50_ms: Some(0.01),
                gpu_p99_ms: None,
            },
        );
        save(&p, &m).expect("save");
        assert!(p.ends_with("state/health-baseline.json"));
        assert!(!p.with_extension("json.tmp").exists(), "temp file left");
        assert_eq!(load(&p), Some(m));
        std::fs::write(&p, "{ not json").expect("write");
        assert_eq!(load(&p), None);
    }

    #[test]
    fn a_baseline_needs_enough_quiet_runs_and_a_new_shape_forgets_it() {
        let mut l = Learner::new();
        assert!(!l.refresh("s", 10), "nothing recorded");
        for _ in 0..9 {
            l.record(0.1, Some(0.01), Some(0.02), 10);
        }
        assert!(!l.refresh("s", 10), "9 of 10 runs");
        assert!(l.baseline.is_none());
        l.record(0.1, Some(0.01), Some(0.02), 10);
        assert!(l.refresh("s", 10));
        let b = l.baseline.clone().expect("baseline");
        assert_eq!((b.shape.as_str(), b.samples), ("s", 10));
        assert!((b.p99_ms - 0.1).abs() < 0.002, "{b:?}");
        assert!(!l.refresh("s", 10), "no new runs: nothing to recompute");
        l.reset();
        assert!(l.baseline.is_none());
    }

    #[test]
    fn a_gpu_never_idle_learns_its_event_baseline_from_unpreempted_shared_runs() {
        let mut l = Learner::new();
        for _ in 0..9 {
            l.record_busy_event(0.03, 10);
        }
        assert_eq!(l.event_mcycles_p50(10), None, "9 of 10 runs");
        l.record_busy_event(0.03, 10);
        let busy = l.event_mcycles_p50(10).expect("learned from shared runs");
        assert!((busy - 0.03).abs() < 0.001, "{busy}");
        // Quiet runs, once there are enough, take precedence.
        for _ in 0..10 {
            l.record(0.1, Some(0.01), Some(0.02), 10);
        }
        assert!(l.refresh("s", 10));
        let quiet = l.event_mcycles_p50(10).expect("quiet");
        assert!((quiet - 0.02).abs() < 0.001, "{quiet}");
        l.reset();
        assert_eq!(l.event_mcycles_p50(10), None, "a new shape forgets both");
    }
}
