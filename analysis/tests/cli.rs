//! Integration tests of the `slicetrace` binary against generated golden
//! Parquet data (Hive layout, several nodes and dates), DuckDB (through the
//! Python in `SLICETRACE_PYTHON` or the repository's `.venv`) and a real
//! `moto_server` on loopback for S3.
//!
//! Tools that are missing make a test print a skip note, unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (set by tests/run.sh), where they fail it.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use slicetrace_analysis::synth::{self, SynthSpec};
use slicetrace_schema::{probes_batch, probes_schema, ProbeRecord};

const BIN: &str = env!("CARGO_BIN_EXE_slicetrace");

fn slicetrace(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .expect("run slicetrace")
}

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

fn require_tools() -> bool {
    std::env::var("SLICETRACE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// The Python that has duckdb (and boto3/moto for S3), or `None` (skip).
fn python(modules: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("SLICETRACE_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")])
        .collect();
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", &format!("import {modules}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    if require_tools() {
        panic!("SLICETRACE_REQUIRE_TOOLS=1 but no python with {modules} (set SLICETRACE_PYTHON)");
    }
    eprintln!("skip: no python with {modules}; set SLICETRACE_PYTHON to run this test");
    None
}

fn run_python(py: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DUCKDB_REPORT: &str = r#"
import duckdb, json, sys
root, where, by = sys.argv[1], sys.argv[2], sys.argv[3]
keys = by.split(',')
k = ', '.join(keys)
src = f"read_parquet('{root}/probes/**/*.parquet', hive_partitioning=false)"
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

fn compare_with_duckdb(dir: &Path, filter: &str, by: &str, py: &Path) {
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
    let ours = json(&slicetrace(&args));
    let theirs: Value = serde_json::from_str(&run_python(
        py,
        DUCKDB_REPORT,
        &[dir.to_str().unwrap(), filter, by],
    ))
    .unwrap();
    let (ours, theirs) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
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
}

#[test]
fn report_percentiles_equal_duckdb_quantile_cont() {
    let Some(py) = python("duckdb") else { return };
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
    compare_with_duckdb(tmp.path(), "TRUE", "node,gpu_uuid,kernel", &py);
    compare_with_duckdb(
        tmp.path(),
        "kernel = 'fft' AND coalesce(gpu_processes, 0) > 0",
        "node,kernel",
        &py,
    );
    compare_with_duckdb(tmp.path(), "TRUE", "kernel,shape", &py);
}

#[test]
fn where_on_node_returns_only_that_node() {
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
    let d = tmp.path().to_str().unwrap();
    let v = json(&slicetrace(&[
        "report",
        d,
        "--where",
        "node='node-01'",
        "--by",
        "node,kernel",
        "--format",
        "json",
    ]));
    let rows = v.as_array().unwrap();
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
    let v = json(&slicetrace(&[
        "sql",
        probes.to_str().unwrap(),
        "SELECT node, count(*) AS n FROM probes WHERE node = 'node-02' GROUP BY node",
        "--format",
        "json",
    ]));
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
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
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
    let exact = json(&slicetrace(&[
        "report", d, "--by", "kernel", "--format", "json",
    ]));
    let approx = json(&slicetrace(&[
        "report", d, "--by", "kernel", "--format", "json", "--approx",
    ]));
    for (e, a) in exact
        .as_array()
        .unwrap()
        .iter()
        .zip(approx.as_array().unwrap())
    {
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
    let n: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert!(
        n > 1000 && n < 1300,
        "6 h of 48 h should hold about 1/8 of 9000 rows, got {n}"
    );
}

#[test]
fn compare_split_by_occupancy_shows_both_clocks_per_tenant_level() {
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
    let d = tmp.path().to_str().unwrap();
    let v = json(&slicetrace(&[
        "compare",
        d,
        "--split-by-occupancy",
        "--format",
        "json",
    ]));
    let blocks = v.as_array().unwrap();
    let labels: Vec<&str> = blocks
        .iter()
        .map(|b| b["against"].as_str().unwrap())
        .collect();
    assert_eq!(labels, [">=1 tenants", "1 tenants", "3 tenants"]);
    for b in blocks {
        for r in b["rows"].as_array().unwrap() {
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
    v["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["verdict"] != "healthy")
        .map(|g| {
            let reasons: Vec<String> = g["kernels"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|k| {
                    k["reasons"]
                        .as_array()
                        .unwrap()
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
    let o = slicetrace(&["fleet", tmp.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["gpus"].as_array().unwrap().len(), 20);
    assert!(not_healthy(&v).is_empty());
}

#[test]
fn fleet_flags_planted_slow_node_and_exits_1() {
    let tmp = fleet_dir(SynthSpec {
        slow_node: Some("node-07".into()),
        ..fleet_spec()
    });
    let o = slicetrace(&["fleet", tmp.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let bad = not_healthy(&serde_json::from_slice(&o.stdout).unwrap());
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
    let o = slicetrace(&[
        "fleet",
        tmp.path().to_str().unwrap(),
        "--format",
        "json",
        "--slo-p99-ms",
        "100",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let bad = not_healthy(&serde_json::from_slice(&o.stdout).unwrap());
    let find = |n: &str| {
        bad.iter()
            .find(|b| b.0 == n)
            .unwrap_or_else(|| panic!("{n} not flagged: {bad:?}"))
    };
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(
        find("node-12").2.contains("throttling"),
        "{:?}",
        find("node-12")
    );
    assert_eq!(find("node-03").1, "unhealthy");
    assert!(find("node-03").2.contains("correctness"));
    assert!(
        find("node-15").2.contains("contention"),
        "{:?}",
        find("node-15")
    );
    // An SLO below everyone's p99 makes every GPU unhealthy.
    let o = slicetrace(&[
        "fleet",
        tmp.path().to_str().unwrap(),
        "--format",
        "json",
        "--slo-p99-ms",
        "0.01",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        not_healthy(&serde_json::from_slice(&o.stdout).unwrap()).len(),
        20
    );
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
    let v = json(&slicetrace(&[
        "sql",
        tmp.path().to_str().unwrap(),
        "SELECT count(*) AS n FROM probes",
        "--format",
        "json",
    ]));
    assert_eq!(v[0]["n"], 200);
}

#[test]
fn plot_writes_png_and_fontless_svg() {
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
    let d = tmp.path().to_str().unwrap();
    let keep = std::env::var_os("SLICETRACE_KEEP_PLOTS").map(PathBuf::from);
    let out_dir = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out_dir).unwrap();
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
        let o = Command::new(BIN)
            .args(&args)
            .env("SLICETRACE_NO_SYSTEM_FONTS", "1")
            .output()
            .unwrap();
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
    let Some(py) = python("duckdb, boto3, moto.server") else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let tmp = tempfile::tempdir().unwrap();
    golden(tmp.path());
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
    let local = json(&slicetrace(&[
        "report",
        tmp.path().to_str().unwrap(),
        "--format",
        "json",
    ]));
    let remote = Command::new(BIN)
        .args(["report", "s3://probes-bucket/fleet/a", "--format", "json"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .output()
        .unwrap();
    assert_eq!(json(&remote), local);
    // --s3-endpoint works too, and a wrong bucket is a clear error.
    let o = Command::new(BIN)
        .args([
            "sql",
            "s3://probes-bucket/fleet/a/probes",
            "SELECT count(*) AS n FROM probes WHERE node='node-01'",
            "--format",
            "json",
            "--s3-endpoint",
            &endpoint,
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert_eq!(json(&o), serde_json::json!([{"n": 3000}]));
    let o = Command::new(BIN)
        .args([
            "report",
            "s3://no-such-bucket/x",
            "--s3-endpoint",
            &endpoint,
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert_error(&o, &["s3://no-such-bucket"]);
}

#[test]
fn records_round_trip_through_the_cli() {
    // A file written from hand-made records reads back with the right values.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("probes/date=2026-03-01/node=n3");
    std::fs::create_dir_all(&d).unwrap();
    let rows: Vec<ProbeRecord> = (0..5)
        .map(|i| ProbeRecord {
            ts_ns: 1_772_323_200_000_000_000 + i * 1_000_000_000,
            node: "n3".into(),
            gpu_uuid: "GPU-x".into(),
            backend: "cuda".into(),
            kernel: "fft".into(),
            shape: "s".into(),
            precision: "fp32".into(),
            wall_ms: (i + 1) as f64,
            gpu_ms: Some(0.5),
            queue_ms: Some(i as f64 + 0.5),
            ..Default::default()
        })
        .collect();
    synth::write_file(&d.join("part-1-a.parquet"), &rows).unwrap();
    let v = json(&slicetrace(&[
        "report",
        tmp.path().to_str().unwrap(),
        "--where",
        "node='n3'",
        "--format",
        "json",
    ]));
    let r = &v[0];
    assert_eq!(r["count"], 5);
    assert_eq!(r["wall_p50_ms"], 3.0);
    assert!(close(r["wall_p99_ms"].as_f64().unwrap(), 4.96));
    assert_eq!(r["wall_max_ms"], 5.0);
    assert!(close(r["runs_per_s"].as_f64().unwrap(), 5.0 / 4.0));
    // Only the run at 5 ms is at or above p99 = 4.96: 4.5 / 5.
    assert!(close(r["tail_queue_share"].as_f64().unwrap(), 0.9));
}
