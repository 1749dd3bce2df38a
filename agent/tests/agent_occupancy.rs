//! Issue #4's "done when": a whole agent (`agent::run`) on the CPU backend
//! with two pseudo-devices, its occupancy started from config and driven by
//! both test servers (the kubelet pod-resources gRPC server on a unix socket
//! and `tests/k8s_api_server.py`), writes Parquet rows that show the right
//! pods for each GPU. Needs python3 (skipped with a note otherwise, unless
//! `SLICETRACE_REQUIRE_TOOLS=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;
use metrics_support::occupancy_support;

use std::collections::BTreeMap;

use metrics_support::{cpu_backends, read_probes, small_config, wait_for, RunningAgent};
use occupancy_support::{
    pod_resources_fixture_renamed, python, FakeApi, KubeletServer, GPU_EXCLUSIVE, GPU_SHARED,
};
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::KubeApiMode;
use slicetrace_schema::ProbeRecord;

const SHARED_PODS: [&str; 4] = [
    "ml/train-a",
    "ml/train-b",
    "research/infer-d",
    "research/notebook-c",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rows_show_the_pods_of_each_gpu_from_both_test_servers() {
    let Some(py) = python("this test") else {
        return;
    };
    let api = FakeApi::start(&py);
    let dir = tempfile::tempdir().unwrap();
    // The fixture's node, with its GPUs renamed to the CPU pseudo-devices:
    // CPU-0 time-sliced (`CPU-0::0` .. `::3`, four pods), CPU-1 whole.
    let reply = pod_resources_fixture_renamed(&[(GPU_SHARED, "CPU-0"), (GPU_EXCLUSIVE, "CPU-1")]);
    let socket = dir.path().join("kubelet.sock");
    let _kubelet = KubeletServer::start(&socket, reply);

    let data = dir.path().join("data");
    let mut cfg = small_config(&data);
    cfg.probe.interval_ms = 200;
    cfg.node_name = "n1".into();
    cfg.occupancy.pod_resources_socket = socket;
    cfg.occupancy.kube_api = KubeApiMode::Server;
    cfg.occupancy.kube_server_url = Some(api.url());
    let backends = cpu_backends(&cfg, &[0, 1]);

    tokio::task::spawn_blocking(move || {
        let agent = RunningAgent::start(cfg, backends, None, None);
        // Warm caches: pod-resources answered for both GPUs (seen through the
        // pod counts the health evaluator publishes) ...
        wait_for("pod counts of both GPUs", || {
            let pc = agent.live.pod_count.read().unwrap();
            (pc.get("CPU-0") == Some(&Some(4)) && pc.get("CPU-1") == Some(&Some(1))).then_some(())
        });
        // ... and the pod watch synced (both sources up on /metrics) ...
        wait_for("both occupancy sources up on /metrics", || {
            let m = agent.get("/metrics");
            (m.body.contains(
                "slicetrace_occupancy_source_up{node=\"n1\",source=\"pod_resources\"} 1\n",
            ) && m
                .body
                .contains("slicetrace_occupancy_source_up{node=\"n1\",source=\"kube_api\"} 1\n"))
            .then_some(())
        });
        // ... then a few more cycles, so the last rows carry the node labels.
        let up_at = Counters::get(&agent.counters.probe_cycles);
        wait_for("five more probe cycles", || {
            (Counters::get(&agent.counters.probe_cycles) >= up_at + 5).then_some(())
        });
        assert!(agent.shutdown().clean_shutdown, "every Parquet file closed");
    })
    .await
    .unwrap();

    let rows = read_probes(&data);
    let mut last: BTreeMap<String, &ProbeRecord> = BTreeMap::new();
    for r in &rows {
        let e = last.entry(r.gpu_uuid.clone()).or_insert(r);
        if r.ts_ns > e.ts_ns {
            *e = r;
        }
    }
    assert_eq!(
        last.keys().map(String::as_str).collect::<Vec<_>>(),
        ["CPU-0", "CPU-1"]
    );
    for (uuid, pods) in [
        ("CPU-0", &SHARED_PODS[..]),
        ("CPU-1", &["batch/exclusive-e"][..]),
    ] {
        let r = last[uuid];
        let want: Vec<String> = pods.iter().map(|s| s.to_string()).collect();
        assert_eq!(r.pods.as_ref(), Some(&want), "{uuid} pods in {r:#?}");
        assert_eq!(r.pod_count, Some(pods.len() as u32), "{uuid}");
        assert_eq!(
            r.replicas,
            Some(4),
            "{uuid} replicas (node label) in {r:#?}"
        );
        assert_eq!(
            r.sharing_strategy.as_deref(),
            Some("time-slicing"),
            "{uuid}"
        );
        assert_eq!(r.occupancy_stale, Some(false), "{uuid}");
        assert_eq!(r.node, "n1");
    }
    // Every row with occupancy has it for its own GPU only: no row of CPU-1
    // ever lists a time-sliced pod, and the counts always match the lists.
    for r in &rows {
        if let Some(p) = &r.pods {
            assert_eq!(r.pod_count, Some(p.len() as u32), "{r:#?}");
            if r.gpu_uuid == "CPU-1" {
                assert_eq!(p, &["batch/exclusive-e"], "{r:#?}");
            }
        }
    }
}
