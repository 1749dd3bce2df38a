//! Optional node condition `GPUTailLatencyDegraded` on this agent's own Node.
//!
//! It follows the health dimension only (the GPU itself): a GPU that is
//! merely contended by its tenants keeps the condition `False`, with the
//! contention named in the message. `unknown` (too few runs yet) gives status
//! `Unknown`.
//!
//! Off by default (it needs `nodes/status` patch RBAC). The condition is
//! patched on every evaluation with a fresh `lastHeartbeatTime` (so a stale
//! condition shows: remediation tooling can tell an agent that stopped
//! writing from a GPU that is still bad); its status and reason change at
//! most once per `node_condition_min_interval_ms` (no flapping), and
//! `lastTransitionTime` moves only when they do. On a clean stop it is set
//! to `Unknown` (`AgentStopped`), so an uninstalled agent leaves no stale
//! `True` behind. Each patch is a strategic merge to `nodes/NAME/status`
//! (conditions merge by `type`, so other conditions are untouched).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::serve::live::LiveState;
use slicetrace_schema::{Contention, Verdict};

/// The condition type.
pub const CONDITION_TYPE: &str = "GPUTailLatencyDegraded";

/// The condition a verdict maps to: `(status, reason, message)`.
pub fn condition_for(worst: Option<(Verdict, String)>) -> (&'static str, &'static str, String) {
    match worst {
        Some((Verdict::Healthy, _)) | None => (
            "False",
            "GPUTailLatencyHealthy",
            "all probed GPUs are healthy".into(),
        ),
        Some((Verdict::Unknown, why)) => ("Unknown", "GPUHealthUnknown", why),
        Some((Verdict::Degraded, why)) => ("True", "GPUTailLatencyDegraded", why),
        Some((Verdict::Unhealthy, why)) => ("True", "GPUUnhealthy", why),
    }
}

/// The condition of this node's GPUs: [`condition_for`] the worst health,
/// with the most contended GPU named in a healthy message.
pub fn condition_of(live: &LiveState) -> (&'static str, &'static str, String) {
    let (status, reason, mut message) = condition_for(live.worst());
    if status == "False" {
        let contended = live.kernels.read().ok().and_then(|k| {
            k.iter()
                .filter(|(_, h)| h.contention.is_some_and(|c| c != Contention::Ok))
                .max_by_key(|(_, h)| h.contention)
                .map(|((uuid, kernel), h)| format!("{uuid} {kernel}: {}", h.contention_detail))
        });
        if let Some(c) = contended {
            message = format!("{message}; contended (not a fault): {c}");
        }
    }
    (status, reason, message)
}

/// Patches the condition whenever it changes, rate-limited, until `stop`.
pub async fn run(
    client: kube::Client,
    node: String,
    live: Arc<LiveState>,
    check_every: Duration,
    min_interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<Node> = Api::all(client);
    // What the node shows: status, reason, message, and when status and
    // reason last changed (RFC 3339) and on this clock.
    let mut shown: Option<(&'static str, &'static str, String, String, Instant)> = None;
    let mut tick = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let (status, reason, message) = condition_of(&live);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let next = match &shown {
            // Unchanged: a heartbeat with the new message.
            Some((s, r, _, since, at)) if (*s, *r) == (status, reason) => {
                (status, reason, message, since.clone(), *at)
            }
            // Changed too soon after the last change: keep showing the old
            // status (a heartbeat), so it cannot flap.
            Some((s, r, m, since, at)) if at.elapsed() < min_interval => {
                (*s, *r, m.clone(), since.clone(), *at)
            }
            _ => (status, reason, message, now.clone(), Instant::now()),
        };
        let changed = shown
            .as_ref()
            .is_none_or(|(s, r, ..)| (*s, *r) != (next.0, next.1));
        if patch(&api, &node, next.0, next.1, &next.2, &now, &next.3).await && changed {
            tracing::info!(node = %node, status = next.0, reason = next.1, "patched node condition {CONDITION_TYPE}");
        }
        shown = Some(next);
    }
    // A clean stop: nobody watches these GPUs any more.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let stopped = tokio::time::timeout(
        Duration::from_secs(3),
        patch(
            &api,
            &node,
            "Unknown",
            "AgentStopped",
            "the slicetrace agent stopped: GPU health on this node is not observed",
            &now,
            &now,
        ),
    )
    .await;
    if stopped == Ok(true) {
        tracing::info!(node = %node, "node condition {CONDITION_TYPE} set to Unknown on stop");
    }
}

/// One strategic-merge patch of the condition; true when it was written.
async fn patch(
    api: &Api<Node>,
    node: &str,
    status: &str,
    reason: &str,
    message: &str,
    heartbeat: &str,
    transition: &str,
) -> bool {
    let body = json!({
        "status": { "conditions": [{
            "type": CONDITION_TYPE,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": transition,
        }]}
    });
    match api
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(body))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "failed to patch node condition; will retry at the next evaluation");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::live::KernelHealth;
    use slicetrace_schema::{Kernel, Reason};

    fn kh(verdict: Verdict, contention: Contention) -> KernelHealth {
        KernelHealth {
            samples: 100,
            contention: Some(contention),
            contention_reason: Reason::WaitOverBaseline,
            contention_detail: "p99 wall 7 ms (3 tenants)".into(),
            ..KernelHealth::without_runs(0, verdict, Reason::None, "why".into())
        }
    }

    #[test]
    fn a_contended_healthy_gpu_keeps_the_condition_false() {
        let live = LiveState::default();
        live.kernels.write().expect("lock").insert(
            ("GPU-a".into(), Kernel::Fft),
            kh(Verdict::Healthy, Contention::OverShared),
        );
        let (status, reason, msg) = condition_of(&live);
        assert_eq!((status, reason), ("False", "GPUTailLatencyHealthy"));
        assert!(msg.contains("3 tenants"), "{msg}");
        live.kernels.write().expect("lock").insert(
            ("GPU-a".into(), Kernel::Gemm),
            kh(Verdict::Unhealthy, Contention::Ok),
        );
        assert_eq!(condition_of(&live).1, "GPUUnhealthy");
        assert_eq!(
            condition_for(Some((Verdict::Unknown, "x".into()))).0,
            "Unknown"
        );
    }
}
