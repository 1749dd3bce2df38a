//! Shared harness of the `slicetrace` CLI tests (`report`, `compare`,
//! `fleet`, `plot`, `errors`, `s3`, `health_table`, `arrivals`): the binary
//! run with or without fonts and S3 settings, the golden Parquet data (Hive
//! layout, several nodes and dates), hand-made runs, and the DuckDB reference
//! (through the Python in `SLICETRACE_PYTHON` or the repository's `.venv`).
//!
//! Tools that are missing make a test skip with a note, unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (set by tests/run.sh), where they fail it
//! (the shared rule of `slicetrace_e2e`).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use slicetrace_analysis::synth::{self, SynthSpec};
// The tool-or-skip rule and the venv's Python, shared by every test crate.
use slicetrace_e2e::{free_port, run_python, wait_for};

pub const BIN: &str = env!("CARGO_BIN_EXE_slicetrace");

pub fn slicetrace(args: &[&str]) -> Output {
    slicetrace_env(args, &[])
}

/// Runs `slicetrace` with `env` set on top of this process's environment
/// (less `AWS_ENDPOINT_URL`, which a test sets itself when it wants one).
pub fn slicetrace_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("AWS_ENDPOINT_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run slicetrace")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> Value {
    json_exit(o, 0)
}

/// The JSON a run printed, which must have exited with `code`, parsed.
pub fn json_exit(o: &Output, code: i32) -> Value {
    assert_eq!(o.status.code(), Some(code), "{}\n{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {}", stdout(o)))
}

/// `--until UNTIL --window 30m --baseline-window 30m`: `fleet` judges the
/// last half hour before `until` against the half hour before that.
pub fn half_hours_until(until: &str) -> [&str; 6] {
    [
        "--until",
        until,
        "--window",
        "30m",
        "--baseline-window",
        "30m",
    ]
}

/// Test credentials for moto's S3.
pub const S3_CREDS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// A `moto_server` this test started on loopback; killed (only it) when
/// dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto with `py` (a Python with `moto.server`) on a free port
    /// and waits until it answers.
    pub fn start(py: &Path) -> Moto {
        let port = free_port();
        let child = Command::new(py)
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
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let up = wait_for(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "moto_server did not start");
        moto
    }

    /// The environment that sends `slicetrace` to this moto: the test
    /// credentials, the region and `AWS_ENDPOINT_URL`.
    pub fn env(&self) -> [(&str, &str); 4] {
        [
            S3_CREDS[0],
            S3_CREDS[1],
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &self.endpoint),
        ]
    }
}

/// `slicetrace ARGS --format json`, which must succeed, parsed.
pub fn json_of(args: &[&str]) -> Value {
    json(&slicetrace(&[args, &["--format", "json"]].concat()))
}

/// The golden dataset: 3 nodes over 2 days, tenant phases 0/1/3, and on
/// node-02 every 10th run has no event time (gpu_ms and queue_ms null), as
/// on a backend without events.
pub fn golden(dir: &Path) {
    let spec = SynthSpec {
        rows: 9_000,
        nodes: 3,
        rows_per_file: 1_000,
        seed: 42,
        ..Default::default()
    };
    for n in 0..spec.nodes {
        let mut rows = synth::node_rows(&spec, n, spec.rows / spec.nodes as u64);
        if n == 2 {
            for r in rows.iter_mut().step_by(10) {
                r.gpu_ms = None;
                r.queue_ms = None;
            }
        }
        synth::write_rows(dir, &rows, spec.rows_per_file, n as u64).unwrap();
    }
}

/// The golden dataset in a fresh temporary directory.
pub fn golden_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
    tmp
}

/// How many rows `slicetrace sql` counts in the probes table of `data`.
pub fn probe_rows(data: &str) -> u64 {
    let v = sql_json(data, "SELECT count(*) AS n FROM probes");
    v[0]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {v}"))
}

/// The items of a JSON array answer (its rows, a report's GPUs...).
pub fn items(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {v}"))
}

/// `slicetrace report DATA ARGS --format json`, which must succeed, parsed.
pub fn report_json(data: &str, args: &[&str]) -> Value {
    json_of(&[&["report", data], args].concat())
}

/// `slicetrace sql DATA QUERY --format json`, which must succeed, parsed.
pub fn sql_json(data: &str, query: &str) -> Value {
    json_of(&["sql", data, query])
}

pub const DUCKDB_REPORT: &str = r#"
import duckdb, json, sys
root, where, by = sys.argv[1], sys.argv[2], sys.argv[3]
keys = by.split(',')
k = ', '.join(keys)
src = f"(SELECT *, gpu_processes AS tenants FROM read_parquet('{root}/probes/**/*.parquet', hive_partitioning=false, union_by_name=true))"
qs = [('p50', 0.5), ('p95', 0.95), ('p99', 0.99), ('p99_9', 0.999)]
aggs = ['count(*) AS count', '(epoch_ns(max(ts)) - epoch_ns(min(ts))) / 1e9 AS span_s']
for c in ['wall', 'gpu', 'queue']:
    for name, q in qs:
        aggs.append(f'quantile_cont({c}_ms, {q}) AS {c}_{name}_ms')
    aggs.append(f'max({c}_ms) AS {c}_max_ms')
sql = f"""
WITH f AS (SELECT * FROM {src} WHERE {where}),
g AS (SELECT {k}, {', '.join(aggs)} FROM f GROUP BY {k}),
t AS (SELECT {', '.join('f.' + x for x in keys)}, sum(f.queue_ms) / sum(f.wall_ms) AS tail_queue_share
      FROM f JOIN g USING ({k}) WHERE f.wall_ms >= g.wall_p99_ms AND f.queue_ms IS NOT NULL GROUP BY ALL)
SELECT * FROM g LEFT JOIN t USING ({k}) ORDER BY {k}
"""
cur = duckdb.sql(sql)
cols = [d[0] for d in cur.description]
rows = [dict(zip(cols, r)) for r in cur.fetchall()]
for r in rows:
    r['runs_per_s'] = r['count'] / r['span_s'] if r['span_s'] else None
    r['jitter'] = r['wall_p99_ms'] / r['wall_p50_ms']
    del r['span_s']
print(json.dumps(rows))
"#;

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

/// Compares `report` with DuckDB over the same rows: arrival runs (by
/// `slicetrace_schema::ARRIVAL_SQL`) unless `all_runs`. Returns the runs
/// line the CLI printed on stderr.
pub fn compare_with_duckdb(
    dir: &Path,
    filter: &str,
    by: &str,
    py: &Path,
    all_runs: bool,
) -> String {
    let mut args = vec![
        "report",
        dir.to_str().unwrap(),
        "--by",
        by,
        "--format",
        "json",
    ];
    if filter != "TRUE" {
        args.extend(["--where", filter]);
    }
    if all_runs {
        args.push("--all-runs");
    }
    let out = slicetrace(&args);
    let ours = json(&out);
    let duck_filter = if all_runs {
        filter.to_string()
    } else {
        format!("({}) AND ({filter})", slicetrace_schema::ARRIVAL_SQL)
    };
    let theirs: Value = serde_json::from_str(&run_python(
        py,
        DUCKDB_REPORT,
        &[dir.to_str().unwrap(), &duck_filter, by],
    ))
    .unwrap();
    let (ours, theirs) = (items(&ours), items(&theirs));
    assert_eq!(ours.len(), theirs.len(), "group count differs");
    assert!(!ours.is_empty());
    let mut checked = 0;
    for (o, t) in ours.iter().zip(theirs) {
        for key in by.split(',') {
            assert_eq!(o[key], t[key], "group key {key}");
        }
        assert_eq!(o["count"].as_u64(), t["count"].as_u64());
        for (field, tv) in t.as_object().unwrap() {
            let Some(tv) = tv.as_f64() else { continue };
            if by.split(',').any(|k| k == field) {
                continue;
            }
            let ov = o[field]
                .as_f64()
                .unwrap_or_else(|| panic!("we printed no {field}: {o}"));
            assert!(
                close(ov, tv),
                "{field}: slicetrace {ov} vs duckdb {tv} for {o}"
            );
            checked += 1;
        }
    }
    assert!(checked >= ours.len() * 19, "only {checked} values compared");
    stderr(&out)
}

pub fn one_good_file(dir: &Path) -> PathBuf {
    let spec = SynthSpec {
        rows: 200,
        nodes: 1,
        ..Default::default()
    };
    let rows = synth::node_rows(&spec, 0, 200);
    let d = dir.join("probes/date=2026-01-01/node=node-00");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("part-1-good.parquet");
    synth::write_file(&p, &rows).unwrap();
    p
}

pub fn assert_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    assert!(e.starts_with("error: "), "{e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in {e}");
    }
}
