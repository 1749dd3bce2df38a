//! Optional node condition `GPUTailLatencyDegraded` on this agent's own Node.
//!
//! It follows the health dimension only (the GPU itself): a GPU that is
//! merely contended by its tenants keeps the condition `False`, with the
//! contention named in the message. `unknown` (too few runs yet) gives status
//! `Unknown`.
//!
//! Off by default (it needs `nodes/status` patch RBAC). The condition is
//! patched only when its status or reason changes, and at most once per
//! `node_condition_min_interval_ms`, with a strategic-merge patch to
//! `nodes/NAME/status` (conditions merge by `type`, so other conditions are
//! untouched).

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
    let mut last: Option<(&'static str, &'static str)> = None;
    let mut last_patch: Option<Instant> = None;
    let mut tick = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (status, reason, message) = condition_of(&live);
        if last == Some((status, reason)) {
            continue;
        }
        if last_patch.is_some_and(|t| t.elapsed() < min_interval) {
            continue;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = json!({
            "status": { "conditions": [{
                "type": CONDITION_TYPE,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }]}
        });
        match api
            .patch_status(&node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %node, status, reason, "patched node condition {CONDITION_TYPE}");
                last = Some((status, reason));
                last_patch = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "failed to patch node condition; will retry");
                last_patch = Some(Instant::now());
            }
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
