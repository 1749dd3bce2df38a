//! Rollups against DuckDB and against themselves: merged sketch
//! percentiles within the stated relative error of DuckDB's exact ones on
//! the same raw rows (merged across minutes and nodes), compaction that is
//! atomic, idempotent and lossless in counts, readers that skip minute
//! files an hour file holds, `--exact`, and every output naming its source.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use slicetrace_e2e::{python_with, run_python};
use slicetrace_schema::SKETCH_ALPHA;

use support::*;

const DUCK_EXACT: &str = r#"
import duckdb, json, sys
root, where = sys.argv[1], sys.argv[2]
src = f"read_parquet('{root}/**/*.parquet', hive_partitioning=false, union_by_name=true)"
out = {}
for c in ['wall', 'gpu', 'queue']:
    rows = duckdb.sql(f"""SELECT kernel, quantile_cont({c}_ms, 0.5), quantile_cont({c}_ms, 0.9),
        quantile_cont({c}_ms, 0.99), list({c}_ms ORDER BY {c}_ms) FILTER (WHERE {c}_ms IS NOT NULL)
        FROM {src} WHERE {where} GROUP BY kernel ORDER BY kernel""").fetchall()
    for k, p50, p90, p99, xs in rows:
        d = out.setdefault(k, {})
        for q, v in [(0.5, p50), (0.9, p90), (0.99, p99)]:
            h = q * (len(xs) - 1)
            lo, hi = xs[int(h)], xs[min(int(h) + 1, len(xs) - 1)]
            d[f'{c}_{q}'] = {'cont': v, 'lo': lo, 'hi': hi, 'n': len(xs)}
print(json.dumps(out))
"#;

fn rollup(args: &[&str]) -> Value {
    json(&slicetrace(&[&["rollup"], args].concat()))
}

/// Moves `dir/probes` aside (raw rows absent), returning where it went.
fn hide_raw(dir: &Path) -> std::path::PathBuf {
    let to = dir.join("raw-aside");
    std::fs::rename(dir.join("probes"), &to).unwrap();
    to
}

fn report_rollups(d: &str) -> Value {
    report_json(d, &["--by", "kernel"])
}

fn by_kernel(v: &Value) -> std::collections::BTreeMap<String, Value> {
    items(v)
        .iter()
        .map(|r| (r["kernel"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn merged_rollup_percentiles_are_within_alpha_of_duckdb_exact_ones() {
    let Some(py) = python_with(&["duckdb"]) else {
        return;
    };
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let built = rollup(&[d, "--from-raw"]);
    assert!(built["rollup_rows"].as_u64().unwrap() > 100, "{built}");
    let raw = hide_raw(tmp.path());
    let ours = report_rollups(d);
    let exact: Value = serde_json::from_str(&run_python(
        &py,
        DUCK_EXACT,
        &[raw.to_str().unwrap(), slicetrace_schema::ARRIVAL_SQL],
    ))
    .unwrap();
    let ours = by_kernel(&ours);
    assert_eq!(ours.len(), 2, "{ours:?}");
    let mut worst_rank = 0.0_f64;
    let mut worst_cont = 0.0_f64;
    let mut checked = 0;
    for (kernel, row) in &ours {
        assert_eq!(row["source"]["kind"], "rollups", "{row}");
        for c in ["wall", "gpu", "queue"] {
            for (q, field) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                let e = &exact[kernel][format!("{c}_{q}")];
                // The report prints p90 for wall_ms only.
                let Some(got) = row[format!("{c}_{field}_ms")].as_f64() else {
                    assert!(c != "wall" && q == 0.9, "{c} {field} missing: {row}");
                    continue;
                };
                let (lo, hi, cont) = (
                    e["lo"].as_f64().unwrap(),
                    e["hi"].as_f64().unwrap(),
                    e["cont"].as_f64().unwrap(),
                );
                // The guarantee: within α of the exact rank quantile.
                let rank_err = (got - lo).abs() / lo.abs();
                assert!(
                    rank_err <= SKETCH_ALPHA + 1e-12,
                    "{kernel} {c} p{q}: sketch {got} vs exact rank value {lo} ({rank_err})"
                );
                // Against DuckDB's interpolated quantile_cont: within α of
                // a value between the two ranks it interpolates.
                assert!(
                    got >= lo.min(hi) * (1.0 - SKETCH_ALPHA) - 1e-12
                        && got <= lo.max(hi) * (1.0 + SKETCH_ALPHA) + 1e-12,
                    "{kernel} {c} p{q}: sketch {got} vs quantile_cont {cont} in [{lo}, {hi}]"
                );
                worst_rank = worst_rank.max(rank_err);
                worst_cont = worst_cont.max((got - cont).abs() / cont.abs());
                checked += 1;
            }
        }
        assert_eq!(
            row["runs"].as_u64().unwrap(),
            exact[kernel]["wall_0.5"]["n"].as_u64().unwrap(),
            "arrival counts"
        );
    }
    assert_eq!(checked, 14);
    eprintln!("largest relative error: {worst_rank:.5} vs the rank quantile, {worst_cont:.5} vs quantile_cont");
}

/// Reads every rollup file under argv[1] with DuckDB, pyarrow and polars;
/// prints their totals and each file's codecs and sketch encodings.
const THREE_READERS: &str = r#"
import duckdb, glob, json, sys
import polars as pl, pyarrow as pa, pyarrow.parquet as pq, pyarrow.compute as pc
root = sys.argv[1]
files = sorted(glob.glob(f"{root}/rollups/**/*.parquet", recursive=True))
d = duckdb.sql(f"""SELECT count(*), sum(runs), sum(octet_length(wall_ms_sketch))
    FROM read_parquet('{root}/rollups/**/*.parquet', hive_partitioning=false)""").fetchall()[0]
t = pa.concat_tables([pq.ParquetFile(f).read() for f in files])
pa = [t.num_rows, pc.sum(t['runs']).as_py(), pc.sum(pc.binary_length(t['wall_ms_sketch'])).as_py()]
p = pl.read_parquet(files, hive_partitioning=False).select(
    pl.len(), pl.col('runs').sum(), pl.col('wall_ms_sketch').bin.size().sum()).row(0)
codecs, sketch_enc = set(), set()
for f in files:
    m = pq.ParquetFile(f).metadata
    for g in range(m.num_row_groups):
        for i in range(m.num_columns):
            c = m.row_group(g).column(i)
            codecs.add(c.compression)
            if c.path_in_schema.endswith('_sketch'):
                sketch_enc.update(c.encodings)
print(json.dumps({'files': len(files), 'duckdb': list(d), 'pyarrow': pa, 'polars': list(p),
                  'codecs': sorted(codecs), 'sketch_encodings': sorted(sketch_enc)}))
"#;

/// The rollup files as written (snappy, sketches plain without a
/// dictionary) read the same in DuckDB, pyarrow and polars as in
/// `slicetrace`, before and after compaction to hours.
#[test]
fn rollup_files_read_the_same_in_duckdb_pyarrow_and_polars() {
    let Some(py) = python_with(&["duckdb", "pyarrow", "polars"]) else {
        return;
    };
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    rollup(&[d, "--from-raw"]);
    hide_raw(tmp.path());
    let ours = total_runs(&report_rollups(d));
    assert!(ours > 100, "{ours}");
    let read = |stage: &str| -> Value {
        let v: Value = serde_json::from_str(&run_python(&py, THREE_READERS, &[d])).unwrap();
        assert!(v["files"].as_u64().unwrap() > 0, "{stage}: {v}");
        assert_eq!(v["codecs"], serde_json::json!(["SNAPPY"]), "{stage}: {v}");
        let enc = v["sketch_encodings"].as_array().unwrap();
        assert!(
            enc.iter()
                .all(|e| !e.as_str().unwrap().contains("DICTIONARY")),
            "{stage}: {v}"
        );
        assert_eq!(v["duckdb"], v["pyarrow"], "{stage}: {v}");
        assert_eq!(v["duckdb"], v["polars"], "{stage}: {v}");
        assert_eq!(v["duckdb"][1].as_u64(), Some(ours), "{stage}: runs, {v}");
        assert!(v["duckdb"][2].as_u64().unwrap() > 0, "{stage}: {v}");
        v
    };
    let minute = read("minute files");
    let r = rollup(&[d, "--to", "hour", "--now", "2100-01-01T00:00:00Z"]);
    assert!(r["hour_files_written"].as_u64().unwrap() > 0, "{r}");
    let hour = read("hour files");
    assert_eq!(total_runs(&report_rollups(d)), ours);
    // Fewer rows once minutes are merged into hours; the same runs.
    assert!(
        hour["duckdb"][0].as_u64() < minute["duckdb"][0].as_u64(),
        "{minute} {hour}"
    );
}

fn total_runs(v: &Value) -> u64 {
    items(v).iter().map(|r| r["runs"].as_u64().unwrap()).sum()
}

#[test]
fn compaction_is_lossless_idempotent_and_safe_when_cut_off() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    rollup(&[d, "--from-raw"]);
    // Rerunning from-raw replaces its own files: nothing doubles.
    rollup(&[d, "--from-raw"]);
    hide_raw(tmp.path());
    let before = report_rollups(d);
    let files_before = count_files(&tmp.path().join("rollups"));
    let now = "2100-01-01T00:00:00Z";
    let r = rollup(&[d, "--to", "hour", "--now", now]);
    assert!(r["hour_files_written"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["minute_files_compacted"].as_u64().unwrap() as usize,
        files_before
    );
    let after = report_rollups(d);
    assert_eq!(total_runs(&before), total_runs(&after));
    // Merging is exact: the same bins, the same quantiles.
    for (k, b) in by_kernel(&before) {
        let a = &by_kernel(&after)[&k];
        for f in [
            "wall_p50_ms",
            "wall_p99_ms",
            "gpu_p50_ms",
            "queue_p99_ms",
            "runs",
        ] {
            assert_eq!(a[f], b[f], "{k} {f}");
        }
    }
    // Idempotent.
    let again = rollup(&[d, "--to", "hour", "--now", now]);
    assert_eq!(again["hour_files_written"], 0, "{again}");
    assert_eq!(again["minute_files_compacted"], 0, "{again}");
    // A run cut off after the rename, before the removal: put a minute
    // file the hour file already holds back. Readers skip it, the next run
    // removes it without folding it in again.
    let hour = first_file(&tmp.path().join("rollups"));
    let holder = hour.parent().unwrap();
    let src = read_sources(&hour);
    let leftover = holder.join(&src[0]);
    build_file_named(tmp.path(), &leftover);
    assert_eq!(total_runs(&report_rollups(d)), total_runs(&after));
    let fix = rollup(&[d, "--to", "hour", "--now", now]);
    assert_eq!(fix["leftovers_removed"], 1, "{fix}");
    assert!(!leftover.exists());
    assert_eq!(total_runs(&report_rollups(d)), total_runs(&after));
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in walk(dir) {
        if e.extension().is_some_and(|x| x == "parquet") {
            n += 1;
        }
    }
    n
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn first_file(dir: &Path) -> std::path::PathBuf {
    walk(dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("-hour.parquet"))
        .unwrap()
}

fn read_sources(p: &Path) -> Vec<String> {
    let f = std::fs::File::open(p).unwrap();
    let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    use parquet::file::reader::FileReader;
    let kv = r
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap();
    kv.iter()
        .find(|k| k.key == slicetrace_schema::rollup::ROLLUP_SOURCES_KEY)
        .and_then(|k| k.value.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Rebuilds the minute file `at` (a from-raw file) from the raw rows.
fn build_file_named(root: &Path, at: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("probes")).unwrap();
    copy_dir(&root.join("raw-aside"), &scratch.path().join("probes"));
    rollup(&[scratch.path().to_str().unwrap(), "--from-raw"]);
    let rel = at.strip_prefix(root).unwrap();
    std::fs::copy(scratch.path().join(rel), at).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn outputs_name_their_source_and_exact_forces_raw_rows() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    // Old raw-only data still reads, from raw rows, and says so.
    let raw = report_json(d, &["--by", "kernel"]);
    assert_eq!(items(&raw)[0]["source"]["kind"], "raw");
    let table = stdout(&slicetrace(&["report", d, "--by", "kernel"]));
    assert!(table.contains("source: raw rows"), "{table}");
    rollup(&[d, "--from-raw"]);
    // Raw rows present and a short range: raw; a range over --rollups-after: rollups.
    let long = report_json(
        d,
        &[
            "--by",
            "kernel",
            "--where",
            "2020-01-01T00:00:00Z..2100-01-01T00:00:00Z",
        ],
    );
    assert_eq!(items(&long)[0]["source"]["kind"], "rollups", "{long}");
    let exact = report_json(
        d,
        &[
            "--by",
            "kernel",
            "--where",
            "2020-01-01T00:00:00Z..2100-01-01T00:00:00Z",
            "--exact",
        ],
    );
    assert_eq!(items(&exact)[0]["source"]["kind"], "raw", "{exact}");
    // fleet over a long range answers from rollups and says so, in JSON and tables.
    let until = "2100-01-01T00:00:00Z";
    let out = slicetrace(&[
        "fleet",
        d,
        "--window",
        "36500d",
        "--baseline-window",
        "0s",
        "--until",
        until,
        "--format",
        "json",
    ]);
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(v["source"]["kind"], "rollups", "{}", v["source"]);
    assert!(v["runs"]["window_runs"].as_u64().unwrap() > 0);
    let out = slicetrace(&[
        "fleet",
        d,
        "--window",
        "36500d",
        "--baseline-window",
        "0s",
        "--until",
        until,
        "--exact",
    ]);
    assert!(
        stdout(&out).contains("source: raw rows (--exact)"),
        "{}",
        stdout(&out)
    );
    // With the raw rows gone, compare and the timeline answer from rollups.
    hide_raw(tmp.path());
    let v = json(&slicetrace(&[
        "compare",
        d,
        "--split-by-occupancy",
        "--format",
        "json",
    ]));
    let rows = items(&v);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["source"]["kind"] == "rollups"), "{v}");
    let table = stdout(&slicetrace(&["compare", d, "--split-by-occupancy"]));
    assert!(table.contains("source: rollups"), "{table}");
    let svg = tmp.path().join("t.svg");
    let out = slicetrace(&[
        "plot",
        d,
        "--kind",
        "timeline",
        "--out",
        svg.to_str().unwrap(),
        "--by",
        "node",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("source: rollups"), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    // The cdf needs every run's value: without raw rows it fails clearly.
    let out = slicetrace(&["plot", d, "--kind", "cdf", "--out", svg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
