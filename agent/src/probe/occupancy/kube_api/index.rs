//! What the agent keeps of the API's objects: [`PodInfo`] per pod, the
//! [`PodIndex`] readers look pods up in, and this node's [`NodeInfo`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::{LABEL_PRODUCT, LABEL_REPLICAS, LABEL_SHARING_STRATEGY};
use crate::probe::occupancy::proc_cgroup::strip_runtime_prefix;

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
