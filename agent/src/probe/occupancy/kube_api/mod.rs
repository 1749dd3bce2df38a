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
//! `occupancy/RBAC.md`):
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
//!
//! One job per file: this one resolves the client; `index.rs` is what the
//! agent keeps of pods and the node, `cache.rs` the view readers share and
//! its freshness, `watch.rs` the tasks that fill it.

use std::path::Path;

use kube::Client;
use serde::{Deserialize, Serialize};

mod cache;
mod index;
mod watch;

pub use cache::{KubeCache, KubeSyncState};
pub use index::{NodeInfo, PodIndex, PodInfo};
pub use watch::{spawn, KubeSettings, WatchBackoff};

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

#[cfg(test)]
mod tests;
