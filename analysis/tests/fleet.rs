//! `slicetrace fleet` over synthetic fleets: a clean fleet exits 0; a slow
//! node, throttling, contention and faults are each told apart, and exit 1.
//! At fleet scale: only the files of the window and the baseline period are
//! opened, a GPU with no run in the window is stale, an unreadable file is
//! skipped and named (exit bit 4, or exit 2 with --strict), a few unknown
//! GPUs stay under --max-unknown, and the baseline comes from its own period.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use slicetrace_analysis::synth::{self, SynthSpec};

use support::*;

/// The end of the data of [`fleet_spec`]: 2 hours after 2026-01-01T00:00Z.
const UNTIL: &str = "2026-01-01T02:00:00Z";

/// `slicetrace fleet DATA --format json --until UNTIL ARGS`, which must exit
/// with `code` (0: green, 1: red), parsed.
fn fleet_json(data: &Path, args: &[&str], code: i32) -> Value {
    let o = slicetrace(
        &[
            &[
                "fleet",
                data.to_str().unwrap(),
                "--format",
                "json",
                "--until",
                UNTIL,
            ],
            args,
        ]
        .concat(),
    );
    json_exit(&o, code)
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
    let t = slicetrace(&["fleet", tmp.path().to_str().unwrap(), "--until", UNTIL]);
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
            r.device.gpu_processes = Some(3);
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
