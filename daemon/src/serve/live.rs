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
    /// `(gpu_uuid, kernel)` → health ([`LiveState::publish`] writes it).
    pub kernels: RwLock<BTreeMap<(String, Kernel), KernelHealth>>,
    /// gpu_uuid → latest pod count (None = unknown).
    pub pod_count: RwLock<BTreeMap<String, Option<u32>>>,
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
}
