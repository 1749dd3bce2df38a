//! RBAC: the base grants nothing and mounts no token; every rule lives in an
//! optional component, and what each rendered kustomization grants is exactly
//! what its agent config uses.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use slicetrace_e2e::deploy::*;

type Rule = (String, String, String);

fn rule_triples(role: &Value, source: &str) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let fields: BTreeSet<&str> = rule
            .as_object()
            .expect("rule is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "{source}: {} has a rule with resourceNames/nonResourceURLs or missing fields: {rule}",
            name(role)
        );
        for g in str_list(&rule["apiGroups"]) {
            for r in str_list(&rule["resources"]) {
                for v in str_list(&rule["verbs"]) {
                    assert!(
                        !g.contains('*') && !r.contains('*') && !v.contains('*'),
                        "{source}: wildcard in {}: {rule}",
                        name(role)
                    );
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn triples(rules: &[(&str, &str, &str)]) -> BTreeSet<Rule> {
    rules
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

/// What the kube-api component grants: the pod watch (list/watch; RBAC cannot
/// enforce the agent's spec.nodeName field selector, so this is every pod of
/// the cluster) and its own Node's labels (get; RBAC cannot say "own").
fn kube_api_rules() -> BTreeSet<Rule> {
    triples(&[
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "nodes", "get"),
    ])
}

fn node_condition_rules() -> BTreeSet<Rule> {
    triples(&[("", "nodes/status", "patch")])
}

/// Union of the rules of every ClusterRole/Role in `docs`, checking bindings.
fn granted_rules(docs: &[(String, Value)]) -> BTreeMap<String, BTreeSet<Rule>> {
    let mut roles = BTreeMap::new();
    for (src, d) in docs {
        match kind(d) {
            "Role" | "RoleBinding" => panic!(
                "{src}: namespaced {} {}: the agent needs none",
                kind(d),
                name(d)
            ),
            "ClusterRole" => {
                assert!(
                    d.get("aggregationRule").is_none(),
                    "{src}: ClusterRole {} aggregates other roles",
                    name(d)
                );
                let prev = roles.insert(name(d).to_string(), rule_triples(d, src));
                assert!(
                    prev.is_none(),
                    "{src}: ClusterRole {} defined twice",
                    name(d)
                );
            }
            _ => {}
        }
    }
    for (src, d) in docs.iter().filter(|(_, d)| kind(d) == "ClusterRoleBinding") {
        assert_eq!(
            d["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": d["roleRef"]["name"]}),
            "{src}: binding {} must reference a ClusterRole",
            name(d)
        );
        let role = d["roleRef"]["name"].as_str().unwrap_or("");
        assert!(
            roles.contains_key(role),
            "{src}: binding {} references unknown ClusterRole {role}",
            name(d)
        );
        assert_eq!(
            d["subjects"],
            json!([{"kind": "ServiceAccount", "name": "slicetrace-agent", "namespace": "slicetrace"}]),
            "{src}: binding {} must bind only the agent's ServiceAccount",
            name(d)
        );
    }
    roles
}

/// The rendered agent config of one kustomize output, if it has one.
fn rendered_agent_config(docs: &[(String, Value)]) -> Option<toml::Table> {
    docs.iter()
        .find(|(_, d)| kind(d) == "ConfigMap" && name(d) == "slicetrace-config")
        .map(|(_, d)| {
            toml::from_str(d["data"]["config.toml"].as_str().expect("config.toml"))
                .expect("config.toml is TOML")
        })
}

/// Whether the rendered ServiceAccount mounts its token (the default is yes).
fn token_mounted(docs: &[(String, Value)], src: &str) -> bool {
    let sa = docs
        .iter()
        .find(|(_, d)| kind(d) == "ServiceAccount" && name(d) == "slicetrace-agent")
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("{src}: no ServiceAccount slicetrace-agent"));
    let pod_level = docs
        .iter()
        .filter(|(_, d)| kind(d) == "DaemonSet")
        .map(|(_, d)| &d["spec"]["template"]["spec"]["automountServiceAccountToken"])
        .find(|v| !v.is_null());
    pod_level
        .unwrap_or(&sa["automountServiceAccountToken"])
        .as_bool()
        .unwrap_or(true)
}

#[test]
fn rbac_base_grants_nothing_and_each_rule_lives_in_its_optional_component() {
    let Some(python) = yaml_python("RBAC checks") else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let roles = granted_rules(&docs);

    let by_file: BTreeMap<&str, &str> = docs
        .iter()
        .filter(|(_, d)| kind(d) == "ClusterRole")
        .map(|(f, d)| (name(d), f.as_str()))
        .collect();
    assert_eq!(
        roles.keys().map(String::as_str).collect::<Vec<_>>(),
        vec![
            "slicetrace-agent-kube-api",
            "slicetrace-agent-node-conditions"
        ],
        "exactly two ClusterRoles, both optional"
    );
    assert!(
        by_file["slicetrace-agent-kube-api"].starts_with("deploy/optional/kube-api/"),
        "pod and node reads must live only in the optional kube-api component"
    );
    assert!(
        by_file["slicetrace-agent-node-conditions"].starts_with("deploy/optional/node-conditions/"),
        "nodes/status patch must live only in the optional node-conditions component"
    );
    assert_eq!(
        roles["slicetrace-agent-kube-api"],
        kube_api_rules(),
        "kube-api ClusterRole rules"
    );
    assert_eq!(
        roles["slicetrace-agent-node-conditions"],
        node_condition_rules(),
        "node-conditions ClusterRole rules"
    );
    for (src, d) in &docs {
        assert!(
            !(src.starts_with(BASE_DIR) && kind(d).contains("Role")),
            "{src}: the base must grant no RBAC ({} {})",
            kind(d),
            name(d)
        );
    }
    let bindings: Vec<&str> = docs
        .iter()
        .filter(|(_, d)| kind(d) == "ClusterRoleBinding")
        .map(|(_, d)| d["roleRef"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        bindings.len(),
        2,
        "one ClusterRoleBinding per ClusterRole, got {bindings:?}"
    );

    // What actually gets applied: each rendered kustomization grants exactly
    // what its agent config uses, and mounts the token only when it calls the
    // API at all.
    let Some(rendered) = kustomized_docs(&python, "the RBAC check of the kustomize output") else {
        return;
    };
    let mut per_root: BTreeMap<&str, Vec<(String, Value)>> = BTreeMap::new();
    for (src, d) in &rendered {
        per_root
            .entry(src.as_str())
            .or_default()
            .push((src.clone(), d.clone()));
    }
    let mut seen = BTreeSet::new();
    for (src, docs) in per_root {
        let Some(config) = rendered_agent_config(&docs) else {
            continue; // a kit without the agent
        };
        let granted: BTreeSet<Rule> = granted_rules(&docs).into_values().flatten().collect();
        let uses_api = config["occupancy"]["kube_api"].as_str() != Some("off");
        let conditions = config["health"]["node_condition"].as_bool() == Some(true);
        assert!(
            !conditions || uses_api,
            "{src}: node_condition = true needs kube_api != \"off\" (the condition is written through the API client)"
        );
        let mut want = BTreeSet::new();
        if uses_api {
            want.extend(kube_api_rules());
        }
        if conditions {
            want.extend(node_condition_rules());
        }
        assert_eq!(
            granted, want,
            "{src}: granted rules (kube_api on = {uses_api}, node_condition = {conditions})"
        );
        assert_eq!(
            token_mounted(&docs, src),
            uses_api,
            "{src}: the ServiceAccount token must be mounted exactly when kube_api is on"
        );
        seen.insert((uses_api, conditions));
    }
    for case in [(false, false), (true, true)] {
        assert!(
            seen.contains(&case),
            "no kustomization renders (kube_api on, node_condition) = {case:?}: {seen:?}"
        );
    }
}
