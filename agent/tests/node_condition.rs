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
fn node_condition_beats_every_evaluation_changes_at_most_once_per_interval_and_is_unknown_after_a_clean_stop(
) {
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
    let c0 = condition(&first);
    assert_eq!(c0["status"], "False", "{c0}");
    assert_eq!(c0["reason"], "GPUTailLatencyHealthy", "{c0}");

    // The verdict turns unhealthy within a few cycles; heartbeats keep
    // coming every evaluation, still showing False until the minimum
    // interval since the last change has passed.
    gate.open();
    let became_true = wait_for("a patch showing the unhealthy GPU", || {
        patches(&api)
            .iter()
            .map(condition)
            .position(|c| c["status"] == "True")
    });
    let t_true = Instant::now();
    assert!(
        t_true.duration_since(t_first) >= MIN_INTERVAL - Duration::from_millis(500),
        "status changed {:?} after the first patch; min interval {MIN_INTERVAL:?}",
        t_true.duration_since(t_first)
    );
    let all: Vec<_> = patches(&api).iter().map(condition).collect();
    assert!(
        became_true >= 5,
        "only {became_true} heartbeats before the change: not one per evaluation"
    );
    for c in &all[..became_true] {
        assert_eq!(c["status"], "False", "flapped before the interval: {c}");
        assert_eq!(c["lastTransitionTime"], c0["lastTransitionTime"], "{c}");
    }
    let c = &all[became_true];
    assert_eq!(c["reason"], "GPUUnhealthy", "{c}");
    assert_ne!(c["lastTransitionTime"], c0["lastTransitionTime"], "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.contains("CPU-0") && msg.contains("correctness"),
        "message {msg:?}"
    );
    assert!(
        !msg.contains("SLO"),
        "an SLO breach is contention, not the node's condition: {msg:?}"
    );

    // Unchanged verdict: heartbeats only (lastHeartbeatTime moves,
    // lastTransitionTime does not). Waits for a heartbeat whose time
    // differs from the change's (the times are in whole seconds), then
    // checks every patch since the change.
    let transition = c["lastTransitionTime"].clone();
    let later = wait_for("a later heartbeat of the unchanged verdict", || {
        let all: Vec<_> = patches(&api).iter().map(condition).collect();
        all[became_true..]
            .iter()
            .any(|p| p["lastHeartbeatTime"] != c["lastHeartbeatTime"])
            .then_some(all)
    });
    for p in &later[became_true..] {
        assert_eq!(p["status"], "True", "{p}");
        assert_eq!(p["lastTransitionTime"], transition, "{p}");
    }

    // The condition merged by type into the node's status.
    let node_conditions = || {
        let (status, body) = api.request("GET", "/api/v1/nodes/n1", "");
        assert_eq!(status, 200, "{body}");
        let node: serde_json::Value = serde_json::from_str(&body).unwrap();
        node["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let conds = node_conditions();
    let ours = conds
        .iter()
        .find(|c| c["type"] == CONDITION_TYPE)
        .expect("condition on the node");
    assert_eq!(ours["status"], "True");
    assert!(
        conds.iter().any(|c| c["type"] == "Ready"),
        "other conditions kept: {conds:?}"
    );

    // A clean stop leaves Unknown, not a stale True.
    let report = agent.shutdown();
    assert!(report.clean_shutdown);
    let last = condition(patches(&api).last().unwrap());
    assert_eq!(
        (last["status"].as_str(), last["reason"].as_str()),
        (Some("Unknown"), Some("AgentStopped")),
        "{last}"
    );
    let conds = node_conditions();
    let ours = conds.iter().find(|c| c["type"] == CONDITION_TYPE).unwrap();
    assert_eq!(ours["status"], "Unknown", "{ours}");
}
