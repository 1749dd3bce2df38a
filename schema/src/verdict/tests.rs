use super::*;
use crate::ProbeRecord;

fn w(wall_p99: f64, cycles: f64, tenants: u32) -> WindowStats {
    WindowStats {
        samples: 100,
        wall_p99_ms: Some(wall_p99),
        event_samples: 100,
        event_mcycles_p50: Some(cycles),
        correctness_failures: 0,
        throttle_reasons: 0,
        hw_throttled_runs: 0,
        max_tenants: Some(tenants),
    }
}

fn h100_fft() -> &'static SkuReference {
    sku_reference(
        Some("NVIDIA H100 80GB HBM3"),
        "fft",
        "c2c 1d n=4096 batch=16",
        "fp32",
    )
    .expect("shipped")
}

#[test]
fn h100_tenant_phases_are_healthy_and_contended_not_unhealthy() {
    let th = Thresholds::DEFAULT;
    let learned = LearnedBaseline {
        wall_p50_ms: Some(0.0768),
        wall_p99_ms: Some(0.1495),
        event_mcycles_p50: Some(0.0195),
    };
    // docs/gpu-results/h100-summary.md section 2: 1 and 3 tenants.
    for (wall, cyc, t) in [(2.4285, 0.0139, 1), (6.9961, 0.0139, 3)] {
        let j = judge(
            &w(wall, cyc, t),
            &learned,
            None,
            None,
            &Faults::default(),
            &th,
        );
        assert_eq!(j.verdict, Verdict::Healthy, "{j:?}");
        assert_eq!(j.contention, Contention::Contended, "{j:?}");
        assert!(
            j.contention_detail.contains(&format!("{t} tenant")),
            "{j:?}"
        );
    }
    // A wait far beyond what one tenant explains: over-shared.
    let j = judge(
        &w(9.0, 0.0139, 1),
        &learned,
        None,
        None,
        &Faults::default(),
        &th,
    );
    assert_eq!(
        (j.verdict, j.contention, j.contention_reason),
        (
            Verdict::Healthy,
            Contention::OverShared,
            Reason::WaitOverPredicted
        )
    );
}

#[test]
fn never_idle_gpu_is_judged_against_the_sku_reference() {
    let th = Thresholds::DEFAULT;
    let none = LearnedBaseline::default();
    let sku = |event_p99: f64| {
        judge(
            &w(6.9, event_p99, 3),
            &none,
            Some(h100_fft()),
            None,
            &Faults::default(),
            &th,
        )
    };
    let j = sku(0.0139);
    assert_eq!(j.verdict, Verdict::Healthy);
    assert_eq!(j.health_source, Some(BaselineSource::Sku));
    assert_eq!(j.contention_source, Some(BaselineSource::Sku));
    for (event_p99, verdict) in [(0.07, Verdict::Unhealthy), (0.035, Verdict::Degraded)] {
        let j = sku(event_p99);
        assert_eq!(
            (j.verdict, j.health_reason),
            (verdict, Reason::EventSlow),
            "event p99 {event_p99} ms"
        );
    }
}

#[test]
fn faults_throttling_and_no_data() {
    let th = Thresholds::DEFAULT;
    let b = LearnedBaseline::default();
    let f = Faults {
        self_test_failed: true,
        ..Default::default()
    };
    let j = judge(&w(1.0, 0.01, 0), &b, None, None, &f, &th);
    assert_eq!(
        (j.verdict, j.health_reason),
        (Verdict::Unhealthy, Reason::SelfTestFailed)
    );
    let mut x = w(1.0, 0.01, 0);
    x.throttle_reasons = 0x40;
    x.hw_throttled_runs = x.samples / 2;
    let j = judge(&x, &b, None, None, &Faults::default(), &th);
    assert_eq!(
        (j.verdict, j.health_reason),
        (Verdict::Unhealthy, Reason::Throttled)
    );
    // Regression (issue 21): one hardware-slowdown sample in the window made
    // the GPU unhealthy; below the share it is degraded.
    x.hw_throttled_runs = 1;
    let j = judge(&x, &b, None, None, &Faults::default(), &th);
    assert_eq!(
        (j.verdict, j.health_reason),
        (Verdict::Degraded, Reason::Throttled),
        "{}",
        j.health_detail
    );
    x.hw_throttled_runs = 0;
    x.throttle_reasons = 0x4;
    let j = judge(&x, &b, None, None, &Faults::default(), &th);
    assert_eq!(
        (j.verdict, j.health_reason),
        (Verdict::Degraded, Reason::Throttled)
    );
    let j = judge(
        &WindowStats::default(),
        &b,
        None,
        None,
        &Faults::default(),
        &th,
    );
    assert_eq!(
        (j.verdict, j.health_reason),
        (Verdict::Unknown, Reason::NoData)
    );
    // SLO: contention only, never health.
    let j = judge(
        &w(10.0, 0.01, 2),
        &b,
        None,
        Some(1.0),
        &Faults::default(),
        &th,
    );
    // (No event baseline at all: the GPU's speed is unknown, not healthy.)
    assert_eq!(
        (j.verdict, j.contention, j.contention_source),
        (
            Verdict::Unknown,
            Contention::OverShared,
            Some(BaselineSource::Slo)
        )
    );
}

#[test]
fn preempted_long_kernels_are_not_judged_beside_tenants() {
    let th = Thresholds::DEFAULT;
    let r = |gpu: f64, t: u32, inflated: Option<bool>| ProbeRecord {
        gpu_ms: Some(gpu),
        device: crate::DeviceFields {
            gpu_processes: Some(t),
            ..Default::default()
        },
        event_inflated: inflated,
        ..Default::default()
    };
    assert!(event_eligible(&r(6.8, 0, None), &th));
    assert!(!event_eligible(&r(6.8, 3, None), &th));
    assert!(!event_eligible(&r(0.01, 3, Some(true)), &th));
    assert!(event_eligible(&r(0.01, 3, None), &th));
    assert!(event_eligible(&r(2.7, 3, Some(false)), &th));
}

#[test]
fn reason_names_are_unique_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for r in Reason::ALL {
        let s = r.as_str();
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{s}"
        );
        assert!(seen.insert(s), "{s}");
        assert_eq!(serde_json::to_string(&r).expect("json"), format!("\"{s}\""));
    }
}
