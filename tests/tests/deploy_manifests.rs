//! Validation of everything under `deploy/`.
//!
//! The manifests are what an operator actually installs, so they are checked
//! with the real tools rather than by eye:
//! - every YAML file, and the output of every buildable kustomization
//!   (`kubectl kustomize`), against the Kubernetes 1.29 and 1.33 OpenAPI schemas
//!   with `kubernetes-validate --strict` (unknown fields are errors). The
//!   Prometheus Operator kinds (ServiceMonitor, PrometheusRule) have no schema
//!   there; kubernetes-validate reports them as a warning, which is accepted for
//!   exactly those kinds and checked structurally here instead;
//! - RBAC: the base grants nothing and mounts no token; every rule lives in an
//!   optional component, and what each rendered kustomization grants is
//!   exactly what its agent config uses;
//! - the namespace admits the DaemonSet under Pod Security (`privileged`,
//!   because of its hostPath volumes);
//! - the DaemonSet never requests `nvidia.com/gpu` and is never privileged;
//! - the agent config in the ConfigMap uses exactly the agent's keys, the
//!   backend is `cuda`, and the grace period outlasts its shutdown deadline;
//! - the PrometheusRule passes `promtool check rules`, and `promtool test
//!   rules` (tests/tests/alerts/promtool-tests.yaml) under every scrape setup,
//!   with each alert's summary and runbook link; the Grafana dashboard's
//!   queries are valid PromQL over agent metrics.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt), so no YAML crate is needed. A missing tool skips
//! the test with a note, or fails it when `SLICETRACE_REQUIRE_TOOLS=1`
//! (tests/run.sh sets it).

use serde_json::{json, Value};
use slicetrace_agent::metrics::{MetricDoc, METRICS};
use slicetrace_schema::{Contention, Verdict};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Kubernetes versions the manifests must validate against.
const K8S_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

/// Kinds without a schema in kubernetes-validate (CRDs), checked structurally.
const CRD_KINDS: [(&str, &str); 2] = [
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

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

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

use slicetrace_e2e::root as repo_root;

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// Fails when tools are required, else notes why the test (or part) is
/// skipped: the workspace's one tool-or-skip rule, `slicetrace_e2e::missing_for`.
fn tool_missing(tool: &str, what: &str) {
    slicetrace_e2e::missing_for::<()>(tool, what);
}

/// Unwraps an optional tool or skips/fails the calling test.
macro_rules! tool_or_skip {
    ($tool:expr, $name:expr, $what:expr) => {
        match $tool {
            Some(t) => t,
            None => {
                tool_missing($name, $what);
                return;
            }
        }
    };
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn runs_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A Python interpreter with the `yaml` module: $SLICETRACE_PYTHON, the repo's
/// .venv, or python3 on PATH.
fn python() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("SLICETRACE_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(repo_root().join(".venv/bin/python"));
    candidates.extend(on_path("python3"));
    candidates
        .into_iter()
        .find(|p| p.is_file() && runs_ok(Command::new(p).args(["-c", "import yaml"])))
}

/// `kubernetes-validate`, next to the Python interpreter (venv) or on PATH.
fn kubernetes_validate(python: &Path) -> Option<PathBuf> {
    python
        .parent()
        .map(|bin| bin.join("kubernetes-validate"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("kubernetes-validate"))
}

fn kubectl() -> Option<PathBuf> {
    on_path("kubectl").filter(|k| runs_ok(Command::new(k).args(["kustomize", "--help"])))
}

fn promtool() -> Option<PathBuf> {
    on_path("promtool")
}

// ---------------------------------------------------------------------------
// YAML and manifests
// ---------------------------------------------------------------------------

const YAML_TO_JSON: &str = r#"
import json, sys, yaml
if len(sys.argv) > 1:
    out = {}
    for p in sys.argv[1:]:
        with open(p) as f:
            out[p] = [d for d in yaml.safe_load_all(f) if d is not None]
else:
    out = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
json.dump(out, sys.stdout, default=str)
"#;

fn run_python(python: &Path, args: &[&Path], stdin: Option<&str>) -> Value {
    use std::io::Write;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(YAML_TO_JSON)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start python");
    {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes())
                .expect("failed to write YAML to python");
        }
    }
    let out = child.wait_with_output().expect("python did not finish");
    assert!(
        out.status.success(),
        "YAML did not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// All documents of each file, keyed by the file.
fn load_yaml_files(python: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, Vec<Value>> {
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let parsed = run_python(python, &args, None);
    files
        .iter()
        .map(|f| {
            let key = f.to_str().expect("UTF-8 path");
            let docs = parsed[key].as_array().cloned().unwrap_or_default();
            (f.clone(), docs)
        })
        .collect()
}

fn load_yaml_str(python: &Path, text: &str) -> Vec<Value> {
    run_python(python, &[], Some(text))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn is_kustomization(p: &Path) -> bool {
    matches!(
        p.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// YAML files under deploy/: (Kubernetes manifests, kustomization files).
fn deploy_yaml_files() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut all = Vec::new();
    walk(&deploy_dir(), &mut all);
    let yaml: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| {
            is_kustomization(p)
                || matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    let (kust, manifests): (Vec<_>, Vec<_>) = yaml.into_iter().partition(|p| is_kustomization(p));
    assert!(!manifests.is_empty(), "no manifests under deploy/");
    (manifests, kust)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Every document of every manifest file, tagged with its file.
fn all_manifest_docs(python: &Path) -> Vec<(String, Value)> {
    let (manifests, _) = deploy_yaml_files();
    load_yaml_files(python, &manifests)
        .into_iter()
        .flat_map(|(f, docs)| {
            let name = rel(&f);
            docs.into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn is_crd_kind(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap_or("");
    CRD_KINDS.iter().any(|(a, k)| *a == api && *k == kind(doc))
}

fn kustomize(kubectl: &Path, dir: &Path) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("failed to run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        rel(dir),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// Buildable kustomization roots (kind Kustomization), and Component roots.
fn kustomize_roots(python: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (_, kust) = deploy_yaml_files();
    let mut roots = Vec::new();
    let mut components = Vec::new();
    for (file, docs) in load_yaml_files(python, &kust) {
        let dir = file.parent().expect("file has a dir").to_path_buf();
        match docs.first().map(kind) {
            Some("Component") => components.push(dir),
            _ => roots.push(dir),
        }
    }
    (roots, components)
}

/// The documents `kubectl kustomize` renders for every buildable root, or None
/// when kubectl is missing.
fn kustomized_docs(python: &Path) -> Option<Vec<(String, Value)>> {
    let kubectl = kubectl()?;
    let (roots, _) = kustomize_roots(python);
    Some(
        roots
            .iter()
            .flat_map(|dir| {
                let text = kustomize(&kubectl, dir);
                let src = format!("kubectl kustomize {}", rel(dir));
                load_yaml_str(python, &text)
                    .into_iter()
                    .map(move |d| (src.clone(), d))
            })
            .collect(),
    )
}

/// Walks every (key, value) pair of a JSON tree.
fn visit<'a>(v: &'a Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &'a Value)) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(k.clone());
                f(path, child);
                visit(child, path, f);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                visit(child, path, f);
                path.pop();
            }
        }
        _ => {}
    }
}

fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod_spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or("<not a string>").to_string())
        .collect()
}

/// The config.toml of the agent ConfigMap in `docs`, parsed.
fn agent_config(docs: &[(String, Value)], source: &str) -> toml::Table {
    let cm = docs
        .iter()
        .find(|(f, d)| f == source && kind(d) == "ConfigMap" && name(d) == "slicetrace-config")
        .unwrap_or_else(|| panic!("no ConfigMap slicetrace-config in {source}"));
    let text = cm.1["data"]["config.toml"]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: slicetrace-config has no data.config.toml"));
    toml::from_str(text).unwrap_or_else(|e| panic!("{source}: config.toml is not TOML: {e}"))
}

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

const BASE_DIR: &str = "deploy/base";

fn base_file(name: &str) -> String {
    format!("{BASE_DIR}/{name}")
}

// ---------------------------------------------------------------------------
// Schema validation
// ---------------------------------------------------------------------------

#[test]
fn every_manifest_validates_against_kubernetes_1_29_and_1_33() {
    let python = tool_or_skip!(python(), "python with PyYAML", "manifest validation");
    let kv = tool_or_skip!(
        kubernetes_validate(&python),
        "kubernetes-validate",
        "manifest validation"
    );
    let kubectl = tool_or_skip!(kubectl(), "kubectl", "kustomize output validation");

    let (manifests, _) = deploy_yaml_files();
    let (roots, components) = kustomize_roots(&python);
    assert!(
        roots.contains(&deploy_dir()),
        "deploy/kustomization.yaml is missing: `kubectl apply -k deploy/` must work"
    );

    // Components cannot be built alone: each must be used by a buildable root.
    for comp in &components {
        let used = roots.iter().any(|root| {
            let text = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap_or_default();
            let docs = load_yaml_str(&python, &text);
            docs.iter().any(|d| {
                str_list(&d["components"])
                    .iter()
                    .any(|c| root.join(c).canonicalize().ok() == comp.canonicalize().ok())
            })
        });
        assert!(
            used,
            "component {} is not used by any kustomization, so it is never validated",
            rel(comp)
        );
    }

    let tmp = tempfile::tempdir().expect("temp dir");
    let mut sources: Vec<PathBuf> = manifests.clone();
    for root in &roots {
        let out = tmp
            .path()
            .join(format!("kustomize-{}.yaml", rel(root).replace('/', "_")));
        std::fs::write(&out, kustomize(&kubectl, root)).expect("write kustomize output");
        sources.push(out);
    }

    let docs: Vec<Value> = load_yaml_files(&python, &sources)
        .into_values()
        .flatten()
        .collect();
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "document without apiVersion/kind: {d}"
        );
        let api = d["apiVersion"].as_str().unwrap_or("");
        if api.starts_with("monitoring.coreos.com/") {
            assert!(
                is_crd_kind(d),
                "unexpected Prometheus Operator kind {} {}",
                api,
                kind(d)
            );
        }
    }
    let core_docs = docs.iter().filter(|d| !is_crd_kind(d)).count();

    for version in K8S_VERSIONS {
        let out = Command::new(&kv)
            .args(["--strict", "-k", version])
            .args(&sources)
            .output()
            .expect("failed to run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut problems = Vec::new();
        let mut passed = 0;
        for line in text.lines() {
            if line.contains(" passed for resource ") {
                passed += 1;
            } else if line.starts_with("WARN") {
                let schemaless_crd = line.contains("Couldn't find schema for kind")
                    && CRD_KINDS.iter().any(|(api, k)| {
                        line.contains(&format!("kind {k} with api version {api} "))
                    });
                if !schemaless_crd {
                    problems.push(line.to_string());
                }
            } else if !line.trim().is_empty() {
                problems.push(line.to_string());
            }
        }
        assert!(
            out.status.success() && problems.is_empty(),
            "kubernetes-validate --strict -k {version} failed:\n{}",
            problems.join("\n")
        );
        assert_eq!(
            passed, core_docs,
            "kubernetes-validate -k {version} validated {passed} of {core_docs} core documents:\n{text}"
        );
    }
}

#[test]
fn prometheus_operator_objects_match_the_service() {
    let python = tool_or_skip!(python(), "python with PyYAML", "CRD checks");
    let docs = all_manifest_docs(&python);
    let service = docs
        .iter()
        .find(|(_, d)| kind(d) == "Service" && name(d) == "slicetrace-agent")
        .map(|(_, d)| d)
        .expect("Service slicetrace-agent");
    assert_eq!(
        service["spec"]["clusterIP"], "None",
        "the metrics Service must be headless"
    );
    let port_names = service["spec"]["ports"]
        .as_array()
        .expect("Service ports")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect::<Vec<_>>();

    let sm = docs
        .iter()
        .find(|(_, d)| kind(d) == "ServiceMonitor")
        .map(|(_, d)| d)
        .expect("a ServiceMonitor under deploy/optional/servicemonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k} does not match the Service"
        );
    }
    for ep in sm["spec"]["endpoints"].as_array().expect("endpoints") {
        let port = ep["port"].as_str().expect("endpoint port name");
        assert!(
            port_names.contains(&port),
            "ServiceMonitor port {port} is not a Service port"
        );
        assert_eq!(ep["path"], "/metrics");
        // The agent's own `node` label must survive (not become
        // `exported_node`), and `up` needs a `node` target label too.
        assert_eq!(
            ep["honorLabels"], true,
            "ServiceMonitor must honour the agent's own labels"
        );
        assert!(
            ep["relabelings"].as_array().into_iter().flatten().any(|r| {
                r["targetLabel"] == "node"
                    && str_list(&r["sourceLabels"]) == ["__meta_kubernetes_pod_node_name"]
            }),
            "ServiceMonitor must set a node target label (for `up`)"
        );
    }

    let rule = docs
        .iter()
        .find(|(_, d)| kind(d) == "PrometheusRule")
        .map(|(_, d)| d)
        .expect("a PrometheusRule in deploy/examples");
    assert!(
        rule["spec"]["groups"].is_array(),
        "PrometheusRule without spec.groups"
    );
}

// ---------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------

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
    let python = tool_or_skip!(python(), "python with PyYAML", "RBAC checks");
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
    let Some(rendered) = kustomized_docs(&python) else {
        tool_missing("kubectl", "the RBAC check of the kustomize output");
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

// ---------------------------------------------------------------------------
// Pod Security
// ---------------------------------------------------------------------------

#[test]
fn namespace_admits_the_daemonsets_host_paths_under_pod_security() {
    let python = tool_or_skip!(python(), "python with PyYAML", "Pod Security checks");
    let docs = all_manifest_docs(&python);
    let ds = docs
        .iter()
        .find(|(f, d)| f == &base_file("daemonset.yaml") && kind(d) == "DaemonSet")
        .map(|(_, d)| d)
        .expect("deploy/base/daemonset.yaml");
    let host_paths: Vec<&str> = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["hostPath"].is_object())
        .map(|v| v["name"].as_str().unwrap_or("?"))
        .collect();
    // The reason for the label: the baseline standard forbids any hostPath.
    assert!(
        !host_paths.is_empty(),
        "the DaemonSet has no hostPath volume any more: lower the Pod Security level"
    );
    let ns = docs
        .iter()
        .find(|(f, d)| f == &base_file("namespace.yaml") && kind(d) == "Namespace")
        .map(|(_, d)| d)
        .expect("deploy/base/namespace.yaml");
    assert_eq!(
        ns["metadata"]["name"], ds["metadata"]["namespace"],
        "the DaemonSet's namespace"
    );
    let labels = &ns["metadata"]["labels"];
    assert_eq!(
        labels["pod-security.kubernetes.io/enforce"], "privileged",
        "hostPath volumes {host_paths:?} are rejected under baseline: the DaemonSet would show 0 pods"
    );
    for mode in ["warn", "audit"] {
        let v = &labels[format!("pod-security.kubernetes.io/{mode}").as_str()];
        assert!(
            v.is_null() || v == "privileged",
            "pod-security {mode} = {v}: would warn on every rollout"
        );
    }
    let text = std::fs::read_to_string(repo_root().join(base_file("namespace.yaml")))
        .expect("namespace.yaml");
    assert!(
        text.contains("hostPath") && text.contains("baseline"),
        "namespace.yaml must say why it needs privileged (hostPath, forbidden by baseline)"
    );
}

// ---------------------------------------------------------------------------
// DaemonSet
// ---------------------------------------------------------------------------

/// Every DaemonSet in the manifest files and, when kubectl is there, in the
/// kustomize outputs.
fn daemonsets(python: &Path) -> Vec<(String, Value)> {
    let mut docs = all_manifest_docs(python);
    match kustomized_docs(python) {
        Some(rendered) => docs.extend(rendered),
        None => tool_missing("kubectl", "DaemonSet checks of the kustomize output"),
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
    let python = tool_or_skip!(python(), "python with PyYAML", "DaemonSet checks");
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
    let python = tool_or_skip!(python(), "python with PyYAML", "DaemonSet checks");
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
    let python = tool_or_skip!(python(), "python with PyYAML", "DaemonSet checks");
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

// ---------------------------------------------------------------------------
// Agent config
// ---------------------------------------------------------------------------

#[test]
fn agent_config_uses_exactly_the_agent_keys_and_variants_differ_only_where_intended() {
    let python = tool_or_skip!(python(), "python with PyYAML", "config checks");
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
    let python = tool_or_skip!(python(), "python with PyYAML", "check-config");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let agent = target.join("debug/slicetrace-agent");
    let agent = tool_or_skip!(
        Some(agent).filter(|a| a.is_file()),
        "slicetrace-agent (cargo build --bins)",
        "check-config of the ConfigMaps"
    );
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

// ---------------------------------------------------------------------------
// Examples: alerts, dashboard, collector, time-slicing, reproduction kit
// ---------------------------------------------------------------------------

fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("slicetrace_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The metric families the agent serves (daemon/src/metrics.rs, the table
/// `/metrics` is rendered from), by the name their samples carry.
fn served_metrics() -> BTreeMap<String, &'static MetricDoc> {
    METRICS.iter().map(|d| (d.sample_name(), d)).collect()
}

/// `(metric, label, operator, value)` of every label matcher written inside
/// `slicetrace_…{…}` in a PromQL expression.
fn label_matchers(expr: &str) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for metric in metric_names(expr) {
        let open = format!("{metric}{{");
        let mut rest = expr;
        while let Some(pos) = rest.find(&open) {
            let body_start = pos + open.len();
            let Some(len) = rest[body_start..].find('}') else {
                break;
            };
            for m in rest[body_start..body_start + len].split(',') {
                let m = m.trim();
                if m.is_empty() {
                    continue;
                }
                let op = ["=~", "!~", "!=", "="]
                    .into_iter()
                    .find(|op| m.contains(op))
                    .unwrap_or_else(|| panic!("no operator in matcher {m:?} of `{expr}`"));
                let (label, value) = m.split_once(op).expect("operator found");
                out.push((
                    metric.clone(),
                    label.trim().to_string(),
                    op.to_string(),
                    value.trim().trim_matches('"').to_string(),
                ));
            }
            rest = &rest[body_start + len..];
        }
    }
    out
}

/// Every metric in `expr` is one the agent serves, every label matcher names
/// one of its labels, and an exact match on an enum label uses a value the
/// agent writes.
fn assert_known_metrics(expr: &str, ctx: &str) {
    let served = served_metrics();
    for m in metric_names(expr) {
        assert!(
            served.contains_key(&m),
            "{ctx}: the agent does not serve {m} (daemon/src/metrics.rs METRICS) in `{expr}`"
        );
    }
    let verdicts: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
    let states: Vec<&str> = Contention::ALL.iter().map(|c| c.as_str()).collect();
    for (metric, label, op, value) in label_matchers(expr) {
        let doc = served[&metric];
        assert!(
            doc.labels.contains(&label.as_str()),
            "{ctx}: {metric} has no label {label} (it has {:?}) in `{expr}`",
            doc.labels
        );
        if op != "=" {
            continue;
        }
        let allowed: &[&str] = match label.as_str() {
            "verdict" => &verdicts,
            "state" => &states,
            "dimension" => &["health", "contention"],
            "clock" => &["wall", "gpu", "queue"],
            "quantile" => &["0.5", "0.99"],
            _ => continue,
        };
        assert!(
            allowed.contains(&value.as_str()),
            "{ctx}: {metric}{{{label}=\"{value}\"}} never exists (values: {allowed:?})"
        );
    }
}

fn run_promtool(promtool: &Path, args: &[&Path], what: &str) {
    let out = Command::new(promtool)
        .args(args)
        .output()
        .expect("failed to run promtool");
    assert!(
        out.status.success(),
        "promtool {what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn prometheus_rule(python: &Path) -> Value {
    all_manifest_docs(python)
        .into_iter()
        .find(|(_, d)| kind(d) == "PrometheusRule")
        .map(|(_, d)| d)
        .expect("deploy/examples/prometheusrule.yaml")
}

/// promtool unit tests of the alerts, a template with one placeholder per
/// agent target (see the file's header); [`SCRAPE_SETUPS`] fills it in.
const RULE_TESTS: &str = include_str!("alerts/promtool-tests.yaml");

/// How Prometheus may scrape the agent, and the labels each way gives agent
/// `{i}` (on node `n{i}`): (setup, target labels, extra labels on the agent's
/// own series, extra labels on its `up` series). The agent's series always
/// carry its own `node` too (in the template).
const SCRAPE_SETUPS: [(&str, &str, &str, &str); 3] = [
    (
        "ServiceMonitor (deploy/optional/servicemonitor: honorLabels, node relabeling)",
        r#"job="slicetrace-agent",namespace="slicetrace",service="slicetrace-agent",endpoint="metrics",container="agent",pod="slicetrace-agent-p{i}",instance="10.0.0.{i}:9464""#,
        "",
        r#",node="n{i}""#,
    ),
    (
        "prometheus.io/scrape annotations (a kubernetes-pods job: honor_labels, pod labels mapped, no node on up)",
        r#"job="kubernetes-pods",namespace="slicetrace",pod="slicetrace-agent-p{i}",app_kubernetes_io_name="slicetrace-agent",app_kubernetes_io_part_of="slicetrace",controller_revision_hash="6d4f8b",pod_template_generation="1",instance="10.0.0.{i}:9464""#,
        "",
        "",
    ),
    (
        "prometheus.io/scrape annotations without honor_labels, with a node relabeling (agent's node becomes exported_node)",
        r#"job="pods",namespace="slicetrace",pod="slicetrace-agent-p{i}",instance="10.0.0.{i}:9464""#,
        r#",exported_node="n{i}""#,
        r#",node="n{i}""#,
    ),
];

/// The promtool test file for one scrape setup.
fn rule_tests_for(setup: &(&str, &str, &str, &str)) -> String {
    let (_, target, agent_extra, up_extra) = setup;
    let mut text = RULE_TESTS.to_string();
    for i in 1..=3 {
        let t = target.replace("{i}", &i.to_string());
        let a = format!("{t}{}", agent_extra.replace("{i}", &i.to_string()));
        let u = format!("{t}{}", up_extra.replace("{i}", &i.to_string()));
        text = text
            .replace(&format!("@A{i}@"), &a)
            .replace(&format!("@UP{i}@"), &u);
    }
    assert!(
        !text.contains("@A") && !text.contains("@UP"),
        "unfilled placeholder in alerts/promtool-tests.yaml"
    );
    text
}

/// The `repository` URL of the workspace.
fn repository_url() -> String {
    let cargo: toml::Table = toml::from_str(
        &std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml"),
    )
    .expect("Cargo.toml is TOML");
    cargo["workspace"]["package"]["repository"]
        .as_str()
        .expect("workspace.package.repository")
        .to_string()
}

#[test]
fn prometheus_rule_passes_promtool_check_and_unit_tests_under_every_scrape_setup() {
    let python = tool_or_skip!(python(), "python with PyYAML", "PrometheusRule checks");
    let rule = prometheus_rule(&python);
    let runbook_base = format!("{}/blob/main/docs/operations.md#", repository_url());
    let anchors =
        slicetrace_e2e::markdown_anchors(&slicetrace_e2e::read_repo_file("docs/operations.md"));
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().expect("spec.groups") {
        for r in group["rules"].as_array().expect("rules") {
            let alert = r["alert"].as_str().expect("only alerting rules");
            let expr = r["expr"].as_str().expect("expr");
            assert_known_metrics(expr, alert);
            let severity = r["labels"]["severity"].as_str().unwrap_or("");
            assert!(
                matches!(severity, "critical" | "warning"),
                "{alert}: severity {severity:?}"
            );
            for a in ["summary", "description", "runbook_url"] {
                assert!(r["annotations"][a].is_string(), "{alert}: no {a}");
            }
            let runbook = r["annotations"]["runbook_url"].as_str().unwrap_or("");
            let anchor = runbook.strip_prefix(&runbook_base).unwrap_or_else(|| {
                panic!("{alert}: runbook_url {runbook} is not under {runbook_base}")
            });
            assert!(
                anchors.contains(anchor),
                "{alert}: runbook_url anchor #{anchor} is not a heading of docs/operations.md"
            );
            // Job names differ between the scrape setups.
            assert!(
                !expr.contains("job="),
                "{alert}: names a job, which differs between ServiceMonitor and annotation scraping: {expr}"
            );
            // Health and contention are separate dimensions, and contention
            // never pages.
            let metrics = metric_names(expr);
            if metrics.contains("slicetrace_gpu_contention") {
                assert_eq!(severity, "warning", "{alert}: contention must not page");
                assert!(
                    !metrics.contains("slicetrace_gpu_verdict"),
                    "{alert}: mixes health and contention"
                );
            }
            alerts.insert(alert.to_string());
        }
    }
    for want in [
        "SliceTraceGPUUnhealthy",
        "SliceTraceGPUDegraded",
        "SliceTraceGPUOverShared",
        "SliceTraceGPUCorrectnessFailure",
        "SliceTraceSelfTestFailed",
        "SliceTraceBackendDown",
        "SliceTraceProbeErrors",
        "SliceTraceAgentDown",
        "SliceTraceAgentAbsent",
        "SliceTraceSpansDropping",
    ] {
        assert!(alerts.contains(want), "missing alert {want}");
    }

    // Every alert has a unit test in which it fires.
    let tests = load_yaml_str(&python, RULE_TESTS);
    let mut fired = BTreeSet::new();
    for group in tests[0]["tests"].as_array().expect("tests") {
        for t in group["alert_rule_test"].as_array().into_iter().flatten() {
            if t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fired.insert(t["alertname"].as_str().unwrap_or("").to_string());
            }
        }
    }
    // The test input is what the agent really serves: each series of an
    // agent metric has exactly that family's labels (besides target labels).
    let served = served_metrics();
    for line in RULE_TESTS.lines() {
        let Some(series) = line.trim().strip_prefix("- series: '") else {
            continue;
        };
        let series = series.trim_end_matches('\'');
        let name = series.split('{').next().unwrap_or("");
        let Some(doc) = served.get(name) else {
            continue;
        };
        let without_target: String = series
            .replace("@A1@,", "")
            .replace("@A2@,", "")
            .replace("@A3@,", "");
        let labels: BTreeSet<String> = label_matchers(&without_target)
            .into_iter()
            .map(|(_, l, _, _)| l)
            .collect();
        let want: BTreeSet<String> = doc.labels.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            labels, want,
            "alerts/promtool-tests.yaml: {name} has other labels than the agent serves"
        );
    }
    let untested: Vec<&String> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts without a promtool test in which they fire: {untested:?}"
    );

    let promtool = tool_or_skip!(promtool(), "promtool", "promtool check/test rules");
    let tmp = tempfile::tempdir().expect("temp dir");
    // A plain rules file is the PrometheusRule's spec; JSON is valid YAML.
    let rules = tmp.path().join("rules-full.json");
    std::fs::write(&rules, rule["spec"].to_string()).expect("write rules");
    run_promtool(
        &promtool,
        &[Path::new("check"), Path::new("rules"), &rules],
        "check rules",
    );
    // promtool compares every annotation exactly: the tests pin summary and
    // runbook_url, so the prose of `description` is left out.
    let mut tested = rule["spec"].clone();
    for group in tested["groups"].as_array_mut().expect("groups") {
        for r in group["rules"].as_array_mut().expect("rules") {
            r["annotations"]
                .as_object_mut()
                .expect("annotations")
                .remove("description");
        }
    }
    std::fs::write(tmp.path().join("rules.json"), tested.to_string()).expect("write rules");
    for (i, setup) in SCRAPE_SETUPS.iter().enumerate() {
        let file = tmp.path().join(format!("rules_test_{i}.yaml"));
        std::fs::write(&file, rule_tests_for(setup)).expect("write rule tests");
        run_promtool(
            &promtool,
            &[Path::new("test"), Path::new("rules"), &file],
            &format!("test rules, scrape setup: {}", setup.0),
        );
    }
}

/// The rule tests themselves catch what broke before: the old rules (a job
/// name in `up`/`absent`) fail them under annotation scraping.
#[test]
fn rule_tests_fail_rules_that_assume_the_servicemonitor_job() {
    let python = tool_or_skip!(python(), "python with PyYAML", "PrometheusRule checks");
    let promtool = tool_or_skip!(promtool(), "promtool", "promtool test rules");
    let mut spec = prometheus_rule(&python)["spec"].clone();
    for group in spec["groups"].as_array_mut().expect("groups") {
        for r in group["rules"].as_array_mut().expect("rules") {
            r["annotations"]
                .as_object_mut()
                .expect("annotations")
                .remove("description");
            match r["alert"].as_str() {
                Some("SliceTraceAgentDown") => {
                    r["expr"] = json!("up{job=\"slicetrace-agent\"} == 0")
                }
                Some("SliceTraceAgentAbsent") => {
                    r["expr"] = json!("absent(up{job=\"slicetrace-agent\"})")
                }
                _ => {}
            }
        }
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("rules.json"), spec.to_string()).expect("write rules");
    let file = tmp.path().join("rules_test.yaml");
    std::fs::write(&file, rule_tests_for(&SCRAPE_SETUPS[1])).expect("write rule tests");
    let out = Command::new(&promtool)
        .args([Path::new("test"), Path::new("rules"), &file])
        .output()
        .expect("failed to run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success()
            && text.contains("alertname: SliceTraceAgentDown")
            && text.contains("alertname: SliceTraceAgentAbsent"),
        "job-based AgentDown/AgentAbsent must fail the annotation-scraping tests:\n{text}"
    );
}

#[test]
fn grafana_dashboard_parses_and_queries_only_agent_metrics() {
    let path = deploy_dir().join("examples/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("deploy/examples/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        dash["uid"].is_string() && dash["title"].is_string(),
        "dashboard uid/title"
    );

    let vars: BTreeMap<&str, &Value> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or(""), v))
        .collect();
    for t in vars.values() {
        if let Some(q) = t["definition"].as_str() {
            assert_known_metrics(q, "template variable");
            // Absent while occupancy is unknown: the whole dashboard went empty.
            assert!(
                !q.contains("slicetrace_gpu_pods"),
                "variable {} comes from slicetrace_gpu_pods, which may not exist: {q}",
                t["name"]
            );
        }
    }
    for v in ["node", "gpu"] {
        let q = vars
            .get(v)
            .and_then(|t| t["definition"].as_str())
            .unwrap_or_else(|| panic!("no query variable {v}"));
        assert!(
            q.contains("slicetrace_gpu_info"),
            "variable {v} must come from slicetrace_gpu_info (exists for every probed GPU): {q}"
        );
    }

    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    let mut fleet_timelines = BTreeMap::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let id = panel["id"].as_i64().expect("panel id");
        let title = panel["title"].as_str().unwrap_or("panel");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let mut panel_exprs = Vec::new();
        for t in panel["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("target expr").to_string();
            assert_known_metrics(&e, title);
            assert!(
                !e.contains("job="),
                "{title}: names a job, which differs between scrape setups: {e}"
            );
            panel_exprs.push(e);
        }
        // A repeated panel repeats over a variable that does not default to
        // All: one panel per GPU of the fleet is unreadable.
        if let Some(var) = panel["repeat"].as_str() {
            let v = vars
                .get(var)
                .unwrap_or_else(|| panic!("{title}: repeats over unknown variable {var}"));
            let current_all = v["current"]["value"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "$__all"))
                || v["current"]["value"] == "$__all";
            assert!(
                v["includeAll"] == false && !current_all,
                "{title}: repeats over ${var}, which offers or defaults to All (Grafana then picks All first)"
            );
        }
        let joined = panel_exprs.join("\n");
        if panel["type"] == "state-timeline" && !joined.contains("$gpu") {
            let m: BTreeSet<String> = panel_exprs.iter().flat_map(|e| metric_names(e)).collect();
            fleet_timelines.insert(title.to_string(), m);
        }
        exprs.extend(panel_exprs);
    }
    // Panels fit Grafana's 24-column grid without overlapping.
    let rects: Vec<(String, [i64; 4])> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let v = |k: &str| g[k].as_i64().unwrap_or(-1);
            (
                p["title"].as_str().unwrap_or("?").to_string(),
                [v("x"), v("y"), v("w"), v("h")],
            )
        })
        .collect();
    for (i, (t, [x, y, w, h])) in rects.iter().enumerate() {
        assert!(
            *x >= 0 && *y >= 0 && *w > 0 && *h > 0 && x + w <= 24,
            "{t}: gridPos {x},{y} {w}x{h} is outside the 24-column grid"
        );
        for (u, [x2, y2, w2, h2]) in &rects[i + 1..] {
            let apart = x + w <= *x2 || x2 + w2 <= *x || y + h <= *y2 || y2 + h2 <= *y;
            assert!(apart, "panels {t:?} and {u:?} overlap");
        }
    }

    let all = exprs.join("\n");
    for needle in [
        "quantile=\"0.99\"",
        "slicetrace_gpu_verdict{",
        "slicetrace_gpu_contention{",
        "slicetrace_gpu_verdict_reason{",
        "slicetrace_baseline_seconds{",
        "slicetrace_gpu_pods{",
        "slicetrace_probe_errors_total{",
        "slicetrace_otlp_spans_dropped_total{",
    ] {
        assert!(all.contains(needle), "the dashboard never queries {needle}");
    }
    // Health and contention: a fleet-wide timeline each, never mixed.
    let only = |want: &str, other: &str| {
        fleet_timelines
            .values()
            .any(|m| m.contains(want) && !m.contains(other))
    };
    assert!(
        only("slicetrace_gpu_verdict", "slicetrace_gpu_contention"),
        "no fleet-wide health timeline: {fleet_timelines:?}"
    );
    assert!(
        only("slicetrace_gpu_contention", "slicetrace_gpu_verdict"),
        "no fleet-wide contention timeline: {fleet_timelines:?}"
    );

    // The queries are PromQL: let promtool parse them as recording rules, with
    // Grafana's variables replaced by what Grafana would send.
    let promtool = tool_or_skip!(promtool(), "promtool", "PromQL check of the dashboard");
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let expr = e
                .replace("$__rate_interval", "5m")
                .replace("$node", ".*")
                .replace("$gpu", ".*")
                .replace("$kernel", ".*");
            json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("dashboard-rules.json");
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .expect("write rules");
    run_promtool(
        &promtool,
        &[Path::new("check"), Path::new("rules"), &file],
        "check rules (dashboard queries)",
    );
}

#[test]
fn time_slicing_example_advertises_four_replicas_per_gpu() {
    let python = tool_or_skip!(python(), "python with PyYAML", "time-slicing example");
    let docs = all_manifest_docs(&python);
    let cm = docs
        .iter()
        .find(|(f, d)| f.ends_with("examples/time-slicing-config.yaml") && kind(d) == "ConfigMap")
        .map(|(_, d)| d)
        .expect("deploy/examples/time-slicing-config.yaml");
    let config = load_yaml_str(&python, cm["data"]["any"].as_str().expect("data.any"));
    let ts = &config[0]["sharing"]["timeSlicing"];
    assert_eq!(ts["renameByDefault"], false);
    assert_eq!(ts["failRequestsGreaterThanOne"], true);
    assert_eq!(
        ts["resources"],
        json!([{"name": "nvidia.com/gpu", "replicas": 4}])
    );
}

#[test]
fn otel_collector_example_exports_to_jaeger_and_tempo() {
    let python = tool_or_skip!(python(), "python with PyYAML", "collector example");
    let docs = all_manifest_docs(&python);
    let in_file = |k: &str| {
        docs.iter()
            .find(|(f, d)| f.ends_with("examples/otel-collector.yaml") && kind(d) == k)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no {k} in deploy/examples/otel-collector.yaml"))
    };
    let cm = in_file("ConfigMap");
    let cfg = &load_yaml_str(
        &python,
        cm["data"]["config.yaml"].as_str().expect("config.yaml"),
    )[0];
    let protocols = &cfg["receivers"]["otlp"]["protocols"];
    assert!(
        protocols["grpc"].is_object() && protocols["http"].is_object(),
        "OTLP gRPC and HTTP receivers"
    );
    let traces = &cfg["service"]["pipelines"]["traces"];
    assert!(
        str_list(&traces["processors"]).contains(&"batch".to_string()),
        "batch processor"
    );
    for section in ["receivers", "processors", "exporters"] {
        for c in str_list(&traces[section]) {
            assert!(
                cfg[section][&c].is_object(),
                "pipeline uses undefined {section} {c}"
            );
        }
    }
    let endpoints: BTreeSet<String> = str_list(&traces["exporters"])
        .iter()
        .map(|e| {
            cfg["exporters"][e]["endpoint"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        endpoints.contains("jaeger-collector:4317"),
        "exports to Jaeger over OTLP: {endpoints:?}"
    );
    assert!(
        endpoints.contains("tempo:4317"),
        "exports to Tempo over OTLP: {endpoints:?}"
    );

    // The agent's default endpoint resolves to this Service.
    let svc = in_file("Service");
    let config = agent_config(&docs, &base_file("configmap.yaml"));
    let endpoint = config["otlp"]["endpoint"].as_str().expect("otlp.endpoint");
    let host_port = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "otlp-grpc")
        .expect("otlp-grpc port");
    assert_eq!(
        host_port,
        format!(
            "{}.{}:{}",
            name(svc),
            svc["metadata"]["namespace"].as_str().unwrap_or(""),
            svc_port["port"]
        ),
        "the agent's otlp.endpoint does not match the example collector Service"
    );
}

#[test]
fn reproduce_article_kit_puts_one_fft_and_three_gemm_pods_on_one_gpu() {
    let python = tool_or_skip!(python(), "python with PyYAML", "reproduction kit");
    let docs = all_manifest_docs(&python);
    let deployment = |n: &str| {
        docs.iter()
            .find(|(f, d)| {
                f.contains("examples/reproduce-article/") && kind(d) == "Deployment" && name(d) == n
            })
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no Deployment {n} in deploy/examples/reproduce-article/"))
    };
    let mut selectors = Vec::new();
    for (n, replicas, workload) in [("fft-agent", 1, "fft"), ("gemm-tenants", 3, "gemm")] {
        let d = deployment(n);
        assert_eq!(d["spec"]["replicas"], replicas, "{n} replicas");
        let pod = &d["spec"]["template"]["spec"];
        let cs = containers(pod);
        assert_eq!(cs.len(), 1, "{n}: one container");
        let c = cs[0];
        assert_eq!(str_list(&c["command"]), ["slicetrace-load"], "{n}: command");
        let args = str_list(&c["args"]);
        assert_eq!(
            args.first().map(String::as_str),
            Some(workload),
            "{n}: workload"
        );
        assert!(
            args.windows(2).any(|w| w == ["--preset", "article"]),
            "{n}: --preset article"
        );
        assert!(
            args.windows(2).any(|w| w[0] == "--duration"),
            "{n}: --duration"
        );
        let gpu = &c["resources"]["limits"]["nvidia.com/gpu"];
        assert!(
            gpu == 1 || gpu == "1",
            "{n}: must hold exactly one nvidia.com/gpu replica, got {gpu}"
        );
        assert!(
            !c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "NVIDIA_VISIBLE_DEVICES"),
            "{n}: NVIDIA_VISIBLE_DEVICES would bypass the device plugin's allocation"
        );
        assert!(
            pod["nodeSelector"].is_object(),
            "{n}: needs a nodeSelector to share one node"
        );
        selectors.push(pod["nodeSelector"].clone());
    }
    assert_eq!(
        selectors[0], selectors[1],
        "fft-agent and gemm-tenants must select the same node"
    );
}

#[test]
fn dockerfile_builds_both_binaries_onto_a_cuda_runtime_image() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "multi-stage: build + runtime, got {froms:?}"
    );
    assert!(
        froms[0].starts_with("FROM rust:1.95-bookworm AS build"),
        "build stage: {}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("FROM nvidia/cuda:") && froms[1].contains("-runtime-"),
        "runtime stage must be a CUDA runtime image (cuFFT and cuBLAS): {}",
        froms[1]
    );
    assert!(
        text.contains("cargo build --release --locked"),
        "release build with the lock file"
    );
    assert!(
        text.contains("ENTRYPOINT [\"slicetrace-agent\", \"run\"]"),
        "entrypoint"
    );
    // The package and binary names it builds must exist in the workspace.
    for (manifest, package, bin) in [
        ("daemon/Cargo.toml", "slicetrace-agent", "slicetrace-agent"),
        ("load/Cargo.toml", "slicetrace-load", "slicetrace-load"),
    ] {
        let cargo: toml::Table = toml::from_str(
            &std::fs::read_to_string(repo_root().join(manifest)).expect("member manifest"),
        )
        .expect("Cargo.toml is TOML");
        assert_eq!(
            cargo["package"]["name"].as_str(),
            Some(package),
            "{manifest}"
        );
        assert!(
            cargo["bin"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["name"].as_str() == Some(bin)),
            "{manifest} has no [[bin]] {bin}"
        );
        assert!(
            text.contains(&format!("-p {package} --bin {bin}")),
            "Dockerfile must build {package}/{bin}"
        );
    }
}
