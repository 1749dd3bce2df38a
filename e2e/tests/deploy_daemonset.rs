//! The agent DaemonSet, in the manifests and every kustomize output: it never
//! requests `nvidia.com/gpu` and is never privileged, yet reaches the GPUs and
//! the kubelet; its grace period outlasts the agent's shutdown deadline.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use slicetrace_e2e::deploy::*;

/// Every DaemonSet in the manifest files and, when kubectl is there, in the
/// kustomize outputs.
fn daemonsets(python: &Path) -> Vec<(String, Value)> {
    let mut docs = all_manifest_docs(python);
    if let Some(rendered) = kustomized_docs(python, "DaemonSet checks of the kustomize output") {
        docs.extend(rendered);
    }
    let ds: Vec<_> = docs
        .into_iter()
        .filter(|(_, d)| kind(d) == "DaemonSet")
        .collect();
    assert!(!ds.is_empty(), "no DaemonSet under deploy/");
    ds
}

#[test]
fn daemonset_never_requests_nvidia_gpu_and_is_never_privileged() {
    let Some(python) = yaml_python("DaemonSet checks") else {
        return;
    };
    for (src, ds) in daemonsets(&python) {
        let mut problems = Vec::new();
        visit(&ds, &mut Vec::new(), &mut |path, v| {
            let key = path.last().map(String::as_str).unwrap_or("");
            if key == "nvidia.com/gpu" {
                problems.push(format!("requests a GPU replica at {}", path.join(".")));
            }
            if key == "privileged" && v != &Value::Bool(false) {
                problems.push(format!("sets {} = {v}", path.join(".")));
            }
            if key == "add" && path.iter().any(|p| p == "capabilities") {
                problems.push(format!("adds capabilities at {}: {v}", path.join(".")));
            }
        });
        let pod = &ds["spec"]["template"]["spec"];
        for host in ["hostPID", "hostIPC", "hostNetwork"] {
            if pod[host] == Value::Bool(true) {
                problems.push(format!("sets {host}: true"));
            }
        }
        for c in containers(pod) {
            let sc = &c["securityContext"];
            let cname = c["name"].as_str().unwrap_or("?");
            if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
                problems.push(format!("{cname}: allowPrivilegeEscalation is not false"));
            }
            if sc["readOnlyRootFilesystem"] != Value::Bool(true) {
                problems.push(format!("{cname}: readOnlyRootFilesystem is not true"));
            }
            if str_list(&sc["capabilities"]["drop"]) != ["ALL"] {
                problems.push(format!("{cname}: capabilities.drop is not [ALL]"));
            }
        }
        assert!(
            problems.is_empty(),
            "{src}: DaemonSet {}:\n{}",
            name(&ds),
            problems.join("\n")
        );
    }
}

#[test]
fn daemonset_reaches_gpus_and_kubelet_without_a_gpu_allocation() {
    let Some(python) = yaml_python("DaemonSet checks") else {
        return;
    };
    for (src, ds) in daemonsets(&python) {
        let pod = &ds["spec"]["template"]["spec"];
        let ctx = format!("{src}: DaemonSet {}", name(&ds));
        assert_eq!(pod["runtimeClassName"], "nvidia", "{ctx}: runtimeClassName");
        assert_eq!(
            pod["serviceAccountName"], "slicetrace-agent",
            "{ctx}: serviceAccountName"
        );
        assert_eq!(
            pod["nodeSelector"]["nvidia.com/gpu.present"], "true",
            "{ctx}: nodeSelector"
        );
        assert!(
            pod["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == "nvidia.com/gpu"
                    && t["operator"] == "Exists"
                    && t.get("effect").is_none()),
            "{ctx}: must tolerate nvidia.com/gpu (Exists, any effect)"
        );
        let agent = containers(pod)
            .into_iter()
            .find(|c| c["name"] == "agent")
            .unwrap_or_else(|| panic!("{ctx}: no container named agent"));
        let env: BTreeMap<&str, &Value> = agent["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["name"].as_str().unwrap_or(""), e))
            .collect();
        assert_eq!(
            env["NVIDIA_VISIBLE_DEVICES"]["value"], "all",
            "{ctx}: NVIDIA_VISIBLE_DEVICES"
        );
        assert_eq!(
            env["NVIDIA_DRIVER_CAPABILITIES"]["value"], "compute,utility",
            "{ctx}: NVIDIA_DRIVER_CAPABILITIES"
        );
        // An agent on a broken GPU stays unready; with maxUnavailable: 1
        // that one pod would stall every rollout of the fleet.
        let max_unavailable = &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
        assert!(
            max_unavailable.as_str().is_some_and(|v| v.ends_with('%')),
            "{ctx}: maxUnavailable must be a percentage, got {max_unavailable}"
        );
        assert_eq!(
            env.get("SLICETRACE_LOG_FORMAT").map(|e| &e["value"]),
            Some(&json!("json")),
            "{ctx}: the DaemonSet logs JSON"
        );
        assert_eq!(
            env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
            "{ctx}: NODE_NAME must come from spec.nodeName"
        );

        let volumes: BTreeMap<&str, &Value> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap_or(""), v))
            .collect();
        let mounts: Vec<&Value> = agent["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let mount_of = |path: &str| -> (&Value, &Value) {
            let m = mounts
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{ctx}: nothing mounted at {path}"));
            let vol = volumes
                .get(m["name"].as_str().unwrap_or(""))
                .unwrap_or_else(|| panic!("{ctx}: mount {path} has no volume"));
            (m, vol)
        };
        let (m, vol) = mount_of("/var/lib/kubelet/pod-resources");
        assert_eq!(
            m["readOnly"], true,
            "{ctx}: pod-resources must be mounted read-only"
        );
        assert_eq!(
            vol["hostPath"]["path"], "/var/lib/kubelet/pod-resources",
            "{ctx}: pod-resources hostPath"
        );
        let (m, vol) = mount_of("/var/lib/slicetrace");
        assert_ne!(m["readOnly"], true, "{ctx}: the data dir must be writable");
        assert_eq!(
            vol["hostPath"]["path"], "/var/lib/slicetrace",
            "{ctx}: data dir hostPath"
        );
        assert_eq!(
            vol["hostPath"]["type"], "DirectoryOrCreate",
            "{ctx}: data dir hostPath type"
        );
        let (m, vol) = mount_of("/etc/slicetrace");
        assert_eq!(m["readOnly"], true, "{ctx}: config mount");
        assert_eq!(
            vol["configMap"]["name"], "slicetrace-config",
            "{ctx}: config volume"
        );

        assert_eq!(
            str_list(&agent["command"]),
            ["slicetrace-agent"],
            "{ctx}: command"
        );
        assert_eq!(
            str_list(&agent["args"]),
            ["run", "--config", "/etc/slicetrace/config.toml"],
            "{ctx}: args"
        );
        for which in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    agent["resources"][which][res].is_string(),
                    "{ctx}: resources.{which}.{res} is not set"
                );
            }
        }
    }
}

#[test]
fn daemonset_grace_period_outlasts_the_shutdown_deadline() {
    let Some(python) = yaml_python("DaemonSet checks") else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let config = agent_config(&docs, &base_file("configmap.yaml"));
    let deadline_ms = config["shutdown_deadline_ms"]
        .as_integer()
        .expect("shutdown_deadline_ms is an integer");
    let listen = config["metrics"]["listen"]
        .as_str()
        .expect("metrics.listen");
    let metrics_port: i64 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("metrics.listen ends in a port");

    for (src, ds) in daemonsets(&python) {
        let ctx = format!("{src}: DaemonSet {}", name(&ds));
        let pod = &ds["spec"]["template"]["spec"];
        let grace_s = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("{ctx}: terminationGracePeriodSeconds is not set"));
        assert!(
            grace_s * 1000 > deadline_ms,
            "{ctx}: terminationGracePeriodSeconds {grace_s} s must exceed shutdown_deadline_ms {deadline_ms}"
        );
        let agent = containers(pod)
            .into_iter()
            .find(|c| c["name"] == "agent")
            .unwrap_or_else(|| panic!("{ctx}: no container named agent"));
        let port = agent["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "metrics")
            .unwrap_or_else(|| panic!("{ctx}: no port named metrics"));
        assert_eq!(
            port["containerPort"], metrics_port,
            "{ctx}: metrics port vs [metrics] listen"
        );
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            let get = &agent[probe]["httpGet"];
            assert_eq!(get["path"], path, "{ctx}: {probe} path");
            assert!(
                get["port"] == "metrics" || get["port"] == metrics_port,
                "{ctx}: {probe} must hit the metrics port"
            );
        }
    }
}
