//! Every YAML file under `deploy/`, and the output of every buildable
//! kustomization (`kubectl kustomize`), validates against the Kubernetes 1.29
//! and 1.33 OpenAPI schemas with `kubernetes-validate --strict` (unknown fields
//! are errors; the Prometheus Operator kinds have no schema there and are
//! checked structurally in `deploy_alerts`); the namespace admits the
//! DaemonSet under Pod Security (`privileged`, because of its hostPath
//! volumes).
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use slicetrace_e2e::deploy::*;
use slicetrace_e2e::root as repo_root;

/// Kubernetes versions the manifests must validate against.
const K8S_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

/// Kinds without a schema in kubernetes-validate (CRDs), checked structurally.
const CRD_KINDS: [(&str, &str); 2] = [
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

fn is_crd_kind(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap_or("");
    CRD_KINDS.iter().any(|(a, k)| *a == api && *k == kind(doc))
}

#[test]
fn every_manifest_validates_against_kubernetes_1_29_and_1_33() {
    let Some(python) = yaml_python("manifest validation") else {
        return;
    };
    let Some(kv) = kubernetes_validate(&python, "manifest validation") else {
        return;
    };
    let Some(kubectl) = kubectl("kustomize output validation") else {
        return;
    };

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
fn namespace_admits_the_daemonsets_host_paths_under_pod_security() {
    let Some(python) = yaml_python("Pod Security checks") else {
        return;
    };
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
