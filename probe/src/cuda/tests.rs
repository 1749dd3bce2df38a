use super::device::effective_fp32_math_with;
use super::*;

#[test]
fn a_node_wide_tf32_override_loosens_the_fp32_check() {
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Strict, None),
        Fp32Math::Strict
    );
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Strict, Some("0")),
        Fp32Math::Strict
    );
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Strict, Some("1")),
        Fp32Math::Tf32
    );
    assert_eq!(
        effective_fp32_math_with(Fp32Math::Tf32, None),
        Fp32Math::Tf32
    );
}

#[test]
fn uuid_is_formatted_like_nvml() {
    let b: [u8; 16] = [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    assert_eq!(format_uuid(&b), "GPU-deadbeef-0001-0203-0405-060708090a0b");
}

/// The failure to find CUDA: on a machine without the driver (CI) this
/// must be a clean error naming libcuda, never a panic; with a GPU it must
/// count at least one device.
#[test]
fn missing_cuda_is_a_clear_error_not_a_panic() {
    match device_count() {
        Err(ProbeError::LibraryMissing { library, .. }) => {
            assert!(library.starts_with("lib"), "{library}");
            let e = CudaBackend::new(0, &ProbeSpec::preset(crate::Preset::Light))
                .err()
                .expect("backend must fail without CUDA");
            assert!(e.to_string().contains("not found"), "{e}");
        }
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(n) => assert!(
            n >= 1
                || matches!(
                    CudaBackend::new(0, &ProbeSpec::preset(crate::Preset::Light)),
                    Err(ProbeError::BadIndex { .. })
                )
        ),
    }
}

#[test]
fn auto_falls_back_to_cpu_with_a_reason_when_cuda_is_missing() {
    let spec = ProbeSpec {
        fft: crate::FftSpec {
            dims: FftDims::D1 { n: 256, batch: 2 },
        },
        gemm: crate::GemmSpec {
            n: 32,
            precision: Precision::Fp32,
        },
        burst_runs: 2,
        timing: crate::Timing::Graph,
        ..ProbeSpec::preset(crate::Preset::Light)
    };
    if device_count().is_ok_and(|n| n > 0) {
        // A GPU is present (the GPU tier): auto must open CUDA, no fallback.
        let (backends, reason) =
            crate::open_backends(crate::BackendKind::Auto, &|_| spec, 1).expect("cuda");
        assert!(!backends.is_empty());
        assert_eq!(
            backends[0].device().backend,
            slicetrace_schema::Backend::Cuda
        );
        assert!(reason.is_none(), "{reason:?}");
        return;
    }
    let (backends, reason) =
        crate::open_backends(crate::BackendKind::Auto, &|_| spec, 1).expect("fallback");
    assert_eq!(backends.len(), 1);
    assert_eq!(
        backends[0].device().backend,
        slicetrace_schema::Backend::Cpu
    );
    assert!(reason.expect("reason").to_string().contains("not found"));
    assert!(crate::open_backends(crate::BackendKind::Cuda, &|_| spec, 1).is_err());
}

// ---- The GPU tier: these need a CUDA device. Without one they print a
// visible SKIP line; with SLICETRACE_REQUIRE_GPU=1 (docs/gpu-results/
// run-stamps.sh) a missing device fails them instead. ----

/// A light-preset backend on device 0, or `None` after a SKIP line.
fn gpu_or_skip(test: &str, spec: ProbeSpec) -> Option<CudaBackend> {
    let n = device_count();
    if n.as_ref().is_ok_and(|n| *n > 0) {
        return Some(CudaBackend::new(0, &spec).expect("cuda backend on device 0"));
    }
    assert!(
        std::env::var("SLICETRACE_REQUIRE_GPU").as_deref() != Ok("1"),
        "{test}: SLICETRACE_REQUIRE_GPU=1 but no CUDA device: {n:?}"
    );
    eprintln!("SKIP {test}: no CUDA device ({n:?})");
    None
}

fn light() -> ProbeSpec {
    ProbeSpec::preset(crate::Preset::Light)
}

/// Prints one JSON result line the GPU tier's script collects.
fn gpu_result(test: &str, v: String) {
    println!("GPU-RESULT {{\"test\":\"{test}\",{v}}}");
}

#[test]
fn the_gpu_timer_is_monotonic_and_its_resolution_is_measured() {
    let Some(mut b) = gpu_or_skip("timer", light()) else {
        return;
    };
    let trace = b.timer_trace(200_000).expect("trace");
    assert!(
        trace.windows(2).all(|w| w[1] >= w[0]),
        "the GPU timer went backwards"
    );
    let steps: Vec<u64> = trace
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d > 0)
        .collect();
    assert!(!steps.is_empty(), "the timer never advanced");
    let mut sorted = steps.clone();
    sorted.sort_unstable();
    let (min, med) = (sorted[0], sorted[sorted.len() / 2]);
    let span = trace[trace.len() - 1] - trace[0];
    gpu_result(
        "timer",
        format!(
            "\"reads\":{},\"distinct_steps\":{},\"min_step_ns\":{min},\"median_step_ns\":{med},\"max_step_ns\":{},\"span_ns\":{span}",
            trace.len(),
            steps.len(),
            sorted[sorted.len() - 1]
        ),
    );
    // The calibration's 10 µs goal needs a timer that ticks well below it.
    assert!(med <= 2_000, "median tick {med} ns");
}

#[test]
fn stamps_bracket_the_event_clock_and_the_host_clock() {
    let Some(mut b) = gpu_or_skip("bracket", light()) else {
        return;
    };
    let (mut n, mut gpu_clock) = (0, 0);
    let mut slack_ev = Vec::new(); // (end − start stamp) − event time, µs
    let mut host_minus_wall = Vec::new(); // host_wall − wall, µs
    for i in 0..600 {
        let k = if i % 2 == 0 {
            Kernel::Fft
        } else {
            Kernel::Gemm
        };
        let s = b.run(k).expect("run");
        assert_eq!(s.correct, Some(true));
        let (st, en) = b.last_stamps().expect("stamps");
        let span_ms = (en - st) as f64 / 1e6;
        let gpu_ms = s.gpu_ms.expect("events");
        // The events sit between the stamps (one timer tick of slack).
        assert!(
            span_ms + 0.002 >= gpu_ms,
            "stamps {span_ms} ms < events {gpu_ms} ms"
        );
        assert!(
            span_ms <= s.host_wall_ms,
            "stamps {span_ms} ms > host {} ms",
            s.host_wall_ms
        );
        slack_ev.push((span_ms - gpu_ms) * 1e3);
        if s.wall_clock == slicetrace_schema::WallClock::Gpu {
            gpu_clock += 1;
            let err_ms = s.clock_error_us.expect("error bound") / 1e3;
            let q = s.queue_ms.expect("queue");
            assert!(q <= s.wall_ms, "queue {q} > wall {}", s.wall_ms);
            // Launch → end stamp ≤ launch → wait returned, within the bound.
            assert!(
                s.wall_ms <= s.host_wall_ms + err_ms,
                "wall {} > host {} + {err_ms}",
                s.wall_ms,
                s.host_wall_ms
            );
            host_minus_wall.push((s.host_wall_ms - s.wall_ms) * 1e3);
        }
        n += 1;
        std::thread::sleep(std::time::Duration::from_millis(if i % 3 == 0 {
            20
        } else {
            1
        }));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    gpu_result(
        "bracket",
        format!(
            "\"runs\":{n},\"gpu_clock_runs\":{gpu_clock},\"median_stamp_span_minus_events_us\":{:.3},\"median_host_wall_minus_wall_us\":{:.3}",
            med(&mut slack_ev),
            med(&mut host_minus_wall)
        ),
    );
    assert!(
        gpu_clock * 10 >= n * 9,
        "only {gpu_clock} of {n} runs had a calibrated GPU clock"
    );
}

#[test]
fn the_calibration_bound_is_under_ten_microseconds_on_an_idle_gpu() {
    let Some(mut b) = gpu_or_skip("calibration", light()) else {
        return;
    };
    let mut errs = Vec::new();
    let t0 = std::time::Instant::now();
    // 12 s of arrivals at ~5 Hz on the idle GPU, as the agent makes them.
    let mut i = 0u32;
    while t0.elapsed() < std::time::Duration::from_secs(12) {
        let k = if i.is_multiple_of(2) {
            Kernel::Fft
        } else {
            Kernel::Gemm
        };
        let s = b.run(k).expect("run");
        if let Some(e) = s.clock_error_us {
            errs.push(e);
        }
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let fit = b.clock().fit().expect("a fit");
    let last = *errs.last().expect("error bounds");
    errs.sort_by(f64::total_cmp);
    gpu_result(
        "calibration",
        format!(
            "\"runs\":{i},\"err_us_last\":{last:.3},\"err_us_median\":{:.3},\"err_us_max\":{:.3},\"drift_ppm\":{:.4},\"drift_err_ppm\":{:.4},\"resets\":{}",
            errs[errs.len() / 2],
            errs[errs.len() - 1],
            fit.drift * 1e6,
            fit.drift_err * 1e6,
            b.clock().resets()
        ),
    );
    assert!(
        last < 10.0,
        "calibration error bound {last} µs on an idle GPU"
    );
}

#[test]
fn the_two_way_exchange_bounds_the_offset_to_a_round_trip() {
    let Some(mut b) = gpu_or_skip("exchange", light()) else {
        return;
    };
    // Start-up: every exchange answered (the start-up set, and the one the
    // warm-up runs ask for), and the bound already tight.
    let start = b.exchange_stats();
    assert_eq!(start.missed, 0, "start-up exchanges missed: {start:?}");
    assert!(
        start.answered >= u64::from(super::CALIBRATE_AT_START),
        "start-up exchanges answered: {start:?}"
    );
    let now = super::host_ns(std::time::Instant::now());
    let err0 = b
        .clock
        .estimate(now)
        .expect("estimate after start-up")
        .err_ns;
    let mut rt = Vec::new();
    for _ in 0..200 {
        if let Some(w) = b.exchange().expect("exchange") {
            rt.push(w as f64 / 1e3);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let s = b.exchange_stats();
    rt.sort_by(f64::total_cmp);
    let q = |p: f64| rt[((rt.len() - 1) as f64 * p) as usize];
    gpu_result(
        "exchange",
        format!(
            "\"start_err_us\":{:.3},\"answered\":{},\"missed\":{},\"round_trip_us_p50\":{:.3},\"round_trip_us_p99\":{:.3},\"round_trip_us_max\":{:.3},\"host_spin_us_mean\":{:.3}",
            err0 / 1e3,
            s.answered,
            s.missed,
            q(0.5),
            q(0.99),
            q(1.0),
            s.spin.as_secs_f64() * 1e6 / (s.answered + s.missed) as f64
        ),
    );
    assert!(
        rt.len() >= 190,
        "only {} of 200 exchanges answered",
        rt.len()
    );
    // A PCIe round trip, not a context switch.
    assert!(q(0.5) < 10.0, "median round trip {} µs", q(0.5));
    assert!(err0 < 10_000.0, "error bound {err0} ns after start-up");
}

#[test]
fn planted_faults_are_caught_through_the_real_graph() {
    let Some(mut b) = gpu_or_skip("faults", light()) else {
        return;
    };
    for k in [Kernel::Fft, Kernel::Gemm] {
        assert_eq!(b.shape(k).submit, Some("graph"), "{k:?} is not a graph");
        for round in 0..20 {
            assert_eq!(
                b.run(k).expect("run").correct,
                Some(true),
                "{k:?} clean run {round}"
            );
            b.plant_fault(k, Fault::Corrupt);
            assert_eq!(
                b.run(k).expect("run").correct,
                Some(false),
                "{k:?} corrupt {round}"
            );
            b.plant_fault(k, Fault::Skip);
            let s = b.run(k).expect("run");
            // A kernel that never ran leaves the NaN poison: caught.
            assert_eq!(s.correct, Some(false), "{k:?} skipped {round}");
        }
        assert_eq!(
            b.run(k).expect("run").correct,
            Some(true),
            "{k:?} after faults"
        );
    }
    gpu_result("faults", "\"kernels\":2,\"rounds\":20".into());
}

#[test]
fn every_wait_mode_completes_and_says_how_it_waited() {
    for (wait, expect) in [
        (Wait::Spin, &["spin"][..]),
        (Wait::SpinThenBlock { spin_us: 0 }, &["block", "spin"][..]),
        (Wait::SpinThenBlock { spin_us: 200 }, &["spin", "block"][..]),
    ] {
        let Some(mut b) = gpu_or_skip("wait", ProbeSpec { wait, ..light() }) else {
            return;
        };
        for k in [Kernel::Fft, Kernel::Gemm] {
            let s = b.run(k).expect("run");
            assert_eq!(s.correct, Some(true));
            let w = s.wait.expect("wait mode");
            assert!(expect.contains(&w), "{wait:?}: waited by {w}");
        }
    }
    gpu_result("wait", "\"modes\":3".into());
}

#[test]
fn without_stamps_wall_ms_is_the_host_clock() {
    let Some(mut b) = gpu_or_skip(
        "no-stamps",
        ProbeSpec {
            gpu_stamps: false,
            ..light()
        },
    ) else {
        return;
    };
    let s = b.run(Kernel::Fft).expect("run");
    assert_eq!(s.wall_clock, slicetrace_schema::WallClock::Host);
    assert_eq!(s.wall_ms, s.host_wall_ms);
    assert_eq!(s.clock_error_us, None);
    assert!(b.last_stamps().is_none());
}

/// Opens a backend on device 0 in a context of `kind`, timing each stage
/// of the open (ms since the open began, as `"stage":ms` JSON members).
fn open_timed(kind: super::ContextKind) -> (CudaBackend, f64, String) {
    let t = Instant::now();
    let mut stages = Vec::new();
    let b = CudaBackend::new_traced_in(0, &light(), kind, &mut |s| {
        stages.push(format!("\"{s}\":{:.0}", t.elapsed().as_secs_f64() * 1e3))
    })
    .unwrap_or_else(|e| panic!("a {kind:?} backend beside the hang: {e}"));
    (b, t.elapsed().as_secs_f64() * 1e3, stages.join(","))
}

/// The planted hang goes through the real graph: its run holds the GPU for
/// `PLANTED_HANG` (the spin node was enabled for one launch), the host
/// sleeps in the driver meanwhile (CPU stays flat), and the run after it is
/// clean and quick (the node is disabled again). The hung backend is in
/// the primary context, as the agent's backends were before issue 21's
/// recovery fix: a backend in a context of its own (what the agent opens
/// now) opens and runs 20 clean runs while the hang still spins, which is
/// what lets the watchdog's replacement probe during a hang. A second
/// backend in the primary context is then opened beside the hang too,
/// stage by stage, to show where the old recovery waited (not asserted:
/// it is the diagnosis, reported in the GPU-RESULT line).
#[test]
fn a_planted_hang_holds_its_run_costs_no_cpu_and_a_backend_in_its_own_context_runs_beside_it() {
    let Some(mut b) = gpu_or_skip("hang", light()) else {
        return;
    };
    assert_eq!(b.shape(Kernel::Gemm).submit, Some("graph"));
    b.plant_fault(Kernel::Gemm, Fault::Hang);
    let hung = std::thread::spawn(move || {
        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        let s = b.run(Kernel::Gemm).map(|s| s.correct);
        (t0.elapsed(), thread_cpu_ns() - cpu0, s, b)
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (mut own, own_open_ms, own_stages) = open_timed(super::ContextKind::Own);
    let t1 = Instant::now();
    for _ in 0..20 {
        assert_eq!(own.run(Kernel::Fft).expect("run").correct, Some(true));
        assert_eq!(own.run(Kernel::Gemm).expect("run").correct, Some(true));
    }
    let own_runs_ms = t1.elapsed().as_secs_f64() * 1e3;
    let during_hang = !hung.is_finished();
    drop(own);
    // The old way: the primary context, where the hang spins.
    let (mut primary, primary_open_ms, primary_stages) = open_timed(super::ContextKind::Primary);
    let primary_open_during_hang = !hung.is_finished();
    assert_eq!(primary.run(Kernel::Fft).expect("run").correct, Some(true));
    drop(primary);
    let (held, cpu_ns, s, mut b) = hung.join().expect("hung run");
    gpu_result(
        "hang",
        format!(
            "\"held_s\":{:.1},\"cpu_ms\":{},\"own_open_ms\":{own_open_ms:.0},\"own_stages_ms\":{{{own_stages}}},\"own_40_runs_ms\":{own_runs_ms:.1},\"own_runs_during_hang\":{during_hang},\"primary_open_ms\":{primary_open_ms:.0},\"primary_stages_ms\":{{{primary_stages}}},\"primary_open_during_hang\":{primary_open_during_hang}",
            held.as_secs_f64(),
            cpu_ns / 1_000_000
        ),
    );
    assert!(held >= crate::PLANTED_HANG, "the hang lasted {held:?}");
    assert_eq!(s.expect("the hung run completes"), Some(true));
    assert!(
        cpu_ns < 1_000_000_000,
        "{} ms of CPU waiting {held:?}",
        cpu_ns / 1_000_000
    );
    assert!(
        during_hang,
        "the backend in its own context finished its runs only after the hang ended ({own_open_ms:.0} ms to open, {own_runs_ms:.0} ms for 40 runs)"
    );
    let t2 = Instant::now();
    assert_eq!(b.run(Kernel::Gemm).expect("run").correct, Some(true));
    assert!(
        t2.elapsed() < std::time::Duration::from_secs(1),
        "the hang stayed planted"
    );
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain clock read into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
