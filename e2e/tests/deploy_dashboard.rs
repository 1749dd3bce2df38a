//! The Grafana dashboard parses, and its queries are valid PromQL over metrics
//! the agent serves, with labels and values it writes.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};
use slicetrace_agent::serve::metrics::METRICS;
use slicetrace_e2e::deploy::*;

/// The metric families the agent serves (`METRICS`, the table `/metrics` is
/// rendered from), by the name their samples carry.
fn served_metrics() -> Served {
    METRICS
        .iter()
        .map(|d| (d.sample_name(), d.labels))
        .collect()
}

#[test]
fn grafana_dashboard_parses_and_queries_only_agent_metrics() {
    let served = served_metrics();
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
            assert_known_metrics(q, "template variable", &served);
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
            assert_known_metrics(&e, title, &served);
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
    let Some(promtool) = promtool("PromQL check of the dashboard") else {
        return;
    };
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
