//! Kubernetes API: the pods on this node, and this node's device-plugin labels.
//!
//! A kube-rs `watcher` + reflector follows the pods whose `spec.nodeName` is
//! this node (a field-selected list+watch; the API server does the
//! filtering, so a 5000-node cluster costs each agent only its own pods). Each
//! change rebuilds a small [`PodIndex`] (container ID and pod UID →
//! [`PodInfo`]) which readers get as an `Arc` clone. A second task reads the
//! agent's own Node every `node_labels_interval` for the labels the NVIDIA
//! device plugin / GPU feature discovery set: `nvidia.com/gpu.replicas`,
//! `nvidia.com/gpu.sharing-strategy` and `nvidia.com/gpu.product`.
//!
//! When the API is unreachable, or answers 410 Gone (our resourceVersion was
//! compacted away), the watcher backs off exponentially and relists; relists
//! and errors are counted in [`Counters`]. Meanwhile the index keeps the last
//! known state, so probing never waits; [`KubeCache::sync_state`] says when
//! it has become stale.
//!
//! # RBAC
//!
//! The agent's ServiceAccount needs exactly these rules (a ClusterRole, since
//! pods are listed across namespaces and Nodes are cluster-scoped; see also
//! `RBAC.md` next to this file):
//!
//! ```yaml
//! rules:
//!   - apiGroups: [""]
//!     resources: ["pods"]
//!     verbs: ["get", "list", "watch"]   # list/watch all namespaces, filtered by fieldSelector=spec.nodeName
//!   - apiGroups: [""]
//!     resources: ["nodes"]
//!     verbs: ["get"]                    # its own Node, for the nvidia.com/gpu.* labels
//!   # only when node conditions are enabled (health engine):
//!   - apiGroups: [""]
//!     resources: ["nodes/status"]
//!     verbs: ["patch"]
//! ```
//!
//! RBAC cannot restrict a list to a field selector, so `list`/`watch` on pods
//! is cluster-wide in the Role; the agent itself only ever asks for its node.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::{Backoff, StreamBackoff};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::proc_cgroup::strip_runtime_prefix;
use crate::internal_events::{
    error_chain, Counters, InternalEvent, OccupancyRefreshFailed, OccupancyRelisted,
};

/// Node label: time-slicing replicas per GPU.
pub const LABEL_REPLICAS: &str = "nvidia.com/gpu.replicas";
/// Node label: `time-slicing`, `mps` or `none`.
pub const LABEL_SHARING_STRATEGY: &str = "nvidia.com/gpu.sharing-strategy";
/// Node label: GPU product name (with `-SHARED` under `renameByDefault`).
pub const LABEL_PRODUCT: &str = "nvidia.com/gpu.product";

/// How the agent reaches the Kubernetes API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeApiMode {
    /// A kubeconfig when one is configured; else the in-cluster config when
    /// `KUBERNETES_SERVICE_HOST` is set; else no API (standalone).
    #[default]
    Auto,
    /// No Kubernetes API (standalone, or pod-resources only).
    Off,
    /// An explicit server URL (`kube_server_url`), no authentication. For
    /// tests and `kubectl proxy`.
    Server,
}

/// Errors of the Kubernetes API source.
#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    /// `server` mode without `kube_server_url`.
    #[error("kube_api = \"server\" needs kube_server_url")]
    MissingServerUrl,
    /// The server URL does not parse.
    #[error("invalid kube_server_url {url:?}")]
    BadServerUrl {
        /// The configured URL.
        url: String,
        /// The parse error.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The kubeconfig could not be read or used.
    #[error("failed to load kubeconfig {path}")]
    Kubeconfig {
        /// The configured path.
        path: String,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The in-cluster config (service account token, CA) could not be read.
    #[error("failed to load the in-cluster Kubernetes config")]
    InCluster(#[source] kube::config::InClusterError),
    /// The HTTP client could not be built.
    #[error("failed to build the Kubernetes client")]
    Client(#[source] kube::Error),
    /// No node name: the pod watch could not be limited to this node.
    #[error("the Kubernetes API source needs the node name (NODE_NAME)")]
    MissingNodeName,
}

/// Resolves the client configuration; `Ok(None)` means no API (standalone).
pub async fn client_config(
    mode: KubeApiMode,
    kubeconfig: Option<&Path>,
    server_url: Option<&str>,
) -> Result<Option<kube::Config>, KubeApiError> {
    match mode {
        KubeApiMode::Off => Ok(None),
        KubeApiMode::Server => {
            let url = server_url.ok_or(KubeApiError::MissingServerUrl)?;
            let uri = url
                .parse::<http::Uri>()
                .map_err(|source| KubeApiError::BadServerUrl {
                    url: url.to_string(),
                    source,
                })?;
            Ok(Some(kube::Config::new(uri)))
        }
        KubeApiMode::Auto => {
            if let Some(path) = kubeconfig {
                let err = |source| KubeApiError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                };
                let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(err)?;
                Ok(Some(cfg))
            } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                kube::Config::incluster()
                    .map(Some)
                    .map_err(KubeApiError::InCluster)
            } else {
                Ok(None)
            }
        }
    }
}

/// Builds the client the occupancy tasks use.
///
/// kube-client's built-in retry of 429/503/504 is turned off: by default it
/// retries one call up to 15 times over minutes, which would hide an outage
/// from the error counters and the logs. The watcher's own backoff (and the
/// node reader's interval) do the retrying instead, as client-go's reflector
/// does.
pub fn make_client(mut config: kube::Config) -> Result<Client, KubeApiError> {
    config.default_retry = false;
    Client::try_from(config).map_err(KubeApiError::Client)
}

/// What the agent keeps of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `status.phase` (`Pending`, `Running`, ...).
    pub phase: Option<String>,
    /// Container IDs of its (init, regular and ephemeral) containers, without
    /// the `containerd://`-style prefix.
    pub container_ids: Vec<String>,
    /// `status.qosClass` (`Guaranteed`, `Burstable`, `BestEffort`).
    pub qos_class: Option<String>,
}

impl PodInfo {
    /// Extracts the fields kept from an API pod; `None` without name or UID.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let status = pod.status.as_ref();
        let container_ids = status
            .into_iter()
            .flat_map(|s| {
                [
                    s.container_statuses.as_deref(),
                    s.init_container_statuses.as_deref(),
                    s.ephemeral_container_statuses.as_deref(),
                ]
            })
            .flatten()
            .flatten()
            .filter_map(|cs| cs.container_id.as_deref())
            .map(strip_runtime_prefix)
            .filter(|id| !id.is_empty())
            .collect();
        Some(Self {
            namespace: md.namespace.clone().unwrap_or_default(),
            name: md.name.clone()?,
            uid: md.uid.clone()?,
            labels: md.labels.clone().unwrap_or_default(),
            phase: status.and_then(|s| s.phase.clone()),
            container_ids,
            qos_class: status.and_then(|s| s.qos_class.clone()),
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The pods on this node, indexed for the /proc join.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, Arc<PodInfo>>,
    uid_by_container: HashMap<String, String>,
}

impl PodIndex {
    /// Builds the index from pods.
    pub fn new(pods: impl IntoIterator<Item = PodInfo>) -> Self {
        let mut idx = Self::default();
        for p in pods {
            for c in &p.container_ids {
                idx.uid_by_container.insert(c.clone(), p.uid.clone());
            }
            idx.by_uid.insert(p.uid.clone(), Arc::new(p));
        }
        idx
    }

    /// The pod with this UID.
    pub fn by_uid(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        self.by_uid.get(uid)
    }

    /// The pod running this container (ID with or without runtime prefix).
    pub fn by_container_id(&self, id: &str) -> Option<&Arc<PodInfo>> {
        let id = strip_runtime_prefix(id);
        self.uid_by_container
            .get(&id)
            .and_then(|uid| self.by_uid.get(uid))
    }

    /// Number of pods.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// No pods.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// `namespace/name` of every pod, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_uid.values().map(|p| p.key()).collect();
        v.sort();
        v
    }
}

/// The node's device-plugin labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `nvidia.com/gpu.replicas`, when present and numeric.
    pub replicas: Option<u32>,
    /// `nvidia.com/gpu.sharing-strategy`.
    pub sharing_strategy: Option<String>,
    /// `nvidia.com/gpu.product`.
    pub product: Option<String>,
    /// All labels of the node.
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// Extracts the labels from an API node.
    pub fn from_node(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        Self {
            replicas: labels
                .get(LABEL_REPLICAS)
                .and_then(|v| v.trim().parse().ok()),
            sharing_strategy: labels.get(LABEL_SHARING_STRATEGY).cloned(),
            product: labels.get(LABEL_PRODUCT).cloned(),
            labels,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    pod_ok: Option<Instant>,
    pod_err: Option<Instant>,
    node_ok: Option<Instant>,
    node_err: Option<Instant>,
}

/// Whether the API view is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeSyncState {
    /// The pod list has been synced at least once (the index is usable).
    pub synced: bool,
    /// Synced, not stale, and the last pod-watch and node-read outcomes
    /// were successes.
    pub ok: bool,
    /// Time since the API last answered successfully (watch event or node
    /// read); `None` if it never has.
    pub last_sync_age: Option<Duration>,
    /// The view is older than the staleness age.
    pub stale: bool,
}

/// The cached API view, shared between the watch tasks and readers.
#[derive(Debug)]
pub struct KubeCache {
    index: RwLock<Arc<PodIndex>>,
    synced: AtomicBool,
    node: RwLock<Option<Arc<NodeInfo>>>,
    health: Mutex<Health>,
    stale_after: Duration,
    failing_window: Duration,
}

impl KubeCache {
    fn new(stale_after: Duration, failing_window: Duration) -> Self {
        Self {
            index: RwLock::new(Arc::new(PodIndex::default())),
            synced: AtomicBool::new(false),
            node: RwLock::new(None),
            health: Mutex::new(Health::default()),
            stale_after,
            failing_window,
        }
    }

    /// A cache that is already synced with `pods` and `node` and is never
    /// refreshed: for tests, and for replaying a recorded node.
    pub fn preloaded(pods: Vec<PodInfo>, node: Option<NodeInfo>, stale_after: Duration) -> Self {
        let cache = Self::new(stale_after, Duration::ZERO);
        if let Ok(mut g) = cache.index.write() {
            *g = Arc::new(PodIndex::new(pods));
        }
        if let Ok(mut g) = cache.node.write() {
            *g = node.map(Arc::new);
        }
        cache.synced.store(true, Ordering::Release);
        cache.record(|h| h.pod_ok = Some(Instant::now()));
        cache
    }

    /// The pod index, `None` until the first full list has been received.
    pub fn pods(&self) -> Option<Arc<PodIndex>> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        self.index.read().ok().map(|g| Arc::clone(&g))
    }

    /// The node labels, `None` until the node has been read once.
    pub fn node(&self) -> Option<Arc<NodeInfo>> {
        self.node.read().ok().and_then(|g| g.clone())
    }

    /// Freshness of the view.
    ///
    /// A healthy watch on a quiet node produces no events, so freshness is
    /// "time since the API last answered" (watch events and the periodic node
    /// read both count). A pod watch whose latest outcome is an error counts
    /// as failing for `failing_window` (longer than the longest backoff, so a
    /// watcher that keeps failing keeps reporting errors inside it); while
    /// failing, the pod view is stale once its last good event is older
    /// than the staleness age.
    pub fn sync_state(&self) -> KubeSyncState {
        let h = self.health.lock().map(|g| *g).unwrap_or_default();
        let now = Instant::now();
        let failing = |ok: Option<Instant>, err: Option<Instant>| {
            err.is_some_and(|e| {
                ok.is_none_or(|o| e > o) && now.duration_since(e) < self.failing_window
            })
        };
        let pods_failing = failing(h.pod_ok, h.pod_err);
        let node_failing = failing(h.node_ok, h.node_err);
        let last = h.pod_ok.max(h.node_ok);
        let last_sync_age = last.map(|t| now.duration_since(t));
        let synced = self.synced.load(Ordering::Acquire);
        let pod_age = h.pod_ok.map(|t| now.duration_since(t));
        let stale = last_sync_age.is_none_or(|a| a > self.stale_after)
            || (pods_failing && pod_age.is_none_or(|a| a > self.stale_after));
        KubeSyncState {
            synced,
            // kube-client retries 429/503/504 inside one call, so an outage
            // can show as silence before it shows as errors: stale is not ok.
            ok: synced && !pods_failing && !node_failing && !stale,
            last_sync_age,
            stale,
        }
    }

    fn record(&self, f: impl FnOnce(&mut Health)) {
        if let Ok(mut h) = self.health.lock() {
            f(&mut h);
        }
    }

    fn publish_pods(&self, store: &Store<Pod>) {
        let idx = PodIndex::new(store.state().iter().filter_map(|p| PodInfo::from_pod(p)));
        if let Ok(mut g) = self.index.write() {
            *g = Arc::new(idx);
        }
        self.synced.store(true, Ordering::Release);
    }
}

/// Settings of the API tasks.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// Time between reads of the Node.
    pub node_labels_interval: Duration,
    /// Age after which the view counts as stale.
    pub stale_after: Duration,
    /// Longest watcher backoff after errors.
    pub backoff_max: Duration,
}

/// Exponential backoff (×2 from 500 ms, capped), reset on success; the
/// kube-rs default caps at 30 s, which is also our default cap.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    max: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(500);

    /// A backoff capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::MIN.min(max),
            max,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        // ±10 % jitter keeps a fleet of agents from relisting in lockstep.
        let jitter = rand::random_range(0.9..1.1);
        Some(d.mul_f64(jitter))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN.min(self.max);
    }
}

/// Starts the pod watcher and the node reader on the current tokio runtime
/// and returns their cache at once. Both stop when `shutdown` turns true.
pub fn spawn(
    client: Client,
    settings: KubeSettings,
    counters: Arc<Counters>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Arc<KubeCache> {
    // Longer than the longest backoff: a failing watcher reports at least
    // once per backoff period.
    let failing_window = settings.backoff_max * 2 + Duration::from_secs(1);
    let cache = Arc::new(KubeCache::new(settings.stale_after, failing_window));
    tokio::spawn(watch_pods(
        client.clone(),
        settings.clone(),
        Arc::clone(&cache),
        Arc::clone(&counters),
        shutdown.clone(),
    ));
    tokio::spawn(read_node(
        client,
        settings,
        Arc::clone(&cache),
        counters,
        shutdown,
    ));
    cache
}

async fn watch_pods(
    client: Client,
    settings: KubeSettings,
    cache: Arc<KubeCache>,
    counters: Arc<Counters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(client);
    let field = format!("spec.nodeName={}", settings.node_name);
    let wc = watcher::Config::default().fields(&field);
    let (reader, writer) = reflector::store::<Pod>();
    let stream = StreamBackoff::new(
        reflector::reflector(writer, watcher::watcher(api, wc)),
        WatchBackoff::new(settings.backoff_max),
    );
    let mut stream = std::pin::pin!(stream);
    let mut lists = 0u64;
    let mut failing = false;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break }
                continue;
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            Ok(ev) => {
                // `Init` is emitted before the list request is sent: it is
                // no evidence that the API answered.
                if !matches!(ev, Event::Init) {
                    cache.record(|h| h.pod_ok = Some(Instant::now()));
                    if failing {
                        failing = false;
                        tracing::info!(node = %settings.node_name, "pod watch recovered");
                    }
                }
                match ev {
                    Event::Init => {
                        lists += 1;
                        if lists > 1 {
                            OccupancyRelisted {
                                node: &settings.node_name,
                            }
                            .emit(&counters);
                        }
                    }
                    Event::InitApply(_) => {}
                    Event::InitDone | Event::Apply(_) | Event::Delete(_) => {
                        cache.publish_pods(&reader);
                    }
                }
            }
            Err(e) => {
                OccupancyRefreshFailed.emit(&counters);
                cache.record(|h| h.pod_err = Some(Instant::now()));
                if !failing {
                    failing = true;
                    tracing::warn!(
                        node = %settings.node_name,
                        error = %error_chain(&e),
                        "failed to watch pods on node; backing off, keeping the last known pods"
                    );
                } else {
                    tracing::debug!(error = %error_chain(&e), "pod watch still failing");
                }
            }
        }
    }
    tracing::debug!("pod watcher stopped");
}

async fn read_node(
    client: Client,
    settings: KubeSettings,
    cache: Arc<KubeCache>,
    counters: Arc<Counters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<Node> = Api::all(client);
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match api.get(&settings.node_name).await {
            Ok(node) => {
                let info = NodeInfo::from_node(&node);
                if let Ok(mut g) = cache.node.write() {
                    *g = Some(Arc::new(info));
                }
                cache.record(|h| h.node_ok = Some(Instant::now()));
                if failing {
                    tracing::info!(node = %settings.node_name, "node read recovered");
                }
                failing = false;
            }
            Err(e) => {
                OccupancyRefreshFailed.emit(&counters);
                cache.record(|h| h.node_err = Some(Instant::now()));
                if !failing {
                    tracing::warn!(
                        node = %settings.node_name,
                        error = %error_chain(&e),
                        "failed to get node; keeping the last known labels"
                    );
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.node_labels_interval) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
    }
    tracing::debug!("node reader stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_info_strips_runtime_prefixes_and_keeps_qos() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "containerStatuses": [
                    {"name": "c", "containerID": "containerd://ABC", "image": "i", "imageID": "", "ready": true, "restartCount": 0},
                ],
                "initContainerStatuses": [
                    {"name": "i", "containerID": "cri-o://def", "image": "i", "imageID": "", "ready": false, "restartCount": 0},
                ]
            }
        }))
        .expect("pod json");
        let info = PodInfo::from_pod(&pod).expect("info");
        assert_eq!(info.key(), "ns/a");
        assert_eq!(
            info.container_ids,
            vec!["abc".to_string(), "def".to_string()]
        );
        assert_eq!(info.qos_class.as_deref(), Some("Burstable"));
        assert_eq!(info.phase.as_deref(), Some("Running"));
        let idx = PodIndex::new([info]);
        assert_eq!(
            idx.by_container_id("docker://abc").map(|p| p.key()),
            Some("ns/a".into())
        );
        assert_eq!(idx.by_uid("u1").map(|p| p.name.clone()), Some("a".into()));
    }

    #[test]
    fn node_labels() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {
                "nvidia.com/gpu.replicas": "4",
                "nvidia.com/gpu.sharing-strategy": "time-slicing",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED"
            }}
        }))
        .expect("node json");
        let info = NodeInfo::from_node(&node);
        assert_eq!(info.replicas, Some(4));
        assert_eq!(info.sharing_strategy.as_deref(), Some("time-slicing"));
        assert_eq!(
            info.product.as_deref(),
            Some("NVIDIA-H100-80GB-HBM3-SHARED")
        );
    }

    /// Within the ±10 % jitter of `ms`.
    fn near(d: Duration, ms: u64) -> bool {
        let ms = ms as f64;
        (ms * 0.9..=ms * 1.1).contains(&(d.as_secs_f64() * 1000.0))
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = WatchBackoff::new(Duration::from_secs(2));
        let v: Vec<Duration> = (&mut b).take(5).collect();
        // Every step is checked from below too: a backoff stuck at zero (a
        // watcher hammering a down API) or one that never grows fails here.
        for (d, ms) in v.iter().zip([500, 1000, 2000, 2000, 2000]) {
            assert!(near(*d, ms), "{v:?}: expected about {ms} ms");
        }
        assert!(v[0] < v[1] && v[1] < v[2], "grows: {v:?}");
        b.reset();
        let after = b.next().expect("never ends");
        assert!(near(after, 500), "starts again at 500 ms: {after:?}");
    }

    #[test]
    fn backoff_cap_below_its_start_is_the_cap() {
        let v: Vec<Duration> = WatchBackoff::new(Duration::from_millis(100))
            .take(3)
            .collect();
        assert!(v.iter().all(|d| near(*d, 100)), "{v:?}");
    }
}
