//! The tasks that fill the [`KubeCache`]: the pod watcher (list+watch with
//! [`WatchBackoff`], relists counted) and the periodic node reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector;
use kube::runtime::utils::{Backoff, StreamBackoff};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::{KubeCache, NodeInfo};
use crate::internal_events::{
    error_chain, Counters, InternalEvent, OccupancyRefreshFailed, OccupancyRelisted,
};

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
