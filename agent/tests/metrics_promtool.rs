//! `/metrics`, `/healthz` and `/readyz` of a whole agent (`agent::run` on
//! the CPU backend), and the exposition checked by the real `promtool check
//! metrics` (Debian package `prometheus`; `tests/run.sh` installs it). Without
//! promtool the check is skipped with a note, unless
//! `SLICETRACE_REQUIRE_TOOLS=1`, which turns a missing tool into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use metrics_support::*;
use slicetrace_agent::probe::occupancy::{GpuProcess, Occupancy, OccupancySource};

/// Every GPU is shared by two pods.
struct TwoPods;

impl OccupancySource for TwoPods {
    fn snapshot(&self, _gpu_uuid: &str, _processes: &[GpuProcess]) -> Occupancy {
        Occupancy {
            pods: Some(vec!["ml/a".into(), "ml/b".into()]),
            pod_count: Some(2),
            ..Default::default()
        }
    }
}

/// Starts the agent on two CPU devices, checks `/readyz` is 503 while the
/// first probe run is held back, then waits for a health evaluation with
/// quantiles and returns the agent and one scrape.
fn agent_with_metrics() -> (RunningAgent, HttpResponse, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    // Poisson arrivals, both kernels: the live verdict counts arrival runs
    // only, and a burst's GEMM runs are none.
    cfg.probe.arrivals = Some(slicetrace_agent::probe::config::Arrivals::Poisson);
    cfg.probe.rate_hz = Some(40.0);
    let (backends, gate) = gated(cpu_backends(&cfg, &[0, 1]));
    let agent = RunningAgent::start(cfg, backends, Some(Arc::new(TwoPods)), Some(gate.clone()));

    let h = agent.get("/healthz");
    assert_eq!(h.status, 200, "/healthz before the first cycle: {h:?}");
    let r = agent.get("/readyz");
    assert_eq!(r.status, 503, "/readyz before the first cycle: {r:?}");
    let m = agent.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("slicetrace_ready{node=\"n1\"} 0"),
        "{}",
        m.body
    );
    // Every probed GPU is known from start, before any probe run.
    let s = samples(&m.body);
    for uuid in ["CPU-0", "CPU-1"] {
        assert!(
            s.iter().any(|x| x.name == "slicetrace_gpu_info"
                && x.label("gpu_uuid") == Some(uuid)
                && x.label("backend") == Some("cpu")
                && x.value == 1.0),
            "{}",
            m.body
        );
    }

    gate.open();
    wait_for("/readyz 200", || {
        (agent.get("/readyz").status == 200).then_some(())
    });
    let scrape = wait_for(
        "a health evaluation with p99s of both GPUs and a pod count",
        || {
            let m = agent.get("/metrics");
            let s = samples(&m.body);
            // Poisson arrivals alternate the kernels: wait for both.
            let has = |uuid: &str| {
                ["fft", "gemm"].iter().all(|k| {
                    s.iter().any(|x| {
                        x.name == "slicetrace_probe_latency_seconds"
                            && x.label("gpu_uuid") == Some(uuid)
                            && x.label("kernel") == Some(*k)
                            && x.label("clock") == Some("queue")
                            && x.label("quantile") == Some("0.99")
                    })
                })
            };
            let pods = s.iter().any(|x| x.name == "slicetrace_gpu_pods");
            (m.status == 200 && has("CPU-0") && has("CPU-1") && pods).then_some(m)
        },
    );
    assert_eq!(agent.get("/healthz").status, 200);
    (agent, scrape, dir)
}

#[test]
fn metrics_expose_every_family_and_readyz_waits_for_the_first_cycle() {
    let (agent, m, _dir) = agent_with_metrics();
    // Without an OpenMetrics Accept: the classic text format, whose counter
    // families are named with their `_total`.
    let ct = m.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    assert!(
        m.body
            .contains("# TYPE slicetrace_probe_runs_total counter\n"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("# TYPE slicetrace_probe_latency_seconds summary\n"),
        "{}",
        m.body
    );
    assert!(!m.body.contains("# EOF"));
    // What Prometheus asks for: OpenMetrics, ending in `# EOF`.
    let om = agent.get_accept(
        "/metrics",
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    let ct = om.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "content type {ct}"
    );
    assert!(
        om.body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{}",
        om.body
    );
    assert!(
        om.body.contains("# TYPE slicetrace_probe_runs counter\n"),
        "{}",
        om.body
    );
    assert!(
        om.body
            .contains("# UNIT slicetrace_probe_latency_seconds seconds\n"),
        "{}",
        om.body
    );
    let s = samples(&m.body);
    let find = |name: &str| s.iter().filter(|x| x.name == name).collect::<Vec<_>>();

    // Latency quantiles: both GPUs, both kernels, three clocks, p50 and p99.
    let lat = find("slicetrace_probe_latency_seconds");
    for uuid in ["CPU-0", "CPU-1"] {
        for kernel in ["fft", "gemm"] {
            for clock in ["wall", "gpu", "queue"] {
                for q in ["0.5", "0.99"] {
                    let x = lat.iter().find(|x| {
                        x.label("gpu_uuid") == Some(uuid)
                            && x.label("kernel") == Some(kernel)
                            && x.label("clock") == Some(clock)
                            && x.label("quantile") == Some(q)
                    });
                    let x = x.unwrap_or_else(|| {
                        panic!("no {uuid} {kernel} {clock} q{q} in\n{}", m.body)
                    });
                    assert!(x.value.is_finite() && x.value >= 0.0, "{x:?}");
                    if clock != "queue" {
                        assert!(x.value > 0.0, "{x:?}");
                    }
                    let idx = if uuid == "CPU-0" { "0" } else { "1" };
                    assert_eq!(x.label("gpu_index"), Some(idx));
                }
            }
        }
    }
    // The verdict: one labelled gauge per verdict, exactly one of them 1.
    for uuid in ["CPU-0", "CPU-1"] {
        for kernel in ["fft", "gemm"] {
            let v: Vec<_> = find("slicetrace_gpu_verdict")
                .into_iter()
                .filter(|x| x.label("gpu_uuid") == Some(uuid) && x.label("kernel") == Some(kernel))
                .collect();
            let mut names: Vec<_> = v.iter().filter_map(|x| x.label("verdict")).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                ["degraded", "healthy", "unhealthy", "unknown"],
                "{uuid} {kernel}"
            );
            assert_eq!(v.iter().filter(|x| x.value == 1.0).count(), 1, "{v:?}");
            assert!(v.iter().all(|x| x.value == 0.0 || x.value == 1.0));
        }
    }
    // Pod count per GPU, from the injected occupancy.
    let pods = find("slicetrace_gpu_pods");
    for uuid in ["CPU-0", "CPU-1"] {
        let p = pods
            .iter()
            .find(|x| x.label("gpu_uuid") == Some(uuid))
            .expect("pod count");
        assert_eq!(p.value, 2.0);
    }
    // Per-GPU correctness failures and the internal counters.
    assert_eq!(
        find("slicetrace_correctness_failures_total").len(),
        4,
        "one per GPU and kernel"
    );
    assert!(find("slicetrace_correctness_failures_total")
        .iter()
        .all(|x| x.value == 0.0));
    for name in [
        "slicetrace_otlp_spans_dropped_total",
        "slicetrace_parquet_rows_written_total",
        "slicetrace_parquet_files_rotated_total",
    ] {
        let c = find(name);
        assert_eq!(c.len(), 1, "{name} in\n{}", m.body);
        assert_eq!(c[0].value, 0.0, "{name}");
    }
    // Series about one GPU carry its gpu_uuid (the probe-error alert names it).
    for name in [
        "slicetrace_probe_errors_total",
        "slicetrace_telemetry_errors_total",
        "slicetrace_probe_runs_total",
    ] {
        let mut uuids: Vec<_> = find(name)
            .iter()
            .filter_map(|x| x.label("gpu_uuid"))
            .collect();
        uuids.sort_unstable();
        assert_eq!(uuids, ["CPU-0", "CPU-1"], "{name} in\n{}", m.body);
    }
    assert!(find("slicetrace_probe_errors_total")
        .iter()
        .all(|x| x.value == 0.0));
    let runs = find("slicetrace_probe_runs_total");
    assert!(runs.iter().all(|x| x.value >= 2.0), "{runs:?}");
    assert_eq!(find("slicetrace_ready").first().map(|x| x.value), Some(1.0));
    // Every series carries the agent's node, whatever the scrape setup adds.
    assert!(
        s.iter().all(|x| x.label("node") == Some("n1")),
        "{}",
        m.body
    );
    assert_eq!(
        find("slicetrace_agent_info")
            .first()
            .and_then(|x| x.label("version")),
        Some(env!("CARGO_PKG_VERSION"))
    );
    for uuid in ["CPU-0", "CPU-1"] {
        let up = find("slicetrace_backend_up");
        let up = up
            .iter()
            .find(|x| x.label("gpu_uuid") == Some(uuid))
            .expect("backend_up");
        assert_eq!((up.label("backend"), up.value), (Some("cpu"), 1.0));
        for kernel in ["fft", "gemm"] {
            let of = |name: &str| {
                find(name)
                    .into_iter()
                    .filter(|x| {
                        x.label("gpu_uuid") == Some(uuid) && x.label("kernel") == Some(kernel)
                    })
                    .collect::<Vec<_>>()
            };
            let c = of("slicetrace_gpu_contention");
            assert_eq!(c.len(), 3, "{uuid} {kernel}: {c:?}");
            assert_eq!(c.iter().filter(|x| x.value == 1.0).count(), 1, "{c:?}");
            let r = of("slicetrace_gpu_verdict_reason");
            let mut dims: Vec<_> = r.iter().filter_map(|x| x.label("dimension")).collect();
            dims.sort_unstable();
            assert_eq!(dims, ["contention", "health"], "{r:?}");
        }
    }
    let report = agent.shutdown();
    assert!(report.clean_shutdown);
}

#[test]
fn promtool_check_metrics_accepts_the_exposition() {
    let Some(promtool) = slicetrace_e2e::runnable("promtool", &["--version"]) else {
        return;
    };
    let (agent, m, _dir) = agent_with_metrics();
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(m.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nexposition:\n{}",
        out.status,
        m.body
    );
    drop(agent);
}
