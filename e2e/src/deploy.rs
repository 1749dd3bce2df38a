//! Helpers of the `deploy_*` tests: the tools they run (the Python `yaml`
//! module, kubernetes-validate, kubectl, promtool), the YAML files and
//! kustomizations under `deploy/` as JSON documents, and the PromQL checks
//! that alerts and dashboard use only what the agent serves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use slicetrace_schema::{Contention, Verdict};

use crate::{missing_for, root as repo_root, runnable_for};

// ---------------------------------------------------------------------------
// Tools: each reports its own absence (the workspace's tool-or-skip rule,
// [`missing_for`]), naming `what` is skipped without it.
// ---------------------------------------------------------------------------

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// A Python interpreter with the `yaml` module: `$SLICETRACE_PYTHON`, the
/// repository's `.venv`, or `python3` on `PATH`.
pub fn yaml_python(what: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("SLICETRACE_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(repo_root().join(".venv/bin/python"));
    candidates.extend(on_path("python3"));
    candidates
        .into_iter()
        .find(|p| p.is_file() && runs_ok(Command::new(p).args(["-c", "import yaml"])))
        .or_else(|| missing_for("python with PyYAML", what))
}

/// `kubernetes-validate`, next to the Python interpreter (venv) or on `PATH`.
pub fn kubernetes_validate(python: &Path, what: &str) -> Option<PathBuf> {
    python
        .parent()
        .map(|bin| bin.join("kubernetes-validate"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("kubernetes-validate"))
        .or_else(|| missing_for("kubernetes-validate", what))
}

/// `kubectl` with its `kustomize` subcommand.
pub fn kubectl(what: &str) -> Option<PathBuf> {
    runnable_for("kubectl", &["kustomize", "--help"], what)
}

/// `promtool`.
pub fn promtool(what: &str) -> Option<PathBuf> {
    runnable_for("promtool", &["--version"], what)
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

fn yaml_to_json(python: &Path, args: &[&Path], stdin: Option<&str>) -> Value {
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
pub fn load_yaml_files(python: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, Vec<Value>> {
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let parsed = yaml_to_json(python, &args, None);
    files
        .iter()
        .map(|f| {
            let key = f.to_str().expect("UTF-8 path");
            let docs = parsed[key].as_array().cloned().unwrap_or_default();
            (f.clone(), docs)
        })
        .collect()
}

/// All documents of a YAML text.
pub fn load_yaml_str(python: &Path, text: &str) -> Vec<Value> {
    yaml_to_json(python, &[], Some(text))
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
pub fn deploy_yaml_files() -> (Vec<PathBuf>, Vec<PathBuf>) {
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

/// `p` relative to the repository root, for messages.
pub fn rel(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Every document of every manifest file, tagged with its file.
pub fn all_manifest_docs(python: &Path) -> Vec<(String, Value)> {
    let (manifests, _) = deploy_yaml_files();
    load_yaml_files(python, &manifests)
        .into_iter()
        .flat_map(|(f, docs)| {
            let name = rel(&f);
            docs.into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

/// A document's `kind`, or empty.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

/// A document's `metadata.name`, or empty.
pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

/// The output of `kubectl kustomize DIR` (the test fails if it fails).
pub fn kustomize(kubectl: &Path, dir: &Path) -> String {
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
pub fn kustomize_roots(python: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
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
pub fn kustomized_docs(python: &Path, what: &str) -> Option<Vec<(String, Value)>> {
    let kubectl = kubectl(what)?;
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
pub fn visit<'a>(v: &'a Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &'a Value)) {
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

/// Every container of a pod spec: init, regular and ephemeral.
pub fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod_spec[*k].as_array().into_iter().flatten())
        .collect()
}

/// A JSON array of strings (a non-string reads `<not a string>`).
pub fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or("<not a string>").to_string())
        .collect()
}

/// The config.toml of the agent ConfigMap in `docs`, parsed.
pub fn agent_config(docs: &[(String, Value)], source: &str) -> toml::Table {
    let cm = docs
        .iter()
        .find(|(f, d)| f == source && kind(d) == "ConfigMap" && name(d) == "slicetrace-config")
        .unwrap_or_else(|| panic!("no ConfigMap slicetrace-config in {source}"));
    let text = cm.1["data"]["config.toml"]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: slicetrace-config has no data.config.toml"));
    toml::from_str(text).unwrap_or_else(|e| panic!("{source}: config.toml is not TOML: {e}"))
}

/// The base kustomization every overlay builds on.
pub const BASE_DIR: &str = "deploy/base";

/// A file of the base kustomization, relative to the repository root.
pub fn base_file(name: &str) -> String {
    format!("{BASE_DIR}/{name}")
}

/// The `slicetrace_*` metric names a PromQL expression mentions.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
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

/// The metric families the agent serves, by the name their samples carry,
/// with their label names (from `slicetrace_agent::serve::metrics::METRICS`, which
/// this crate cannot depend on: each test builds it).
pub type Served = BTreeMap<String, &'static [&'static str]>;

/// `(metric, label, operator, value)` of every label matcher written inside
/// `slicetrace_…{…}` in a PromQL expression.
pub fn label_matchers(expr: &str) -> Vec<(String, String, String, String)> {
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
pub fn assert_known_metrics(expr: &str, ctx: &str, served: &Served) {
    for m in metric_names(expr) {
        assert!(
            served.contains_key(&m),
            "{ctx}: the agent does not serve {m} (agent/src/metrics/table.rs METRICS) in `{expr}`"
        );
    }
    let verdicts: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
    let states: Vec<&str> = Contention::ALL.iter().map(|c| c.as_str()).collect();
    for (metric, label, op, value) in label_matchers(expr) {
        let labels = served[&metric];
        assert!(
            labels.contains(&label.as_str()),
            "{ctx}: {metric} has no label {label} (it has {labels:?}) in `{expr}`"
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

/// Runs `promtool ARGS`; the test fails, with its output, if it does.
pub fn run_promtool(promtool: &Path, args: &[&Path], what: &str) {
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
