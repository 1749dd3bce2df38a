//! The `health` table: ignored beside `probes`, and reported and queried
//! with `--table health`.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use slicetrace_schema::Kernel;
use support::*;

fn health_rows(node: &str, n: usize) -> Vec<slicetrace_schema::HealthRecord> {
    (0..n)
        .map(|i| slicetrace_schema::HealthRecord {
            ts_ns: 1_767_225_600_000_000_000 + i as i64 * 60_000_000_000,
            node: node.into(),
            gpu_uuid: "GPU-0".into(),
            kernel: if i % 2 == 0 {
                Kernel::Fft
            } else {
                Kernel::Gemm
            },
            verdict: if i >= n - 2 { "degraded" } else { "healthy" }.into(),
            reason: format!("evaluation {i}"),
            window_secs: 300,
            samples: 100,
            wall_p50_ms: Some(0.1),
            wall_p99_ms: Some(0.2 + i as f64),
            inflation: Some(1.0),
            ..Default::default()
        })
        .collect()
}

#[test]
fn health_table_beside_probes_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    one_good_file(tmp.path());
    let h = tmp.path().join("health/date=2026-01-01/node=node-00");
    std::fs::create_dir_all(&h).unwrap();
    std::fs::write(h.join("part-1-h.parquet"), "not even parquet").unwrap();
    assert_eq!(probe_rows(tmp.path().to_str().unwrap()), 200);
}

#[test]
fn table_health_reports_and_queries_the_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    one_good_file(tmp.path());
    let h = tmp.path().join("health/date=2026-01-01/node=node-00");
    std::fs::create_dir_all(&h).unwrap();
    let batch = slicetrace_schema::health_batch(&health_rows("node-00", 10)).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new(
                slicetrace_schema::SCHEMA_VERSION_KEY.to_string(),
                slicetrace_schema::SCHEMA_VERSION.to_string(),
            ),
            parquet::file::metadata::KeyValue::new(
                slicetrace_schema::TABLE_KEY.to_string(),
                "health".to_string(),
            ),
        ]))
        .build();
    let f = std::fs::File::create(h.join("part-1-h.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let d = tmp.path().to_str().unwrap();
    let v = report_json(d, &["--table", "health"]);
    let rows = items(&v);
    assert_eq!(rows.len(), 2, "{v}");
    let gemm = &rows[1];
    assert_eq!(gemm["kernel"], "gemm");
    assert_eq!(gemm["evaluations"], 5);
    assert_eq!(gemm["healthy"], 4);
    assert_eq!(gemm["degraded"], 1);
    assert_eq!(gemm["latest_verdict"], "degraded");
    assert_eq!(gemm["latest_reason"], "evaluation 9");
    assert_eq!(gemm["max_wall_p99_ms"], 9.2);
    // sql over health, also when DATA points at the probes directory.
    let probes = tmp.path().join("probes");
    let v = json_of(&[
        "sql",
        probes.to_str().unwrap(),
        "--table",
        "health",
        "SELECT verdict, count(*) AS n FROM health GROUP BY verdict ORDER BY verdict",
    ]);
    assert_eq!(
        v,
        serde_json::json!([{"verdict": "degraded", "n": 2}, {"verdict": "healthy", "n": 8}])
    );
    // Its columns are suggested for typos, and the probes table is still the default.
    assert_error(
        &slicetrace(&["report", d, "--table", "health", "--by", "verdic"]),
        &["unknown column \"verdic\"", "verdict"],
    );
    assert_eq!(probe_rows(d), 200);
}
