//! Arrival runs: old files (no `arrival` column) and new ones mixed equal
//! DuckDB, bursts wait longer than arrivals beside tenants, and `tenants`
//! is a column of every command.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use slicetrace_analysis::synth::{self, SynthSpec};
// The tool-or-skip rule and the venv's Python, shared by every test crate.
use slicetrace_e2e::{python_with, run_python};
use slicetrace_schema::Kernel;

use support::*;

/// A directory that mixes files an older agent wrote (no `arrival` column:
/// the first FFT run of a burst stands in) with new files (bursts of 4,
/// `arrival` set on the first run of each kernel's burst), on two nodes.
fn mixed_old_new(dir: &Path) -> (u64, u64) {
    let old = SynthSpec {
        rows: 1_600,
        nodes: 1,
        span_secs: 6 * 3600,
        burst_runs: 8,
        seed: 3,
        ..Default::default()
    };
    let new = SynthSpec {
        burst_runs: 4,
        start_ns: old.start_ns + 6 * 3_600_000_000_000,
        ..old.clone()
    };
    let (mut rows, mut arrivals) = (0, 0);
    for n in 0..2 {
        let before = synth::node_rows(&old, n, old.rows);
        let after = synth::node_rows(&new, n, new.rows);
        rows += (before.len() + after.len()) as u64;
        arrivals += before
            .iter()
            .filter(|r| r.burst_seq == 0 && r.kernel == Kernel::Fft)
            .count() as u64;
        arrivals += after.iter().filter(|r| r.arrival == Some(true)).count() as u64;
        let d = dir.join(format!(
            "probes/date=2026-01-01/node={}",
            synth::node_name(n)
        ));
        std::fs::create_dir_all(&d).unwrap();
        synth::write_file_without(
            &d.join("part-1-old.parquet"),
            &before,
            &synth::LATER_COLUMNS,
        )
        .unwrap();
        synth::write_file(&d.join("part-2-new.parquet"), &after).unwrap();
    }
    (rows, arrivals)
}

fn runs_line(e: &str) -> &str {
    e.lines()
        .find(|l| l.starts_with("runs: "))
        .unwrap_or_else(|| panic!("no runs line in {e}"))
}

#[test]
fn arrival_runs_of_mixed_old_and_new_files_equal_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, arrivals) = mixed_old_new(tmp.path());
    // Old files: 1/16 of the runs are arrivals (first FFT of a burst of 8);
    // new files: 1/4 (first run of each kernel's burst of 4).
    assert_eq!(rows, 6_400);
    assert_eq!(arrivals, 2 * (100 + 400));
    let d = tmp.path().to_str().unwrap();
    let v = report_json(d, &["--by", "kernel"]);
    let by_kernel: Vec<(String, u64)> = items(&v)
        .iter()
        .map(|r| {
            (
                r["kernel"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    // GEMM arrivals come only from the new files.
    assert_eq!(
        by_kernel,
        [("fft".to_string(), 200 + 400), ("gemm".to_string(), 400)]
    );
    let all = json(&slicetrace(&[
        "report",
        d,
        "--by",
        "kernel",
        "--format",
        "json",
        "--all-runs",
    ]));
    let total: u64 = items(&all)
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, rows);
    // The table form says which runs it counted, as its last line.
    let t = slicetrace(&["report", d]);
    assert_eq!(t.status.code(), Some(0), "{}", stderr(&t));
    // The table form says which runs it counted and, last, where they came
    // from.
    let out = stdout(&t);
    let last: Vec<&str> = out.trim_end().lines().rev().take(2).collect();
    assert_eq!(
        last,
        [
            "source: raw rows (no rollups for this range)".to_string(),
            format!(
                "runs: arrivals only ({arrivals} of {rows} rows); --all-runs to include burst runs"
            )
        ]
    );
    // Default groups split tenant phases.
    assert!(stdout(&t).contains("tenants"), "{}", stdout(&t));

    let Some(py) = python_with(&["duckdb"]) else {
        return;
    };
    let e = compare_with_duckdb(tmp.path(), "TRUE", "node,kernel,tenants", &py, false);
    assert!(
        runs_line(&e).contains(&format!("({arrivals} of {rows} rows)")),
        "{e}"
    );
    compare_with_duckdb(tmp.path(), "tenants >= 1", "kernel,tenants", &py, false);
    let e = compare_with_duckdb(tmp.path(), "TRUE", "node,kernel,tenants", &py, true);
    assert!(runs_line(&e).contains("all, burst runs included"), "{e}");
    // The counts agree with DuckDB's reading of the same rule.
    let counts = run_python(
        &py,
        &format!(
            "import duckdb, sys\n\
             print(*duckdb.sql(\"SELECT count(*), sum(CASE WHEN {} THEN 1 ELSE 0 END) FROM \
             read_parquet('\" + sys.argv[1] + \"/probes/**/*.parquet', union_by_name=true)\").fetchall()[0])",
            slicetrace_schema::ARRIVAL_SQL.replace('\'', "\\'")
        ),
        &[d],
    );
    assert_eq!(counts.trim(), format!("{rows} {arrivals}"));
}

#[test]
fn burst_runs_wait_longer_than_arrivals_beside_tenants() {
    // What --all-runs is for: the same data, read with and without bursts.
    let tmp = tempfile::tempdir().unwrap();
    mixed_old_new(tmp.path());
    let d = tmp.path().to_str().unwrap();
    let p50 = |extra: &[&str]| {
        let mut a = vec![
            "report",
            d,
            "--by",
            "kernel",
            "--where",
            "tenants = 3",
            "--format",
            "json",
        ];
        a.extend(extra);
        let v = json(&slicetrace(&a));
        v[1]["wall_p50_ms"].as_f64().unwrap()
    };
    let (arr, all) = (p50(&[]), p50(&["--all-runs"]));
    assert!(all > arr * 1.5, "burst p50 {all} vs arrival p50 {arr}");
}

#[test]
fn tenants_is_a_column_of_every_command() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let v = report_json(d, &["--by", "kernel,tenants", "--where", "tenants >= 1"]);
    let keys: Vec<(String, Value)> = items(&v)
        .iter()
        .map(|r| {
            (
                r["kernel"].as_str().unwrap().to_string(),
                r["tenants"].clone(),
            )
        })
        .collect();
    // Numbers stay numbers, in numeric order.
    assert_eq!(
        keys,
        [
            ("fft".to_string(), serde_json::json!(1)),
            ("fft".to_string(), serde_json::json!(3)),
            ("gemm".to_string(), serde_json::json!(1)),
            ("gemm".to_string(), serde_json::json!(3)),
        ]
    );
    let n: u64 = items(&v).iter().map(|r| r["count"].as_u64().unwrap()).sum();
    let sql = sql_json(
        d,
        "SELECT count(*) AS n FROM arrivals WHERE tenants = gpu_processes AND tenants >= 1",
    );
    assert_eq!(sql[0]["n"].as_u64(), Some(n));
    // The default report groups by tenants when the data knows them...
    let t = stdout(&slicetrace(&["report", d, "--format", "csv"]));
    assert!(t.starts_with("node,gpu_uuid,kernel,tenants,count"), "{t}");
    // ...and compare and plot take it too.
    let o = slicetrace(&[
        "compare",
        d,
        "--baseline",
        "tenants = 0",
        "--against",
        "tenants = 3",
        "--format",
        "json",
    ]);
    let blocks = json(&o);
    let rows = items(&blocks[0]["rows"]);
    for r in rows {
        let wall = r["clock"] == "wall (host)";
        // No rate on the host clock: the probe's own runs per second are no
        // one's throughput.
        assert_eq!(r["throughput_change_pct"].is_null(), wall, "{r}");
    }
    let svg = tmp.path().join("t.svg");
    let o = slicetrace(&[
        "plot",
        d,
        "--out",
        svg.to_str().unwrap(),
        "--kind",
        "timeline",
        "--by",
        "kernel,tenants",
        "--where",
        "node = 'node-00'",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("runs: arrivals only"), "{}", stderr(&o));
}
