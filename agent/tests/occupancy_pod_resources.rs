//! kubelet pod-resources v1 against a real gRPC server on a unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod occupancy_support;

use std::sync::Arc;
use std::time::Duration;

use occupancy_support::*;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::pod_resources::{
    self, PodResourcesCache, PodResourcesSettings,
};
use slicetrace_agent::probe::occupancy::{CombinedOccupancy, OccupancySource};

fn settings(socket: &std::path::Path, names: &[&str]) -> PodResourcesSettings {
    PodResourcesSettings {
        socket: socket.to_path_buf(),
        interval: Duration::from_millis(100),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
    }
}

const BOTH: [&str; 2] = ["nvidia.com/gpu", "nvidia.com/gpu.shared"];

/// A pod-resources source polling `socket` for both GPU resource names.
struct Source {
    counters: Arc<Counters>,
    cache: Arc<PodResourcesCache>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Source {
    fn spawn(socket: &std::path::Path) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let counters = Arc::new(Counters::default());
        let cache = pod_resources::spawn(settings(socket, &BOTH), Arc::clone(&counters), rx);
        Self {
            counters,
            cache,
            _shutdown: tx,
        }
    }
}

/// The combined occupancy over `cache` alone (no API): `/proc` under `root`.
fn pod_resources_only(
    cache: &Arc<PodResourcesCache>,
    root: &std::path::Path,
    stale_after: Duration,
) -> CombinedOccupancy {
    CombinedOccupancy::new(Some(Arc::clone(cache)), None, root, stale_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_sliced_replicas_map_to_their_physical_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let server = KubeletServer::start(&socket, pod_resources_fixture());

    // The raw client speaks the protocol: every pod is listed, GPU or not.
    let mut client = pod_resources::connect(&socket).await.expect("connect");
    let reply = pod_resources::list(&mut client, &socket)
        .await
        .expect("List");
    assert_eq!(reply.pod_resources.len(), 7);

    let Source {
        counters,
        cache,
        _shutdown,
    } = Source::spawn(&socket);
    wait_until("first List", || cache.snapshot().is_some()).await;
    let map = cache.snapshot().unwrap();

    assert_eq!(
        map.pods(GPU_SHARED),
        vec![
            "ml/train-a",
            "ml/train-b",
            "research/infer-d",
            "research/notebook-c"
        ]
    );
    let replicas: Vec<Option<u32>> = map.holders(GPU_SHARED).iter().map(|h| h.replica).collect();
    let mut sorted = replicas.clone();
    sorted.sort();
    assert_eq!(sorted, vec![Some(0), Some(1), Some(2), Some(3)]);
    let infer = map
        .holders(GPU_SHARED)
        .iter()
        .find(|h| h.pod == "infer-d")
        .unwrap();
    assert_eq!(infer.resource_name, "nvidia.com/gpu.shared");
    assert_eq!(infer.replica, Some(3));

    assert_eq!(map.pods(GPU_EXCLUSIVE), vec!["batch/exclusive-e"]);
    assert_eq!(map.holders(GPU_EXCLUSIVE)[0].replica, None);
    // NVML may spell the UUID in upper case.
    assert_eq!(
        map.pods(&GPU_EXCLUSIVE.to_uppercase()),
        vec!["batch/exclusive-e"]
    );
    // The non-GPU device never shows up as a GPU.
    assert_eq!(map.devices().count(), 2);
    assert!(map.pods("0000:3b:00.2").is_empty());
    assert!(cache.is_ok());
    assert_eq!(Counters::get(&counters.occupancy_errors), 0);
    assert!(*server.kubelet.calls.lock().unwrap() >= 2);

    // Through the combined source: pods, pod_count; no API, so the rest is None.
    let occ = pod_resources_only(&cache, dir.path(), Duration::from_secs(60));
    let o = occ.snapshot(GPU_SHARED, &[]);
    assert_eq!(o.pod_count, Some(4));
    assert_eq!(o.pods.as_ref().map(Vec::len), Some(4));
    assert_eq!(o.replicas, None);
    assert_eq!(o.sharing_strategy, None);
    assert_eq!(o.active_pods, None);
    assert_eq!(o.stale, Some(false));
    // A GPU nobody holds is a known zero, not an unknown.
    let idle = occ.snapshot("GPU-00000000-0000-0000-0000-000000000000", &[]);
    assert_eq!(idle.pods, Some(vec![]));
    assert_eq!(idle.pod_count, Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_resource_names_count() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let _server = KubeletServer::start(&socket, pod_resources_fixture());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let cache = pod_resources::spawn(
        settings(&socket, &["nvidia.com/gpu"]),
        Arc::new(Counters::default()),
        rx,
    );
    wait_until("first List", || cache.snapshot().is_some()).await;
    assert_eq!(
        cache.snapshot().unwrap().pods(GPU_SHARED),
        vec!["ml/train-a", "ml/train-b", "research/notebook-c"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_socket_warns_once_leaves_fields_none_and_recovers_quietly() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("not-yet-kubelet.sock");
    let Source {
        counters,
        cache,
        _shutdown,
    } = Source::spawn(&socket);
    let occ = pod_resources_only(&cache, dir.path(), Duration::from_secs(60));

    // Ten polls with no socket: each logs a line naming it (the first a
    // WARN, the others at debug, which the capture keeps). Waiting for the
    // polls themselves, not for ten poll intervals of wall time.
    let path = socket.display().to_string();
    wait_until("ten polls without the socket", || {
        logs.text().lines().filter(|l| l.contains(&path)).count() >= 10
    })
    .await;
    let warnings = logs
        .text()
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains("pod-resources socket missing")
                && l.contains("not-yet-kubelet.sock")
        })
        .count();
    assert_eq!(
        warnings,
        1,
        "exactly one warning for a missing socket:\n{}",
        logs.text()
    );
    assert!(cache.snapshot().is_none());
    assert_eq!(
        occ.snapshot(GPU_SHARED, &[]),
        Default::default(),
        "every field None"
    );
    assert!(!occ.status().pod_resources_ok);
    assert_eq!(occ.status().last_sync_age_ms, None);
    // A missing socket is a configuration state, not a refresh error.
    assert_eq!(Counters::get(&counters.occupancy_errors), 0);

    // The kubelet starts later: the source comes up by itself.
    let _server = KubeletServer::start(&socket, pod_resources_fixture());
    wait_until("source to appear", || cache.snapshot().is_some()).await;
    assert_eq!(occ.snapshot(GPU_EXCLUSIVE, &[]).pod_count, Some(1));
    assert!(occ.status().pod_resources_ok);
    let warnings_after = logs
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("not-yet-kubelet.sock"))
        .count();
    assert_eq!(warnings_after, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_going_away_keeps_last_state_counts_errors_and_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let server = KubeletServer::start(&socket, pod_resources_fixture());
    let Source {
        counters,
        cache,
        _shutdown,
    } = Source::spawn(&socket);
    let occ = pod_resources_only(&cache, dir.path(), Duration::from_millis(600));
    wait_until("first List", || cache.snapshot().is_some()).await;
    assert_eq!(occ.snapshot(GPU_SHARED, &[]).stale, Some(false));

    // The kubelet answers with a new allocation: the cache follows.
    server
        .kubelet
        .reply
        .lock()
        .unwrap()
        .pod_resources
        .retain(|p| p.name != "train-b");
    wait_until("train-b gone", || {
        cache.snapshot().unwrap().pods(GPU_SHARED).len() == 3
    })
    .await;

    server.stop().await;
    wait_until("stale after the kubelet left", || {
        occ.snapshot(GPU_SHARED, &[]).stale == Some(true)
    })
    .await;
    let o = occ.snapshot(GPU_SHARED, &[]);
    assert_eq!(o.pod_count, Some(3), "last known state is kept");
    assert!(!occ.status().pod_resources_ok);
    assert!(occ.status().last_sync_age_ms.unwrap() >= 600);
    // The in-flight channel broke: at least that List failed and counted.
    assert!(Counters::get(&counters.occupancy_errors) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_errors_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    // A socket file that nobody serves: connect is refused.
    let std_listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(std_listener);
    let Source {
        counters,
        cache,
        _shutdown,
    } = Source::spawn(&socket);
    wait_until("errors counted", || {
        Counters::get(&counters.occupancy_errors) >= 2
    })
    .await;
    assert!(cache.snapshot().is_none());
    assert!(!cache.is_ok());
}
