//! The Kubernetes API source against `tests/k8s_api_server.py`, which is
//! first checked with the real kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod occupancy_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use occupancy_support::*;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::kube_api::{self, KubeCache, KubeSettings};

const ON_N1: [&str; 7] = [
    "batch/exclusive-e",
    "default/nic-f",
    "kube-system/kube-proxy-x7k2p",
    "ml/train-a",
    "ml/train-b",
    "research/infer-d",
    "research/notebook-c",
];

/// The pod `ml/late-g` (container `cid(101)`), added after the first list,
/// on `node`.
fn add_late_g(api: &FakeApi, node: &str) {
    api.add_pod(
        "ml",
        "late-g",
        "aaaaaaaa-0000-4000-8000-000000000002",
        node,
        &cid(101),
    );
}

fn kubectl_json(kubectl: &str, api: &FakeApi, args: &[&str]) -> serde_json::Value {
    let out = Command::new(kubectl)
        .env("KUBECONFIG", "/dev/null")
        .arg(format!("--server={}", api.url()))
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kubectl -o json output")
}

#[test]
fn fake_api_server_speaks_the_real_protocol_to_kubectl() {
    let (Some(py), Some(kubectl)) = (python("this test"), kubectl("this test")) else {
        return;
    };
    let api = FakeApi::start(&py);

    // List with a field selector, across namespaces.
    let list = kubectl_json(
        &kubectl,
        &api,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "json",
        ],
    );
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap(),
                p["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, ON_N1);
    // Namespaced list (kubectl's default namespace path).
    let ml = kubectl_json(
        &kubectl,
        &api,
        &[
            "get",
            "pods",
            "-n",
            "ml",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "json",
        ],
    );
    assert_eq!(ml["items"].as_array().unwrap().len(), 2);

    // Node get.
    let node = kubectl_json(&kubectl, &api, &["get", "node", "n1", "-o", "json"]);
    assert_eq!(node["metadata"]["labels"]["nvidia.com/gpu.replicas"], "4");
    // The default (Table) output works too.
    let out = Command::new(&kubectl)
        .env("KUBECONFIG", "/dev/null")
        .args([&format!("--server={}", api.url()), "get", "node", "n1"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("n1") && table.contains("Ready"),
        "{table}"
    );

    // Node status patch (what node conditions use) is recorded.
    let out = Command::new(&kubectl)
        .env("KUBECONFIG", "/dev/null")
        .args([
            &format!("--server={}", api.url()),
            "patch",
            "node",
            "n1",
            "--subresource=status",
            "--type=strategic",
            "-p",
            r#"{"status":{"conditions":[{"type":"GpuSliceLatency","status":"True","reason":"Test"}]}}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let patches = api.control("GET", "/_test/patches", "");
    assert_eq!(
        patches["items"][0]["content_type"],
        "application/strategic-merge-patch+json"
    );
    let node = kubectl_json(&kubectl, &api, &["get", "node", "n1", "-o", "json"]);
    let types: Vec<&str> = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "GpuSliceLatency"]);

    // Watch: a pod added later on n1 shows up; one on n2 does not.
    let mut child = Command::new(&kubectl)
        .env("KUBECONFIG", "/dev/null")
        .args([
            &format!("--server={}", api.url()),
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=n1",
            "-w",
            "-o",
            "name",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kubectl -w");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let recv_until = |want: &str, seen: &mut Vec<String>| {
        let deadline = std::time::Instant::now() + WAIT;
        while !seen.iter().any(|l| l == want) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("kubectl -w never printed {want}; saw {seen:?}"),
            }
        }
    };
    recv_until("pod/train-a", &mut seen);
    api.add_pod(
        "ml",
        "other-node-late",
        "aaaaaaaa-0000-4000-8000-000000000001",
        "n2",
        &cid(100),
    );
    add_late_g(&api, "n1");
    recv_until("pod/late-g", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!seen.iter().any(|l| l.contains("other-node")), "{seen:?}");
    let stats = api.stats();
    assert!(stats["watch"].as_u64().unwrap() >= 1);
}

struct Agent {
    cache: Arc<KubeCache>,
    counters: Arc<Counters>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

fn start_agent(api: &FakeApi, stale_after: Duration) -> Agent {
    let client = kube_api::make_client(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let cache = kube_api::spawn(
        client,
        KubeSettings {
            node_name: "n1".into(),
            node_labels_interval: Duration::from_millis(300),
            stale_after,
            backoff_max: Duration::from_secs(1),
        },
        Arc::clone(&counters),
        rx,
    );
    Agent {
        cache,
        counters,
        _shutdown: tx,
    }
}

/// The fake API and a watcher on it that has listed once; `None` (the test
/// is skipped) without Python.
async fn listed(stale_after: Duration) -> Option<(FakeApi, Agent)> {
    let api = FakeApi::start(&python("this test (the fake API server)")?);
    let agent = start_agent(&api, stale_after);
    wait_until("initial list", || agent.cache.pods().is_some()).await;
    Some((api, agent))
}

fn keys(cache: &KubeCache) -> Vec<String> {
    cache.pods().map(|i| i.keys()).unwrap_or_default()
}

/// Whether the pod `ns/name` is in the cache.
fn has(cache: &KubeCache, key: &str) -> bool {
    keys(cache).iter().any(|k| k == key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_pods_on_this_node_and_reads_node_labels() {
    let Some((api, agent)) = listed(Duration::from_secs(60)).await else {
        return;
    };
    assert_eq!(keys(&agent.cache), ON_N1);
    let idx = agent.cache.pods().unwrap();
    let a = idx.by_container_id(&cid(1)).unwrap();
    assert_eq!(a.key(), "ml/train-a");
    assert_eq!(a.qos_class.as_deref(), Some("Burstable"));
    assert_eq!(a.phase.as_deref(), Some("Running"));
    assert_eq!(a.labels.get("app").map(String::as_str), Some("train"));
    assert_eq!(
        idx.by_container_id(&cid(3)).unwrap().key(),
        "research/notebook-c",
        "cri-o:// stripped"
    );
    assert_eq!(
        idx.by_container_id(&cid(4)).unwrap().key(),
        "research/infer-d",
        "docker:// stripped"
    );
    assert_eq!(
        idx.by_uid("22222222-2222-4222-8222-222222222222")
            .unwrap()
            .name,
        "train-b"
    );

    wait_until("node labels", || agent.cache.node().is_some()).await;
    let node = agent.cache.node().unwrap();
    assert_eq!(node.replicas, Some(4));
    assert_eq!(node.sharing_strategy.as_deref(), Some("time-slicing"));
    assert_eq!(
        node.product.as_deref(),
        Some("NVIDIA-H100-80GB-HBM3-SHARED")
    );

    // Pods come...
    add_late_g(&api, "n1");
    api.add_pod(
        "ml",
        "elsewhere",
        "aaaaaaaa-0000-4000-8000-000000000003",
        "n2",
        &cid(102),
    );
    wait_until("late-g added", || has(&agent.cache, "ml/late-g")).await;
    assert!(!has(&agent.cache, "ml/elsewhere"));
    assert_eq!(
        agent
            .cache
            .pods()
            .unwrap()
            .by_container_id(&cid(101))
            .unwrap()
            .name,
        "late-g"
    );
    // ...and go.
    api.control("DELETE", "/_test/pods/ml/train-a", "");
    wait_until("train-a deleted", || !has(&agent.cache, "ml/train-a")).await;
    // A pod rescheduled away from this node leaves the selection.
    add_late_g(&api, "n2");
    wait_until("late-g moved away", || !has(&agent.cache, "ml/late-g")).await;
    assert_eq!(keys(&agent.cache).len(), 6);

    let st = agent.cache.sync_state();
    assert!(st.synced && st.ok && !st.stale, "{st:?}");
    assert_eq!(Counters::get(&agent.counters.occupancy_relists), 0);
    assert_eq!(Counters::get(&agent.counters.occupancy_errors), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_forces_a_relist_and_the_state_is_right_afterwards() {
    let Some((api, agent)) = listed(Duration::from_secs(60)).await else {
        return;
    };
    // Let the watch be established before compacting.
    wait_until("watch open", || api.stats()["watch"].as_u64().unwrap() >= 1).await;

    // History compacted: the open watch gets ERROR 410 and the next list is
    // answered 410 too; meanwhile pods changed.
    api.control("POST", "/_test/gone?http=1", "");
    api.control("DELETE", "/_test/pods/ml/train-b", "");
    api.add_pod(
        "ml",
        "after-gone",
        "aaaaaaaa-0000-4000-8000-000000000004",
        "n1",
        &cid(104),
    );
    wait_until("relist counted", || {
        Counters::get(&agent.counters.occupancy_relists) >= 1
    })
    .await;
    wait_until("state after relist", || {
        let k = keys(&agent.cache);
        k.contains(&"ml/after-gone".to_string()) && !k.contains(&"ml/train-b".to_string())
    })
    .await;
    assert!(
        Counters::get(&agent.counters.occupancy_errors) >= 1,
        "the 410 is counted as an error"
    );
    let stats = api.stats();
    assert!(stats["gone_sent"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["list"].as_u64().unwrap() >= 2, "{stats}");

    // The watch works again after the relist.
    api.add_pod(
        "ml",
        "after-relist",
        "aaaaaaaa-0000-4000-8000-000000000005",
        "n1",
        &cid(105),
    );
    wait_until("watch resumed", || has(&agent.cache, "ml/after-relist")).await;
    assert_eq!(keys(&agent.cache).len(), 8);
    wait_until("healthy again", || agent.cache.sync_state().ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_api_keeps_last_state_goes_stale_and_recovers() {
    let _logs = capture_logs();
    let Some((api, agent)) = listed(Duration::from_millis(1500)).await else {
        return;
    };
    wait_until("node read", || agent.cache.node().is_some()).await;
    wait_until("fresh", || !agent.cache.sync_state().stale).await;

    for mode in ["503", "reset"] {
        api.control("POST", &format!("/_test/down?mode={mode}"), "");
        let errors_before = Counters::get(&agent.counters.occupancy_errors);
        wait_until("stale while down", || agent.cache.sync_state().stale).await;
        // Last known state kept: reads still answer, instantly.
        assert_eq!(
            agent.cache.pods().unwrap().len(),
            7 + usize::from(mode == "reset")
        );
        assert_eq!(agent.cache.node().unwrap().replicas, Some(4));
        assert!(
            !agent.cache.sync_state().ok,
            "{:?} {}",
            agent.cache.sync_state(),
            api.stats()
        );
        wait_until("errors counted", || {
            Counters::get(&agent.counters.occupancy_errors) > errors_before
        })
        .await;

        // A pod arrives while the API is unreachable for us.
        let name = format!("while-down-{mode}");
        api.add_pod(
            "ml",
            &name,
            &format!("bbbbbbbb-0000-4000-8000-00000000000{}", mode.len()),
            "n1",
            &cid(200 + mode.len() as u64),
        );
        api.control("POST", "/_test/up", "");
        wait_until("fresh after recovery", || {
            let s = agent.cache.sync_state();
            !s.stale && s.ok
        })
        .await;
        wait_until("missed pod caught up", || {
            keys(&agent.cache).contains(&format!("ml/{name}"))
        })
        .await;
    }
}
