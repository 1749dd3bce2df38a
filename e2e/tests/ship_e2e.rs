//! The agent's binary ships its closed Parquet files to a real `moto_server`
//! (`[ship]`), across the faults an operator meets: S3 down at the agent's
//! start, a SIGKILL while files wait, a restart that ships them, a second
//! SIGKILL while shipping is under way (possibly between an upload and its
//! delete), and a clean stop whose last pass takes the files the writer
//! closed at shutdown. The bucket ends with every file exactly once: each
//! file seen waiting is there with its exact bytes, no row is in two
//! objects, and nothing closed is left on the node.
//!
//! The shipper's own fault tests (slow S3, a full backlog, a SIGKILL exactly
//! between upload and delete through a stage hook) are `ship/tests/moto.rs`;
//! this test is the wiring: config, agent, `/metrics`, stop order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use faults_support::{agent, metric, metrics_port, wait_metric, write_config, WAIT};
use slicetrace_e2e::{free_port, parquet_files, python_with, run_python, wait_for, Proc};

const BUCKET: &str = "fleet-e2e";
const PREFIX: &str = "slicetrace/prod";

/// A `moto_server` on `port`, killed (only it) when dropped.
struct Moto {
    _proc: Proc,
}

impl Moto {
    fn start(py: &Path, port: u16, log: PathBuf) -> Moto {
        let mut cmd = Command::new(py);
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null());
        let p = Proc::spawn(cmd, log);
        let up = wait_for(WAIT, || TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "moto did not listen: {}", p.log_text());
        Moto { _proc: p }
    }
}

/// Runs `code` with boto3 against moto on `port` (argv[1] = endpoint,
/// argv[2] = bucket, argv[3] = prefix, argv[4..] = `args`). The snippets
/// only print; once one has run to its end, the process leaves with
/// `os._exit(0)`, because pyarrow's thread pool can abort the interpreter's
/// teardown after a correct run ("terminate called without an active
/// exception", apache/arrow#34314; seen once here). An exception in the
/// snippet still fails the call.
fn boto(py: &Path, port: u16, code: &str, args: &[&str]) -> String {
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut all = vec![endpoint.as_str(), BUCKET, PREFIX];
    all.extend_from_slice(args);
    let prelude = "import sys, boto3\n\
        s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
        aws_access_key_id='test', aws_secret_access_key='test')\n";
    let epilogue = "\nimport os\nsys.stdout.flush()\nos._exit(0)\n";
    run_python(py, &format!("{prelude}{code}{epilogue}"), &all)
}

/// Every object under the prefix: key relative to it → (size, sha256), and
/// the number of rows in the probes objects and of distinct span ids in them.
const LIST_BUCKET: &str = r#"
import hashlib, io, pyarrow.parquet as pq
keys = []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3] + '/'):
    keys += [o['Key'] for o in page.get('Contents', [])]
rows, spans = 0, set()
for k in keys:
    body = s3.get_object(Bucket=sys.argv[2], Key=k)['Body'].read()
    print('obj', k[len(sys.argv[3]) + 1:], len(body), hashlib.sha256(body).hexdigest())
    if k[len(sys.argv[3]) + 1:].startswith('probes/'):
        # A run is its GPU and launch time (span ids are kept only for
        # exported spans since schema version 4).
        t = pq.read_table(io.BytesIO(body), columns=['gpu_uuid', 'ts', 'kernel'])
        rows += len(t)
        spans.update(zip(t.column('gpu_uuid').to_pylist(),
                         t.column('ts').cast('int64').to_pylist(),
                         t.column('kernel').to_pylist()))
print('rows', rows, len(spans))
"#;

struct Bucket {
    objects: BTreeMap<String, (u64, String)>,
    probe_rows: u64,
    distinct_runs: u64,
}

fn list_bucket(py: &Path, port: u16) -> Bucket {
    let out = boto(py, port, LIST_BUCKET, &[]);
    let mut b = Bucket {
        objects: BTreeMap::new(),
        probe_rows: 0,
        distinct_runs: 0,
    };
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["obj", key, size, sha] => {
                let dup = b
                    .objects
                    .insert(key.to_string(), (size.parse().unwrap(), sha.to_string()));
                assert!(dup.is_none(), "{key} listed twice");
            }
            ["rows", rows, spans] => {
                b.probe_rows = rows.parse().unwrap();
                b.distinct_runs = spans.parse().unwrap();
            }
            _ => {}
        }
    }
    b
}

/// Closed files under `data`: path relative to it → (size, sha256).
fn local_closed(py: &Path, data: &Path) -> BTreeMap<String, (u64, String)> {
    let (files, _) = parquet_files(data);
    if files.is_empty() {
        return BTreeMap::new();
    }
    let paths: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let out = run_python(
        py,
        "import sys, hashlib\nfor p in sys.argv[1:]:\n    b = open(p, 'rb').read()\n    print(p, len(b), hashlib.sha256(b).hexdigest())",
        &paths,
    );
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (p, size, sha) = (f.next()?, f.next()?, f.next()?);
            let rel = Path::new(p).strip_prefix(data).ok()?.to_str()?.to_string();
            Some((rel, (size.parse().ok()?, sha.to_string())))
        })
        .collect()
}

#[test]
fn the_agent_ships_every_closed_file_exactly_once_across_s3_down_sigkill_and_restart() {
    let Some(py) = python_with(&["moto.server", "boto3", "pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // moto's port is fixed now and moto started later: the agent's first
    // minutes see S3 down (connection refused).
    let moto_port = free_port();
    let config = write_config(
        dir.path(),
        "",
        "interval_ms = 100\n",
        &format!(
            "[parquet]\nrotate_interval_ms = 700\n\
             [ship]\nenabled = true\ndestination = \"s3://{BUCKET}/{PREFIX}/\"\n\
             endpoint = \"http://127.0.0.1:{moto_port}\"\nallow_http = true\nregion = \"us-east-1\"\n\
             scan_interval_ms = 200\nretry_initial_ms = 100\nretry_max_ms = 500\n\
             request_timeout_ms = 5000\nconnect_timeout_ms = 1000\n"
        ),
    );
    // An agent and the port of its /metrics.
    let run = |name: &str| {
        let mut cmd = agent(&config, &data);
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE");
        let p = Proc::spawn(cmd, dir.path().join(format!("{name}.log")));
        let port = metrics_port(&p);
        (p, port)
    };

    // 1. S3 down at start: files wait, attempts fail and are counted, the
    //    probes go on (rows keep being written).
    let (a1, port) = run("agent1");
    wait_metric(
        port,
        "slicetrace_ship_files_waiting",
        "files waiting",
        |v| v >= 3.0,
    );
    wait_metric(
        port,
        "slicetrace_ship_failed_attempts_total",
        "failed attempts",
        |v| v >= 2.0,
    );
    let age = metric(port, "slicetrace_ship_oldest_waiting_age_seconds");
    assert!(age.is_some_and(|a| a >= 0.0), "oldest age: {age:?}");
    assert_eq!(
        metric(port, "slicetrace_ship_files_uploaded_total"),
        Some(0.0)
    );
    let rows_before = metric(port, "slicetrace_parquet_rows_written_total").unwrap_or(0.0);
    wait_metric(
        port,
        "slicetrace_parquet_rows_written_total",
        "probing goes on while S3 is down",
        |v| v > rows_before,
    );
    a1.signal(libc::SIGKILL);
    drop(a1);
    let waiting = local_closed(&py, &data);
    assert!(waiting.len() >= 3, "{waiting:?}");

    // 2. S3 back; a restart ships what waited; SIGKILL again while it ships.
    let _moto = Moto::start(&py, moto_port, dir.path().join("moto.log"));
    boto(&py, moto_port, "s3.create_bucket(Bucket=sys.argv[2])", &[]);
    let (a2, port) = run("agent2");
    wait_metric(
        port,
        "slicetrace_ship_files_uploaded_total",
        "the waiting files shipped after the restart",
        |v| v >= waiting.len() as f64,
    );
    // Shipping goes on with the new files; kill the agent in the middle.
    let shipped = metric(port, "slicetrace_ship_files_uploaded_total").unwrap();
    wait_metric(
        port,
        "slicetrace_ship_files_uploaded_total",
        "new files shipping",
        |v| v > shipped,
    );
    a2.signal(libc::SIGKILL);
    drop(a2);

    // 3. A clean run: its last pass at SIGTERM takes the files the writer
    //    closed at shutdown.
    let (mut a3, port) = run("agent3");
    wait_metric(
        port,
        "slicetrace_ship_files_uploaded_total",
        "shipping after the second restart",
        |v| v >= 1.0,
    );
    let dropped = faults_support::http_get(port, "/metrics")
        .map(|t| faults_support::sample(&t, "slicetrace_ship_files_dropped_total"));
    assert_eq!(dropped, Some(Some(0.0)), "nothing dropped");
    a3.signal(libc::SIGTERM);
    assert_eq!(
        a3.wait_timeout(WAIT),
        Some(0),
        "agent3 did not stop cleanly: {}",
        a3.log_text()
    );

    // Nothing closed is left on the node, no temporary file either.
    let left = local_closed(&py, &data);
    assert!(
        left.is_empty(),
        "closed files not shipped at stop: {left:?}"
    );
    let (_, tmp) = parquet_files(&data);
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    // Every file that waited during the outage is in the bucket, byte for
    // byte, under the same relative path.
    let bucket = list_bucket(&py, moto_port);
    for (rel, (size, sha)) in &waiting {
        assert_eq!(
            bucket.objects.get(rel),
            Some(&(*size, sha.clone())),
            "{rel} is not in the bucket with its bytes"
        );
    }
    // Exactly once: no row is in two objects (a file shipped twice under
    // another key, or a recovered temporary file shipped beside its
    // original, would show here), and only the Hive layout is there.
    assert!(bucket.probe_rows > 0);
    assert_eq!(
        bucket.probe_rows, bucket.distinct_runs,
        "a probe row is in the bucket twice"
    );
    for key in bucket.objects.keys() {
        let parts: Vec<&str> = key.split('/').collect();
        assert!(
            parts.len() == 4
                && ["probes", "health", "rollups"].contains(&parts[0])
                && parts[1].starts_with("date=")
                && parts[2] == "node=faults-node"
                && parts[3].ends_with(".parquet")
                && !parts[3].starts_with('.'),
            "unexpected object {key}"
        );
    }
    assert!(
        bucket.objects.keys().any(|k| k.starts_with("health/")),
        "the health table ships too: {:?}",
        bucket.objects.keys()
    );
}

/// A bad `[ship]` is a usage error: exit 2 and one line naming the field,
/// before anything runs.
#[test]
fn a_bad_ship_section_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (tables, field) in [
        ("[ship]\nenabled = true\n", "ship.destination"),
        ("[ship]\nbucket = \"b\"\n", "ship.bucket"),
        (
            "[ship]\nenabled = true\ndestination = \"s3://b-ok/p\"\nendpoint = \"http://minio:9000\"\n",
            "ship.endpoint",
        ),
    ] {
        let config = write_config(dir.path(), "", "", tables);
        let out = Command::new(slicetrace_e2e::bin("slicetrace-agent"))
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tables}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{tables}: {err}");
        assert!(err.contains(field), "{tables}: {err} does not name {field}");
        let mut run = agent(&config, &dir.path().join("data"));
        run.args(["--duration", "1s"]);
        let out = slicetrace_e2e::run_with_timeout(run, WAIT);
        assert_eq!(out.status.code(), Some(2), "run {tables}");
    }
}
