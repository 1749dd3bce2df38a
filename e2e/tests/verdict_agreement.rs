//! One definition of a verdict: the agent's live evaluator and `slicetrace
//! fleet` judge the same rows to the same health and contention (state,
//! bounded reason and baseline source), with the same default thresholds.
//! Also: the H100 data in `docs/gpu-results/` reads `healthy` + `contended`
//! for its tenant phases in both, and a GPU with no runs in fleet's window is
//! `stale` (with its age), never `healthy`.
//!
//! The live evaluator learns its quiet baseline from every row it observed;
//! fleet learns it from a stated baseline period only. So each comparison
//! gives fleet `--until` just after the rows and `--baseline` over them: the
//! same rows in the window and in the baseline on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parquet::arrow::ArrowWriter;
use serde_json::Value;
use slicetrace_agent::consumers::health::{Evaluator, HealthConfig};
use slicetrace_agent::serve::live::LiveState;
use slicetrace_e2e::{bin, root, run_with_timeout};
use slicetrace_schema::{probes_batch, Backend, DeviceFields, HealthRecord, Kernel, ProbeRecord};

const T0: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

/// The scenarios' rows lie in 00:00..00:05 of 2026-01-01: a window ending
/// at 00:05 holds them all, and so does this baseline period.
const SCENARIO_RANGE: [&str; 4] = [
    "--until",
    "2026-01-01T00:05:00Z",
    "--baseline",
    "2026-01-01T00:00:00Z..2026-01-01T00:05:00Z",
];

/// An arrival run of the light FFT on an H100 at 1980 MHz, `i` seconds in.
fn row(uuid: &str, i: usize, wall: f64, gpu: f64, tenants: u32) -> ProbeRecord {
    ProbeRecord {
        ts_ns: T0 + i as i64 * 1_000_000_000,
        node: "n1".into(),
        gpu_uuid: uuid.into(),
        gpu_name: Some("NVIDIA H100 80GB HBM3".into()),
        backend: Backend::Cuda,
        kernel: Kernel::Fft,
        shape: "c2c 1d n=4096 batch=16".into(),
        precision: "fp32".into(),
        flops: 1.0,
        cycle: i as u64,
        gpu_ms: Some(gpu),
        wall_ms: wall,
        queue_ms: Some(wall - gpu),
        correct: Some(true),
        device: DeviceFields {
            sm_clock_mhz: Some(1980),
            throttle_reasons: Some(0),
            gpu_processes: Some(tenants),
            ..Default::default()
        },
        arrival: Some(true),
        ..Default::default()
    }
}

/// The scenarios, one GPU each: what the H100 showed, and planted faults.
fn scenarios() -> Vec<ProbeRecord> {
    let mut rows = Vec::new();
    for i in 0..300 {
        // Quiet, then 3 tenants with waits up to ~7 ms (docs/gpu-results).
        rows.push(if i < 150 {
            row("GPU-phases", i, 0.05 + (i % 10) as f64 * 0.01, 0.0098, 0)
        } else {
            row("GPU-phases", i, 0.2 + (i % 50) as f64 * 0.13, 0.007, 3)
        });
        // Never idle: judged against the SKU reference.
        rows.push(row(
            "GPU-never-idle",
            i,
            0.5 + (i % 50) as f64 * 0.12,
            0.007,
            3,
        ));
        // Never idle and 2x / 4x slower per SM cycle than the SKU.
        rows.push(row(
            "GPU-degraded",
            i,
            0.5 + (i % 50) as f64 * 0.12,
            0.02,
            3,
        ));
        rows.push(row("GPU-slow", i, 0.5 + (i % 50) as f64 * 0.12, 0.04, 3));
        // One tenant, waits far beyond one slice: over-shared, healthy.
        rows.push(row("GPU-over", i, 9.0 + (i % 7) as f64 * 0.1, 0.007, 1));
        // Planted faults on quiet GPUs.
        let mut w = row("GPU-wrong", i, 0.06, 0.0098, 0);
        w.correct = Some(i % 100 != 7);
        rows.push(w);
        // HW throttling in a third of the runs (sustained: unhealthy) and
        // in 2 % of them (brief: degraded).
        let mut h = row("GPU-hw-throttled", i, 0.06, 0.0098, 0);
        h.device.throttle_reasons = Some(if i % 3 == 0 { 0x40 } else { 0 });
        rows.push(h);
        let mut h = row("GPU-hw-brief", i, 0.06, 0.0098, 0);
        h.device.throttle_reasons = Some(if i % 50 == 3 { 0x40 } else { 0 });
        rows.push(h);
        let mut s = row("GPU-sw-throttled", i, 0.06, 0.0098, 0);
        s.device.throttle_reasons = Some(if i % 50 == 3 { 0x4 } else { 0 });
        rows.push(s);
        // Runs right after the probe's own previous run are not arrivals.
        let mut b = row("GPU-phases", i, 50.0, 0.0098, 0);
        b.arrival = Some(false);
        rows.push(b);
    }
    // Too few runs: unknown.
    for i in 0..10 {
        rows.push(row("GPU-warming", 290 + i, 0.06, 0.0098, 0));
    }
    rows
}

fn write_probes(dir: &Path, rows: &[ProbeRecord]) {
    let d = dir.join("probes/date=2026-01-01/node=n1");
    std::fs::create_dir_all(&d).unwrap();
    let batch = probes_batch(rows).unwrap();
    let f = std::fs::File::create(d.join("part-1.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn fleet(dir: &Path, extra: &[&str]) -> Value {
    let mut c = Command::new(bin("slicetrace"));
    c.arg("fleet")
        .arg(dir)
        .args(["--format", "json", "--min-peers", "1000"])
        .args(extra);
    let o = run_with_timeout(c, Duration::from_secs(120));
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn live(rows: &[ProbeRecord]) -> Vec<HealthRecord> {
    let cfg = HealthConfig {
        window_ms: 3_600_000,
        evaluate_interval_ms: 10_000,
        ..HealthConfig::default()
    };
    let mut e = Evaluator::new(cfg, "n1".into(), Arc::new(LiveState::default()), None);
    let now = Instant::now();
    e.observe(rows, now);
    e.evaluate(now, 0)
}

/// (gpu, kernel) → (health, health reason, health source, contention,
/// contention reason, contention source), as fleet's JSON says.
type Key = (String, String);
type Judged = (String, String, String, String, String, String);

fn from_fleet(v: &Value) -> Vec<(Key, Judged)> {
    let s = |x: &Value| x.as_str().unwrap_or("null").to_string();
    let mut out = Vec::new();
    for g in v["gpus"].as_array().unwrap() {
        for k in g["kernels"].as_array().unwrap() {
            out.push((
                (s(&g["gpu_uuid"]), s(&k["kernel"])),
                (
                    s(&k["verdict"]),
                    s(&k["health_reason"]),
                    s(&k["health_baseline_source"]),
                    s(&k["contention"]),
                    s(&k["contention_reason"]),
                    s(&k["contention_baseline_source"]),
                ),
            ));
        }
    }
    out.sort();
    out
}

fn from_live(h: &[HealthRecord]) -> Vec<(Key, Judged)> {
    let s = |x: &Option<String>| x.clone().unwrap_or_else(|| "null".into());
    let mut out: Vec<_> = h
        .iter()
        .map(|r| {
            (
                (r.gpu_uuid.clone(), r.kernel.as_str().to_string()),
                (
                    r.verdict.clone(),
                    s(&r.health_reason),
                    s(&r.health_baseline_source),
                    s(&r.contention),
                    s(&r.contention_reason),
                    s(&r.contention_baseline_source),
                ),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn live_evaluator_and_fleet_give_the_same_verdicts_on_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = scenarios();
    write_probes(tmp.path(), &rows);
    let f = from_fleet(&fleet(tmp.path(), &SCENARIO_RANGE));
    let l = from_live(&live(&rows));
    assert_eq!(f, l, "fleet (left) and the live evaluator (right) disagree");
    let get = |uuid: &str| {
        f.iter()
            .find(|(k, _)| k.0 == uuid)
            .map(|(_, j)| j.clone())
            .unwrap_or_else(|| panic!("{uuid} missing"))
    };
    let j = |h: &str, hr: &str, c: &str, cr: &str| {
        (h.to_string(), hr.to_string(), c.to_string(), cr.to_string())
    };
    let short = |x: Judged| (x.0, x.1, x.3, x.4);
    assert_eq!(
        short(get("GPU-phases")),
        j("healthy", "none", "contended", "wait_over_baseline")
    );
    assert_eq!(get("GPU-phases").2, "learned");
    assert_eq!(
        short(get("GPU-never-idle")),
        j("healthy", "none", "contended", "wait_over_baseline")
    );
    assert_eq!(get("GPU-never-idle").2, "sku");
    assert_eq!(short(get("GPU-degraded")).0, "degraded");
    assert_eq!(
        short(get("GPU-slow")),
        j("unhealthy", "event_slow", "contended", "wait_over_baseline")
    );
    assert_eq!(
        short(get("GPU-over")),
        j("healthy", "none", "over-shared", "wait_over_predicted")
    );
    assert_eq!(short(get("GPU-wrong")).1, "correctness");
    assert_eq!(short(get("GPU-wrong")).0, "unhealthy");
    assert_eq!(
        short(get("GPU-hw-throttled")),
        j("unhealthy", "throttled", "ok", "none")
    );
    assert_eq!(
        short(get("GPU-hw-brief")),
        j("degraded", "throttled", "ok", "none")
    );
    assert_eq!(short(get("GPU-sw-throttled")).0, "degraded");
    assert_eq!(
        short(get("GPU-warming")),
        j("unknown", "warming_up", "ok", "warming_up")
    );

    // With an SLO, both judge the wait against it; still the same.
    let f = from_fleet(&fleet(
        tmp.path(),
        &[&SCENARIO_RANGE[..], &["--slo-p99-ms", "3"]].concat(),
    ));
    let cfg = HealthConfig {
        window_ms: 3_600_000,
        evaluate_interval_ms: 10_000,
        slo_p99_ms: Some(3.0),
        ..HealthConfig::default()
    };
    let mut e = Evaluator::new(cfg, "n1".into(), Arc::new(LiveState::default()), None);
    let now = Instant::now();
    e.observe(&rows, now);
    assert_eq!(f, from_live(&e.evaluate(now, 0)));
}

#[test]
fn a_gpu_with_no_runs_in_the_window_is_stale_with_its_age_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // GPU-fresh runs at 02:00..02:03:20, GPU-stale stopped at 00:03:19.
    let mut rows: Vec<ProbeRecord> = (0..200)
        .map(|i| row("GPU-fresh", 7200 + i, 0.06, 0.0098, 0))
        .collect();
    rows.extend((0..200).map(|i| row("GPU-stale", i, 0.06, 0.0098, 0)));
    write_probes(tmp.path(), &rows);
    // Window 01:05..02:05; the baseline period (3h before it) holds
    // GPU-stale's rows, so fleet knows the GPU and how old its newest row is.
    let range = ["--until", "2026-01-01T02:05:00Z", "--baseline-window", "3h"];
    let v = fleet(tmp.path(), &range);
    let g: Vec<_> = v["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["gpu_uuid"].clone(), g["state"].clone()))
        .collect();
    assert!(g.contains(&("GPU-stale".into(), "stale".into())), "{g:?}");
    assert!(g.contains(&("GPU-fresh".into(), "healthy".into())), "{g:?}");
    assert_eq!(v["summary"]["stale"], 1, "{}", v["summary"]);
    assert_eq!(v["summary"]["unknown"], 0, "{}", v["summary"]);
    let stale = v["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gpu_uuid"] == "GPU-stale")
        .unwrap();
    assert_eq!(stale["newest"], "2026-01-01T00:03:19Z", "{stale}");
    // 02:05:00 − 00:03:19 = 7301 s.
    assert_eq!(stale["age_secs"].as_f64(), Some(7301.0), "{stale}");
    // One stale GPU of two is over the default --max-stale (1%): red, and
    // the table says so per state.
    let mut c = Command::new(bin("slicetrace"));
    c.arg("fleet").arg(tmp.path()).args(range);
    let o = run_with_timeout(c, Duration::from_secs(120));
    assert_eq!(o.status.code(), Some(1), "no data is not healthy");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1 of 2 GPUs not healthy"), "{out}");
    assert!(out.contains("1 stale: no run in the window"), "{out}");
    assert!(out.contains("stale (2h"), "{out}");
    assert!(out.contains("1 stale > 0 allowed (--max-stale 1%"), "{out}");
}

#[test]
fn the_h100_tenant_phases_read_healthy_and_contended_in_both() {
    let data = root().join("docs/gpu-results/h100-run/agent-light");
    // The rows lie in 12:04:12..12:07:23 of 2026-11-25: the window ends
    // after the newest, and the baseline period holds them all.
    let v = fleet(
        &data,
        &[
            "--until",
            "2026-11-25T12:08:00Z",
            "--baseline",
            "2026-11-25T12:00:00Z..2026-11-25T12:08:00Z",
        ],
    );
    let gpus = v["gpus"].as_array().expect("fleet's gpus array");
    assert!(!gpus.is_empty(), "fleet judged no GPU: {v}");
    for g in gpus {
        assert_eq!(g["verdict"], "healthy", "{g}");
        assert_eq!(g["contention"], "contended", "{g}");
    }
    // The same Parquet rows through the live evaluator.
    let rows = slicetrace_e2e::probe_rows(&data);
    let h: Vec<HealthRecord> = live(&rows).into_iter().filter(|r| r.samples > 0).collect();
    assert!(!h.is_empty(), "no live verdict has samples");
    for r in &h {
        assert_eq!(r.verdict, "healthy", "{r:?}");
        assert_eq!(r.contention.as_deref(), Some("contended"), "{r:?}");
        assert!(
            r.contention_detail
                .as_deref()
                .is_some_and(|d| d.contains("3 tenants")),
            "{r:?}"
        );
    }
    let judged = from_fleet(&v);
    assert!(!judged.is_empty(), "fleet judged no kernel: {v}");
    assert_eq!(judged, from_live(&h));
}
