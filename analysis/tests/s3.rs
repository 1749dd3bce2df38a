//! Reading the data from S3: a real `moto_server` on loopback gives the
//! same report as the local copy.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// The tool-or-skip rule and the venv's Python, shared by every test crate.
use slicetrace_e2e::{free_port, python_with, run_python, wait_for};

use support::*;

/// Test credentials for moto's S3.
const S3_CREDS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let port = free_port();
    let child = Command::new(&py)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _moto = Moto(child);
    let up = wait_for(Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "moto_server did not start");
    let tmp = golden_dir();
    // A half-written file in the bucket must be ignored, as locally.
    std::fs::File::create(
        tmp.path()
            .join("probes/date=2026-01-01/node=node-00/part-9.parquet.tmp"),
    )
    .unwrap()
    .write_all(b"partial")
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let n = run_python(
        &py,
        UPLOAD,
        &[
            &endpoint,
            "probes-bucket",
            tmp.path().to_str().unwrap(),
            "fleet/a",
        ],
    );
    assert!(n.trim().parse::<u32>().unwrap() >= 6);
    let local = report_json(tmp.path().to_str().unwrap(), &[]);
    let remote = slicetrace_env(
        &["report", "s3://probes-bucket/fleet/a", "--format", "json"],
        &[
            S3_CREDS[0],
            S3_CREDS[1],
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
        ],
    );
    assert_eq!(json(&remote), local);
    // --s3-endpoint works too, and a wrong bucket is a clear error.
    let o = slicetrace_env(
        &[
            "sql",
            "s3://probes-bucket/fleet/a/probes",
            "SELECT count(*) AS n FROM probes WHERE node='node-01'",
            "--format",
            "json",
            "--s3-endpoint",
            &endpoint,
        ],
        &S3_CREDS,
    );
    assert_eq!(json(&o), serde_json::json!([{"n": 3000}]));
    let o = slicetrace_env(
        &[
            "report",
            "s3://no-such-bucket/x",
            "--s3-endpoint",
            &endpoint,
        ],
        &S3_CREDS,
    );
    assert_error(&o, &["s3://no-such-bucket"]);
}
