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
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
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
    // The same rows and the same source (no rollups here, on either side).
    assert_eq!(json(&remote), local);
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
        rollups: false,
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

/// Rollups from S3: with the same files in a bucket, `report`, `fleet`,
/// `compare` and `plot --kind timeline` choose rollups for the same reasons
/// as on the local copy, read the same files (an hour file's leftover
/// minute file skipped on both sides) and give the same answers, `source`
/// line included. Compaction on `s3://` is refused with exit 2.
#[test]
fn s3_rollups_answer_like_local() {
    let Some(py) = python_with(&["boto3", "moto.server"]) else {
        return;
    };
    let moto = Moto::start(&py);
    let tmp = golden_dir();
    let root = tmp.path();
    let d = root.to_str().unwrap();
    let ok = |args: &[&str]| json(&slicetrace(args));
    ok(&["rollup", d, "--from-raw"]);
    // The minute rollups as the agents ship them, for compaction in S3.
    let endpoint = &moto.endpoint;
    let minutes = root.join("rollups");
    let minutes = minutes.to_str().unwrap();
    run_python(
        &py,
        UPLOAD,
        &[endpoint, "fleet-bucket", minutes, "compact/rollups"],
    );
    // Compact every hour, then put one compacted minute file back: a
    // compaction cut off between the hour file and the removals. Readers
    // must skip it (it is in the hour file's sources) here and in S3.
    let before = tempfile::tempdir().unwrap();
    copy_tree(&root.join("rollups"), before.path());
    let now = "2100-01-01T00:00:00Z";
    let compacted_here = ok(&["rollup", d, "--to", "hour", "--now", now]);
    assert!(compacted_here["hour_files_written"].as_u64().unwrap() > 0);
    let minute = walk_files(before.path())
        .into_iter()
        .find(|p| !p.to_str().unwrap().contains("-hour"))
        .unwrap();
    let rel = minute.strip_prefix(before.path()).unwrap();
    std::fs::copy(&minute, root.join("rollups").join(rel)).unwrap();
    // Raw rows and rollups in one prefix; rollups alone in another.
    run_python(&py, UPLOAD, &[endpoint, "fleet-bucket", d, "both"]);
    run_python(
        &py,
        UPLOAD,
        &[
            endpoint,
            "fleet-bucket",
            root.join("rollups").to_str().unwrap(),
            "rolled/rollups",
        ],
    );
    let run = |args: &[&str]| {
        let o = slicetrace_env(args, &moto.env());
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        o
    };
    let long = "2020-01-01T00:00:00Z..2100-01-01T00:00:00Z";
    // report over a long range: rollups (range at least --rollups-after).
    let rep = |data: &str| json(&run(&["report", data, "--where", long, "--format", "json"]));
    let local = rep(d);
    assert_eq!(items(&local)[0]["source"]["kind"], "rollups", "{local}");
    assert_eq!(items(&local)[0]["source"]["rollup_files_superseded"], 1);
    assert_eq!(rep("s3://fleet-bucket/both"), local);
    assert_eq!(rep("s3://fleet-bucket/both/probes"), local);
    // A short range reads raw rows on both sides, for the same reason.
    let short = "2020-01-01T00:00:00Z..2020-01-01T01:00:00Z";
    let raw_src = |data: &str| {
        let o = slicetrace_env(&["report", data, "--where", short], &moto.env());
        stdout(&o)
            .lines()
            .chain(stderr(&o).lines())
            .find(|l| l.starts_with("source:"))
            .map(String::from)
    };
    assert_eq!(raw_src("s3://fleet-bucket/both"), raw_src(d));
    // fleet over a long window, table and JSON.
    let fleet = |data: &str, format: &str| {
        let o = slicetrace_env(
            &[
                "fleet",
                data,
                "--window",
                "36500d",
                "--baseline-window",
                "0s",
                "--until",
                "2100-01-01T00:00:00Z",
                "--format",
                format,
            ],
            &moto.env(),
        );
        (o.status.code(), stdout(&o))
    };
    let (code, local) = fleet(d, "json");
    let v: serde_json::Value = serde_json::from_str(&local).unwrap();
    assert_eq!(v["source"]["kind"], "rollups", "{}", v["source"]);
    assert!(v["runs"]["window_runs"].as_u64().unwrap() > 0);
    assert_eq!(fleet("s3://fleet-bucket/both", "json"), (code, local));
    let (_, table) = fleet(d, "table");
    assert_eq!(fleet("s3://fleet-bucket/both", "table").1, table);
    assert!(table.contains("source: rollups"), "{table}");
    // Rollups alone (raw rows absent): compare and the timeline.
    std::fs::rename(root.join("probes"), root.join("raw-aside")).unwrap();
    let cmp = |data: &str| {
        json(&run(&[
            "compare",
            data,
            "--split-by-occupancy",
            "--format",
            "json",
        ]))
    };
    let local = cmp(d);
    assert_eq!(items(&local)[0]["source"]["kind"], "rollups", "{local}");
    assert_eq!(
        items(&local)[0]["source"]["why"],
        "no raw rows for this range"
    );
    assert_eq!(cmp("s3://fleet-bucket/rolled"), local);
    let plot = |data: &str, out: &std::path::Path| {
        let o = run(&[
            "plot",
            data,
            "--kind",
            "timeline",
            "--out",
            out.to_str().unwrap(),
        ]);
        let e = stderr(&o);
        let line = e
            .lines()
            .find(|l| l.contains("source:"))
            .unwrap()
            .to_string();
        (
            line.split_once("; ").unwrap().1.to_string(),
            std::fs::read(out).unwrap(),
        )
    };
    let out = tempfile::tempdir().unwrap();
    let (line, svg) = plot(d, &out.path().join("local.svg"));
    assert!(line.starts_with("source: rollups"), "{line}");
    assert_eq!(
        plot("s3://fleet-bucket/rolled", &out.path().join("s3.svg")),
        (line, svg)
    );
    // Compaction in the bucket: the same work as on the local copy, then
    // the same answer from the compacted objects.
    let compact = |data: &str| json(&run(&["rollup", data, "--to", "hour", "--now", now]));
    let there = compact("s3://fleet-bucket/compact");
    assert_eq!(there, compacted_here);
    let rep = |data: &str| {
        json(&run(&[
            "report", data, "--by", "kernel", "--format", "json",
        ]))
    };
    assert_eq!(
        without_rollup_source(rep("s3://fleet-bucket/compact")),
        without_rollup_source(rep(d))
    );
    // Idempotent, and a cut-off run's leftover minute object is deleted
    // without being folded in twice.
    let again = compact("s3://fleet-bucket/compact");
    assert_eq!(again["hour_files_written"], 0, "{again}");
    assert_eq!(again["minute_files_compacted"], 0, "{again}");
    let one = tempfile::tempdir().unwrap();
    let dest = one.path().join(rel);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(&minute, &dest).unwrap();
    run_python(
        &py,
        UPLOAD,
        &[
            endpoint,
            "fleet-bucket",
            one.path().to_str().unwrap(),
            "compact/rollups",
        ],
    );
    let fix = compact("s3://fleet-bucket/compact");
    assert_eq!(fix["leftovers_removed"], 1, "{fix}");
    assert_eq!(fix["hour_files_written"], 0, "{fix}");
    assert_eq!(
        without_rollup_source(rep("s3://fleet-bucket/compact")),
        without_rollup_source(rep(d))
    );
    // Building rollups from raw rows stays local: exit 2, with the reason.
    let o = slicetrace_env(
        &["rollup", "s3://fleet-bucket/both", "--from-raw"],
        &moto.env(),
    );
    assert_error(&o, &["local directory", "s3://fleet-bucket/both"]);
}

/// `v`'s objects without `source`, which must say rollups (the file counts
/// in it differ where one side has a leftover minute file).
fn without_rollup_source(mut v: serde_json::Value) -> serde_json::Value {
    for i in v.as_array_mut().unwrap() {
        let s = i.as_object_mut().unwrap().remove("source").unwrap();
        assert_eq!(s["kind"], "rollups", "{s}");
    }
    v
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for f in walk_files(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, dest).unwrap();
    }
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
