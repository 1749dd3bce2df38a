//! Unit tests of the evaluator: windows, verdicts, faults without rows and
//! baselines across a restart, on rows shaped like the H100 runs.

use super::*;
use crate::serve::live::GpuEntry;
use slicetrace_schema::Contention;

const H100: &str = "NVIDIA H100 80GB HBM3";

/// An arrival run of the light FFT on an H100 at 1980 MHz.
fn row(wall: f64, gpu: f64, procs: u32) -> ProbeRecord {
    ProbeRecord {
        gpu_uuid: "GPU-a".into(),
        gpu_name: Some(H100.into()),
        kernel: slicetrace_schema::Kernel::Fft,
        shape: "c2c 1d n=4096 batch=16".into(),
        precision: "fp32".into(),
        wall_ms: wall,
        gpu_ms: Some(gpu),
        queue_ms: Some(wall - gpu),
        device: slicetrace_schema::DeviceFields {
            sm_clock_mhz: Some(1980),
            gpu_processes: Some(procs),
            ..Default::default()
        },
        arrival: Some(true),
        correct: Some(true),
        ..Default::default()
    }
}

fn cfg() -> HealthConfig {
    HealthConfig {
        window_ms: 10_000,
        evaluate_interval_ms: 1000,
        min_samples: 20,
        baseline_min_samples: 50,
        ..Default::default()
    }
}

fn quiet_rows(n: usize) -> Vec<ProbeRecord> {
    (0..n)
        .map(|i| row(0.1 + (i % 10) as f64 * 0.001, 0.01, 0))
        .collect()
}

#[test]
fn tenants_make_a_gpu_contended_never_unhealthy() {
    let st = Arc::new(LiveState::default());
    let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), None);
    let t0 = Instant::now();
    e.observe(&quiet_rows(200), t0);
    let h = e.evaluate(t0, 0);
    assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
    assert_eq!(h[0].contention.as_deref(), Some("ok"));
    assert_eq!(h[0].health_baseline_source.as_deref(), Some("learned"));
    let b = h[0].baseline_p99_ms.expect("baseline");
    assert!((0.105..0.115).contains(&b), "baseline {b}");
    // 11 s later the quiet window has expired; 3 tenants, waits as the
    // H100 showed them (p99 ~7 ms), event clock flat.
    let t1 = t0 + Duration::from_secs(11);
    let shared: Vec<_> = (0..100)
        .map(|i| row(0.5 + (i % 50) as f64 * 0.13, 0.007, 3))
        .collect();
    e.observe(&shared, t1);
    let h = e.evaluate(t1, 1);
    assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
    assert_eq!(
        h[0].contention.as_deref(),
        Some("contended"),
        "{:?}",
        h[0].contention_detail
    );
    assert!(h[0]
        .contention_detail
        .as_deref()
        .is_some_and(|d| d.contains("3 tenants")));
    assert_eq!(st.verdict("GPU-a", Kernel::Fft), Some(Verdict::Healthy));
    assert_eq!(
        st.contention("GPU-a", Kernel::Fft),
        Some(Contention::Contended)
    );
    // Far more wait than 3 tenants explain: over-shared, still healthy.
    let t2 = t1 + Duration::from_secs(11);
    e.observe(
        &(0..100).map(|_| row(30.0, 0.007, 3)).collect::<Vec<_>>(),
        t2,
    );
    let h = e.evaluate(t2, 2);
    assert_eq!(h[0].verdict, "healthy");
    assert_eq!(h[0].contention.as_deref(), Some("over-shared"));
    assert_eq!(
        h[0].contention_reason.as_deref(),
        Some("wait_over_predicted")
    );
    // Contended runs never moved the baseline.
    assert!((h[0].baseline_p99_ms.expect("b") - b).abs() < 1e-9);
}

#[test]
fn jitter_of_a_tiny_kernel_on_an_idle_gpu_is_not_contention() {
    let st = Arc::new(LiveState::default());
    let mut e = Evaluator::new(cfg(), "n".into(), st, None);
    let t0 = Instant::now();
    e.observe(&quiet_rows(200), t0);
    e.evaluate(t0, 0);
    // 11 s later, a tenant appeared: 2.3x the baseline p99, but far
    // less than half a slice above it.
    let t1 = t0 + Duration::from_secs(11);
    e.observe(&(0..50).map(|_| row(0.25, 0.01, 1)).collect::<Vec<_>>(), t1);
    let h = e.evaluate(t1, 1);
    assert_eq!(
        h[0].contention.as_deref(),
        Some("ok"),
        "{:?}",
        h[0].contention_detail
    );
    assert!(h[0].inflation.is_some_and(|i| i > 2.0));
}

#[test]
fn only_arrivals_count_and_correctness_failures_are_unhealthy() {
    let st = Arc::new(LiveState::default());
    let mut e = Evaluator::new(cfg(), "n".into(), st, None);
    let t0 = Instant::now();
    let mut rows = quiet_rows(100);
    // Back-to-back runs after the probe's own previous run: not arrivals.
    rows.extend((0..100).map(|_| ProbeRecord {
        arrival: Some(false),
        ..row(50.0, 0.01, 0)
    }));
    // The first run after an idle gap is an arrival like any other.
    rows.push(ProbeRecord {
        burst_seq: 0,
        ..row(0.1, 0.01, 0)
    });
    e.observe(&rows, t0);
    let h = e.evaluate(t0, 0);
    assert_eq!(h[0].samples, 101);
    assert!(h[0].wall_p99_ms.expect("p99") < 0.2, "non-arrivals leaked");
    let mut bad = ProbeRecord {
        arrival: Some(false),
        ..row(0.1, 0.01, 0)
    };
    bad.correct = Some(false);
    e.observe(&[bad], t0);
    let h = e.evaluate(t0, 1);
    assert_eq!(h[0].verdict, "unhealthy");
    assert_eq!(h[0].health_reason.as_deref(), Some("correctness"));
}

#[test]
fn probe_errors_throttling_and_the_slo() {
    let st = Arc::new(LiveState::default());
    let mut c = cfg();
    c.slo_p99_ms = Some(1.0);
    let mut e = Evaluator::new(c, "n".into(), st.clone(), None);
    let t0 = Instant::now();
    st.register_gpu(
        "GPU-b",
        GpuEntry {
            index: 1,
            name: None,
            backend: "cuda".into(),
            down: None,
            probe_failing: None,
            down_reason: None,
            critical_xid: None,
        },
    );
    e.event(
        ProbeEvent::ProbeError {
            gpu_uuid: "GPU-b".into(),
            gpu_index: 1,
            error: "CUDA_ERROR_LAUNCH_FAILED".into(),
        },
        t0,
    );
    assert!(!st.not_ready().is_empty(), "a failing backend is not ready");
    let mut rows: Vec<_> = (0..50).map(|_| row(5.0, 0.01, 2)).collect();
    rows[3].device.throttle_reasons = Some(0x20);
    e.observe(&rows, t0);
    let h = e.evaluate(t0, 0);
    let b = h.iter().find(|r| r.gpu_uuid == "GPU-b").expect("lost gpu");
    assert_eq!(b.verdict, "unhealthy");
    assert_eq!(b.health_reason.as_deref(), Some("probe_failing"));
    let a = h.iter().find(|r| r.gpu_uuid == "GPU-a").expect("a");
    assert_eq!(a.verdict, "degraded", "{}", a.reason);
    assert_eq!(a.health_reason.as_deref(), Some("throttled"));
    // An SLO breach is contention: 5x the SLO is over-shared.
    assert_eq!(a.contention.as_deref(), Some("over-shared"));
    assert_eq!(a.contention_baseline_source.as_deref(), Some("slo"));
    // One hardware-slowdown sample is brief: degraded, not unhealthy
    // (regression, issue 21: it used to page).
    let mut hw = row(0.5, 0.01, 0);
    hw.device.throttle_reasons = Some(0x40);
    e.observe(std::slice::from_ref(&hw), t0);
    let h = e.evaluate(t0, 1);
    let a = h.iter().find(|r| r.gpu_uuid == "GPU-a").expect("a");
    assert_eq!(a.verdict, "degraded", "{}", a.reason);
    // Sustained over a quarter of the window's runs, it is a broken GPU.
    e.observe(&vec![hw; 20], t0);
    let h = e.evaluate(t0, 1);
    let a = h.iter().find(|r| r.gpu_uuid == "GPU-a").expect("a");
    assert_eq!(a.verdict, "unhealthy", "{}", a.reason);
    assert!(a.reason.contains("hardware throttling"), "{}", a.reason);
    e.event(
        ProbeEvent::ProbeRecovered {
            gpu_uuid: "GPU-b".into(),
        },
        t0,
    );
    assert!(e.evaluate(t0, 2).iter().all(|r| r.gpu_uuid != "GPU-b"));
}

#[test]
fn failed_self_test_and_backend_down_are_unhealthy_without_rows() {
    let st = Arc::new(LiveState::default());
    let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), None);
    st.record_self_test("GPU-a", Kernel::Gemm, false);
    st.record_self_test("GPU-a", Kernel::Fft, true);
    st.register_gpu(
        "GPU-c",
        GpuEntry {
            index: 2,
            name: None,
            backend: "cuda".into(),
            down: Some("libcufft.so.12 not found".into()),
            probe_failing: None,
            down_reason: None,
            critical_xid: None,
        },
    );
    let t0 = Instant::now();
    e.observe(&quiet_rows(100), t0);
    let h = e.evaluate(t0, 0);
    let get = |u: &str, k: &str| {
        h.iter()
            .find(|r| r.gpu_uuid == u && r.kernel.as_str() == k)
            .unwrap_or_else(|| panic!("{u} {k} in {h:?}"))
    };
    assert_eq!(get("GPU-a", "fft").verdict, "healthy");
    assert_eq!(get("GPU-a", "gemm").verdict, "unhealthy");
    assert_eq!(
        get("GPU-a", "gemm").health_reason.as_deref(),
        Some("self_test_failed")
    );
    assert!(get("GPU-a", "gemm")
        .reason
        .contains("correctness unverified"));
    assert_eq!(
        get("GPU-c", "fft").health_reason.as_deref(),
        Some("backend_down")
    );
    let why = st.not_ready();
    assert!(
        why.iter().any(|w| w.contains("self-test failed")),
        "{why:?}"
    );
    assert!(why.iter().any(|w| w.contains("libcufft")), "{why:?}");
}

#[test]
fn a_never_idle_gpu_is_judged_against_the_sku_reference() {
    let st = Arc::new(LiveState::default());
    let mut e = Evaluator::new(cfg(), "n".into(), st, None);
    let t0 = Instant::now();
    // Always 3 tenants: no quiet run, no learned baseline.
    e.observe(
        &(0..100).map(|_| row(6.0, 0.007, 3)).collect::<Vec<_>>(),
        t0,
    );
    let h = e.evaluate(t0, 0);
    assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
    assert_eq!(h[0].health_baseline_source.as_deref(), Some("sku"));
    assert_eq!(h[0].contention.as_deref(), Some("contended"));
    // The same GPU executing 3x slower per SM cycle: unhealthy.
    let t1 = t0 + Duration::from_secs(11);
    e.observe(&(0..100).map(|_| row(6.0, 0.03, 3)).collect::<Vec<_>>(), t1);
    let h = e.evaluate(t1, 1);
    assert_eq!(h[0].verdict, "unhealthy", "{}", h[0].reason);
    assert_eq!(h[0].health_reason.as_deref(), Some("event_slow"));
    // Too few runs: unknown, not healthy.
    let t2 = t1 + Duration::from_secs(11);
    e.observe(&[row(6.0, 0.007, 3)], t2);
    let h = e.evaluate(t2, 2);
    assert_eq!(h[0].verdict, "unknown", "{}", h[0].reason);
}

#[test]
fn baselines_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = Arc::new(LiveState::default());
    let mut e = Evaluator::new(cfg(), "n".into(), st.clone(), Some(dir.path()));
    e.observe(&quiet_rows(100), Instant::now());
    e.save_baselines();
    let mut e2 = Evaluator::new(cfg(), "n".into(), st, Some(dir.path()));
    let t = Instant::now();
    // Quiet again but 3x slower per SM cycle than the learned baseline,
    // and waiting 2 ms (no tenant seen).
    e2.observe(&(0..30).map(|_| row(2.0, 0.04, 0)).collect::<Vec<_>>(), t);
    let h = e2.evaluate(t, 0);
    assert_eq!(h[0].verdict, "unhealthy", "{}", h[0].reason);
    assert_eq!(h[0].health_baseline_source.as_deref(), Some("learned"));
    assert_eq!(h[0].contention.as_deref(), Some("contended"));
}

#[test]
fn a_never_idle_gpu_without_a_sku_reference_learns_health_from_unpreempted_shared_runs() {
    let st = Arc::new(LiveState::default());
    let mut c = cfg();
    // No shipped reference: the case of every model but the H100.
    c.sku_reference = false;
    let mut e = Evaluator::new(c, "n".into(), st, None);
    let t0 = Instant::now();
    // Always 3 tenants, so no quiet run ever: before this, health stayed
    // `unknown` for good.
    e.observe(
        &(0..100).map(|_| row(6.0, 0.007, 3)).collect::<Vec<_>>(),
        t0,
    );
    let h = e.evaluate(t0, 0);
    assert_eq!(h[0].verdict, "healthy", "{}", h[0].reason);
    assert_eq!(h[0].health_baseline_source.as_deref(), Some("learned"));
    let learned = h[0]
        .event_baseline_mcycles
        .expect("a learned event baseline");
    assert!((learned - 0.007 * 1.98).abs() < 0.001, "{learned}");
    // Three times slower per SM cycle a window later: unhealthy.
    let t1 = t0 + Duration::from_secs(11);
    e.observe(&(0..30).map(|_| row(6.0, 0.021, 3)).collect::<Vec<_>>(), t1);
    let h = e.evaluate(t1, 1);
    assert_eq!(h[0].verdict, "unhealthy", "{}", h[0].reason);
    assert_eq!(h[0].health_reason.as_deref(), Some("event_slow"));
}
