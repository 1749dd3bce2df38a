//! `--engine df://HOST:PORT`: `report` and `fleet` on a real Apache
//! Ballista cluster (one `slicetrace-ballista scheduler` and two
//! `slicetrace-ballista executor` processes on loopback, free ports) give
//! the same answers as the local engine on the same files, and the cluster
//! stops cleanly on SIGTERM. A bad `--engine` and an unreachable scheduler
//! are one-line errors with exit code 2, at once.

#![cfg(feature = "ballista")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use slicetrace_analysis::synth::{self, FleetLayout};
use slicetrace_e2e::{free_port, wait_for, Proc};

use support::*;

/// SIGTERM (Linux).
const SIGTERM: i32 = 15;

const CLUSTER_BIN: &str = env!("CARGO_BIN_EXE_slicetrace-ballista");

/// 2026-01-03T00:00:00Z, ns.
const DAY3: i64 = 1_767_398_400_000_000_000;
const MIN: i64 = 60_000_000_000;
const UNTIL: &str = "2026-01-03T02:00:00Z";

/// A scheduler and two executors this test started; SIGKILLed if a test
/// fails before [`Cluster::stop`].
struct Cluster {
    scheduler: Proc,
    executors: Vec<Proc>,
    port: u16,
}

impl Cluster {
    /// Starts the cluster with `env` set on every process (S3 settings).
    fn start(dir: &Path, env: &[(&str, &str)]) -> Cluster {
        let port = free_port();
        let mut cmd = Command::new(CLUSTER_BIN);
        cmd.args(["scheduler", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--external-host", "127.0.0.1"])
            .env("SLICETRACE_LOG", "info")
            .envs(env.iter().copied());
        let scheduler = Proc::spawn(cmd, dir.join("scheduler.log"));
        let up = wait_for(Duration::from_secs(30), || {
            scheduler
                .log_text()
                .contains(&format!("listening on 127.0.0.1:{port}"))
                .then_some(())
        });
        assert!(up.is_some(), "scheduler: {}", scheduler.log_text());
        let mut executors = Vec::new();
        for i in 0..2 {
            let (flight, grpc) = (free_port(), free_port());
            let work = dir.join(format!("executor-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            let mut cmd = Command::new(CLUSTER_BIN);
            cmd.args(["executor", "--scheduler-host", "127.0.0.1"])
                .args(["--scheduler-port", &port.to_string()])
                .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                .args(["--flight-port", &flight.to_string()])
                .args(["--grpc-port", &grpc.to_string()])
                .args(["--vcores", "2", "--work-dir", work.to_str().unwrap()])
                .env("SLICETRACE_LOG", "info")
                .envs(env.iter().copied());
            let p = Proc::spawn(cmd, dir.join(format!("executor-{i}.log")));
            let up = wait_for(Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", flight)).ok()
            });
            assert!(up.is_some(), "executor {i}: {}", p.log_text());
            executors.push(p);
        }
        Cluster {
            scheduler,
            executors,
            port,
        }
    }

    /// Tasks the executors received so far (their INFO log lines).
    fn tasks(&self) -> usize {
        self.executors
            .iter()
            .map(|e| e.log_text().matches("Received task").count())
            .sum()
    }

    fn engine(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    /// SIGTERM to the executors, then the scheduler: each must exit 0.
    fn stop(mut self) {
        for (i, e) in self.executors.iter_mut().enumerate() {
            e.signal(SIGTERM);
            let code = e.wait_timeout(Duration::from_secs(30));
            assert_eq!(code, Some(0), "executor {i}: {}", e.log_text());
        }
        self.scheduler.signal(SIGTERM);
        let code = self.scheduler.wait_timeout(Duration::from_secs(30));
        assert_eq!(code, Some(0), "scheduler: {}", self.scheduler.log_text());
    }
}

/// Six nodes of the agent's layout: a file per node every 10 minutes over
/// the last two hours, and an older day of small files.
fn fleet_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let l = FleetLayout {
        nodes: 6,
        gpus_per_node: 2,
        end_ns: DAY3 + 120 * MIN,
        span_secs: 86_400 + 7_200,
        dense_secs: 7_200,
        file_secs: 600,
        rate_per_gpu: 0.5,
        sparse_rows_per_gpu: 2,
        seed: 7,
        threads: 2,
        // One node turns slow in the window: a red check, exit 1.
        slow: Some((3, DAY3 + 90 * MIN, 4.0)),
        rollups: false,
    };
    synth::generate_fleet(tmp.path(), &l).unwrap();
    tmp
}

/// Runs `slicetrace ARGS --engine ENGINE`; returns (exit code, stdout JSON,
/// stderr).
fn on(engine: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let o = slicetrace(&[args, &["--engine", engine]].concat());
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad json ({e}): {}\n{}", stdout(&o), stderr(&o)));
    (o.status.code(), v, stderr(&o))
}

#[test]
fn report_and_fleet_on_ballista_equal_the_local_engine() {
    let logs = tempfile::tempdir().unwrap();
    let golden = golden_dir();
    let fleet = fleet_dir();
    let cluster = Cluster::start(logs.path(), &[]);
    let remote = cluster.engine();
    let g = golden.path().to_str().unwrap();
    let f = fleet.path().to_str().unwrap();

    // report: exact percentiles over every group, per node and kernel.
    let report = ["report", g, "--by", "node,kernel", "--format", "json"];
    let (lc, local, lerr) = on("local", &report);
    let (rc, dist, rerr) = on(&remote, &report);
    assert_eq!(lc, Some(0), "{lerr}");
    assert_eq!(rc, Some(0), "{rerr}");
    assert!(items(&local).len() >= 6, "{local}");
    assert_eq!(dist, local, "report differs on Ballista");
    // The runs line (what was counted) too.
    assert_eq!(rerr, lerr);

    // A filter and the default grouping (tenants included).
    let report = ["report", g, "--where", "tenants >= 1", "--format", "json"];
    let (_, local, _) = on("local", &report);
    let (rc, dist, rerr) = on(&remote, &report);
    assert_eq!(rc, Some(0), "{rerr}");
    assert_eq!(dist, local, "filtered report differs on Ballista");

    // fleet: the window and baseline aggregate, verdicts and exit code.
    // Its quantiles are DataFusion's t-digest, whose partial digests merge in
    // arrival order: two local runs differ in the last digits too (about
    // 1 % on docs/benchmarks.md's data). Everything else is exact.
    let mut check = vec!["fleet", f, "--format", "json"];
    check.extend(half_hours_until(UNTIL));
    let (lc, local, lerr) = on("local", &check);
    let (rc, dist, rerr) = on(&remote, &check);
    assert_eq!(items(&local["gpus"]).len(), 12, "{local}");
    assert_eq!(lc, Some(1), "node-03 turns slow in the window: {local}");
    assert_eq!(rc, lc, "{rerr}");
    same_fleet(&local, &dist, "");
    assert_eq!(rerr, lerr);

    // The queries ran on the executors, not in the client.
    let tasks = cluster.tasks();
    assert!(tasks >= 4, "executors ran {tasks} tasks");

    cluster.stop();
}

/// Rollup questions on a cluster. The commands' rollup path merges
/// sketches in the client, not in a DataFusion plan, so with `--engine
/// df://` a question that would read rollups reads raw rows on the
/// executors and says why (`rollup::ON_CLUSTER`); its answer equals the
/// local engine's on raw rows (`--exact`). The sketch functions themselves
/// are known to the executors: a `sketch_merge`/`sketch_quantile` query
/// over the rollup files gives the local answer, computed in tasks.
#[test]
fn rollup_questions_on_ballista_read_raw_rows_and_the_sketch_udafs_run_there() {
    let logs = tempfile::tempdir().unwrap();
    let golden = golden_dir();
    let g = golden.path().to_str().unwrap();
    let o = slicetrace(&["rollup", g, "--from-raw"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cluster = Cluster::start(logs.path(), &[]);
    let remote = cluster.engine();
    let long = "2020-01-01T00:00:00Z..2100-01-01T00:00:00Z";

    // report over a long range: rollups locally, raw rows on the cluster.
    let report = [
        "report",
        g,
        "--by",
        "node,kernel",
        "--where",
        long,
        "--format",
        "json",
    ];
    let (_, rolled, _) = on("local", &report);
    assert_eq!(items(&rolled)[0]["source"]["kind"], "rollups", "{rolled}");
    let (rc, dist, rerr) = on(&remote, &report);
    assert_eq!(rc, Some(0), "{rerr}");
    let src = &items(&dist)[0]["source"];
    assert_eq!(src["kind"], "raw", "{src}");
    assert_eq!(src["why"], slicetrace_analysis::rollup::ON_CLUSTER, "{src}");
    let (_, exact, _) = on("local", &[&report[..], &["--exact"]].concat());
    assert_eq!(without_source(dist), without_source(exact));

    // fleet over a long window: the same.
    let fleet = [
        "fleet",
        g,
        "--window",
        "36500d",
        "--baseline-window",
        "0s",
        "--until",
        "2100-01-01T00:00:00Z",
        "--format",
        "json",
    ];
    let (_, rolled, _) = on("local", &fleet);
    assert_eq!(rolled["source"]["kind"], "rollups", "{}", rolled["source"]);
    let (rc, mut dist, rerr) = on(&remote, &fleet);
    let (lc, mut exact, _) = on("local", &[&fleet[..], &["--exact"]].concat());
    assert_eq!(rc, lc, "{rerr}");
    assert_eq!(
        dist["source"]["why"],
        slicetrace_analysis::rollup::ON_CLUSTER
    );
    for v in [&mut dist, &mut exact] {
        v.as_object_mut().unwrap().remove("source");
    }
    same_fleet(&exact, &dist, "");

    // The sketch aggregate on the executors: partial merges in tasks, a
    // final merge, the same quantiles and counts as in this process.
    let tasks_before = cluster.tasks();
    let rollups = golden.path().join("rollups");
    // DataFusion reads Parquet binary columns as BinaryView by default;
    // `sketch_merge` is declared on Binary, hence the casts.
    let q = "SELECT node, kernel, sum(arrivals) AS n, \
             sketch_quantile(sketch_merge(CAST(wall_ms_sketch AS BYTEA)), 0.99) AS p99, \
             sketch_quantile(sketch_merge(CAST(queue_ms_sketch AS BYTEA)), 0.5) AS q50 \
             FROM r GROUP BY node, kernel ORDER BY node, kernel";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = |engine: slicetrace_analysis::engine::Engine| {
        rt.block_on(async {
            let ctx = engine
                .session(datafusion::prelude::SessionConfig::new(), None)
                .await
                .unwrap();
            ctx.register_parquet(
                "r",
                rollups.to_str().unwrap(),
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await
            .unwrap();
            let batches = ctx.sql(q).await.unwrap().collect().await.unwrap();
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        })
    };
    let here = answer(slicetrace_analysis::engine::Engine::Local);
    let there = answer(remote.parse().unwrap());
    assert!(here.lines().count() > 6, "{here}");
    assert_eq!(there, here);
    assert!(
        cluster.tasks() > tasks_before,
        "the sketch query ran no task on the executors"
    );
    cluster.stop();
}

/// Whether two `fleet` answers agree: booleans, nulls, integers and the
/// words of strings (counts, states, reasons, the gate) exactly; floats
/// (t-digest quantiles and what derives from them, also where a reason
/// quotes them) within 3 %, the peers' robust z-scores (differences of
/// quantiles over a MAD, near 0) within 0.5.
fn same_fleet(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
            assert_eq!(kx, ky, "{path}");
            for (k, v) in x {
                same_fleet(v, &y[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                same_fleet(u, v, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let z = path.rsplit('.').next().unwrap_or("").starts_with("peer_z");
            let d = if z {
                (x - y).abs()
            } else {
                (x - y).abs() / x.abs().max(y.abs()).max(1e-12)
            };
            assert!(d <= if z { 0.5 } else { 0.03 }, "{path}: {x} vs {y}");
        }
        // A reason quotes quantiles ("z_gpu 60.2"): the same words, and
        // numbers within the same tolerance.
        (Value::String(x), Value::String(y)) => {
            let ((sx, nx), (sy, ny)) = (numbers(x), numbers(y));
            assert_eq!(sx, sy, "{path}");
            for (u, v) in nx.iter().zip(&ny) {
                let d = (u - v).abs();
                assert!(
                    d <= 0.5 || d <= 0.03 * u.abs().max(v.abs()),
                    "{path}: {x} vs {y}"
                );
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// `s` with every decimal number replaced by `#`, and the numbers.
fn numbers(s: &str) -> (String, Vec<f64>) {
    let (mut skeleton, mut nums, mut cur) = (String::new(), Vec::new(), String::new());
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) {
            cur.push(c);
            continue;
        }
        if !cur.is_empty() {
            nums.push(cur.trim_end_matches('.').parse().unwrap());
            skeleton.push('#');
            cur.clear();
        }
        skeleton.push(c);
    }
    (skeleton, nums)
}

const UPLOAD: &str = r#"
import boto3, os, sys
endpoint, bucket, root, prefix = sys.argv[1:5]
s3 = boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1',
                  aws_access_key_id='test', aws_secret_access_key='test')
s3.create_bucket(Bucket=bucket)
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, bucket, prefix + '/' + os.path.relpath(p, root))
"#;

/// The fleet's case: the files are in a bucket, and the scheduler and the
/// executors read the same `s3://` prefix with their own `AWS_*` settings
/// (a real `moto_server` here).
#[test]
fn report_on_ballista_reads_the_same_s3_prefix() {
    let Some(py) = slicetrace_e2e::python_with(&["boto3", "moto.server"]) else {
        return;
    };
    let moto = Moto::start(&py);
    let golden = golden_dir();
    let g = golden.path().to_str().unwrap();
    slicetrace_e2e::run_python(&py, UPLOAD, &[&moto.endpoint, "fleet-bucket", g, "prod"]);
    let logs = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(logs.path(), &moto.env());
    let args = [
        "report",
        "s3://fleet-bucket/prod",
        "--by",
        "node,kernel",
        "--format",
        "json",
        "--engine",
        &cluster.engine(),
    ];
    let o = slicetrace_env(&args, &moto.env());
    let local = report_json(g, &["--by", "node,kernel"]);
    assert_eq!(
        without_source(json(&o)),
        without_source(local),
        "{}",
        cluster.executors[0].log_text()
    );
    // Read by the executors, not by the client.
    assert!(
        cluster.tasks() >= 2,
        "executors ran {} tasks",
        cluster.tasks()
    );
    cluster.stop();
}

#[test]
fn a_bad_engine_is_one_line_and_exit_2() {
    let golden = golden_dir();
    let g = golden.path().to_str().unwrap();
    for bad in [
        "ballista",
        "df://",
        "df://host:port",
        "http://127.0.0.1:50050",
    ] {
        let o = slicetrace(&["report", g, "--engine", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("bad --engine"), "{bad}: {err}");
    }
}

#[test]
fn an_unreachable_scheduler_is_a_clear_error_not_a_hang() {
    let golden = golden_dir();
    let g = golden.path().to_str().unwrap();
    // A port nothing listens on (free a moment ago).
    let engine = format!("df://127.0.0.1:{}", free_port());
    for args in [
        vec!["report", g, "--engine", &engine],
        // Inside the golden data (2026-01-01..03): files to query.
        vec![
            "fleet",
            g,
            "--engine",
            &engine,
            "--until",
            "2026-01-02T12:00:00Z",
        ],
    ] {
        let t0 = Instant::now();
        let o = slicetrace(&args);
        let took = t0.elapsed();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("cannot reach the Ballista scheduler at {engine}")),
            "{err}"
        );
        assert!(took < Duration::from_secs(15), "took {took:?}");
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
