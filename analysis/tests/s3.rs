//! Reading the data from S3: a real `moto_server` on loopback gives the
//! same report as the local copy.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;

// The tool-or-skip rule and the venv's Python, shared by every test crate.
use slicetrace_e2e::{python_with, run_python};

use support::*;

const UPLOAD: &str = r#"
import boto3, os, sys
endpoint, bucket, root, prefix = sys.argv[1:5]
s3 = boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1',
                  aws_access_key_id='test', aws_secret_access_key='test')
s3.create_bucket(Bucket=bucket)
n = 0
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, bucket, prefix + '/' + os.path.relpath(p, root))
        n += 1
print(n)
"#;

#[test]
fn s3_report_from_moto_equals_local_report() {
    let Some(py) = python_with(&["duckdb", "boto3", "moto.server"]) else {
        return;
    };
    let moto = Moto::start(&py);
    let tmp = golden_dir();
    // A half-written file in the bucket must be ignored, as locally.
    std::fs::File::create(
        tmp.path()
            .join("probes/date=2026-01-01/node=node-00/part-9.parquet.tmp"),
    )
    .unwrap()
    .write_all(b"partial")
    .unwrap();
    let endpoint = &moto.endpoint;
    let n = run_python(
        &py,
        UPLOAD,
        &[
            endpoint,
            "probes-bucket",
            tmp.path().to_str().unwrap(),
            "fleet/a",
        ],
    );
    assert!(n.trim().parse::<u32>().unwrap() >= 6);
    let local = report_json(tmp.path().to_str().unwrap(), &[]);
    let remote = slicetrace_env(
        &["report", "s3://probes-bucket/fleet/a", "--format", "json"],
        &moto.env(),
    );
    assert_eq!(without_source(json(&remote)), without_source(local));
    // --s3-endpoint works too, and a wrong bucket is a clear error.
    let o = slicetrace_env(
        &[
            "sql",
            "s3://probes-bucket/fleet/a/probes",
            "SELECT count(*) AS n FROM probes WHERE node='node-01'",
            "--format",
            "json",
            "--s3-endpoint",
            endpoint,
        ],
        &S3_CREDS,
    );
    assert_eq!(json(&o), serde_json::json!([{"n": 3000}]));
    let o = slicetrace_env(
        &["report", "s3://no-such-bucket/x", "--s3-endpoint", endpoint],
        &S3_CREDS,
    );
    assert_error(&o, &["s3://no-such-bucket"]);
}

/// `fleet` over S3 lists and prunes as it does on a local directory: the
/// same partitions, files listed, pruned by name, opened and scanned, and the
/// same states.
#[test]
fn s3_fleet_prunes_like_local() {
    let Some(py) = python_with(&["boto3", "moto.server"]) else {
        return;
    };
    let moto = Moto::start(&py);
    // 6 nodes, a file every 10 minutes, 2026-01-02T23:00Z..2026-01-03T02:00Z.
    let tmp = tempfile::tempdir().unwrap();
    let layout = slicetrace_analysis::synth::FleetLayout {
        nodes: 6,
        gpus_per_node: 1,
        end_ns: 1_767_398_400_000_000_000 + 2 * 3_600_000_000_000,
        span_secs: 3 * 3600,
        dense_secs: 7200,
        file_secs: 600,
        rate_per_gpu: 0.2,
        sparse_rows_per_gpu: 2,
        seed: 3,
        threads: 2,
        slow: None,
    };
    slicetrace_analysis::synth::generate_fleet(tmp.path(), &layout).unwrap();
    let endpoint = &moto.endpoint;
    run_python(
        &py,
        UPLOAD,
        &[
            endpoint,
            "fleet-bucket",
            tmp.path().to_str().unwrap(),
            "agents",
        ],
    );
    let fleet = |data: &str| {
        let args = [
            &["fleet", data][..],
            &half_hours_until("2026-01-03T02:00:00Z"),
            &["--format", "json"],
        ]
        .concat();
        json(&slicetrace_env(&args, &moto.env()))
    };
    let local = fleet(tmp.path().to_str().unwrap());
    let remote = fleet("s3://fleet-bucket/agents");
    assert_eq!(remote["scan"], local["scan"]);
    assert_eq!(remote["summary"], local["summary"]);
    assert_eq!(local["scan"]["partitions_listed"], 1, "{}", local["scan"]);
    assert_eq!(local["scan"]["partitions_pruned"], 1, "{}", local["scan"]);
    assert_eq!(local["summary"]["healthy"], 6, "{local}");
}

/// `v` without the `source` field of its objects: local and S3 reads name
/// their (raw) source with different reasons; the rows must be equal.
fn without_source(mut v: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Array(items) = &mut v {
        for i in items {
            if let Some(o) = i.as_object_mut() {
                let kind = o
                    .remove("source")
                    .and_then(|s| s["kind"].as_str().map(String::from));
                assert_eq!(kind.as_deref(), Some("raw"), "read from raw rows");
            }
        }
    }
    v
}
