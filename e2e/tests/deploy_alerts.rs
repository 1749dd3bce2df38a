//! The Prometheus Operator objects match the Service, and the PrometheusRule
//! passes `promtool check rules` and `promtool test rules`
//! (e2e/tests/alerts/promtool-tests.yaml) under every scrape setup, with each
//! alert's summary and runbook link, over metrics the agent serves.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use slicetrace_agent::serve::metrics::METRICS;
use slicetrace_e2e::deploy::*;
use slicetrace_e2e::root as repo_root;

/// The metric families the agent serves (`METRICS`, the table `/metrics` is
/// rendered from), by the name their samples carry.
fn served_metrics() -> Served {
    METRICS
        .iter()
        .map(|d| (d.sample_name(), d.labels))
        .collect()
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
fn prometheus_operator_objects_match_the_service() {
    let Some(python) = yaml_python("CRD checks") else {
        return;
    };
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

#[test]
fn prometheus_rule_passes_promtool_check_and_unit_tests_under_every_scrape_setup() {
    let Some(python) = yaml_python("PrometheusRule checks") else {
        return;
    };
    let served = served_metrics();
    let rule = prometheus_rule(&python);
    let runbook_base = format!("{}/blob/main/docs/operations.md#", repository_url());
    let anchors =
        slicetrace_e2e::markdown_anchors(&slicetrace_e2e::read_repo_file("docs/operations.md"));
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().expect("spec.groups") {
        for r in group["rules"].as_array().expect("rules") {
            let alert = r["alert"].as_str().expect("only alerting rules");
            let expr = r["expr"].as_str().expect("expr");
            assert_known_metrics(expr, alert, &served);
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
    for line in RULE_TESTS.lines() {
        let Some(series) = line.trim().strip_prefix("- series: '") else {
            continue;
        };
        let series = series.trim_end_matches('\'');
        let name = series.split('{').next().unwrap_or("");
        let Some(served_labels) = served.get(name) else {
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
        let want: BTreeSet<String> = served_labels.iter().map(|l| l.to_string()).collect();
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

    let Some(promtool) = promtool("promtool check/test rules") else {
        return;
    };
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
    let Some(python) = yaml_python("PrometheusRule checks") else {
        return;
    };
    let Some(promtool) = promtool("promtool test rules") else {
        return;
    };
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
