//! The combined occupancy driven by both test servers at once: the kubelet
//! pod-resources gRPC server and the fake Kubernetes API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod occupancy_support;

use std::sync::Arc;

use occupancy_support::*;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::{
    start, start_combined, GpuProcess, KubeApiMode, OccupancyConfig, OccupancySource,
};

fn gpu_procs(pids: &[u32]) -> Vec<GpuProcess> {
    pids.iter()
        .map(|&pid| GpuProcess {
            pid,
            used_mib: None,
            name: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_occupancy_answers_per_gpu_from_both_servers() {
    let Some(py) = python("this test") else {
        return;
    };
    let api = FakeApi::start(&py);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let proc_root = dir.path().join("proc");
    // train-a (containerd v2), notebook-c (CRI-O v1), exclusive-e (containerd v1 cgroupfs).
    proc_entry(
        &proc_root,
        2001,
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_1111_4111_8111_111111111111.slice/cri-containerd-{}.scope\n",
            cid(1)
        ),
        "python3",
    );
    proc_entry(
        &proc_root,
        2003,
        &format!(
            "11:memory:/kubepods/burstable/pod33333333-3333-4333-8333-333333333333/crio-{}\n",
            cid(3)
        ),
        "jupyter",
    );
    proc_entry(
        &proc_root,
        2005,
        &format!(
            "4:cpu,cpuacct:/kubepods/pod55555555-5555-4555-8555-555555555555/{}\n",
            cid(5)
        ),
        "job",
    );

    let cfg = OccupancyConfig {
        pod_resources_socket: socket.clone(),
        pod_resources_interval_ms: 200,
        kube_api: KubeApiMode::Server,
        kube_server_url: Some(api.url()),
        node_labels_interval_ms: 300,
        stale_after_ms: 30_000,
        kube_backoff_max_ms: 1000,
        proc_root: proc_root.clone(),
        ..OccupancyConfig::default()
    };
    let counters = Arc::new(Counters::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let occ = start_combined(&cfg, "n1", Arc::clone(&counters), rx.clone())
        .await
        .expect("start");
    // Start returned before the kubelet is up (it does not wait for its
    // sources), so pod-resources cannot have answered: who holds the GPU
    // is unknown, not zero.
    let early = occ.snapshot(GPU_SHARED, &[]);
    assert_eq!((early.pods, early.pod_count), (None, None));
    let _kubelet = KubeletServer::start(&socket, pod_resources_fixture());

    wait_until("both sources synced", || {
        let s = occ.status();
        s.pod_resources_ok && s.kube_api_ok
    })
    .await;

    let shared = occ.snapshot(GPU_SHARED, &gpu_procs(&[2001, 2003, std::process::id()]));
    assert_eq!(
        shared.pods.as_deref().unwrap(),
        [
            "ml/train-a",
            "ml/train-b",
            "research/infer-d",
            "research/notebook-c"
        ]
    );
    assert_eq!(shared.pod_count, Some(4));
    assert_eq!(
        shared.active_pods.as_deref().unwrap(),
        ["ml/train-a", "research/notebook-c"]
    );
    assert_eq!(shared.replicas, Some(4));
    assert_eq!(shared.sharing_strategy.as_deref(), Some("time-slicing"));
    assert_eq!(shared.stale, Some(false));

    let excl = occ.snapshot(GPU_EXCLUSIVE, &gpu_procs(&[2005]));
    assert_eq!(excl.pods.as_deref().unwrap(), ["batch/exclusive-e"]);
    assert_eq!(excl.pod_count, Some(1));
    assert_eq!(excl.active_pods.as_deref().unwrap(), ["batch/exclusive-e"]);
    assert_eq!(excl.replicas, Some(4), "node labels are per node");

    let idle = occ.snapshot("GPU-00000000-0000-4000-8000-000000000000", &[]);
    assert_eq!(idle.pods, Some(vec![]));
    assert_eq!(idle.pod_count, Some(0));
    assert_eq!(idle.active_pods, Some(vec![]));

    let st = occ.status();
    assert!(st.last_sync_age_ms.unwrap() < 30_000);
    assert_eq!(Counters::get(&counters.occupancy_errors), 0);

    // The agent's entry point works the same way.
    let dynocc: Arc<dyn OccupancySource> = start(&cfg, "n1", Arc::new(Counters::default()), rx)
        .await
        .expect("a valid config starts");
    wait_until("dyn source synced", || {
        dynocc.snapshot(GPU_SHARED, &[]).replicas == Some(4)
    })
    .await;
    wait_until("dyn pods", || {
        dynocc.snapshot(GPU_SHARED, &[]).pod_count == Some(4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_reported_not_panicked() {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let cfg = OccupancyConfig {
        kube_api: KubeApiMode::Server,
        ..OccupancyConfig::default()
    };
    assert!(cfg.validate().is_err());
    assert!(
        start_combined(&cfg, "n1", Arc::new(Counters::default()), rx.clone())
            .await
            .is_err()
    );
    assert!(
        start(&cfg, "n1", Arc::new(Counters::default()), rx)
            .await
            .is_none(),
        "logged, and the agent runs on without occupancy"
    );
    let parsed: OccupancyConfig =
        toml::from_str("kube_api = \"off\"\nstale_after_ms = 5000\n").unwrap();
    assert_eq!(parsed.kube_api, KubeApiMode::Off);
    assert_eq!(parsed.pod_resources_interval_ms, 10_000);
    assert!(
        toml::from_str::<OccupancyConfig>("stale_after = 5\n").is_err(),
        "deny_unknown_fields"
    );
}
