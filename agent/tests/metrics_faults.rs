//! Planted faults through the CPU-backend test seams, seen where on-call
//! looks: a whole agent (`agent::run`) on four CPU pseudo-GPUs, each with one
//! fault, and its `/metrics` and `/readyz`.
//!
//! * CPU-0: the start-up self-test cannot catch its planted corruption (the
//!   backend ignores the plant) ⇒ `unhealthy` / `self_test_failed`,
//!   `slicetrace_self_test_passed 0`, `/readyz` 503;
//! * CPU-1: every run fails (a lost GPU) ⇒ `unhealthy` / `probe_failing`,
//!   `slicetrace_backend_up 0`, `/readyz` 503;
//! * CPU-2: wrong answers ⇒ `unhealthy` / `correctness`;
//! * CPU-3: NVML reports hardware slowdown (0x8) ⇒ `unhealthy` / `throttled`;
//!
//! while a fifth agent run with two tenants on every GPU and nothing wrong
//! stays `healthy` with `/readyz` 200.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use metrics_support::*;
use slicetrace_agent::config::Config;
use slicetrace_agent::probe::config::Arrivals;
use slicetrace_agent::probe::occupancy::GpuProcess;
use slicetrace_agent::probe::telemetry::{DeviceSample, TelemetryError, TelemetrySource};
use slicetrace_e2e::testkit::{Faults, FaultyBackend};

/// What a GPU's backend does wrong.
#[derive(Clone, Copy, PartialEq)]
enum Plant {
    /// Ignores planted faults: the self-test's corruption is never caught.
    DeafToPlants,
    /// Every run fails.
    Fails,
    /// Every run's output fails its check.
    Wrong,
    /// Nothing.
    None,
}

impl Plant {
    fn faults(self) -> Arc<Faults> {
        Faults::with(|f| match self {
            Plant::DeafToPlants => f.deaf_to_plants.store(true, Ordering::SeqCst),
            Plant::Fails => f.fail.store(true, Ordering::SeqCst),
            Plant::Wrong => f.wrong.store(true, Ordering::SeqCst),
            Plant::None => {}
        })
    }
}

/// NVML as a test seam: HW slowdown on CPU-3, and `tenants` other
/// processes on every GPU.
struct Nvml {
    tenants: u32,
}

impl TelemetrySource for Nvml {
    fn name(&self) -> &'static str {
        "test"
    }
    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        Ok(DeviceSample {
            fields: slicetrace_schema::DeviceFields {
                throttle_reasons: Some(if gpu_uuid == "CPU-3" { 0x8 } else { 0 }),
                ..Default::default()
            },
            processes: Some(
                (0..self.tenants)
                    .map(|i| GpuProcess {
                        pid: 1000 + i,
                        used_mib: Some(100),
                        name: Some("secret-training-job --token=abc".into()),
                    })
                    .collect(),
            ),
        })
    }
}

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = small_config(dir);
    cfg.probe.arrivals = Some(Arrivals::Poisson);
    cfg.probe.rate_hz = Some(40.0);
    cfg.probe.self_test = true;
    cfg
}

fn agent(plants: &[Plant], tenants: u32, dir: &std::path::Path) -> RunningAgent {
    let cfg = config(dir);
    let idx: Vec<u32> = (0..plants.len() as u32).collect();
    let backends = cpu_backends(&cfg, &idx)
        .into_iter()
        .zip(plants)
        .map(|(inner, &plant)| FaultyBackend::wrap(inner, plant.faults()))
        .collect();
    RunningAgent::start_with_telemetry(cfg, backends, None, None, Arc::new(Nvml { tenants }))
}

fn reason(s: &[Sample], uuid: &str, dimension: &str) -> Vec<String> {
    s.iter()
        .filter(|x| {
            x.name == "slicetrace_gpu_verdict_reason"
                && x.label("gpu_uuid") == Some(uuid)
                && x.label("dimension") == Some(dimension)
        })
        .filter_map(|x| x.label("reason").map(str::to_string))
        .collect()
}

#[test]
fn planted_faults_are_unhealthy_on_metrics_and_fail_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(
        &[Plant::DeafToPlants, Plant::Fails, Plant::Wrong, Plant::None],
        0,
        dir.path(),
    );
    let want = [
        ("CPU-0", "self_test_failed"),
        ("CPU-1", "probe_failing"),
        ("CPU-2", "correctness"),
        ("CPU-3", "throttled"),
    ];
    let m = wait_for("every planted fault on /metrics", || {
        let m = a.get("/metrics");
        let s = samples(&m.body);
        want.iter()
            .all(|(u, r)| reason(&s, u, "health").iter().any(|x| x == r))
            .then_some(m)
    });
    let s = samples(&m.body);
    for (uuid, _) in want {
        let v: Vec<_> = s
            .iter()
            .filter(|x| {
                x.name == "slicetrace_gpu_verdict"
                    && x.label("gpu_uuid") == Some(uuid)
                    && x.value == 1.0
            })
            .filter_map(|x| x.label("verdict"))
            .collect();
        assert!(
            !v.is_empty() && v.iter().all(|v| *v == "unhealthy"),
            "{uuid}: {v:?}\n{}",
            m.body
        );
    }
    let find = |name: &str, uuid: &str| {
        s.iter()
            .filter(|x| x.name == name && x.label("gpu_uuid") == Some(uuid))
            .map(|x| x.value)
            .collect::<Vec<_>>()
    };
    assert_eq!(find("slicetrace_self_test_passed", "CPU-0"), [0.0, 0.0]);
    assert_eq!(find("slicetrace_self_test_passed", "CPU-3"), [1.0, 1.0]);
    assert_eq!(find("slicetrace_backend_up", "CPU-1"), [0.0]);
    assert_eq!(find("slicetrace_backend_up", "CPU-0"), [1.0]);
    assert!(find("slicetrace_probe_errors_total", "CPU-1")[0] >= 1.0);
    assert_eq!(find("slicetrace_probe_errors_total", "CPU-0"), [0.0]);
    let r = a.get("/readyz");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("CPU-0 fft: self-test failed") && r.body.contains("CPU-1: backend cpu"),
        "{}",
        r.body
    );
    assert!(m.body.contains("slicetrace_ready{node=\"n1\"} 0"));
    drop(a);
}

#[test]
fn shared_gpus_are_healthy_contention_is_its_own_dimension_and_names_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&[Plant::None, Plant::None], 2, dir.path());
    wait_for("/readyz 200", || {
        (a.get("/readyz").status == 200).then_some(())
    });
    let m = wait_for("verdicts of both kernels", || {
        let m = a.get("/metrics");
        let s = samples(&m.body);
        let n = s
            .iter()
            .filter(|x| x.name == "slicetrace_gpu_contention" && x.value == 1.0)
            .count();
        (n == 4).then_some(m)
    });
    let s = samples(&m.body);
    // Every GPU and kernel has a verdict gauge, and none is unhealthy.
    let verdicts: Vec<_> = s
        .iter()
        .filter(|x| x.name == "slicetrace_gpu_verdict" && x.value == 1.0)
        .collect();
    assert_eq!(
        verdicts.len(),
        4,
        "one verdict per GPU and kernel\n{}",
        m.body
    );
    for x in &verdicts {
        assert_ne!(x.label("verdict"), Some("unhealthy"), "{x:?}");
    }
    // Contention is its own dimension: two tenants on a CPU device (no
    // slice rotation, so no wait for a slice) is `ok` there, with its
    // reason on the contention dimension, never on health.
    for uuid in ["CPU-0", "CPU-1"] {
        for kernel in ["fft", "gemm"] {
            let states: Vec<_> = s
                .iter()
                .filter(|x| {
                    x.name == "slicetrace_gpu_contention"
                        && x.label("gpu_uuid") == Some(uuid)
                        && x.label("kernel") == Some(kernel)
                        && x.value == 1.0
                })
                .filter_map(|x| x.label("state"))
                .collect();
            assert_eq!(states, ["ok"], "{uuid} {kernel}\n{}", m.body);
        }
        assert!(
            !reason(&s, uuid, "contention").is_empty(),
            "{uuid}: no contention reason\n{}",
            m.body
        );
    }
    for uuid in ["CPU-0", "CPU-1"] {
        assert_eq!(
            reason(&s, uuid, "health")
                .iter()
                .filter(|r| *r == "throttled" || *r == "correctness")
                .count(),
            0
        );
    }
    let report = a.shutdown();
    assert!(report.clean_shutdown);
    // Tenants' command names are not written by default: PIDs only.
    let rows = slicetrace_e2e::probe_rows(dir.path());
    assert!(!rows.is_empty());
    for r in &rows {
        let p = r.device.processes.as_ref().expect("processes known");
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|x| x.ends_with("::100")), "{p:?}");
        assert_eq!(r.tenants(), Some(2));
    }
}
