//! kubelet pod-resources: which pod holds which GPU (or time-slicing replica).
//!
//! The kubelet serves `PodResourcesLister` (v1) on a unix socket, by default
//! `/var/lib/kubelet/pod-resources/kubelet.sock`. A background task calls
//! `List` every `interval` and reduces the answer to a [`DeviceMap`]: physical
//! GPU → the pods holding it (or one of its replicas). The probe path only
//! reads the latest map through [`PodResourcesCache::snapshot`], which clones
//! an `Arc` under a lock held for nanoseconds.
//!
//! A socket that does not exist (no kubelet: standalone hosts, or a DaemonSet
//! without the hostPath mount) disables the source with exactly one warning;
//! the task keeps looking for the socket quietly, in case the kubelet starts
//! later. Once a `List` has succeeded, later failures keep the last known map
//! (marked stale by the caller after an age) and are counted in
//! [`Counters::occupancy_errors`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::internal_events::{error_chain, Counters, InternalEvent, OccupancyRefreshFailed};

/// Generated kubelet pod-resources v1 messages, client and server
/// (from the vendored `agent/proto/podresources/v1/api.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod proto {
    tonic::include_proto!("v1");
}

use proto::pod_resources_lister_client::PodResourcesListerClient;
use proto::{ListPodResourcesRequest, ListPodResourcesResponse};

/// How long one `List` call (connect included) may take before it counts
/// as failed. The kubelet answers from memory, so this is generous.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the pod-resources client.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// The socket file does not exist.
    #[error("pod-resources socket {path} does not exist")]
    SocketMissing {
        /// The configured socket path.
        path: PathBuf,
    },
    /// Connecting to the socket failed.
    #[error("failed to connect to pod-resources socket {path}")]
    Connect {
        /// The configured socket path.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The `List` call failed.
    #[error("pod-resources List call on {path} failed")]
    List {
        /// The configured socket path.
        path: PathBuf,
        /// The gRPC status.
        #[source]
        source: Box<tonic::Status>,
    },
}

/// A device ID from pod-resources reduced to the physical device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    /// Physical device ID: `GPU-<uuid>` for a GPU (the NVML UUID form),
    /// or the `MIG-<uuid>` ID of a MIG instance, whose parent GPU cannot be
    /// known without NVML.
    pub physical_id: String,
    /// Time-slicing replica index (`::<n>` suffix), when the ID had one.
    pub replica: Option<u32>,
}

/// Reduces a device-plugin device ID to its physical device.
///
/// Accepted forms:
/// - `GPU-<uuid>::<n>`: a time-sliced (or MPS) replica `n` of `GPU-<uuid>`;
/// - `GPU-<uuid>`: an exclusive GPU;
/// - `MIG-<uuid>` and `MIG-<uuid>::<n>`: a MIG instance (kept as is);
/// - `MIG-GPU-<uuid>/<gi>/<ci>` (the pre-R470 MIG form): the parent
///   `GPU-<uuid>` is embedded, so that is the physical device.
///
/// Anything else is kept verbatim with no replica, so an unknown plugin's
/// IDs still show up under their own name instead of being dropped.
pub fn parse_device_id(id: &str) -> DeviceRef {
    let id = id.trim();
    let (base, replica) = match id.rsplit_once("::") {
        Some((base, n)) if !base.is_empty() => match n.parse::<u32>() {
            Ok(n) => (base, Some(n)),
            Err(_) => (id, None),
        },
        _ => (id, None),
    };
    let physical_id = match base.strip_prefix("MIG-") {
        Some(rest) if rest.starts_with("GPU-") && rest.contains('/') => {
            rest.split('/').next().unwrap_or(rest).to_string()
        }
        _ => base.to_string(),
    };
    DeviceRef {
        physical_id,
        replica,
    }
}

/// The key under which a physical device is looked up: NVML and device
/// plugins agree on `GPU-<uuid>` but not always on the case of the hex.
pub fn device_key(physical_id: &str) -> String {
    physical_id.to_ascii_lowercase()
}

/// One container holding (a replica of) a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceHolder {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// The resource name it was allocated under (e.g. `nvidia.com/gpu`).
    pub resource_name: String,
    /// Replica index, when the device ID named one.
    pub replica: Option<u32>,
}

impl DeviceHolder {
    /// `namespace/name` of the pod.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// Physical device → holders, built from one `List` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMap {
    by_device: HashMap<String, Vec<DeviceHolder>>,
}

impl DeviceMap {
    /// Builds the map from a `List` answer, keeping only devices allocated
    /// under one of `resource_names`.
    pub fn from_list(resp: &ListPodResourcesResponse, resource_names: &[String]) -> Self {
        let mut by_device: HashMap<String, Vec<DeviceHolder>> = HashMap::new();
        for pod in &resp.pod_resources {
            for container in &pod.containers {
                for devices in &container.devices {
                    if !resource_names.iter().any(|r| r == &devices.resource_name) {
                        continue;
                    }
                    for id in &devices.device_ids {
                        let dev = parse_device_id(id);
                        if dev.physical_id.is_empty() {
                            continue;
                        }
                        by_device
                            .entry(device_key(&dev.physical_id))
                            .or_default()
                            .push(DeviceHolder {
                                namespace: pod.namespace.clone(),
                                pod: pod.name.clone(),
                                container: container.name.clone(),
                                resource_name: devices.resource_name.clone(),
                                replica: dev.replica,
                            });
                    }
                }
            }
        }
        for holders in by_device.values_mut() {
            holders.sort();
            holders.dedup();
        }
        Self { by_device }
    }

    /// Every container holding (a replica of) `physical_id`, sorted.
    pub fn holders(&self, physical_id: &str) -> &[DeviceHolder] {
        self.by_device
            .get(&device_key(physical_id))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// `namespace/name` of every pod holding (a replica of) `physical_id`,
    /// sorted and without duplicates (a pod with two containers, or two
    /// replicas of one GPU, counts once).
    pub fn pods(&self, physical_id: &str) -> Vec<String> {
        let set: BTreeSet<String> = self
            .holders(physical_id)
            .iter()
            .map(DeviceHolder::pod_key)
            .collect();
        set.into_iter().collect()
    }

    /// The physical device keys known (lowercase), unordered.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.by_device.keys().map(String::as_str)
    }
}

/// Connects to the pod-resources socket. Fails fast with
/// [`PodResourcesError::SocketMissing`] when the file does not exist.
pub async fn connect(
    socket: &Path,
) -> Result<PodResourcesListerClient<Channel>, PodResourcesError> {
    if !socket.exists() {
        return Err(PodResourcesError::SocketMissing {
            path: socket.to_path_buf(),
        });
    }
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: the connector ignores it.
    let endpoint = Endpoint::from_static("http://kubelet.invalid")
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let connector_path = path.clone();
    let channel = endpoint
        .connect_with_connector(service_fn(move |_: Uri| {
            let p = connector_path.clone();
            async move { UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| PodResourcesError::Connect { path, source })?;
    Ok(PodResourcesListerClient::new(channel))
}

/// One `List` call on an open client.
pub async fn list(
    client: &mut PodResourcesListerClient<Channel>,
    socket: &Path,
) -> Result<ListPodResourcesResponse, PodResourcesError> {
    client
        .list(ListPodResourcesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| PodResourcesError::List {
            path: socket.to_path_buf(),
            source: Box::new(s),
        })
}

/// The cached pod-resources view, shared between the poller and readers.
#[derive(Debug, Default)]
pub struct PodResourcesCache {
    map: RwLock<Option<Arc<DeviceMap>>>,
    last_ok: Mutex<Option<Instant>>,
    ok: AtomicBool,
}

impl PodResourcesCache {
    /// The latest map, or `None` while no `List` has ever succeeded (the
    /// source is unavailable, not empty).
    pub fn snapshot(&self) -> Option<Arc<DeviceMap>> {
        self.map.read().ok().and_then(|g| g.clone())
    }

    /// Whether the last `List` call succeeded.
    pub fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// Time since the last successful `List`, `None` if never.
    pub fn age(&self) -> Option<Duration> {
        self.last_ok
            .lock()
            .ok()
            .and_then(|g| g.map(|t| t.elapsed()))
    }

    /// Stores a fresh map (used by the poller, and by tests).
    pub fn store(&self, map: DeviceMap) {
        if let Ok(mut g) = self.map.write() {
            *g = Some(Arc::new(map));
        }
        if let Ok(mut g) = self.last_ok.lock() {
            *g = Some(Instant::now());
        }
        self.ok.store(true, Ordering::Relaxed);
    }

    fn mark_failed(&self) {
        self.ok.store(false, Ordering::Relaxed);
    }
}

/// Settings of the pod-resources poller.
#[derive(Debug, Clone)]
pub struct PodResourcesSettings {
    /// The kubelet socket.
    pub socket: PathBuf,
    /// Time between `List` calls.
    pub interval: Duration,
    /// Resource names whose devices are GPUs.
    pub resource_names: Vec<String>,
}

/// Starts the poller on the current tokio runtime and returns its cache at
/// once. The task ends when `shutdown` turns true (or its sender is dropped).
pub fn spawn(
    settings: PodResourcesSettings,
    counters: Arc<Counters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Arc<PodResourcesCache> {
    let cache = Arc::new(PodResourcesCache::default());
    let c = Arc::clone(&cache);
    tokio::spawn(async move {
        let mut poller = Poller {
            settings,
            counters,
            cache: c,
            client: None,
            warned_missing: false,
            failing: false,
        };
        loop {
            if *shutdown.borrow() {
                break;
            }
            poller.poll_once().await;
            tokio::select! {
                _ = tokio::time::sleep(poller.settings.interval) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        tracing::debug!("pod-resources poller stopped");
    });
    cache
}

struct Poller {
    settings: PodResourcesSettings,
    counters: Arc<Counters>,
    cache: Arc<PodResourcesCache>,
    client: Option<PodResourcesListerClient<Channel>>,
    warned_missing: bool,
    failing: bool,
}

impl Poller {
    async fn poll_once(&mut self) {
        let socket = self.settings.socket.clone();
        if self.client.is_none() {
            match connect(&socket).await {
                Ok(c) => self.client = Some(c),
                Err(e @ PodResourcesError::SocketMissing { .. }) => {
                    self.cache.mark_failed();
                    if !self.warned_missing {
                        self.warned_missing = true;
                        tracing::warn!(
                            socket = %socket.display(),
                            "pod-resources socket missing; pod-resources occupancy disabled until it appears"
                        );
                    } else {
                        tracing::debug!(error = %e, "pod-resources socket still missing");
                    }
                    return;
                }
                Err(e) => {
                    self.failed(&e);
                    return;
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return;
        };
        match list(client, &socket).await {
            Ok(resp) => {
                let map = DeviceMap::from_list(&resp, &self.settings.resource_names);
                if self.failing || !self.cache.is_ok() {
                    tracing::info!(
                        socket = %socket.display(),
                        pods = resp.pod_resources.len(),
                        "pod-resources List succeeded"
                    );
                }
                self.failing = false;
                self.cache.store(map);
            }
            Err(e) => {
                // Reconnect next time: the kubelet may have restarted and
                // recreated its socket.
                self.client = None;
                self.failed(&e);
            }
        }
    }

    fn failed(&mut self, e: &PodResourcesError) {
        OccupancyRefreshFailed.emit(&self.counters);
        self.cache.mark_failed();
        if !self.failing {
            tracing::warn!(error = %error_chain(e), "pod-resources refresh failed; keeping the last known state");
        } else {
            tracing::debug!(error = %error_chain(e), "pod-resources refresh still failing");
        }
        self.failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ContainerDevices, ContainerResources, PodResources};

    #[test]
    fn replica_id_reduces_to_physical_uuid_and_index() {
        let d = parse_device_id("GPU-8f2c1a4e-0000-1111-2222-333344445555::3");
        assert_eq!(d.physical_id, "GPU-8f2c1a4e-0000-1111-2222-333344445555");
        assert_eq!(d.replica, Some(3));
    }

    #[test]
    fn plain_gpu_id_has_no_replica() {
        let d = parse_device_id("GPU-8f2c1a4e-0000-1111-2222-333344445555");
        assert_eq!(d.physical_id, "GPU-8f2c1a4e-0000-1111-2222-333344445555");
        assert_eq!(d.replica, None);
    }

    #[test]
    fn mig_ids_are_handled_gracefully() {
        let d = parse_device_id("MIG-4d6a2b1c-aaaa-bbbb-cccc-ddddeeeeffff::1");
        assert_eq!(d.physical_id, "MIG-4d6a2b1c-aaaa-bbbb-cccc-ddddeeeeffff");
        assert_eq!(d.replica, Some(1));
        let legacy = parse_device_id("MIG-GPU-8f2c1a4e-0000-1111-2222-333344445555/1/0");
        assert_eq!(
            legacy.physical_id,
            "GPU-8f2c1a4e-0000-1111-2222-333344445555"
        );
        assert_eq!(legacy.replica, None);
    }

    #[test]
    fn odd_ids_are_kept_verbatim() {
        assert_eq!(parse_device_id("::2").physical_id, "::2");
        assert_eq!(parse_device_id("GPU-x::y").physical_id, "GPU-x::y");
        assert_eq!(parse_device_id("0").physical_id, "0");
    }

    #[test]
    fn map_filters_resource_names_and_dedups_pods() {
        let resp = ListPodResourcesResponse {
            pod_resources: vec![PodResources {
                name: "p".into(),
                namespace: "ns".into(),
                containers: vec![
                    ContainerResources {
                        name: "a".into(),
                        devices: vec![
                            ContainerDevices {
                                resource_name: "nvidia.com/gpu".into(),
                                device_ids: vec!["GPU-AB::0".into(), "GPU-AB::1".into()],
                                topology: None,
                            },
                            ContainerDevices {
                                resource_name: "example.com/nic".into(),
                                device_ids: vec!["nic0".into()],
                                topology: None,
                            },
                        ],
                        ..Default::default()
                    },
                    ContainerResources {
                        name: "b".into(),
                        devices: vec![ContainerDevices {
                            resource_name: "nvidia.com/gpu".into(),
                            device_ids: vec!["GPU-AB::2".into()],
                            topology: None,
                        }],
                        ..Default::default()
                    },
                ],
            }],
        };
        let m = DeviceMap::from_list(&resp, &["nvidia.com/gpu".to_string()]);
        assert_eq!(m.pods("GPU-ab"), vec!["ns/p".to_string()]);
        assert_eq!(m.holders("GPU-AB").len(), 3);
        assert!(m.pods("nic0").is_empty());
    }
}
