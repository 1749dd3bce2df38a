//! `slicetrace report` against DuckDB over the golden data: percentiles,
//! `--where`, the output formats and `--approx`, and hand-made records read
//! back.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use slicetrace_analysis::synth;
// The tool-or-skip rule and the venv's Python, shared by every test crate.
use slicetrace_e2e::python_with;
use slicetrace_schema::ProbeRecord;

use support::*;

/// A temporary directory with `n` hand-made runs of node `n3` on the GPU
/// `[gpu_uuid, backend, kernel]`, one a second from 2026-03-01, in one file
/// of its partition; `f` fills in the rest of run `i` (its times).
fn n3_runs(
    n: u64,
    [gpu_uuid, backend, kernel]: [&str; 3],
    f: impl Fn(u64, ProbeRecord) -> ProbeRecord,
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("probes/date=2026-03-01/node=n3");
    std::fs::create_dir_all(&d).unwrap();
    let rows: Vec<ProbeRecord> = (0..n)
        .map(|i| {
            let base = ProbeRecord {
                ts_ns: 1_772_323_200_000_000_000 + i as i64 * 1_000_000_000,
                node: "n3".into(),
                gpu_uuid: gpu_uuid.into(),
                backend: backend.parse().unwrap(),
                kernel: kernel.parse().unwrap(),
                shape: "s".into(),
                precision: "fp32".into(),
                ..Default::default()
            };
            f(i, base)
        })
        .collect();
    synth::write_file(&d.join("part-1-a.parquet"), &rows).unwrap();
    tmp
}

#[test]
fn report_percentiles_equal_duckdb_quantile_cont() {
    let Some(py) = python_with(&["duckdb"]) else {
        return;
    };
    let tmp = golden_dir();
    compare_with_duckdb(tmp.path(), "TRUE", "node,gpu_uuid,kernel", &py, false);
    compare_with_duckdb(
        tmp.path(),
        "kernel = 'fft' AND coalesce(gpu_processes, 0) > 0",
        "node,kernel",
        &py,
        false,
    );
    compare_with_duckdb(tmp.path(), "TRUE", "kernel,shape", &py, false);
    compare_with_duckdb(tmp.path(), "tenants >= 1", "kernel,tenants", &py, false);
}

#[test]
fn where_on_node_returns_only_that_node() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let v = report_json(d, &["--where", "node='node-01'", "--by", "node,kernel"]);
    let rows = items(&v);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["node"] == "node-01"));
    assert_eq!(
        rows.iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>(),
        3000
    );
    // The partition column also works through `sql`, and `DATA` may be DIR/probes.
    let probes = tmp.path().join("probes");
    let v = sql_json(
        probes.to_str().unwrap(),
        "SELECT node, count(*) AS n FROM probes WHERE node = 'node-02' GROUP BY node",
    );
    assert_eq!(v, serde_json::json!([{"node": "node-02", "n": 3000}]));
    // The predicate prunes whole node= directories: the plan lists no other node's file.
    let plan = stdout(&slicetrace(&[
        "sql",
        tmp.path().to_str().unwrap(),
        "EXPLAIN SELECT avg(wall_ms) FROM probes WHERE node = 'node-02'",
        "--format",
        "json",
    ]));
    assert!(plan.contains("node=node-02/part-"), "{plan}");
    assert!(
        !plan.contains("node=node-00") && !plan.contains("node=node-01"),
        "{plan}"
    );
}

#[test]
fn report_formats_and_approx() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let t = slicetrace(&["report", d]);
    assert_eq!(t.status.code(), Some(0), "{}", stderr(&t));
    assert!(stdout(&t).contains("p99.9 ms") && stdout(&t).contains("node-02"));
    let csv = stdout(&slicetrace(&[
        "report", d, "--by", "kernel", "--format", "csv",
    ]));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("kernel,count,runs_per_s,wall_p50_ms"));
    assert_eq!(lines.len(), 3);
    let exact = report_json(d, &["--by", "kernel"]);
    let approx = json(&slicetrace(&[
        "report", d, "--by", "kernel", "--format", "json", "--approx",
    ]));
    for (e, a) in items(&exact).iter().zip(items(&approx)) {
        assert_eq!(e["count"], a["count"]);
        let (e50, a50) = (
            e["wall_p50_ms"].as_f64().unwrap(),
            a["wall_p50_ms"].as_f64().unwrap(),
        );
        assert!(
            (e50 - a50).abs() / e50 < 0.05,
            "approx p50 {a50} far from exact {e50}"
        );
    }
    let range = slicetrace(&[
        "report",
        d,
        "--by",
        "node",
        "--where",
        "2026-01-01T00:00:00Z..2026-01-01T06:00:00Z",
        "--format",
        "json",
    ]);
    let v = json(&range);
    let n: u64 = items(&v).iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert!(
        n > 1000 && n < 1300,
        "6 h of 48 h should hold about 1/8 of 9000 rows, got {n}"
    );
}

#[test]
fn records_round_trip_through_the_cli() {
    // A file written from hand-made records reads back with the right values.
    let tmp = n3_runs(5, ["GPU-x", "cuda", "fft"], |i, r| ProbeRecord {
        wall_ms: (i + 1) as f64,
        gpu_ms: Some(0.5),
        queue_ms: Some(i as f64 + 0.5),
        ..r
    });
    let v = report_json(tmp.path().to_str().unwrap(), &["--where", "node='n3'"]);
    let r = &v[0];
    assert_eq!(r["count"], 5);
    assert_eq!(r["wall_p50_ms"], 3.0);
    assert!(close(r["wall_p99_ms"].as_f64().unwrap(), 4.96));
    assert_eq!(r["wall_max_ms"], 5.0);
    assert!(close(r["runs_per_s"].as_f64().unwrap(), 5.0 / 4.0));
    // Only the run at 5 ms is at or above p99 = 4.96: 4.5 / 5.
    assert!(close(r["tail_queue_share"].as_f64().unwrap(), 0.9));
}

#[test]
fn report_without_tenant_counts_groups_without_tenants() {
    let tmp = n3_runs(4, ["CPU-0", "cpu", "gemm"], |_, r| ProbeRecord {
        wall_ms: 1.0,
        arrival: Some(true),
        ..r
    });
    let csv = stdout(&slicetrace(&[
        "report",
        tmp.path().to_str().unwrap(),
        "--format",
        "csv",
    ]));
    assert!(csv.starts_with("node,gpu_uuid,kernel,count"), "{csv}");
}

/// A directory of schema version 3 files (full-precision doubles, an id on
/// every row, the old default encodings) beside version 4 files (rounded,
/// ids only for exported spans) reads as one table: every row counted, each
/// file's values as stored.
#[test]
fn report_reads_schema_version_3_and_4_files_side_by_side() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array};
    use parquet::arrow::ArrowWriter;
    use slicetrace_schema::{probes_batch, TraceId, SCHEMA_VERSION_KEY};

    let tmp = n3_runs(40, ["GPU-n3", "cuda", "fft"], |i, r| ProbeRecord {
        gpu_ms: Some(0.5),
        wall_ms: 1.0 + i as f64 / 1000.0,
        queue_ms: Some(0.1),
        arrival: Some(true),
        ..r
    });
    // The version 3 file: 10 later runs, one of them the slowest, at a
    // wall time that version 4 would round (5.0000001 ms).
    let rows: Vec<ProbeRecord> = (0..10)
        .map(|i| ProbeRecord {
            ts_ns: 1_772_323_300_000_000_000 + i * 1_000_000_000,
            node: "n3".into(),
            gpu_uuid: "GPU-n3".into(),
            kernel: "fft".parse().unwrap(),
            shape: "s".into(),
            precision: "fp32".into(),
            gpu_ms: Some(0.5),
            wall_ms: 2.0,
            queue_ms: Some(0.1),
            arrival: Some(true),
            trace_id: Some(TraceId::from_bytes([7; 16])),
            ..Default::default()
        })
        .collect();
    let b4 = probes_batch(&rows).unwrap();
    let mut wall: Vec<f64> = vec![2.0; 10];
    wall[3] = 5.000_000_1;
    let mut cols: Vec<ArrayRef> = b4.columns().to_vec();
    let w = b4.schema().index_of("wall_ms").unwrap();
    cols[w] = Arc::new(Float64Array::from(wall));
    // Version 3 kept the id of every run, exported or not.
    let t = b4.schema().index_of("trace_id").unwrap();
    cols[t] = Arc::new(arrow::array::StringArray::from(vec!["07".repeat(16); 10]));
    let mut meta = b4.schema().metadata().clone();
    meta.insert(SCHEMA_VERSION_KEY.into(), "3".into());
    let schema = Arc::new(b4.schema().as_ref().clone().with_metadata(meta));
    let b3 = arrow::record_batch::RecordBatch::try_new(schema.clone(), cols).unwrap();
    let f = std::fs::File::create(
        tmp.path()
            .join("probes/date=2026-03-01/node=n3/part-0-v3.parquet"),
    )
    .unwrap();
    // A plain key-value footer as every writer adds (the CLI checks it).
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new(SCHEMA_VERSION_KEY.to_string(), "3".to_string()),
            parquet::file::metadata::KeyValue::new(
                slicetrace_schema::TABLE_KEY.to_string(),
                "probes".to_string(),
            ),
        ]))
        .build();
    let mut wr = ArrowWriter::try_new(f, schema, Some(props)).unwrap();
    wr.write(&b3).unwrap();
    wr.close().unwrap();

    let data = tmp.path().to_str().unwrap();
    let v = report_json(data, &["--by", "node"]);
    let r = &items(&v)[0];
    assert_eq!(r["count"].as_u64(), Some(50), "{v}");
    // The version 3 value, unrounded, is the maximum.
    assert_eq!(r["wall_max_ms"].as_f64(), Some(5.000_000_1), "{v}");
    // The version 4 rows' largest wall time, rounded to 2^-10 ms.
    let sql = sql_json(
        data,
        "SELECT count(trace_id) AS ids, max(wall_ms) FILTER (WHERE wall_ms < 2) AS w4 FROM probes",
    );
    let s = &items(&sql)[0];
    assert_eq!(s["ids"].as_u64(), Some(10), "{sql}");
    let w4 = s["w4"].as_f64().unwrap();
    assert_eq!(w4, slicetrace_schema::precision::round_ms(1.039), "{sql}");
}
