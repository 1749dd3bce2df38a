//! Unit tests of the probe loop: the arrival process, both arrival plans
//! on the CPU backend, and event inflation.

use super::*;
use crate::consumers::summary::{RunSummary, SummaryRow};
use crate::internal_events::QueueOwner;
use crate::topology::{thread_queue, Msg, Outlet};

/// The gaps of the arrival process are exponential with the configured
/// mean: a one-sample Kolmogorov–Smirnov test against Exp(rate) at
/// α = 1e-6 (critical value 2.7/√n), on 20 000 gaps from the sampler
/// the loop uses.
#[test]
fn arrival_gaps_are_exponential_ks_test() {
    let rate = 5.0;
    let mut rng = rand::rng();
    let n = 20_000;
    let mut gaps: Vec<f64> = (0..n)
        .map(|_| exponential_gap(rate, &mut rng).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    let d = gaps
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = 1.0 - (-rate * x).exp();
            let lo = i as f64 / n as f64;
            let hi = (i + 1) as f64 / n as f64;
            (f - lo).abs().max((hi - f).abs())
        })
        .fold(0.0f64, f64::max);
    // alpha = 1e-6 (c = sqrt(-ln(alpha / 2) / 2) = 2.69): a false failure
    // once in a million runs, while jittered periods still fail by far.
    let crit = 2.7 / (n as f64).sqrt();
    assert!(
        d < crit,
        "KS statistic {d} >= {crit}: gaps are not Exp({rate})"
    );
    let mean = gaps.iter().sum::<f64>() / n as f64;
    assert!((mean - 0.2).abs() < 0.01, "mean gap {mean}");
    // A uniform ±20 % jitter around the mean (the old design) fails it.
    let mut uni: Vec<f64> = (0..n).map(|_| 0.2 * rng.random_range(0.8..=1.2)).collect();
    uni.sort_by(f64::total_cmp);
    let d_uni = uni
        .iter()
        .enumerate()
        .map(|(i, &x)| ((1.0 - (-rate * x).exp()) - i as f64 / n as f64).abs())
        .fold(0.0f64, f64::max);
    assert!(
        d_uni > crit,
        "the KS test cannot tell jittered periods from Poisson"
    );
}

/// Probe cycles a loop has completed (each one's rows are already queued).
fn cycles(c: &Counters) -> u64 {
    Counters::get(&c.probe_cycles)
}

/// Runs a CPU probe loop with `plan` until it has completed `n` cycles and
/// returns its rows.
fn rows_of(plan: ArrivalPlan, n: u64) -> (Vec<ProbeRecord>, Vec<SummaryRow>) {
    let run = rows_until(
        plan,
        Arc::new(crate::probe::telemetry::NoTelemetry),
        PROCESS_LIST_MAX_AGE,
        |c| cycles(c) >= n,
    );
    (run.rows, run.summary)
}

/// What a test's probe loop produced.
struct LoopRun {
    rows: Vec<ProbeRecord>,
    summary: Vec<SummaryRow>,
    counters: Arc<Counters>,
    /// From before the loop's thread started to after it was joined.
    wall: Duration,
}

/// Runs a CPU probe loop with `plan`, `telemetry` and
/// `probe.process_list_max_age_ms` until `until` holds on its counters
/// (looked at every 20 ms): the test waits for what it checks, never for a
/// fixed time, so a loaded machine makes it slower, not different.
fn rows_until(
    plan: ArrivalPlan,
    telemetry: Arc<dyn crate::probe::telemetry::TelemetrySource>,
    process_list_max_age: Duration,
    mut until: impl FnMut(&Counters) -> bool,
) -> LoopRun {
    let spec = slicetrace_probe::ProbeSpec {
        fft: slicetrace_probe::FftSpec {
            dims: slicetrace_probe::FftDims::D1 { n: 256, batch: 1 },
        },
        gemm: slicetrace_probe::GemmSpec {
            n: 32,
            precision: slicetrace_probe::Precision::Fp32,
        },
        burst_runs: 3,
        ..slicetrace_probe::ProbeSpec::preset(slicetrace_probe::Preset::Light)
    };
    let backend = slicetrace_probe::cpu::CpuBackend::new(0, &spec).expect("cpu backend");
    // Two consumers' queues, read here once the thread stopped: every
    // row must reach both, as one shared allocation.
    let (htx, hrx) = thread_queue(100_000);
    let (stx, srx) = thread_queue(100_000);
    let counters = Arc::new(Counters::default());
    let fanout = Arc::new(
        Fanout::new(counters.clone())
            .with(Outlet::new("health", htx, QueueOwner::Health).with_events())
            .with(Outlet::new("summary", stx, QueueOwner::Summary)),
    );
    let stop = Arc::new(StopSignal::default());
    let lp = ProbeLoop {
        slot: crate::probe::GpuSlot {
            index: 0,
            uuid: "CPU-0".into(),
            backend: Some(Box::new(backend)),
            open_error: None,
        },
        opener: None,
        watchdog: crate::probe::watchdog::WatchdogConfig::default()
            .resolve(slicetrace_probe::Preset::Light, 0),
        telemetry,
        occupancy: Arc::new(crate::probe::occupancy::NoOccupancy),
        fanout: fanout.clone(),
        live: Arc::new(LiveState::default()),
        counters: counters.clone(),
        node: "n1".into(),
        arrivals: plan,
        self_test: true,
        process_list_max_age,
        busy_tenants_interval: Duration::ZERO,
        busy_window: Duration::from_secs(3),
        driver_gate: Arc::new(super::upgrade::DriverGate::new()),
        stop: stop.clone(),
    };
    let started = std::time::Instant::now();
    let h = std::thread::spawn(move || lp.run());
    slicetrace_e2e::testkit::wait_until("the probe loop's cycles", Duration::from_secs(60), || {
        until(&counters).then_some(())
    });
    stop.stop();
    h.join().expect("probe thread");
    let wall = started.elapsed();
    assert_eq!(fanout.dropped("health"), Some(0));
    let mut rows = Vec::new();
    while let Ok(m) = hrx.try_recv() {
        if let Msg::Probes(r) = m {
            rows.extend(r.iter().cloned());
        }
    }
    let mut summary = RunSummary::default();
    while let Ok(m) = srx.try_recv() {
        if let Msg::Probes(r) = m {
            r.iter().for_each(|r| summary.record(r));
        }
    }
    LoopRun {
        rows,
        summary: summary.rows(),
        counters,
        wall,
    }
}

/// Poisson mode: one run per arrival, every arrival numbered in order with
/// its own trace, FFT and GEMM alternating (equal shares, never the same
/// kernel twice in a row), and the idle time before each launch (from the
/// rows' own start times `ts_ns` and the previous run's host clock) at
/// least the planned gap and exponential with the configured mean: a loop
/// that skipped or shortened its wait, or ran back to back, fails here.
/// (200 arrivals, not a fixed time: the checks are on the gaps the rows
/// record, which a loaded machine does not shorten.)
#[test]
fn poisson_arrivals_mark_every_run_and_alternate_kernels() {
    let rate = 100.0;
    let (rows, summary) = rows_of(ArrivalPlan::Poisson { rate_hz: rate }, 200);
    assert!(rows.len() >= 200, "{} arrivals", rows.len());
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, r)| r.cycle == i as u64 && r.burst_seq == 0));
    let fft = rows.iter().filter(|r| r.kernel == Kernel::Fft).count();
    assert!(
        fft.abs_diff(rows.len() - fft) <= 1,
        "fft {fft} of {}",
        rows.len()
    );
    assert!(rows.windows(2).all(|w| w[0].kernel != w[1].kernel));
    let traces: std::collections::HashSet<_> = rows.iter().map(|r| r.trace_id).collect();
    assert_eq!(traces.len(), rows.len(), "one trace per arrival");
    // The idle time before each launch, from what the rows record: this
    // launch minus the end of the previous run on the host clock.
    let idle: Vec<(f64, f64)> = rows
        .windows(2)
        .map(|w| {
            let end_ns = w[0].ts_ns as f64 + w[0].host_wall_ms.expect("host clock") * 1e6;
            let idle_s = (w[1].ts_ns as f64 - end_ns) / 1e9;
            (idle_s, w[1].arrival_gap_ms.expect("planned gap") / 1e3)
        })
        .collect();
    // Never sooner than planned (0.1 ms for the two clocks' reading order).
    for (i, (idle_s, gap_s)) in idle.iter().enumerate() {
        assert!(
            idle_s + 1e-4 >= *gap_s,
            "arrival {}: launched {idle_s} s after the previous run, planned gap {gap_s} s",
            i + 1
        );
    }
    // KS of the idle times against Exp(rate) at alpha = 1e-6.
    let mut gaps: Vec<f64> = idle.iter().map(|(idle_s, _)| *idle_s).collect();
    gaps.sort_by(f64::total_cmp);
    let n = gaps.len() as f64;
    let d = gaps
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = 1.0 - (-rate * x).exp();
            (f - i as f64 / n).abs().max((f - (i + 1) as f64 / n).abs())
        })
        .fold(0.0f64, f64::max);
    assert!(
        d < 2.7 / n.sqrt(),
        "KS D = {d} over {n} launch gaps (alpha = 1e-6)"
    );
    let total: u64 = summary.iter().map(|s| s.runs).sum();
    assert_eq!(total as usize, rows.len());
    assert!(summary.iter().all(|s| s.runs == s.all_runs));
}

/// Burst mode: only the first run of a cycle is an arrival; the others
/// are marked, carry no gap, and stay out of the exit table's quantiles.
#[test]
fn burst_runs_after_the_first_are_marked_not_arrivals() {
    let plan = ArrivalPlan::Burst {
        interval: Duration::from_millis(20),
        jitter_pct: 0,
        burst_runs: 3,
    };
    let (rows, summary) = rows_of(plan, 10);
    assert!(rows.len() >= 6 * 10, "{} rows", rows.len());
    for r in &rows {
        let first = r.kernel == Kernel::Fft && r.burst_seq == 0;
        assert_eq!(r.arrival, Some(first), "{r:?}");
        assert_eq!(r.arrival_gap_ms.is_some(), first);
        assert_eq!(r.is_arrival(), first);
    }
    let cycles = rows.iter().filter(|r| r.arrival == Some(true)).count() as u64;
    let counted: u64 = summary.iter().map(|s| s.runs).sum();
    let all: u64 = summary.iter().map(|s| s.all_runs).sum();
    assert_eq!(counted, cycles);
    assert_eq!(all as usize, rows.len());
    // The GEMM burst has no arrival at all (its first run follows the
    // last FFT run).
    assert!(summary
        .iter()
        .any(|s| s.kernel == Kernel::Gemm && s.runs == 0));
}

#[test]
fn event_inflation_needs_a_baseline_and_tenants() {
    assert_eq!(event_inflated(Some(9.0), Some(3), None), None);
    assert_eq!(event_inflated(None, Some(3), Some(1.0)), None);
    assert_eq!(event_inflated(Some(9.0), Some(0), Some(1.0)), Some(false));
    assert_eq!(event_inflated(Some(9.0), Some(3), Some(1.0)), Some(true));
    assert_eq!(event_inflated(Some(1.2), Some(3), Some(1.0)), Some(false));
}

/// Counts what the probe loop reads: full samples (with the process list),
/// device samples (without) and clock readings. Each full sample reports one
/// process whose pid is that sample's number, so a row shows which process
/// list it carries.
#[derive(Default)]
struct CountingTelemetry {
    full: std::sync::atomic::AtomicU32,
    device: std::sync::atomic::AtomicU32,
    clocks: std::sync::atomic::AtomicU32,
}

impl crate::probe::telemetry::TelemetrySource for CountingTelemetry {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn sample(&self, _: &str) -> Result<DeviceSample, crate::probe::telemetry::TelemetryError> {
        let n = self.full.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(DeviceSample {
            fields: slicetrace_schema::DeviceFields {
                sm_clock_mhz: Some(1000),
                ..Default::default()
            },
            processes: Some(vec![crate::probe::occupancy::GpuProcess {
                pid: n,
                used_mib: Some(1),
                name: None,
            }]),
        })
    }
    fn sample_device(
        &self,
        _: &str,
    ) -> Result<DeviceSample, crate::probe::telemetry::TelemetryError> {
        self.device.fetch_add(1, Ordering::SeqCst);
        Ok(DeviceSample {
            fields: slicetrace_schema::DeviceFields {
                sm_clock_mhz: Some(1001),
                ..Default::default()
            },
            ..Default::default()
        })
    }
    fn sample_after(
        &self,
        _: &str,
    ) -> Result<DeviceSample, crate::probe::telemetry::TelemetryError> {
        self.clocks.fetch_add(1, Ordering::SeqCst);
        Ok(DeviceSample {
            fields: slicetrace_schema::DeviceFields {
                sm_clock_mhz: Some(1002),
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

/// The dear process list is read at start and then at most every
/// [`PROCESS_LIST_MAX_AGE`]; the other device fields every
/// [`FULL_SAMPLE_MAX_AGE`]; the clocks around every run. Rows between two
/// process reads keep the last list (not an empty one, not `None`).
#[test]
fn the_process_list_is_read_less_often_than_the_device_fields_and_kept_between_reads() {
    let t = Arc::new(CountingTelemetry::default());
    // Until the first refresh after the one at start (at about 1 s, when
    // the device fields are due), and 50 cycles.
    let seen = t.clone();
    let run = rows_until(
        ArrivalPlan::Poisson { rate_hz: 100.0 },
        t.clone(),
        PROCESS_LIST_MAX_AGE,
        move |c| {
            let refreshes = seen.full.load(Ordering::SeqCst) + seen.device.load(Ordering::SeqCst);
            refreshes >= 2 && cycles(c) > 50
        },
    );
    let rows = run.rows;
    assert!(rows.len() > 50, "{} rows", rows.len());
    let (full, device, clocks) = (
        t.full.load(Ordering::SeqCst),
        t.device.load(Ordering::SeqCst),
        t.clocks.load(Ordering::SeqCst),
    );
    // One process read at start, then at most one per
    // PROCESS_LIST_MAX_AGE (5 s; the loop stops after about 1 s): the
    // refresh at about 1 s was a device sample.
    let most_full = 1 + (run.wall.as_secs_f64() / PROCESS_LIST_MAX_AGE.as_secs_f64()) as u32;
    assert!(
        (1..=most_full).contains(&full),
        "process list reads {full} in {:?}",
        run.wall
    );
    // One a second (FULL_SAMPLE_MAX_AGE), not one per run.
    let most = run.wall.as_secs() as u32 + 1;
    assert!(
        (1..=most).contains(&device),
        "device samples {device} in {:?}",
        run.wall
    );
    // One clock reading before (between full samples) and one after each run.
    assert!(
        clocks as usize >= rows.len(),
        "clocks {clocks}, rows {}",
        rows.len()
    );
    for r in &rows {
        assert_eq!(r.device.gpu_processes, Some(1), "every row keeps the list");
        assert_eq!(r.device.processes.as_deref().map(|p| p.len()), Some(1));
    }
    // The after-run clock is the cheap reading's.
    assert!(rows
        .iter()
        .all(|r| r.device.sm_clock_mhz_after == Some(1002)));
}

/// `probe.process_list_max_age_ms = 1000` reads the process list with
/// every full sample (the behaviour before the 5 s default): at start and
/// about once a second, never a device sample without it.
#[test]
fn a_process_list_max_age_of_one_second_reads_it_with_every_full_sample() {
    let t = Arc::new(CountingTelemetry::default());
    // Until the first refresh after the one at start, and 50 cycles.
    let seen = t.clone();
    let run = rows_until(
        ArrivalPlan::Poisson { rate_hz: 100.0 },
        t.clone(),
        Duration::from_secs(1),
        move |c| {
            let refreshes = seen.full.load(Ordering::SeqCst) + seen.device.load(Ordering::SeqCst);
            refreshes >= 2 && cycles(c) > 50
        },
    );
    let rows = run.rows;
    assert!(rows.len() > 50, "{} rows", rows.len());
    let full = t.full.load(Ordering::SeqCst);
    let most = run.wall.as_secs() as u32 + 1;
    assert!(
        (2..=most).contains(&full),
        "process list reads {full} in {:?}",
        run.wall
    );
    assert_eq!(t.device.load(Ordering::SeqCst), 0, "device-only samples");
    // Later rows carry a later list: the list is the latest read's.
    // (a process string is `pid:name:MiB`; the pid is the read's number.)
    let last = rows
        .last()
        .and_then(|r| r.device.processes.as_ref())
        .map(|p| p[0].clone());
    assert_eq!(last, Some(format!("{full}::1")));
}

/// The probe thread's CPU is charged to the stage that used it and reaches
/// the per-GPU counters behind `slicetrace_probe_thread_cpu_seconds`: the
/// run (the CPU backend computes on a worker thread, but hands over and
/// waits on this one) and the join and hand-off both cost something.
#[test]
fn probe_thread_cpu_is_counted_per_stage() {
    let run = rows_until(
        ArrivalPlan::Poisson { rate_hz: 50.0 },
        Arc::new(crate::probe::telemetry::NoTelemetry),
        PROCESS_LIST_MAX_AGE,
        |c| cycles(c) >= 50,
    );
    let (rows, counters) = (run.rows, run.counters);
    assert!(!rows.is_empty());
    let gpu = counters.gpu("CPU-0");
    let ns = |s: crate::internal_events::Stage| {
        gpu.probe_thread_cpu_ns[s.index()].load(Ordering::SeqCst)
    };
    use crate::internal_events::Stage;
    assert!(ns(Stage::Run) > 0, "run");
    assert!(ns(Stage::Publish) > 0, "publish");
    // Every stage's series exists; together they are no more than the
    // thread's lifetime (one thread cannot use more CPU than wall time).
    let all: u64 = Stage::ALL.iter().map(|s| ns(*s)).sum();
    assert!(
        u128::from(all) <= run.wall.as_nanos(),
        "{all} ns of CPU in {:?}",
        run.wall
    );
}
