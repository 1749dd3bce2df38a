//! Sampled spans, end to end: the agent's binary (CPU backend) exports to a
//! real rotel collector under `OTEL_TRACES_SAMPLER`, and its Parquet rows
//! say which trees went (`span_sampled`).
//!
//! - With `traceidratio` 0.25, the share of exported trees is 0.25 within
//!   binomial noise, each exported tree passes OpenTelemetry's
//!   `TraceIdRatioBased` rule on its trace id (recomputed here in Python),
//!   the collector got every tree marked exported, and the sampled-out runs
//!   keep no trace id (schema version 4), so no row names a tree that is
//!   not in the collector.
//! - With a ratio of 0, only the forced trees go: arrivals whose wait was
//!   above their GPU's p99 (the slow ones), and the health evaluations whose
//!   verdict changed. Every one of them reaches the collector.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use slicetrace_e2e::{
    bin, free_port, python_with, run_python, run_with_timeout, start_rotel, wait_for, Proc,
};

/// Per row: trace id, whether it is exported (Parquet), whether OTel's
/// TraceIdRatioBased rule keeps it at ratio argv[2], its queue_ms, and its
/// GPU and kernel, and its time (ns).
const READ_ROWS: &str = r#"
import sys, pyarrow as pa, pyarrow.dataset as ds
ratio = float(sys.argv[2])
t = ds.dataset(sys.argv[1] + "/probes", format="parquet", partitioning="hive").to_table(
    columns=["trace_id", "span_sampled", "queue_ms", "gpu_uuid", "kernel", "ts"])
bound = int(ratio * (1 << 63))
cols = [t.column(c).to_pylist() for c in ["trace_id", "span_sampled", "queue_ms", "gpu_uuid", "kernel"]]
ts = t.column("ts").cast(pa.int64()).to_pylist()
for tid, s, q, g, k, n in zip(*cols, ts):
    # Since schema version 4 a sampled-out run has no trace id ("-").
    rule = (int(tid[16:], 16) >> 1) < bound if tid is not None else None
    print(tid or "-", s, rule, q, g + "/" + k, n)
"#;

struct Row {
    trace: String,
    sampled: Option<bool>,
    by_rule: bool,
    queue_ms: f64,
    gpu_kernel: String,
    ts_ns: i64,
}

fn rows(py: &Path, data: &Path, ratio: f64) -> Vec<Row> {
    run_python(py, READ_ROWS, &[data.to_str().unwrap(), &ratio.to_string()])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Row {
                trace: f[0].to_string(),
                sampled: match f[1] {
                    "True" => Some(true),
                    "False" => Some(false),
                    _ => None,
                },
                // "None" when the row has no trace id.
                by_rule: f[2] == "True",
                queue_ms: f[3].parse().unwrap_or(f64::NAN),
                gpu_kernel: f[4].to_string(),
                ts_ns: f[5].parse().unwrap_or(0),
            }
        })
        .collect()
}

/// Runs the agent for `secs` against rotel with `sampler`/`arg`, two CPU
/// pseudo-GPUs at 20 arrivals/s each, then returns its rows and rotel, still
/// running: the spans the agent flushed at exit may still be on their way
/// into rotel's log, so the tests wait for the ones they look for.
fn run_agent(
    py: &Path,
    dir: &Path,
    sampler: &str,
    arg: &str,
    config: &str,
    secs: u32,
) -> Option<(Vec<Row>, Proc)> {
    let (grpc, http) = (free_port(), free_port());
    let rotel = start_rotel(dir, grpc, http)?;
    let data = dir.join("data");
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(bin("slicetrace-agent"));
    cmd.arg("run")
        .args(["--backend", "cpu", "--cpu-devices", "2", "--rate-hz", "20"])
        .args(["--metrics-listen", ""])
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .args(["--duration", &format!("{secs}s")])
        .args(["--otlp-endpoint", &format!("http://127.0.0.1:{grpc}")])
        .env("NODE_NAME", "sampling-node")
        .env("SLICETRACE_LOG", "info")
        .env("OTEL_TRACES_SAMPLER", sampler)
        .env("OTEL_TRACES_SAMPLER_ARG", arg)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert_eq!(
        out.status.code(),
        Some(0),
        "agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ratio: f64 = arg.parse().unwrap_or(1.0);
    let rows = rows(py, &data, ratio);
    Some((rows, rotel))
}

#[test]
fn a_trace_id_ratio_exports_that_share_of_trees_and_exactly_those() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No forced exports: the count is the ratio's alone.
    let config = "[otlp]\nforced_spans_per_gpu_per_min = 0\n[probe]\nself_test = false\n";
    let Some((rows, rotel)) = run_agent(&py, dir.path(), "traceidratio", "0.25", config, 12) else {
        return;
    };
    let n = rows.len() as f64;
    assert!(n >= 200.0, "too few rows: {n}");
    assert!(
        rows.iter().all(|r| r.sampled.is_some()),
        "every row has a decision"
    );
    let kept: Vec<&Row> = rows.iter().filter(|r| r.sampled == Some(true)).collect();
    // Binomial(n, 0.25): five standard deviations.
    let sd = (n * 0.25 * 0.75).sqrt();
    let k = kept.len() as f64;
    assert!(
        (k - 0.25 * n).abs() <= 5.0 * sd,
        "{k} of {n} exported, expected {} ± {}",
        0.25 * n,
        5.0 * sd
    );
    // Each exported tree passes OTel's TraceIdRatioBased rule on its trace
    // id; a sampled-out run keeps no id (schema version 4), so nothing in
    // the files names a tree the collector does not have.
    let disagree: Vec<&str> = kept
        .iter()
        .filter(|r| !r.by_rule)
        .map(|r| r.trace.as_str())
        .take(3)
        .collect();
    assert!(
        disagree.is_empty(),
        "not the trace-id ratio rule: {disagree:?}"
    );
    let named: Vec<&str> = rows
        .iter()
        .filter(|r| r.sampled == Some(false) && r.trace != "-")
        .map(|r| r.trace.as_str())
        .take(3)
        .collect();
    assert!(
        named.is_empty(),
        "sampled-out runs keep a trace id: {named:?}"
    );
    // The collector got every exported tree, and none of the others.
    let found = wait_for(Duration::from_secs(20), || {
        let log = rotel.log_text();
        kept.iter()
            .all(|r| log.contains(r.trace.as_str()))
            .then_some(())
    });
    assert!(found.is_some(), "exported trees missing from rotel");
}

#[test]
fn with_a_zero_ratio_only_slow_arrivals_and_changed_verdicts_are_exported() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Verdicts (and the window p99 the forced exports compare to) every
    // second; a cap high enough that it does not bind here.
    let config = "[otlp]\nforced_spans_per_gpu_per_min = 600\n\
                  [health]\nevaluate_interval_ms = 1000\nwindow_ms = 60000\n\
                  [probe]\nself_test = false\n";
    let Some((rows, rotel)) = run_agent(&py, dir.path(), "traceidratio", "0", config, 15) else {
        return;
    };
    assert!(rows.len() >= 300, "too few rows: {}", rows.len());
    let kept: Vec<&Row> = rows.iter().filter(|r| r.sampled == Some(true)).collect();
    assert!(
        !kept.is_empty(),
        "no slow arrival was forced out of {} rows",
        rows.len()
    );
    // Forced ones are the slow tail of their GPU and kernel: above the p99
    // that the evaluator (every second) published over the rows before
    // them. The p99 of a set is above the median of all but its last few
    // rows, so a forced row is above the median of its GPU and kernel's
    // rows from more than 2 s before it (checked where there are 50 of
    // them: a run's first seconds have too few). The machine's load
    // drifts, so later rows are no reference.
    let mut checked = 0;
    for r in &kept {
        let mut before: Vec<f64> = rows
            .iter()
            .filter(|o| o.gpu_kernel == r.gpu_kernel && o.ts_ns < r.ts_ns - 2_000_000_000)
            .map(|o| o.queue_ms)
            .filter(|v| v.is_finite())
            .collect();
        if before.len() < 50 {
            continue;
        }
        before.sort_by(f64::total_cmp);
        let m = before[before.len() / 2];
        assert!(
            r.queue_ms > m,
            "forced {} ({}) has queue_ms {} ≤ the median {m} of the {} rows before it",
            r.trace,
            r.gpu_kernel,
            r.queue_ms,
            before.len()
        );
        checked += 1;
    }
    eprintln!(
        "{} of {} rows forced, {checked} checked against the rows before them",
        kept.len(),
        rows.len()
    );
    // A tail, not a sample: a few percent of the rows at most.
    assert!(
        (kept.len() as f64) < 0.1 * rows.len() as f64,
        "{} of {} forced",
        kept.len(),
        rows.len()
    );
    // Every forced tree reached the collector; nothing else of the runs.
    let found = wait_for(Duration::from_secs(20), || {
        let log = rotel.log_text();
        kept.iter()
            .all(|r| log.contains(r.trace.as_str()))
            .then_some(())
    });
    assert!(found.is_some(), "forced trees missing from rotel");
    assert!(
        rows.iter()
            .all(|r| (r.sampled == Some(true)) == (r.trace != "-")),
        "a trace id on a run that was not exported, or none on one that was"
    );
    // The first verdict of each GPU and kernel is a change (from none):
    // those health spans are forced out too.
    let health = wait_for(Duration::from_secs(20), || {
        rotel.log_text().contains("health_evaluation").then_some(())
    });
    assert!(health.is_some(), "no changed verdict reached rotel");
}
