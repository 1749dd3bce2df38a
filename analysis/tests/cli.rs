//! Integration tests of the `slicetrace` binary against generated golden
//! Parquet data (Hive layout, several nodes and dates), DuckDB (through the
//! Python in `SLICETRACE_PYTHON` or the repository's `.venv`) and a real
//! `moto_server` on loopback for S3.
//!
//! Tools that are missing make a test skip with a note, unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (set by tests/run.sh), where they fail it
//! (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use slicetrace_analysis::synth::{self, SynthSpec};
// The tool-or-skip rule and the venv's Python, shared by every test crate.
use slicetrace_e2e::{free_port, python_with, run_python, wait_for};
use slicetrace_schema::{probes_batch, probes_schema, Kernel, ProbeRecord};

const BIN: &str = env!("CARGO_BIN_EXE_slicetrace");

fn slicetrace(args: &[&str]) -> Output {
    slicetrace_env(args, &[])
}

/// Runs `slicetrace` with `env` set on top of this process's environment
/// (less `AWS_ENDPOINT_URL`, which a test sets itself when it wants one).
fn slicetrace_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("AWS_ENDPOINT_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run slicetrace")
}

/// Runs `slicetrace` with no system fonts, as on a node without any: text
/// comes from the built-in font.
fn slicetrace_fontless(args: &[&str]) -> Output {
    slicetrace_env(args, &[("SLICETRACE_NO_SYSTEM_FONTS", "1")])
}

/// Where a test writes its plots: `$SLICETRACE_KEEP_PLOTS`, to look at them
/// afterwards, else the test's temporary directory `tmp`.
fn plot_dir(tmp: &Path) -> PathBuf {
    let dir = std::env::var_os("SLICETRACE_KEEP_PLOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Test credentials for moto's S3.
const S3_CREDS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {}", stdout(o)))
}

/// `slicetrace ARGS --format json`, which must succeed, parsed.
fn json_of(args: &[&str]) -> Value {
    json(&slicetrace(&[args, &["--format", "json"]].concat()))
}

/// The golden dataset: 3 nodes over 2 days, tenant phases 0/1/3, and on
/// node-02 every 10th run has no event time (gpu_ms and queue_ms null), as
/// on a backend without events.
fn golden(dir: &Path) {
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
fn golden_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
    tmp
}

/// How many rows `slicetrace sql` counts in the probes table of `data`.
fn probe_rows(data: &str) -> u64 {
    let v = sql_json(data, "SELECT count(*) AS n FROM probes");
    v[0]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {v}"))
}

/// `slicetrace fleet DATA --format json ARGS`, which must exit with `code`
/// (0: every GPU healthy, 1: some GPU not), parsed.
fn fleet_json(data: &Path, args: &[&str], code: i32) -> Value {
    let o = slicetrace(&[&["fleet", data.to_str().unwrap(), "--format", "json"], args].concat());
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {}", stdout(&o)))
}

/// The items of a JSON array answer (its rows, a report's GPUs...).
fn items(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {v}"))
}

/// `slicetrace report DATA ARGS --format json`, which must succeed, parsed.
fn report_json(data: &str, args: &[&str]) -> Value {
    json_of(&[&["report", data], args].concat())
}

/// `slicetrace sql DATA QUERY --format json`, which must succeed, parsed.
fn sql_json(data: &str, query: &str) -> Value {
    json_of(&["sql", data, query])
}

const DUCKDB_REPORT: &str = r#"
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

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

/// Compares `report` with DuckDB over the same rows: arrival runs (by
/// `slicetrace_schema::ARRIVAL_SQL`) unless `all_runs`. Returns the runs
/// line the CLI printed on stderr.
fn compare_with_duckdb(dir: &Path, filter: &str, by: &str, py: &Path, all_runs: bool) -> String {
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
fn compare_split_by_occupancy_shows_both_clocks_per_tenant_level() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let v = json_of(&["compare", d, "--split-by-occupancy"]);
    let blocks = items(&v);
    let labels: Vec<&str> = blocks
        .iter()
        .map(|b| b["against"].as_str().unwrap())
        .collect();
    assert_eq!(labels, [">=1 tenants", "1 tenants", "3 tenants"]);
    for b in blocks {
        for r in items(&b["rows"]) {
            let f99 = r["p99_factor"].as_f64().unwrap();
            match r["clock"].as_str().unwrap() {
                // Events hide the wait: the event clock barely moves...
                "gpu (event)" => assert!((0.9..1.1).contains(&f99), "{r}"),
                // ...while the host clock degrades.
                _ => assert!(f99 > 3.0, "{r}"),
            }
        }
    }
    let t = slicetrace(&[
        "compare",
        d,
        "--baseline",
        "2026-01-01T00:00:00Z..2026-01-01T08:00:00Z",
        "--against",
        "gpu_processes = 3",
    ]);
    assert_eq!(t.status.code(), Some(0), "{}", stderr(&t));
    assert!(stdout(&t).contains("wall (host)") && stdout(&t).contains("gpu (event)"));
}

fn fleet_dir(spec: SynthSpec) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    synth::generate(tmp.path(), &spec).unwrap();
    tmp
}

fn fleet_spec() -> SynthSpec {
    SynthSpec {
        rows: 20 * 1_000,
        nodes: 20,
        span_secs: 2 * 3600,
        tenant_phases: false,
        seed: 7,
        ..Default::default()
    }
}

fn not_healthy(v: &Value) -> Vec<(String, String, String)> {
    items(&v["gpus"])
        .iter()
        .filter(|g| g["verdict"] != "healthy")
        .map(|g| {
            let reasons: Vec<String> = items(&g["kernels"])
                .iter()
                .flat_map(|k| {
                    items(&k["reasons"])
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                })
                .collect();
            (
                g["node"].as_str().unwrap().to_string(),
                g["verdict"].as_str().unwrap().to_string(),
                reasons.join("; "),
            )
        })
        .collect()
}

#[test]
fn fleet_clean_fleet_is_healthy_and_exits_0() {
    let tmp = fleet_dir(fleet_spec());
    let v = fleet_json(tmp.path(), &[], 0);
    assert_eq!(items(&v["gpus"]).len(), 20);
    assert!(not_healthy(&v).is_empty());
}

#[test]
fn fleet_flags_planted_slow_node_and_exits_1() {
    let tmp = fleet_dir(SynthSpec {
        slow_node: Some("node-07".into()),
        ..fleet_spec()
    });
    let bad = not_healthy(&fleet_json(tmp.path(), &[], 1));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].0, "node-07");
    assert_eq!(bad[0].1, "degraded");
    assert!(
        bad[0].2.contains("slow execution at normal clocks"),
        "{}",
        bad[0].2
    );
    // The table form says the same.
    let t = slicetrace(&["fleet", tmp.path().to_str().unwrap()]);
    assert_eq!(t.status.code(), Some(1));
    assert!(
        stdout(&t).contains("1 of 20 GPUs not healthy"),
        "{}",
        stdout(&t)
    );
}

#[test]
fn fleet_tells_throttling_from_contention_and_faults() {
    let tmp = fleet_dir(SynthSpec {
        throttled_node: Some("node-12".into()),
        faulty_node: Some("node-03".into()),
        ..fleet_spec()
    });
    // Contention: two extra runs-heavy tenants on node-15 in the last hour.
    let spec = fleet_spec();
    let mut rows = synth::node_rows(
        &SynthSpec {
            tenant_phases: false,
            ..spec.clone()
        },
        15,
        1000,
    );
    for r in rows.iter_mut() {
        if r.ts_ns > spec.start_ns + 3600 * 1_000_000_000 {
            r.gpu_processes = Some(3);
            r.pod_count = Some(3);
            let q = 4.0 + (r.cycle % 7) as f64 * 0.5;
            r.queue_ms = Some(q);
            r.wall_ms = r.gpu_ms.unwrap() + q;
        }
    }
    std::fs::remove_dir_all(tmp.path().join("probes/date=2026-01-01/node=node-15")).unwrap();
    synth::write_rows(tmp.path(), &rows, 100_000, 99).unwrap();
    let v = fleet_json(tmp.path(), &["--slo-p99-ms", "100"], 1);
    let bad = not_healthy(&v);
    let find = |n: &str| {
        bad.iter()
            .find(|b| b.0 == n)
            .unwrap_or_else(|| panic!("{n} not flagged: {bad:?}"))
    };
    // Contention is not a broken GPU: node-15 is healthy and contended.
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        find("node-12").2.contains("throttling"),
        "{:?}",
        find("node-12")
    );
    assert_eq!(find("node-03").1, "unhealthy");
    assert!(find("node-03").2.contains("correctness"));
    let gpu = |v: &Value, n: &str| {
        items(&v["gpus"])
            .iter()
            .find(|g| g["node"] == n)
            .cloned()
            .unwrap()
    };
    let n15 = gpu(&v, "node-15");
    assert_eq!(n15["verdict"], "healthy", "{n15}");
    assert_eq!(n15["contention"], "contended", "{n15}");
    assert!(n15.to_string().contains("contention"), "{n15}");
    // An SLO below everyone's p99 makes every GPU over-shared, none unhealthy.
    let v = fleet_json(tmp.path(), &["--slo-p99-ms", "0.01"], 1);
    assert_eq!(not_healthy(&v).len(), 2);
    assert!(items(&v["gpus"])
        .iter()
        .all(|g| g["contention"] == "over-shared"));
}

fn one_good_file(dir: &Path) -> PathBuf {
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

fn assert_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    assert!(e.starts_with("error: "), "{e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in {e}");
    }
}

#[test]
fn errors_name_the_file_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert_error(
        &slicetrace(&["report", missing.to_str().unwrap()]),
        &["does not exist", "nope"],
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("probes")).unwrap();
    assert_error(
        &slicetrace(&["report", empty.to_str().unwrap()]),
        &["empty table", "empty/probes"],
    );

    let case = |name: &str, write: &dyn Fn(&Path)| {
        let d = tmp.path().join(name);
        one_good_file(&d);
        let bad = d.join("probes/date=2026-01-02/node=node-00");
        std::fs::create_dir_all(&bad).unwrap();
        write(&bad.join(format!("part-2-{name}.parquet")));
        slicetrace(&["report", d.to_str().unwrap()])
    };
    let o = case("text", &|p| {
        std::fs::write(p, "this is not parquet, just text\n").unwrap()
    });
    assert_error(&o, &["part-2-text.parquet", "not a Parquet file"]);

    let o = case("trunc", &|p| {
        let good = std::fs::read(one_good_file(&tmp.path().join("src"))).unwrap();
        std::fs::write(p, &good[..good.len() / 2]).unwrap();
    });
    assert_error(&o, &["part-2-trunc.parquet", "truncated"]);

    let o = case("foreign", &|p| {
        let full = probes_schema();
        let keep: Vec<usize> = (0..full.fields().len())
            .filter(|&i| full.field(i).name() != "wall_ms")
            .collect();
        let spec = SynthSpec {
            rows: 10,
            nodes: 1,
            ..Default::default()
        };
        let batch = probes_batch(&synth::node_rows(&spec, 0, 10))
            .unwrap()
            .project(&keep)
            .unwrap();
        let f = std::fs::File::create(p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    });
    assert_error(
        &o,
        &[
            "part-2-foreign.parquet",
            "missing required column \"wall_ms\"",
        ],
    );

    let o = case("newer", &|p| {
        let spec = SynthSpec {
            rows: 10,
            nodes: 1,
            ..Default::default()
        };
        let batch = probes_batch(&synth::node_rows(&spec, 0, 10)).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                slicetrace_schema::SCHEMA_VERSION_KEY.to_string(),
                "99".to_string(),
            )]))
            .build();
        let schema = Arc::new(
            batch
                .schema()
                .as_ref()
                .clone()
                .with_metadata(Default::default()),
        );
        let batch =
            arrow::array::RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap();
        let f = std::fs::File::create(p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    });
    assert_error(&o, &["part-2-newer.parquet", "schema version 99 is newer"]);

    // Bad SQL is a usage error too, and in-progress .tmp files are ignored.
    let d = tmp.path().join("tmpfiles");
    let good = one_good_file(&d);
    std::fs::write(good.with_extension("parquet.tmp"), "half written").unwrap();
    let o = slicetrace(&["report", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_error(
        &slicetrace(&["report", d.to_str().unwrap(), "--where", "no_such_col = 1"]),
        &["no_such_col"],
    );
    assert_error(
        &slicetrace(&["sql", d.to_str().unwrap(), "SELEC nonsense"]),
        &["invalid query"],
    );
    let o = slicetrace(&["report", d.to_str().unwrap(), "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(2));
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
fn plot_writes_png_and_fontless_svg() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let out_dir = plot_dir(tmp.path());
    let has_font = slicetrace_analysis::plot::FONT_CANDIDATES
        .iter()
        .any(|f| Path::new(f).is_file());
    for kind in ["cdf", "timeline"] {
        let png = out_dir.join(format!("{kind}.png"));
        let mut args = vec!["plot", d, "--out", png.to_str().unwrap(), "--kind", kind];
        if kind == "timeline" {
            args.extend(["--where", "node='node-00' AND kernel='fft'"]);
        }
        let o = slicetrace(&args);
        if has_font {
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            let bytes = std::fs::read(&png).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
        } else {
            assert_error(&o, &["no font for PNG text"]);
        }
        let svg = out_dir.join(format!("{kind}-nofont.svg"));
        let mut args = vec!["plot", d, "--out", svg.to_str().unwrap(), "--kind", kind];
        if kind == "timeline" {
            args.extend(["--where", "node='node-00' AND kernel='fft'"]);
        }
        let o = slicetrace_fontless(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let s = std::fs::read_to_string(&svg).unwrap();
        assert!(
            s.contains("<svg") && s.contains("<text") && s.contains("tenants"),
            "svg lacks text"
        );
    }
    let o = slicetrace(&["plot", d, "--out", "/tmp/x.jpg"]);
    assert_error(&o, &[".svg or .png"]);
}

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
    assert_eq!(
        stdout(&t).trim_end().lines().last().unwrap(),
        format!(
            "runs: arrivals only ({arrivals} of {rows} rows); --all-runs to include burst runs"
        )
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

#[test]
fn an_unknown_column_is_one_line_with_the_nearest_names() {
    let tmp = tempfile::tempdir().unwrap();
    one_good_file(tmp.path());
    let d = tmp.path().to_str().unwrap();
    for (args, name, near) in [
        (
            vec!["report", d, "--where", "wal_ms > 1"],
            "wal_ms",
            "wall_ms",
        ),
        (
            vec!["report", d, "--by", "kernel,tenant"],
            "tenant",
            "tenants",
        ),
        (
            vec!["compare", d, "--split-by-occupancy", "--where", "nod = 'x'"],
            "nod",
            "node",
        ),
        (
            vec!["plot", d, "--out", "/tmp/never.svg", "--by", "kernal"],
            "kernal",
            "kernel",
        ),
        (
            vec!["sql", d, "SELECT gpu_uid FROM probes"],
            "gpu_uid",
            "gpu_uuid",
        ),
    ] {
        let o = slicetrace(&args);
        assert_error(&o, &[&format!("unknown column \"{name}\""), near]);
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
        assert!(!e.contains("SELECT") || args[0] == "sql", "{e}");
        assert!(!e.contains("Valid fields"), "{e}");
    }
}

#[test]
fn a_wrong_directory_says_what_is_missing_not_that_a_filter_matched_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("not-the-data");
    std::fs::create_dir_all(wrong.join("logs")).unwrap();
    std::fs::write(wrong.join("logs/agent.log"), "hello\n").unwrap();
    let o = slicetrace(&["report", wrong.to_str().unwrap()]);
    assert_error(&o, &["no probes Parquet files under", "not-the-data"]);
    assert!(!stderr(&o).contains("match"), "{}", stderr(&o));
    // Files only an older agent's burst runs: no arrivals, and the error
    // says so and names --all-runs.
    let bursts = tmp.path().join("bursts");
    let d = bursts.join("probes/date=2026-01-01/node=node-00");
    std::fs::create_dir_all(&d).unwrap();
    let rows: Vec<ProbeRecord> = synth::node_rows(
        &SynthSpec {
            rows: 50,
            nodes: 1,
            ..Default::default()
        },
        0,
        50,
    )
    .into_iter()
    .map(|r| ProbeRecord { burst_seq: 3, ..r })
    .collect();
    synth::write_file_without(&d.join("part-1.parquet"), &rows, &synth::LATER_COLUMNS).unwrap();
    let b = bursts.to_str().unwrap();
    let o = slicetrace(&["report", b]);
    assert_error(
        &o,
        &["none of the 50 runs", "is an arrival run", "--all-runs"],
    );
    assert!(!stderr(&o).contains("match"), "{}", stderr(&o));
    let o = slicetrace(&[
        "report",
        b,
        "--all-runs",
        "--by",
        "kernel",
        "--format",
        "json",
    ]);
    assert_eq!(json(&o).as_array().unwrap().len(), 2);
    // A filter that keeps nothing says so, with the filter.
    let o = slicetrace(&["report", b, "--where", "node = 'nope'"]);
    assert_error(&o, &["no rows in", "match --where node = 'nope'"]);
    // A directory of non-Parquet subdirectories beside real data still reads
    // only the data: files outside the date=/node= layout are read too.
    let flat = tmp.path().join("flat");
    std::fs::create_dir_all(flat.join("a/b")).unwrap();
    std::fs::create_dir_all(flat.join("health")).unwrap();
    std::fs::write(flat.join("health/h.parquet"), "not parquet").unwrap();
    let spec = SynthSpec {
        rows: 30,
        nodes: 1,
        ..Default::default()
    };
    synth::write_file(&flat.join("a/b/x.parquet"), &synth::node_rows(&spec, 0, 30)).unwrap();
    synth::write_file(&flat.join("y.parquet"), &synth::node_rows(&spec, 0, 30)).unwrap();
    assert_eq!(probe_rows(flat.to_str().unwrap()), 60);
}

fn health_rows(node: &str, n: usize) -> Vec<slicetrace_schema::HealthRecord> {
    (0..n)
        .map(|i| slicetrace_schema::HealthRecord {
            ts_ns: 1_767_225_600_000_000_000 + i as i64 * 60_000_000_000,
            node: node.into(),
            gpu_uuid: "GPU-0".into(),
            kernel: if i % 2 == 0 { "fft" } else { "gemm" }.into(),
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

#[test]
fn cdf_plot_has_one_panel_per_kernel_and_dashed_legends() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let out_dir = plot_dir(tmp.path());
    let svg = out_dir.join("cdf-per-kernel.svg");
    let o = slicetrace_fontless(&["plot", d, "--out", svg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = std::fs::read_to_string(&svg).unwrap();
    let texts: Vec<&str> = s
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').and_then(|(_, r)| r.split_once("</text>")))
        .map(|(t, _)| t)
        .collect();
    // One panel per kernel, each with its own legend.
    for kernel in ["fft", "gemm"] {
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with(&format!("{kernel}: latency CDF by tenants"))),
            "{texts:?}"
        );
    }
    for label in ["0 tenants, wall", "0 tenants, gpu", "3 tenants, wall"] {
        let n = texts.iter().filter(|t| t.starts_with(label)).count();
        assert_eq!(n, 2, "{label} should be in both legends: {texts:?}");
    }
    // The FFT panel spans 0.04 to 6 ms: a log axis with ticks at 1-2-5
    // values; no tick anywhere is an odd number like 3.16.
    for tick in ["0.05", "0.1", "0.2", "0.5", "1", "2", "5"] {
        assert!(texts.contains(&tick), "no tick {tick}: {texts:?}");
    }
    for t in &texts {
        if t.parse::<f64>().is_ok() {
            let digits = t.trim_start_matches(['0', '.']).replace('.', "");
            assert!(digits.trim_end_matches('0').len() <= 2, "tick {t}");
        }
    }
    assert!(
        texts.iter().any(|t| t.contains("arrival runs")),
        "{texts:?}"
    );
}

#[test]
fn timeline_axis_is_utc_clock_time() {
    let tmp = golden_dir();
    let svg = tmp.path().join("tl.svg");
    let o = slicetrace_fontless(&[
        "plot",
        tmp.path().to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
        "--kind",
        "timeline",
        "--where",
        "node='node-00' AND kernel='fft' AND ts < TIMESTAMP '2026-01-01T02:00:00Z'",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(
        s.contains(">00:30:00</text>") || s.contains(">01:00:00</text>"),
        "{s}"
    );
    assert!(s.contains("time (UTC) on 2026-01-01"));
}
