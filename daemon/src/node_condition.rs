//! Optional node condition `GPUTailLatencyDegraded` on this agent's own Node.
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

use crate::health::{LiveState, Verdict};

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
        Some((Verdict::Degraded, why)) => ("True", "GPUTailLatencyDegraded", why),
        Some((Verdict::Unhealthy, why)) => ("True", "GPUUnhealthy", why),
    }
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
        let (status, reason, message) = condition_for(live.worst());
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
