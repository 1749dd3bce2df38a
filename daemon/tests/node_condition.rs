//! The optional node condition `GPUTailLatencyDegraded`, patched by a whole
//! agent (`agent::run` on the CPU backend) onto its Node in
//! `tests/k8s_api_server.py`, which records every `nodes/NAME/status` patch.
//! Needs python3 (skipped with a note otherwise, unless
//! `SLICETRACE_REQUIRE_TOOLS=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;
use metrics_support::occupancy_support;

use std::time::{Duration, Instant};

use metrics_support::{cpu_backends, gated, small_config, wait_for, RunningAgent};
use occupancy_support::{python, FakeApi};
use slicetrace_agent::probe::occupancy::KubeApiMode;
use slicetrace_agent::serve::node_condition::CONDITION_TYPE;
use slicetrace_e2e::testkit::{Faults, FaultyBackend};
use slicetrace_schema::Verdict;
use std::sync::atomic::Ordering;

const MIN_INTERVAL: Duration = Duration::from_millis(4000);

fn patches(api: &FakeApi) -> Vec<serde_json::Value> {
    api.control("GET", "/_test/patches", "")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The one `GPUTailLatencyDegraded` condition a patch carries.
fn condition(patch: &serde_json::Value) -> serde_json::Value {
    let path = patch["path"].as_str().unwrap_or_default();
    assert!(
        path.starts_with("/api/v1/nodes/n1/status"),
        "patched {path}"
    );
    let ct = patch["content_type"].as_str().unwrap_or_default();
    assert!(
        ct == "application/strategic-merge-patch+json" || ct == "application/merge-patch+json",
        "content type {ct}"
    );
    let conds = patch["body"]["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(conds.len(), 1, "{patch}");
    let c = conds[0].clone();
    assert_eq!(c["type"], CONDITION_TYPE, "{c}");
    for k in [
        "reason",
        "message",
        "lastTransitionTime",
        "lastHeartbeatTime",
    ] {
        assert!(
            c[k].as_str().is_some_and(|s| !s.is_empty()),
            "{k} missing in {c}"
        );
    }
    c
}

#[test]
fn node_condition_is_patched_on_change_only_and_rate_limited() {
    let Some(py) = python("this test") else {
        return;
    };
    let api = FakeApi::start(&py);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.health.node_condition = true;
    cfg.health.node_condition_min_interval_ms = MIN_INTERVAL.as_millis() as u64;
    // Any real latency is far above this SLO: that is contention, which
    // never makes the GPU unhealthy; the wrong answers below do.
    cfg.health.slo_p99_ms = Some(1e-6);
    cfg.occupancy.kube_api = KubeApiMode::Server;
    cfg.occupancy.kube_server_url = Some(api.url());
    let wrong = cpu_backends(&cfg, &[0])
        .into_iter()
        .map(|inner| {
            FaultyBackend::wrap(
                inner,
                Faults::with(|f| f.wrong.store(true, Ordering::SeqCst)),
            )
        })
        .collect();
    let (backends, gate) = gated(wrong);
    let agent = RunningAgent::start(cfg, backends, None, Some(gate.clone()));

    // Before any probe run there is no verdict: the condition is False.
    let first = wait_for("the first node-status patch", || {
        patches(&api).first().cloned()
    });
    let t_first = Instant::now();
    let c = condition(&first);
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "GPUTailLatencyHealthy", "{c}");

    // Let the probes run: the verdict turns unhealthy within a few cycles,
    // but the next patch must wait for the minimum interval.
    gate.open();
    let mut t_unhealthy = None;
    let mut last_seen_one = t_first;
    let second = loop {
        let p = patches(&api);
        if p.len() >= 2 {
            break p[1].clone();
        }
        last_seen_one = Instant::now();
        if t_unhealthy.is_none()
            && agent
                .live
                .worst()
                .is_some_and(|(v, _)| v == Verdict::Unhealthy)
        {
            t_unhealthy = Some(last_seen_one);
        }
        assert!(
            t_first.elapsed() < Duration::from_secs(60),
            "no second patch; live: {:?}",
            agent.live.worst()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let t_unhealthy = t_unhealthy.expect("the verdict turned unhealthy before the second patch");
    assert!(
        t_unhealthy.duration_since(t_first) < MIN_INTERVAL - Duration::from_millis(1000),
        "the verdict changed too late ({:?}) to test the rate limit",
        t_unhealthy.duration_since(t_first)
    );
    // The second patch arrived after the last poll that still saw one.
    let gap = last_seen_one.duration_since(t_first);
    assert!(
        gap >= MIN_INTERVAL - Duration::from_millis(500),
        "second patch within {gap:?} of the first; min interval {MIN_INTERVAL:?}"
    );
    let c = condition(&second);
    assert_eq!(c["status"], "True", "{c}");
    assert_eq!(c["reason"], "GPUUnhealthy", "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.contains("CPU-0") && msg.contains("correctness"),
        "message {msg:?}"
    );
    assert!(
        !msg.contains("SLO"),
        "an SLO breach is contention, not the node's condition: {msg:?}"
    );

    // Unchanged verdict over many evaluations and more than one minimum
    // interval: no further patch.
    std::thread::sleep(MIN_INTERVAL + Duration::from_millis(1500));
    let all = patches(&api);
    assert_eq!(all.len(), 2, "repeated identical patches: {all:#?}");

    // The condition merged by type into the node's status.
    let (status, body) = api.request("GET", "/api/v1/nodes/n1", "");
    assert_eq!(status, 200, "{body}");
    let node: serde_json::Value = serde_json::from_str(&body).unwrap();
    let conds = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ours = conds
        .iter()
        .find(|c| c["type"] == CONDITION_TYPE)
        .expect("condition on the node");
    assert_eq!(ours["status"], "True");
    assert!(
        conds.iter().any(|c| c["type"] == "Ready"),
        "other conditions kept: {conds:?}"
    );
    drop(agent);
}
