//! Agent-wide live state: what the health evaluator publishes and what the
//! rest of the agent reads while it runs. Before probing starts, the agent
//! ([`crate::agent`], and the binary for backends that failed to open)
//! registers the node name, the GPUs it opened, the occupancy sources and a
//! backend fallback. The probe threads ([`crate::probe`]) record the
//! start-up self-tests and the first completed cycle, and read a GPU's
//! verdict, contention and event baseline here to stamp rows and spans. The
//! evaluator ([`crate::consumers::health`]) writes the per-kernel [`KernelHealth`] after
//! each evaluation and the backend state as probe errors come and go.
//! `/metrics`, `/readyz` ([`crate::serve::metrics`]) and the node condition
//! ([`crate::serve::node_condition`]) render it at scrape or patch time. Every field
//! sits behind its own lock, held only to copy in or out.
//!
//! The per-kernel maps are keyed by `(gpu uuid, `[`Kernel`]`)`; the kernel
//! becomes its name ([`Kernel::as_str`]) only where `/metrics` and the node
//! condition render it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use slicetrace_schema::{BaselineSource, Contention, Kernel, Reason, Verdict};

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
    /// What is published for a GPU and kernel that failed before it
    /// produced a row in the window: no quantiles, no baselines, no
    /// contention state.
    pub fn without_runs(gpu_index: u32, verdict: Verdict, reason: Reason, text: String) -> Self {
        Self {
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
    /// Why the backend is not up: it failed to open, was lost or hung
    /// (`None` while up).
    pub down: Option<String>,
    /// Why, bounded: [`Reason::OpenFailed`], [`Reason::Lost`],
    /// [`Reason::Hung`]; `None` (with `down` set) is [`Reason::BackendDown`].
    pub down_reason: Option<Reason>,
    /// The last probe error while probes fail (cleared on recovery).
    pub probe_failing: Option<String>,
    /// The last critical Xid NVML reported for this GPU, and when.
    pub critical_xid: Option<(u64, std::time::Instant)>,
}

impl GpuEntry {
    /// A GPU as registered before its probe thread starts.
    pub fn new(index: u32, name: Option<String>, backend: &str) -> Self {
        Self {
            index,
            name,
            backend: backend.to_string(),
            down: None,
            down_reason: None,
            probe_failing: None,
            critical_xid: None,
        }
    }

    /// Whether the backend is up: opened and not failing.
    pub fn up(&self) -> bool {
        self.down.is_none() && self.probe_failing.is_none()
    }

    /// The bounded reason it is down, if it is.
    pub fn down_reason(&self) -> Option<Reason> {
        self.down
            .as_ref()
            .map(|_| self.down_reason.unwrap_or(Reason::BackendDown))
    }
}

/// Names the consumer loops that are gone (set by the agent).
pub type ConsumerCheck = Box<dyn Fn() -> Vec<&'static str> + Send + Sync>;

/// Progress of the probe threads and liveness of the consumer loops, for
/// `/healthz`: it fails only when the agent itself is stuck (every probe
/// thread silent for longer than any run, open or back-off may take, or a
/// consumer loop gone), which a restart would fix. A GPU that fails is not
/// the agent being stuck: the thread that probes it keeps beating.
#[derive(Default)]
pub struct Liveness {
    /// gpu_uuid (as registered) → the thread's last beat, ms since
    /// [`Liveness::now_ms`]'s origin.
    beats: RwLock<BTreeMap<String, Arc<std::sync::atomic::AtomicU64>>>,
    /// Silence after which a probe thread counts as stuck, ms (0: never).
    stall_after_ms: std::sync::atomic::AtomicU64,
    /// Names the consumer loops found gone.
    consumers_gone: RwLock<Option<ConsumerCheck>>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("beats", &self.beats)
            .field("stall_after_ms", &self.stall_after_ms)
            .finish_non_exhaustive()
    }
}

impl Liveness {
    /// Milliseconds on a process-wide monotonic clock.
    pub fn now_ms() -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }

    /// A probe thread's beat, registered under `gpu_uuid` (beating now).
    pub fn register(&self, gpu_uuid: &str) -> Arc<std::sync::atomic::AtomicU64> {
        let b = Arc::new(std::sync::atomic::AtomicU64::new(Self::now_ms()));
        if let Ok(mut m) = self.beats.write() {
            m.insert(gpu_uuid.to_string(), b.clone());
        }
        b
    }

    /// Silence after which a probe thread is stuck.
    pub fn set_stall_after(&self, d: std::time::Duration) {
        self.stall_after_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// How `/healthz` learns of consumer loops that are gone.
    pub fn set_consumer_check(&self, f: ConsumerCheck) {
        if let Ok(mut c) = self.consumers_gone.write() {
            *c = Some(f);
        }
    }

    /// Why the agent is stuck, one entry per cause; empty while it is not.
    /// Probe threads count as stuck only when every one is silent.
    pub fn stuck(&self) -> Vec<String> {
        let mut why = Vec::new();
        let after = self
            .stall_after_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if after > 0 {
            if let Ok(m) = self.beats.read() {
                let now = Self::now_ms();
                let silent: Vec<String> = m
                    .iter()
                    .filter(|(_, b)| {
                        now.saturating_sub(b.load(std::sync::atomic::Ordering::Relaxed)) > after
                    })
                    .map(|(u, _)| u.clone())
                    .collect();
                if !m.is_empty() && silent.len() == m.len() {
                    why.push(format!(
                        "no probe thread made progress for {after} ms: {}",
                        silent.join(", ")
                    ));
                }
            }
        }
        if let Ok(c) = self.consumers_gone.read() {
            if let Some(f) = c.as_ref() {
                for name in f() {
                    why.push(format!("consumer {name}: its loop is gone"));
                }
            }
        }
        why
    }
}

/// State shared between the evaluator, the probe threads and `/metrics`.
#[derive(Debug, Default)]
pub struct LiveState {
    /// `(gpu_uuid, kernel)` → health ([`LiveState::publish`] writes it).
    pub kernels: RwLock<BTreeMap<(String, Kernel), KernelHealth>>,
    /// gpu_uuid → latest pod count (None = unknown).
    pub pod_count: RwLock<BTreeMap<String, Option<u32>>>,
    /// gpu_uuid → each busy tenant's attributed share of the GPU's wait over
    /// the health window, largest first (replaced at every evaluation).
    pub tenant_wait_share: RwLock<BTreeMap<String, Vec<(String, f64)>>>,
    /// Set once the first probe cycle completed (for `/readyz`).
    pub ready: std::sync::atomic::AtomicBool,
    /// The occupancy sources the agent started from its config, so that
    /// `/metrics` can report their health at scrape time; unset when the
    /// occupancy was injected.
    pub occupancy: std::sync::OnceLock<Arc<dyn OccupancyHealth>>,
    /// The shipper's counters, when shipping is on (`/metrics` reads them
    /// at scrape time).
    pub ship: std::sync::OnceLock<slicetrace_ship::ShipStats>,
    /// `(gpu_uuid, kernel)` → start-up self-test outcome (`true` = the
    /// planted corruption was caught and a clean run passed).
    pub self_tests: RwLock<BTreeMap<(String, Kernel), bool>>,
    /// gpu_uuid → the GPU as opened (registered before probing starts).
    pub gpus: RwLock<BTreeMap<String, GpuEntry>>,
    /// This agent's node name (the `node` label of every series).
    pub node: RwLock<String>,
    /// `auto` fell back to the CPU backend, with why.
    pub backend_fallback: RwLock<Option<String>>,
    /// Probe-thread progress and consumer liveness (`/healthz`).
    pub liveness: Liveness,
}

impl LiveState {
    /// Current verdict of a GPU's kernel, for stamping rows.
    pub fn verdict(&self, gpu_uuid: &str, kernel: Kernel) -> Option<Verdict> {
        self.read_kernel(gpu_uuid, kernel, |k| k.verdict)
    }
    /// Current contention state of a GPU's kernel, for stamping rows.
    pub fn contention(&self, gpu_uuid: &str, kernel: Kernel) -> Option<Contention> {
        self.read_kernel(gpu_uuid, kernel, |k| k.contention)
            .flatten()
    }
    /// Quiet-baseline event-clock p99 of a GPU's kernel, ms.
    pub fn event_baseline_p99_ms(&self, gpu_uuid: &str, kernel: Kernel) -> Option<f64> {
        self.read_kernel(gpu_uuid, kernel, |k| k.event_baseline_p99_ms)
            .flatten()
    }
    /// Reads what is published for a GPU's kernel under one lock (the probe
    /// thread stamps each row with several of its fields at once).
    pub fn read_kernel<T>(
        &self,
        gpu_uuid: &str,
        kernel: Kernel,
        f: impl FnOnce(&KernelHealth) -> T,
    ) -> Option<T> {
        self.kernels
            .read()
            .ok()?
            .get(&(gpu_uuid.to_string(), kernel))
            .map(f)
    }
    /// Replaces what is published per GPU and kernel with one evaluation's
    /// verdicts, logging every verdict and contention state that changed.
    pub fn publish(&self, published: BTreeMap<(String, Kernel), KernelHealth>) {
        let Ok(mut k) = self.kernels.write() else {
            return;
        };
        let mut next = BTreeMap::new();
        for (key, h) in published {
            let kernel = key.1;
            let before = k.get(&key);
            if before.map(|p| p.verdict) != Some(h.verdict) {
                tracing::info!(
                    gpu = %key.0,
                    kernel = kernel.as_str(),
                    from = before.map_or("none", |p| p.verdict.as_str()),
                    to = h.verdict.as_str(),
                    reason_code = h.health_reason.as_str(),
                    reason = %h.reason,
                    "health verdict changed"
                );
            }
            if before.and_then(|p| p.contention) != h.contention {
                tracing::info!(
                    gpu = %key.0,
                    kernel = kernel.as_str(),
                    from = before.and_then(|p| p.contention).map_or("none", Contention::as_str),
                    to = h.contention.map_or("none", Contention::as_str),
                    reason_code = h.contention_reason.as_str(),
                    reason = %h.contention_detail,
                    "contention changed"
                );
            }
            next.insert(key, h);
        }
        *k = next;
    }
    /// Records the start-up self-test outcome of a GPU's kernel. A failure
    /// makes that kernel `unhealthy` (correctness unverified) at the next
    /// evaluation and fails `/readyz` at once.
    pub fn record_self_test(&self, gpu_uuid: &str, kernel: Kernel, passed: bool) {
        if let Ok(mut m) = self.self_tests.write() {
            m.insert((gpu_uuid.to_string(), kernel), passed);
        }
    }
    /// Registers a GPU whose backend opened (or, with `down`, failed to).
    pub fn register_gpu(&self, uuid: &str, entry: GpuEntry) {
        if let Ok(mut g) = self.gpus.write() {
            g.insert(uuid.to_string(), entry);
        }
    }
    /// Changes a registered GPU's entry (a probe thread's lifecycle: down
    /// with a reason, up again, renamed once its backend opened).
    pub fn update_gpu(&self, uuid: &str, f: impl FnOnce(&mut GpuEntry)) {
        if let Ok(mut g) = self.gpus.write() {
            if let Some(e) = g.get_mut(uuid) {
                f(e);
            }
        }
    }
    /// Moves a GPU registered under a placeholder (`GPU-index-1`, before
    /// its backend opened) to the UUID its backend reports.
    pub fn rename_gpu(&self, from: &str, to: &str) {
        if from == to {
            return;
        }
        if let Ok(mut g) = self.gpus.write() {
            if let Some(e) = g.remove(from) {
                g.insert(to.to_string(), e);
            }
        }
    }
    /// Records a critical Xid for a GPU (found by index when its UUID was
    /// registered under a placeholder).
    pub fn record_critical_xid(&self, uuid: &str, code: u64) {
        if let Ok(mut g) = self.gpus.write() {
            if let Some(e) = g.get_mut(uuid) {
                e.critical_xid = Some((code, std::time::Instant::now()));
            }
        }
    }
    /// One line per GPU: `probing`, or why not (for `/readyz`).
    pub fn gpu_states(&self) -> Vec<String> {
        let Ok(g) = self.gpus.read() else {
            return Vec::new();
        };
        g.iter()
            .map(
                |(uuid, e)| match (e.down_reason(), &e.down, &e.probe_failing) {
                    (Some(r), Some(d), _) => {
                        format!("gpu {} {uuid}: not probing ({}): {d}", e.index, r.as_str())
                    }
                    (_, _, Some(p)) => format!("gpu {} {uuid}: failing: {p}", e.index),
                    _ => format!("gpu {} {uuid}: probing", e.index),
                },
            )
            .collect()
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
                if let (Some(r), Some(d)) = (e.down_reason(), &e.down) {
                    why.push(format!(
                        "{uuid}: backend {} down ({}): {d}",
                        e.backend,
                        r.as_str()
                    ));
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

/// Source health, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OccupancyStatus {
    /// A pod-resources source is configured.
    pub has_pod_resources: bool,
    /// A Kubernetes API source is configured.
    pub has_kube_api: bool,
    /// The last pod-resources `List` succeeded.
    pub pod_resources_ok: bool,
    /// The pod list is synced and the last API calls succeeded.
    pub kube_api_ok: bool,
    /// Age of the oldest source's last successful sync, milliseconds;
    /// `None` when no source has ever synced.
    pub last_sync_age_ms: Option<u64>,
}

/// The state of the occupancy sources, for `/metrics` (the probe's
/// combined occupancy implements it; `serve` knows no source).
pub trait OccupancyHealth: Send + Sync + std::fmt::Debug {
    /// Each configured source's state and the oldest sync.
    fn status(&self) -> OccupancyStatus;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The maps are keyed by [`Kernel`]; its name appears only in the text
    /// rendered from them (`/readyz`, the node condition's worst verdict).
    #[test]
    fn typed_keys_render_the_kernel_name_in_readyz_and_worst() {
        let st = LiveState::default();
        st.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        st.record_self_test("GPU-a", Kernel::Gemm, false);
        st.record_self_test("GPU-a", Kernel::Fft, true);
        let key = |k| ("GPU-a".to_string(), k);
        assert_eq!(
            st.self_tests.read().expect("lock").get(&key(Kernel::Gemm)),
            Some(&false)
        );
        assert_eq!(
            st.not_ready(),
            ["GPU-a gemm: self-test failed, correctness unverified"]
        );
        let slow = |v, r, text: &str| KernelHealth::without_runs(0, v, r, text.into());
        st.publish(BTreeMap::from([
            (
                key(Kernel::Fft),
                slow(Verdict::Degraded, Reason::EventSlow, "slow"),
            ),
            (
                key(Kernel::Gemm),
                slow(Verdict::Healthy, Reason::None, "ok"),
            ),
        ]));
        assert_eq!(st.verdict("GPU-a", Kernel::Fft), Some(Verdict::Degraded));
        assert_eq!(st.verdict("GPU-a", Kernel::Gemm), Some(Verdict::Healthy));
        assert_eq!(st.verdict("GPU-b", Kernel::Fft), None);
        assert_eq!(
            st.worst(),
            Some((Verdict::Degraded, "GPU-a fft: slow".into()))
        );
    }

    /// `/healthz` fails only when every probe thread is silent or a
    /// consumer loop is gone: one silent thread (a GPU in trouble) is not the
    /// agent being stuck.
    #[test]
    fn healthz_is_stuck_only_when_every_probe_thread_is_silent_or_a_consumer_is_gone() {
        let l = Liveness::default();
        let a = l.register("GPU-a");
        let b = l.register("GPU-b");
        assert!(l.stuck().is_empty(), "no stall threshold yet");
        l.set_stall_after(std::time::Duration::from_millis(1));
        std::thread::sleep(std::time::Duration::from_millis(5));
        a.store(0, std::sync::atomic::Ordering::Relaxed);
        b.store(Liveness::now_ms(), std::sync::atomic::Ordering::Relaxed);
        assert!(l.stuck().is_empty(), "GPU-b still beats: {:?}", l.stuck());
        b.store(0, std::sync::atomic::Ordering::Relaxed);
        let why = l.stuck();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("GPU-a, GPU-b"), "{why:?}");
        b.store(
            Liveness::now_ms() + 60_000,
            std::sync::atomic::Ordering::Relaxed,
        );
        assert!(l.stuck().is_empty());
        l.set_consumer_check(Box::new(|| vec!["parquet"]));
        assert_eq!(l.stuck(), ["consumer parquet: its loop is gone"]);
    }

    /// `/readyz` lists every GPU as probing or not, with the bounded reason.
    #[test]
    fn readyz_lines_name_each_gpu_and_why_it_is_not_probing() {
        let st = LiveState::default();
        st.register_gpu("GPU-a", GpuEntry::new(0, None, "cuda"));
        let mut down = GpuEntry::new(1, None, "cuda");
        down.down = Some("a gemm run did not finish within 2s".into());
        down.down_reason = Some(Reason::Hung);
        st.register_gpu("GPU-b", down);
        assert_eq!(
            st.gpu_states(),
            [
                "gpu 0 GPU-a: probing",
                "gpu 1 GPU-b: not probing (hung): a gemm run did not finish within 2s"
            ]
        );
        st.rename_gpu("GPU-b", "GPU-c");
        st.update_gpu("GPU-c", |e| {
            e.down = None;
            e.down_reason = None;
        });
        assert_eq!(st.gpu_states()[1], "gpu 1 GPU-c: probing");
    }
}
