//! The agent config in the ConfigMaps uses exactly the agent's keys (the
//! variants differ from the base only where intended), and every one passes
//! the agent's own `check-config`.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;
use slicetrace_e2e::deploy::*;
use slicetrace_e2e::{missing_for, target_dir};

/// Keys the DaemonSet's config.toml must set, because the DaemonSet needs a
/// value other than the agent's default or depends on it (the agent's own
/// keys, defaults and meanings are in docs/config-reference.md).
const DAEMONSET_CONFIG_KEYS: [&str; 10] = [
    "node_name",
    "data_dir",
    "backend",
    "log_format",
    "shutdown_deadline_ms",
    "otlp.endpoint",
    "metrics.listen",
    "health.node_condition",
    "occupancy.pod_resources_socket",
    "occupancy.kube_api",
];

/// Every key the agent's config file accepts, dotted (tables too): the keys
/// `Config::default()` serialises to, optional ones included.
fn agent_config_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        if let Value::Object(map) = v {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, child, out);
                out.insert(key);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(
        "",
        &serde_json::to_value(slicetrace_agent::config::Config::default())
            .expect("Config::default() serialises"),
        &mut out,
    );
    out
}

/// ConfigMaps that carry a variant of the base agent config, and the only keys
/// (with their values) in which each may differ from deploy/base/configmap.yaml.
const CONFIG_VARIANTS: [(&str, &[(&str, &str)]); 3] = [
    (
        "deploy/optional/kube-api/configmap-patch.yaml",
        &[("occupancy.kube_api", "\"auto\"")],
    ),
    (
        "deploy/optional/node-conditions/configmap-patch.yaml",
        &[
            ("health.node_condition", "true"),
            ("occupancy.kube_api", "\"auto\""),
        ],
    ),
    (
        "deploy/examples/reproduce-article/agent/configmap-patch.yaml",
        &[("preset", "\"article\"")],
    ),
];

fn flatten_toml(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(inner) = v {
            flatten_toml(&key, inner, out);
        }
        out.insert(key, v.clone());
    }
}

#[test]
fn agent_config_uses_exactly_the_agent_keys_and_variants_differ_only_where_intended() {
    let Some(python) = yaml_python("config checks") else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let mut base = BTreeMap::new();
    flatten_toml(
        "",
        &agent_config(&docs, &base_file("configmap.yaml")),
        &mut base,
    );
    let keys: BTreeSet<&str> = base.keys().map(String::as_str).collect();
    let known = agent_config_keys();
    let unknown: Vec<&&str> = keys.iter().filter(|k| !known.contains(**k)).collect();
    assert!(
        unknown.is_empty(),
        "base config.toml sets keys the agent does not have: {unknown:?}"
    );
    for k in DAEMONSET_CONFIG_KEYS {
        assert!(keys.contains(k), "base config.toml must set {k}");
    }
    // One set of thresholds: the agent's defaults, which `slicetrace fleet`
    // uses too. A copy here would drift from them.
    for k in keys.iter().filter(|k| k.starts_with("health.")) {
        assert!(
            matches!(*k, "health.window_ms" | "health.node_condition"),
            "base config.toml overrides the threshold {k}; leave it at the shared default"
        );
    }
    assert_eq!(
        base["log_format"],
        toml::Value::String("json".into()),
        "the DaemonSet logs JSON"
    );
    assert_eq!(
        base["health.node_condition"],
        toml::Value::Boolean(false),
        "node conditions are off by default"
    );
    // A GPU node whose CUDA fails must fail /readyz, not probe the CPU and
    // report CPU-0 as a healthy GPU: `auto` is for laptops and CI.
    assert_eq!(
        base["backend"],
        toml::Value::String("cuda".into()),
        "the DaemonSet's backend"
    );
    // The agent's own default is 127.0.0.1; Prometheus scrapes the pod IP.
    assert!(
        base["metrics.listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("0.0.0.0:")),
        "metrics.listen must bind every interface in the DaemonSet: {}",
        base["metrics.listen"]
    );
    // No API access in the base: pod-resources names the pods.
    assert_eq!(
        base["occupancy.kube_api"],
        toml::Value::String("off".into()),
        "the base makes no Kubernetes API call (deploy/optional/kube-api turns it on)"
    );

    let sources: BTreeSet<&str> = docs
        .iter()
        .filter(|(_, d)| kind(d) == "ConfigMap" && name(d) == "slicetrace-config")
        .map(|(f, _)| f.as_str())
        .collect();
    for src in sources {
        if src == base_file("configmap.yaml") {
            continue;
        }
        let allowed: BTreeMap<&str, &str> = CONFIG_VARIANTS
            .iter()
            .find(|(f, _)| *f == src)
            .map(|(_, keys)| keys.iter().copied().collect())
            .unwrap_or_default();
        let mut variant = BTreeMap::new();
        flatten_toml("", &agent_config(&docs, src), &mut variant);
        let vkeys: BTreeSet<&str> = variant.keys().map(String::as_str).collect();
        assert_eq!(vkeys, keys, "{src}: config.toml keys differ from the base");
        for (k, v) in &variant {
            if let toml::Value::Table(_) = v {
                continue;
            }
            match allowed.get(k.as_str()) {
                Some(want) => assert_eq!(&v.to_string(), want, "{src}: {k}"),
                None => assert_eq!(v, &base[k], "{src}: {k} differs from the base config"),
            }
        }
    }
}

#[test]
fn agent_config_passes_agent_check_config() {
    let Some(python) = yaml_python("check-config") else {
        return;
    };
    let agent = target_dir().join("debug/slicetrace-agent");
    let Some(agent) = Some(agent).filter(|a| a.is_file()).or_else(|| {
        missing_for(
            "slicetrace-agent (cargo build --bins)",
            "check-config of the ConfigMaps",
        )
    }) else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let tmp = tempfile::tempdir().expect("temp dir");
    for (i, (src, cm)) in docs
        .iter()
        .filter(|(_, d)| kind(d) == "ConfigMap" && name(d) == "slicetrace-config")
        .enumerate()
    {
        let file = tmp.path().join(format!("config-{i}.toml"));
        std::fs::write(
            &file,
            cm["data"]["config.toml"].as_str().expect("config.toml"),
        )
        .expect("write config");
        let out = Command::new(&agent)
            .arg("check-config")
            .arg(&file)
            .env("NODE_NAME", "test-node")
            .output()
            .expect("failed to run slicetrace-agent");
        assert!(
            out.status.success(),
            "{src}: slicetrace-agent check-config rejected config.toml:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
