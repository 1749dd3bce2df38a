//! `slicetrace fleet` at fleet scale, on the agent's file layout (a file per
//! node every 10 minutes here, an older day of small files): what is
//! listed and opened, stale GPUs and nodes, unreadable files, the limits on
//! unknown and stale GPUs, and a baseline period apart from the window.
//!
//! Every check runs with `--until` (the data is from 2026), a 30-minute
//! window and a 30-minute baseline period: it reads 01:00..02:00 of the last
//! day.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use slicetrace_analysis::synth::{self, FleetLayout};

use support::*;

/// 2026-01-03T00:00:00Z, ns.
const DAY3: i64 = 1_767_398_400_000_000_000;
const MIN: i64 = 60_000_000_000;
const UNTIL: &str = "2026-01-03T02:00:00Z";
const NODES: usize = 6;

fn layout() -> FleetLayout {
    FleetLayout {
        nodes: NODES,
        gpus_per_node: 1,
        end_ns: DAY3 + 120 * MIN,
        span_secs: 86_400 + 7_200,
        dense_secs: 7_200,
        file_secs: 600,
        rate_per_gpu: 0.2,
        sparse_rows_per_gpu: 2,
        seed: 11,
        threads: 2,
        slow: None,
        rollups: false,
    }
}

fn fleet_dir(l: &FleetLayout) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    synth::generate_fleet(tmp.path(), l).unwrap();
    tmp
}

fn node_dir(data: &Path, node: &str) -> PathBuf {
    data.join(format!("probes/date=2026-01-03/node={node}"))
}

/// The files of `node` on the last day whose names start at or after
/// `minute` (minutes after midnight).
fn files_from(data: &Path, node: &str, minute: i64) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(node_dir(data, node))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            let hhmm: i64 = n[14..18].parse().unwrap();
            hhmm / 100 * 60 + hhmm % 100 >= minute
        })
        .collect();
    out.sort();
    out
}

/// `slicetrace fleet DATA --until UNTIL --window 30m --baseline-window 30m
/// --format json ARGS`, which must exit with `code`, parsed.
fn check(data: &Path, args: &[&str], code: i32) -> Value {
    let o = fleet(data, &[&["--format", "json"], args].concat());
    json_exit(&o, code)
}

/// `slicetrace fleet DATA --until UNTIL --window 30m --baseline-window 30m
/// ARGS` (a table unless ARGS ask for JSON), for [`check`] and the tables.
fn fleet(data: &Path, args: &[&str]) -> Output {
    slicetrace(
        &[
            &["fleet", data.to_str().unwrap()][..],
            &half_hours_until(UNTIL),
            args,
        ]
        .concat(),
    )
}

fn gpu<'a>(v: &'a Value, node: &str) -> &'a Value {
    items(&v["gpus"])
        .iter()
        .find(|g| g["node"] == node)
        .unwrap_or_else(|| panic!("no {node} in {v}"))
}

#[test]
fn fleet_opens_only_the_files_of_the_window_and_baseline() {
    let l = layout();
    let tmp = fleet_dir(&l);
    // A broken file in the last day, 00:15, long before the range: never
    // opened, so never reported.
    std::fs::write(
        node_dir(tmp.path(), "node-00").join("part-20260103T001500Z-broken.parquet"),
        b"PAR1 not a footer",
    )
    .unwrap();
    let v = check(tmp.path(), &[], 0);
    let s = &v["scan"];
    // Only date=2026-01-03 is listed (2026-01-02 is not); per node its 12
    // files (+1 broken):
    // 00:00..00:40 and the broken one end before 01:00 by their successors'
    // names; 00:50 is opened and its ts statistics rule it out; 01:00..01:50
    // are read.
    assert_eq!(s["partitions_listed"], 1, "{s}");
    assert_eq!(s["partitions_pruned"], 1, "{s}");
    assert_eq!(s["files_listed"], 12 * NODES + 1, "{s}");
    assert_eq!(s["files_pruned_by_name"], 5 * NODES + 1, "{s}");
    assert_eq!(s["files_opened"], 7 * NODES, "{s}");
    assert_eq!(s["files_pruned_by_stats"], NODES, "{s}");
    assert_eq!(s["row_groups_skipped"], NODES, "{s}");
    assert_eq!(s["files_scanned"], 6 * NODES, "{s}");
    assert_eq!(s["files_skipped"], 0, "{s}");
    assert_eq!(v["summary"]["healthy"], NODES, "{v}");
    assert_eq!(v["window_start"], "2026-01-03T01:30:00Z");
    assert_eq!(v["window_end"], UNTIL);
    // Without name pruning every listed file of the day is opened, the
    // broken one included: skipped, named, exit 4.
    let v = check(tmp.path(), &["--no-name-pruning"], 4);
    assert_eq!(v["scan"]["files_opened"], 12 * NODES + 1);
    assert_eq!(v["scan"]["files_skipped"], 1);
}

#[test]
fn fleet_window_ends_now_by_default() {
    let tmp = fleet_dir(&layout());
    // Data from 2026-01-03 seen from now: every GPU is stale, the check red.
    let o = slicetrace(&["fleet", tmp.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["healthy"], 0, "{v}");
    assert!(v["gate"]["reasons"].to_string().contains("no GPU"), "{v}");
    assert_eq!(v["scan"]["files_opened"], 0, "{v}");
}

#[test]
fn fleet_gpu_without_runs_in_the_window_is_stale_with_its_age() {
    let tmp = fleet_dir(&layout());
    // node-05 stops at 01:20 (no run in the 01:30..02:00 window); node-04
    // at 00:30 (no row in the whole range: only its files say it exists).
    for f in files_from(tmp.path(), "node-05", 80) {
        std::fs::remove_file(f).unwrap();
    }
    for f in files_from(tmp.path(), "node-04", 30) {
        std::fs::remove_file(f).unwrap();
    }
    let v = check(tmp.path(), &[], 1);
    assert_eq!(v["summary"]["stale"], 2, "{v}");
    assert_eq!(v["summary"]["healthy"], NODES - 2, "{v}");
    assert_eq!(v["summary"]["unknown"], 0, "{v}");
    let n5 = gpu(&v, "node-05");
    assert_eq!(n5["state"], "stale", "{n5}");
    let age = n5["age_secs"].as_f64().unwrap();
    assert!((40.0 * 60.0..=50.0 * 60.0).contains(&age), "{n5}");
    let n4 = gpu(&v, "node-04");
    assert_eq!(n4["state"], "stale", "{n4}");
    assert!(
        n4["newest"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-03T00:20:0"),
        "{n4}"
    );
    assert_eq!(n4["gpu_uuid"], "", "{n4}");
    assert!(v["gate"]["reasons"].to_string().contains("2 stale"), "{v}");
    // Allowing two stale GPUs makes the check green.
    let v = check(tmp.path(), &["--max-stale", "2"], 0);
    assert_eq!(v["gate"]["green"], true);
    // The table says it per state, and the stale GPU's age.
    let o = fleet(tmp.path(), &[]);
    let out = stdout(&o);
    assert!(out.contains("stale      2"), "{out}");
    assert!(out.contains("stale (4"), "{out}");
}

#[test]
fn fleet_skips_and_names_a_truncated_file_and_strict_makes_it_fatal() {
    let tmp = fleet_dir(&layout());
    let victim = files_from(tmp.path(), "node-01", 100)[0].clone();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let v = check(tmp.path(), &[], 4);
    let skipped = items(&v["scan"]["skipped"]);
    assert_eq!(skipped.len(), 1, "{v}");
    assert!(skipped[0]["file"].as_str().unwrap().ends_with(&name));
    assert!(skipped[0]["reason"].as_str().unwrap().contains("truncated"));
    assert_eq!(v["gate"]["green"], true);
    assert_eq!(v["summary"]["healthy"], NODES, "{v}");
    // The table names it too.
    let o = fleet(tmp.path(), &[]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stdout(&o).contains("skipped unreadable file"));
    assert!(stdout(&o).contains(&name));
    // --strict: exit 2, one line naming the file.
    let o = slicetrace(&[
        "fleet",
        tmp.path().to_str().unwrap(),
        "--until",
        UNTIL,
        "--strict",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains(&name), "{}", stderr(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
}

#[test]
fn fleet_with_a_few_unknown_gpus_is_green_under_max_unknown() {
    let l = layout();
    let tmp = fleet_dir(&l);
    // node-03 sends 3 runs in the window: unknown (fewer than --min-samples).
    for f in files_from(tmp.path(), "node-03", 90) {
        std::fs::remove_file(f).unwrap();
    }
    let rows = synth::fleet_rows(&l, 3, DAY3 + 90 * MIN, DAY3 + 100 * MIN, 3, 5);
    synth::write_rows(tmp.path(), &rows, usize::MAX, 5).unwrap();
    let v = check(tmp.path(), &[], 1);
    assert_eq!(v["summary"]["unknown"], 1, "{v}");
    assert_eq!(gpu(&v, "node-03")["state"], "unknown");
    let v = check(tmp.path(), &["--max-unknown", "1"], 0);
    assert_eq!(v["summary"]["unknown"], 1, "{v}");
    // 20 % of 6 GPUs rounds down to 1: green too.
    check(tmp.path(), &["--max-unknown", "20%"], 0);
    check(tmp.path(), &["--max-unknown", "10%"], 1);
}

#[test]
fn fleet_baseline_comes_from_its_own_period_not_the_window() {
    // node-02 runs 4× slower from the window's start: its quiet baseline
    // (01:00..01:30) must be the fast runs, so the window is judged slow.
    let l = FleetLayout {
        slow: Some((2, DAY3 + 90 * MIN, 4.0)),
        rollups: false,
        ..layout()
    };
    let tmp = fleet_dir(&l);
    let v = check(tmp.path(), &[], 1);
    assert_eq!(v["baseline_start"], "2026-01-03T01:00:00Z");
    assert_eq!(v["baseline_end"], "2026-01-03T01:30:00Z");
    let n2 = gpu(&v, "node-02");
    assert_eq!(n2["state"], "unhealthy", "{n2}");
    let fft = items(&n2["kernels"])
        .iter()
        .find(|k| k["kernel"] == "fft")
        .unwrap()
        .clone();
    assert_eq!(fft["health_baseline_source"], "learned", "{fft}");
    let base = fft["event_baseline_mcycles"].as_f64().unwrap();
    // Fast FFT: 0.05 ms × 1980 MHz = 0.099 Mcycles; a baseline that took in
    // the window's slow runs would sit well above it.
    assert!((base - 0.099).abs() < 0.01, "{fft}");
    // The other GPUs are healthy against their own baselines.
    assert_eq!(v["summary"]["healthy"], NODES - 1, "{v}");
}

/// A fleet of 4 nodes × 2 GPUs with an hour at 10 arrivals/s per GPU
/// (288,000 rows) ending at [`UNTIL`].
fn dense_fleet() -> tempfile::TempDir {
    fleet_dir(&FleetLayout {
        nodes: 4,
        gpus_per_node: 2,
        span_secs: 3_600,
        dense_secs: 3_600,
        file_secs: 300,
        rate_per_gpu: 10.0,
        ..layout()
    })
}

/// The memory limit used below: far less than the rows' values (288,000
/// rows × 8 bytes is 2.3 MB per column), far more than one t-digest per
/// GPU, kernel and shape.
const LIMIT: usize = 2 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_aggregates_in_bounded_memory_where_holding_the_rows_does_not_fit() {
    use slicetrace_analysis::fleet::{self, FleetArgs, Plan};
    use slicetrace_analysis::source::{self, OpenOptions, RangeOptions};

    let tmp = dense_fleet();
    // As [`check`]: window 01:30..02:00, baseline period 01:00..01:30.
    let half_hour = std::time::Duration::from_secs(1_800);
    let args = FleetArgs {
        until: Some(UNTIL.into()),
        window: half_hour,
        baseline_window: half_hour,
        ..FleetArgs::default()
    };
    let plan = Plan::from_args(&args, 0).unwrap();
    let opts = RangeOptions {
        open: OpenOptions::default(),
        range: plan.scan_range(),
        parallel: 2,
        strict: true,
        name_pruning: true,
        memory_limit: Some(LIMIT),
    };
    let data = tmp.path().to_str().unwrap();
    let rd = source::open_range(data, &opts).await.unwrap();
    assert_eq!(rd.stats.rows_in_scanned_files, 288_000, "{:?}", rd.stats);
    // An aggregate that holds the values (exact percentiles, as `report`
    // computes them) does not fit in the limit...
    let exact = "SELECT node, gpu_uuid, kernel, \
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY wall_ms) AS a, \
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY gpu_ms) AS b, \
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY queue_ms) AS c \
                 FROM probes GROUP BY node, gpu_uuid, kernel";
    let err = match rd.ds.ctx.sql(exact).await {
        Ok(df) => df.collect().await.err(),
        Err(e) => Some(e),
    };
    let err = err.expect("exact percentiles over 288,000 rows fit in 2 MiB");
    assert!(err.to_string().contains("Resources exhausted"), "{err}");
    // ...while fleet's streaming aggregation judges every GPU within it.
    let rd = source::open_range(data, &opts).await.unwrap();
    let res = fleet::evaluate(&rd.ds.ctx, &args, &plan, rd.stats, &rd.newest_file_by_node)
        .await
        .unwrap();
    assert_eq!(res.runs.rows, 288_000, "{:?}", res.runs);
    // Half the hour's arrival runs lie in the window.
    assert_eq!(
        res.runs.window_runs * 2,
        res.runs.arrivals,
        "{:?}",
        res.runs
    );
    assert_eq!(res.gpus.len(), 8);
    assert_eq!(res.count(fleet::State::Healthy), 8, "{:?}", res.summary);
}

#[test]
fn fleet_memory_limit_flag_bounds_the_query() {
    let tmp = dense_fleet();
    // The CLI flag reaches the query: enough memory for the t-digests is
    // green, too little for even those is a clean error (exit 2).
    check(tmp.path(), &["--memory-limit", "2MiB"], 0);
    let o = fleet(tmp.path(), &["--memory-limit", "1KiB"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("Resources exhausted"), "{}", stderr(&o));
    let o = fleet(tmp.path(), &["--memory-limit", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("512MiB"), "{}", stderr(&o));
}

#[test]
fn fleet_counts_gpus_never_seen_as_stale_under_expect_gpus() {
    let tmp = fleet_dir(&layout());
    // node-04 stopped yesterday: no file today, so nothing fleet lists
    // names it, and without --expect-gpus the check is green without it.
    std::fs::remove_dir_all(node_dir(tmp.path(), "node-04")).unwrap();
    let v = check(tmp.path(), &[], 0);
    assert_eq!(items(&v["gpus"]).len(), NODES - 1, "{v}");
    assert_eq!(v["summary"]["missing"], 0, "{v}");
    // Told that the fleet has 6 GPUs, the missing one is stale: red.
    let v = check(tmp.path(), &["--expect-gpus", "6"], 1);
    assert_eq!(v["summary"]["missing"], 1, "{v}");
    assert_eq!(v["gate"]["missing_gpus"], 1, "{v}");
    let reasons = v["gate"]["reasons"].to_string();
    assert!(
        reasons.contains("1 stale > 0 allowed (--max-stale 1% of 6; 1 of them missing"),
        "{reasons}"
    );
    check(tmp.path(), &["--expect-gpus", "6", "--max-stale", "1"], 0);
    let out = stdout(&fleet(tmp.path(), &["--expect-gpus", "6"]));
    assert!(out.contains("missing    1"), "{out}");
}

/// Every row of the `Parquet` files under `dir/table`, as batches.
fn batches(dir: &Path, table: &str) -> Vec<(PathBuf, arrow::record_batch::RecordBatch)> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&dir.join(table), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for b in r {
            out.push((f.clone(), b.unwrap()));
        }
    }
    out
}

/// The exact rank quantile a DDSketch bounds: the value at rank
/// ⌊q·(n−1)⌋ of the sorted values.
fn rank_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

#[test]
fn generated_rollups_agree_with_the_raw_rows() {
    use slicetrace_schema::{probes_from_batch, rollups_from_batch, Sketch, SketchSet};
    use std::collections::BTreeMap;
    let l = FleetLayout {
        rollups: true,
        slow: Some((2, DAY3 + 90 * MIN, 4.0)),
        ..layout()
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = synth::generate_fleet(tmp.path(), &l).unwrap();
    assert!(w.rollup_files > 0 && w.rollup_rows > 0, "{w:?}");
    // Raw: per GPU and kernel, every run's gpu_ms and wall_ms.
    type Key = (String, String);
    let mut raw: BTreeMap<Key, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut raw_rows = 0u64;
    for (_, b) in batches(tmp.path(), "probes") {
        for r in probes_from_batch(&b).unwrap() {
            raw_rows += 1;
            let e = raw
                .entry((r.gpu_uuid.clone(), r.kernel.as_str().to_string()))
                .or_default();
            e.0.push(r.gpu_ms.unwrap());
            e.1.push(r.wall_ms);
        }
    }
    assert_eq!(raw_rows, w.rows);
    // Rollups: the same keys, counts summed, sketches merged; every file
    // holds minutes of one hour, as the agent writes them.
    let mut rolled: BTreeMap<Key, (u64, Sketch, Sketch)> = BTreeMap::new();
    let mut rollup_rows = 0u64;
    for (f, b) in batches(tmp.path(), "rollups") {
        let rows = rollups_from_batch(&b, SketchSet::ALL).unwrap();
        let hour = |ns: i64| ns.div_euclid(60 * MIN);
        assert!(
            rows.iter()
                .all(|r| hour(r.key.bucket_ns) == hour(rows[0].key.bucket_ns)),
            "{f:?} spans hours"
        );
        for r in rows {
            rollup_rows += 1;
            assert_eq!(r.period_s, 60);
            assert_eq!(r.runs, r.arrivals);
            let e = rolled
                .entry((r.key.gpu_uuid.clone(), r.key.kernel.clone()))
                .or_insert_with(|| (0, Sketch::new(), Sketch::new()));
            e.0 += r.arrivals;
            e.1.merge(&r.gpu_ms);
            e.2.merge(&r.wall_ms);
        }
    }
    assert_eq!(rollup_rows, w.rollup_rows);
    assert_eq!(
        raw.keys().collect::<Vec<_>>(),
        rolled.keys().collect::<Vec<_>>()
    );
    let alpha = slicetrace_schema::SKETCH_ALPHA;
    // wall_ms is stored rounded to 1/1024 ms (the sketch holds the run's
    // own value, as the agent's does): half a quantum more.
    let half_quantum = slicetrace_schema::precision::MS_QUANTUM / 2.0;
    let mut worst = 0.0_f64;
    for (k, (gpu, wall)) in &mut raw {
        let (n, s_gpu, s_wall) = &rolled[k];
        assert_eq!(*n, gpu.len() as u64, "{k:?}");
        assert_eq!(s_gpu.count(), gpu.len() as u64, "{k:?}");
        gpu.sort_by(f64::total_cmp);
        wall.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.99] {
            let exact = rank_quantile(gpu, q);
            let est = s_gpu.quantile(q).unwrap();
            worst = worst.max((est - exact).abs() / exact);
            assert!(
                (est - exact).abs() <= alpha * exact * (1.0 + 1e-9),
                "{k:?} gpu_ms p{q}: {est} vs {exact}"
            );
            let exact = rank_quantile(wall, q);
            let est = s_wall.quantile(q).unwrap();
            assert!(
                (est - exact).abs() <= alpha * exact * (1.0 + 1e-9) + half_quantum * (1.0 + alpha),
                "{k:?} wall_ms p{q}: {est} vs {exact}"
            );
        }
    }
    assert!(worst > 0.0, "the sketches are estimates");
}

#[test]
fn fleet_answers_from_rollups_by_default_and_raw_when_a_node_has_none() {
    let l = FleetLayout {
        rollups: true,
        ..layout()
    };
    let tmp = fleet_dir(&l);
    // Default: rollups, though the range (1 h) is far below --rollups-after.
    let v = check(tmp.path(), &[], 0);
    assert_eq!(v["source"]["kind"], "rollups", "{}", v["source"]);
    assert_eq!(
        v["source"]["why"], "rollups cover the range (fleet's default)",
        "{}",
        v["source"]
    );
    assert_eq!(v["summary"]["healthy"], NODES, "{v}");
    // Per node, the day's rollup files start every 15 minutes, 00:00..01:45:
    // those of hour 00 end before the range (01:00..02:00) and are not
    // opened; the four of hour 01 are read.
    let s = &v["scan"];
    assert_eq!(s["files_listed"], 8 * NODES, "{s}");
    assert_eq!(s["files_pruned_by_name"], 4 * NODES, "{s}");
    assert_eq!(s["files_scanned"], 4 * NODES, "{s}");
    // --exact: raw rows, the same runs counted in the window.
    let exact = check(tmp.path(), &["--exact"], 0);
    assert_eq!(exact["source"]["kind"], "raw");
    assert_eq!(exact["source"]["why"], "--exact");
    assert_eq!(exact["runs"]["window_runs"], v["runs"]["window_runs"]);
    assert!(v["runs"]["window_runs"].as_u64().unwrap() > 0);
    for g in items(&v["gpus"]) {
        let node = g["node"].as_str().unwrap();
        let runs = |x: &Value| -> Vec<Value> {
            items(&x["kernels"])
                .iter()
                .map(|k| k["window_runs"].clone())
                .collect()
        };
        assert_eq!(runs(g), runs(gpu(&exact, node)), "{node}");
        assert_eq!(g["state"], gpu(&exact, node)["state"], "{node}");
    }
    // A node whose agent predates rollups (raw files, no rollups): the
    // whole check reads raw rows and says why; that node is judged, not
    // stale, and not dropped.
    std::fs::remove_dir_all(tmp.path().join("rollups/date=2026-01-03/node=node-03")).unwrap();
    let v = check(tmp.path(), &[], 0);
    assert_eq!(v["source"]["kind"], "raw", "{}", v["source"]);
    let why = v["source"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("1 node(s)") && why.contains("node-03"),
        "{why}"
    );
    assert_eq!(gpu(&v, "node-03")["state"], "healthy", "{v}");
    assert_eq!(v["summary"]["healthy"], NODES, "{v}");
    assert_eq!(v["runs"]["window_runs"], exact["runs"]["window_runs"]);
    // The table says it too.
    let t = stdout(&fleet(tmp.path(), &[]));
    assert!(t.contains("source: raw rows (1 node(s)"), "{t}");
}
