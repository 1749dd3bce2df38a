//! [`KubeCache`]: the API view the watch tasks fill and readers share, and
//! how fresh it is ([`KubeSyncState`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;

use super::{NodeInfo, PodIndex, PodInfo};

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Health {
    pub(super) pod_ok: Option<Instant>,
    pub(super) pod_err: Option<Instant>,
    pub(super) node_ok: Option<Instant>,
    pub(super) node_err: Option<Instant>,
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
    pub(super) node: RwLock<Option<Arc<NodeInfo>>>,
    health: Mutex<Health>,
    stale_after: Duration,
    failing_window: Duration,
}

impl KubeCache {
    pub(super) fn new(stale_after: Duration, failing_window: Duration) -> Self {
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

    pub(super) fn record(&self, f: impl FnOnce(&mut Health)) {
        if let Ok(mut h) = self.health.lock() {
            f(&mut h);
        }
    }

    pub(super) fn publish_pods(&self, store: &Store<Pod>) {
        let idx = PodIndex::new(store.state().iter().filter_map(|p| PodInfo::from_pod(p)));
        if let Ok(mut g) = self.index.write() {
            *g = Arc::new(idx);
        }
        self.synced.store(true, Ordering::Release);
    }
}
