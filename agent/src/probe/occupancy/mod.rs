//! Pod occupancy: who shares each physical GPU.
//!
//! Step 5 of a tick: after the probe burst, the probe thread asks
//! [`OccupancySource::snapshot`] who is on the GPU. Three sources refresh
//! caches in the background and the snapshot only reads them:
//! - [`pod_resources`]: the kubelet's pod-resources `List` says which pods
//!   hold (a time-slicing replica of) each physical GPU: `pods`, `pod_count`;
//! - [`kube_api`]: a field-selected pod watch gives names, UIDs and container
//!   IDs, and the node's labels give `replicas` and `sharing_strategy`;
//! - [`proc_cgroup`]: NVML's PIDs → `/proc/<pid>/cgroup` → container ID or
//!   pod UID → pod (via the API): `active_pods`.
//!
//! [`CombinedOccupancy`] merges them; [`start`] builds it from an
//! [`OccupancyConfig`]. A source that is not configured, or has never
//! answered, leaves its fields `None` (never empty-as-zero); one that
//! answered once and then failed keeps its last answer, with `stale` set
//! after `stale_after_ms`. Standalone (no cluster), every pod field is `None`
//! and the process list (`GpuProcess::name`, see [`proc_cgroup::read_comm`])
//! is the occupancy. RBAC rules: see `RBAC.md` and [`kube_api`].

/// A compute process NVML reports on a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    /// Host PID (as NVML reports it).
    pub pid: u32,
    /// GPU memory used, MiB, when NVML knows.
    pub used_mib: Option<u64>,
    /// Command name from `/proc/<pid>/comm`, when readable.
    pub name: Option<String>,
}

/// What is known about who occupies one physical GPU. Every field is `None`
/// when no configured source can answer it: absent is never empty-as-zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Occupancy {
    /// `namespace/name` of every pod holding a replica of this GPU.
    pub pods: Option<Vec<String>>,
    /// `pods.len()`.
    pub pod_count: Option<u32>,
    /// Pods with a process actually running on this GPU.
    pub active_pods: Option<Vec<String>>,
    /// Replicas per GPU, from the node label `nvidia.com/gpu.replicas`.
    pub replicas: Option<u32>,
    /// Node label `nvidia.com/gpu.sharing-strategy`.
    pub sharing_strategy: Option<String>,
    /// The answer came from a cache older than the staleness age.
    pub stale: Option<bool>,
}

/// The occupancy seam.
///
/// Contract: `snapshot` is called on a probe thread once per burst; it must
/// return in microseconds, never block on I/O, and never fail (a source that
/// cannot answer leaves its fields `None`). `processes` are the GPU's compute
/// processes from NVML, with the agent's own PID already removed.
pub trait OccupancySource: Send + Sync {
    /// Occupancy of the physical GPU `gpu_uuid` now.
    fn snapshot(&self, gpu_uuid: &str, processes: &[GpuProcess]) -> Occupancy;
    /// The value of one of this node's labels, from the same cache (`None`
    /// without the Kubernetes API, before the node was read, or when the
    /// label is absent). Read on every arrival: a cache read.
    fn node_label(&self, _key: &str) -> Option<String> {
        None
    }
    /// `namespace/name` of the pod that process `pid` belongs to, from the
    /// same caches (`None` when unknown). Read for each busy tenant process
    /// of an arrival: a cache read.
    fn pod_of(&self, _pid: u32) -> Option<String> {
        None
    }
}

/// The label the GPU Operator's upgrade controller sets on a node while it
/// upgrades the driver in place (`upgrade-required`, `cordon-required`, …,
/// `upgrade-done`, `upgrade-failed`).
pub const LABEL_DRIVER_UPGRADE_STATE: &str = "nvidia.com/gpu-driver-upgrade-state";

/// Whether a value of [`LABEL_DRIVER_UPGRADE_STATE`] means an upgrade is
/// under way: any state but `upgrade-done` (or none).
pub fn driver_upgrade_in_progress(state: Option<&str>) -> bool {
    state.is_some_and(|s| !s.is_empty() && s != "upgrade-done")
}

/// No occupancy source configured: every field stays `None`.
#[derive(Debug, Default)]
pub struct NoOccupancy;

impl OccupancySource for NoOccupancy {
    fn snapshot(&self, _gpu_uuid: &str, _processes: &[GpuProcess]) -> Occupancy {
        Occupancy::default()
    }
}

pub mod kube_api;
pub mod pod_resources;
pub mod proc_cgroup;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::internal_events::Counters;
use crate::serve::live::{OccupancyHealth, OccupancyStatus};
pub use kube_api::KubeApiMode;
use kube_api::{KubeCache, KubeSettings};
use pod_resources::{PodResourcesCache, PodResourcesSettings};
use proc_cgroup::ProcResolver;

/// Occupancy configuration (the `[occupancy]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OccupancyConfig {
    /// The kubelet pod-resources socket. A missing socket disables this
    /// source with one warning; it is looked for again every interval.
    pub pod_resources_socket: PathBuf,
    /// Time between pod-resources `List` calls, milliseconds.
    pub pod_resources_interval_ms: u64,
    /// Resource names whose devices are GPUs (time-slicing with
    /// `renameByDefault` allocates under `nvidia.com/gpu.shared`).
    pub resource_names: Vec<String>,
    /// How to reach the Kubernetes API: `auto`, `off` or `server`.
    pub kube_api: KubeApiMode,
    /// A kubeconfig to use instead of the in-cluster config (`auto` mode).
    pub kubeconfig: Option<PathBuf>,
    /// The API server URL for `server` mode, e.g. `http://127.0.0.1:8001`
    /// (no authentication).
    pub kube_server_url: Option<String>,
    /// Time between reads of this node's labels, milliseconds.
    pub node_labels_interval_ms: u64,
    /// Age without a successful sync after which occupancy is marked
    /// stale, milliseconds.
    pub stale_after_ms: u64,
    /// Longest backoff between pod-watch retries after errors, milliseconds.
    pub kube_backoff_max_ms: u64,
    /// The proc filesystem to read `<pid>/cgroup` and `<pid>/comm` from
    /// (the host's `/proc`; a fixture directory in tests).
    pub proc_root: PathBuf,
}

impl Default for OccupancyConfig {
    fn default() -> Self {
        Self {
            pod_resources_socket: PathBuf::from("/var/lib/kubelet/pod-resources/kubelet.sock"),
            pod_resources_interval_ms: 10_000,
            resource_names: vec!["nvidia.com/gpu".into(), "nvidia.com/gpu.shared".into()],
            kube_api: KubeApiMode::Auto,
            kubeconfig: None,
            kube_server_url: None,
            node_labels_interval_ms: 30_000,
            stale_after_ms: 60_000,
            kube_backoff_max_ms: 30_000,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Errors of the occupancy configuration.
#[derive(Debug, thiserror::Error)]
pub enum OccupancyError {
    /// The Kubernetes API source could not be configured.
    #[error("failed to configure the Kubernetes API occupancy source")]
    KubeApi(#[from] kube_api::KubeApiError),
    /// A config value is unusable.
    #[error("invalid occupancy config: {0}")]
    Invalid(#[from] crate::field_error::FieldError),
}

impl OccupancyConfig {
    /// Checks what can be checked without I/O (a usage error: exit code 2).
    pub fn validate(&self) -> Result<(), crate::field_error::FieldError> {
        for (field, v) in [
            ("pod_resources_interval_ms", self.pod_resources_interval_ms),
            ("node_labels_interval_ms", self.node_labels_interval_ms),
            ("stale_after_ms", self.stale_after_ms),
            ("kube_backoff_max_ms", self.kube_backoff_max_ms),
        ] {
            if v == 0 {
                return Err(crate::field_error::FieldError::new(
                    field,
                    "must be greater than zero",
                ));
            }
        }
        if self.kube_api == KubeApiMode::Server && self.kube_server_url.is_none() {
            return Err(crate::field_error::FieldError::new(
                "kube_server_url",
                kube_api::KubeApiError::MissingServerUrl.to_string(),
            ));
        }
        Ok(())
    }
}

/// The occupancy the agent uses: pod-resources for who holds each GPU, the
/// API for pod names, node labels and the /proc join, `/proc` for who is
/// actually running. Each source that is not configured or has never
/// answered leaves its fields `None`.
#[derive(Debug)]
pub struct CombinedOccupancy {
    pod_resources: Option<Arc<PodResourcesCache>>,
    kube: Option<Arc<KubeCache>>,
    proc: ProcResolver,
    stale_after: Duration,
}

impl OccupancyHealth for CombinedOccupancy {
    fn status(&self) -> OccupancyStatus {
        CombinedOccupancy::status(self)
    }
}

impl CombinedOccupancy {
    /// Combines already started sources.
    pub fn new(
        pod_resources: Option<Arc<PodResourcesCache>>,
        kube: Option<Arc<KubeCache>>,
        proc_root: impl Into<PathBuf>,
        stale_after: Duration,
    ) -> Self {
        Self {
            pod_resources,
            kube,
            proc: ProcResolver::new(proc_root),
            stale_after,
        }
    }

    /// The pod-resources cache, when that source is configured.
    pub fn pod_resources(&self) -> Option<&Arc<PodResourcesCache>> {
        self.pod_resources.as_ref()
    }

    /// The Kubernetes API cache, when that source is configured.
    pub fn kube(&self) -> Option<&Arc<KubeCache>> {
        self.kube.as_ref()
    }

    /// Source health, for `/metrics`.
    pub fn status(&self) -> OccupancyStatus {
        let pr_age = self.pod_resources.as_ref().and_then(|c| c.age());
        let kube = self.kube.as_ref().map(|k| k.sync_state());
        let kube_age = kube.and_then(|k| k.last_sync_age);
        OccupancyStatus {
            has_pod_resources: self.pod_resources.is_some(),
            has_kube_api: self.kube.is_some(),
            pod_resources_ok: self.pod_resources.as_ref().is_some_and(|c| c.is_ok()),
            kube_api_ok: kube.is_some_and(|k| k.ok),
            last_sync_age_ms: pr_age
                .max(kube_age)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The pods with a process in `processes`, via /proc and the API.
    fn active_pods(&self, index: &kube_api::PodIndex, processes: &[GpuProcess]) -> Vec<String> {
        let own = std::process::id();
        let mut set = BTreeSet::new();
        for p in processes.iter().filter(|p| p.pid != own) {
            if let Some(pod) = self.pod_in(index, p.pid) {
                set.insert(pod);
            }
        }
        set.into_iter().collect()
    }

    /// The pod of `pid` in `index`, via its cgroup (/proc).
    fn pod_in(&self, index: &kube_api::PodIndex, pid: u32) -> Option<String> {
        let ids = self.proc.resolve(pid)?;
        ids.container_id
            .as_deref()
            .and_then(|c| index.by_container_id(c))
            .or_else(|| ids.pod_uid.as_deref().and_then(|u| index.by_uid(u)))
            .map(|pod| pod.key())
    }
}

impl OccupancySource for CombinedOccupancy {
    fn node_label(&self, key: &str) -> Option<String> {
        self.kube.as_ref()?.node()?.labels.get(key).cloned()
    }
    fn pod_of(&self, pid: u32) -> Option<String> {
        let index = self.kube.as_ref()?.pods()?;
        self.pod_in(&index, pid)
    }
    fn snapshot(&self, gpu_uuid: &str, processes: &[GpuProcess]) -> Occupancy {
        let mut occ = Occupancy::default();
        let mut stale: Option<bool> = None;
        if let Some(pr) = &self.pod_resources {
            if let Some(map) = pr.snapshot() {
                let pods = map.pods(gpu_uuid);
                occ.pod_count = Some(u32::try_from(pods.len()).unwrap_or(u32::MAX));
                occ.pods = Some(pods);
                let old = pr.age().is_none_or(|a| a > self.stale_after);
                stale = Some(stale.unwrap_or(false) || old);
            }
        }
        if let Some(k) = &self.kube {
            let st = k.sync_state();
            if let Some(index) = k.pods() {
                occ.active_pods = Some(self.active_pods(&index, processes));
                stale = Some(stale.unwrap_or(false) || st.stale);
            }
            if let Some(node) = k.node() {
                occ.replicas = node.replicas;
                occ.sharing_strategy = node.sharing_strategy.clone();
                stale = Some(stale.unwrap_or(false) || st.stale);
            }
        }
        occ.stale = stale;
        occ
    }
}

/// Starts every configured source on the current tokio runtime and returns
/// the combined view at once (nothing here waits for a source to answer).
///
/// Fails only on configuration errors: a server URL that does not parse, an
/// unreadable kubeconfig or service-account token, or no node name with the
/// API on.
pub async fn start_combined(
    cfg: &OccupancyConfig,
    node_name: &str,
    counters: Arc<Counters>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Arc<CombinedOccupancy>, OccupancyError> {
    cfg.validate()?;
    let kube_cfg = kube_api::client_config(
        cfg.kube_api,
        cfg.kubeconfig.as_deref(),
        cfg.kube_server_url.as_deref(),
    )
    .await?;
    let kube = match kube_cfg {
        Some(kc) => {
            if node_name.is_empty() {
                return Err(kube_api::KubeApiError::MissingNodeName.into());
            }
            let client = kube_api::make_client(kc)?;
            Some(kube_api::spawn(
                client,
                KubeSettings {
                    node_name: node_name.to_string(),
                    node_labels_interval: Duration::from_millis(cfg.node_labels_interval_ms),
                    stale_after: Duration::from_millis(cfg.stale_after_ms),
                    backoff_max: Duration::from_millis(cfg.kube_backoff_max_ms),
                },
                Arc::clone(&counters),
                shutdown.clone(),
            ))
        }
        None => {
            tracing::info!("no Kubernetes API configured; pod names and node labels stay empty");
            None
        }
    };
    let pod_resources = pod_resources::spawn(
        PodResourcesSettings {
            socket: cfg.pod_resources_socket.clone(),
            interval: Duration::from_millis(cfg.pod_resources_interval_ms),
            resource_names: cfg.resource_names.clone(),
        },
        counters,
        shutdown,
    );
    Ok(Arc::new(CombinedOccupancy::new(
        Some(pod_resources),
        kube,
        cfg.proc_root.clone(),
        Duration::from_millis(cfg.stale_after_ms),
    )))
}

/// [`start_combined`] for the agent: a configuration error is logged and
/// yields `None`, and the agent runs on with [`NoOccupancy`]. Call
/// [`OccupancyConfig::validate`] at startup to turn usage errors into exit
/// code 2 instead.
pub async fn start(
    cfg: &OccupancyConfig,
    node_name: &str,
    counters: Arc<Counters>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<Arc<CombinedOccupancy>> {
    match start_combined(cfg, node_name, counters, shutdown).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(
                error = %crate::internal_events::error_chain(&e),
                "occupancy disabled: its configuration is invalid"
            );
            None
        }
    }
}
