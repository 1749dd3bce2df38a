use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::utils::Backoff;

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
