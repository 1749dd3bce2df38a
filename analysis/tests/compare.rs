//! `slicetrace compare`: both clocks side by side per tenant level.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

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
