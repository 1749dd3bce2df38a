//! The probe loop: one OS thread per GPU, never an async worker, because CUDA
//! synchronisation blocks.
//!
//! Each arrival (the default [`ArrivalPlan::Poisson`]): wait an exponential
//! gap → NVML sample (the SM clock just before the run) → one run of one
//! kernel (FFT and GEMM alternate) → NVML clock sample → occupancy snapshot
//! (cache read) → one row joined with all of it, stamped with its own trace
//! id and span id → the fan-out ([`crate::topology`]), which shares the rows
//! with every consumer's queue with one `try_send` each. A full queue drops
//! that consumer's copy and counts it; nothing here waits on a consumer.
//!
//! The backend itself runs on a runner thread of its own (`driver.rs`), so
//! every run has a deadline (`watchdog.rs`), and the GPU's lifecycle (open,
//! probing, down with a reason, back) is this thread's alone
//! (`lifecycle.rs`): one GPU's failure never stops another GPU's thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use slicetrace_probe::{record_for, Kernel};
use slicetrace_schema::ProbeRecord;

pub mod arrivals;
pub mod busy;
pub mod config;
pub mod cpu_time;
pub mod driver;
pub mod ids;
pub mod lifecycle;
pub mod occupancy;
mod readings;
mod stop;
pub mod telemetry;
pub mod upgrade;
pub mod watchdog;

pub use arrivals::{exponential_gap, ArrivalPlan};
pub use lifecycle::GpuSlot;
use readings::Reading;
pub use stop::StopSignal;

use crate::internal_events::Stage;
use crate::internal_events::{
    CorrectnessCheckFailed, Counters, InternalEvent, ProbeCycleCompleted, ProbeRunFailed,
    ProbeRunsCompleted, ProbeThreadCpuUsed,
};
use crate::serve::live::LiveState;
use crate::topology::{Fanout, ProbeEvent};
use cpu_time::CpuLaps;
use ids::{new_span_id, new_trace_id};
use occupancy::OccupancySource;
use telemetry::{BurstTelemetry, DeviceSample, TelemetrySource};

/// Opens a backend (again): after repeated failures, a hang, or a GPU that
/// did not open at start.
pub type Reopen = driver::Opener;

/// Everything one GPU's probe thread needs.
pub struct ProbeLoop {
    /// The GPU: its identity, the backend if it opened at start.
    pub slot: GpuSlot,
    /// How to open it (again); `None` never reopens.
    pub opener: Option<Reopen>,
    /// Run and open deadlines.
    pub watchdog: watchdog::Watchdog,
    /// NVML or none.
    pub telemetry: Arc<dyn TelemetrySource>,
    /// Occupancy cache.
    pub occupancy: Arc<dyn OccupancySource>,
    /// Where rows go: every consumer's queue.
    pub fanout: Arc<Fanout>,
    /// Live verdicts (read to stamp rows).
    pub live: Arc<LiveState>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Node name.
    pub node: String,
    /// When runs start.
    pub arrivals: ArrivalPlan,
    /// Plant faults per kernel at start and require them to be caught.
    pub self_test: bool,
    /// Oldest the process list joined to a run may be
    /// (`probe.process_list_max_age_ms`, default [`PROCESS_LIST_MAX_AGE`]).
    pub process_list_max_age: Duration,
    /// Least time between two reads of NVML's per-process utilisation
    /// (`probe.busy_tenants_interval_ms`, default
    /// [`BUSY_TENANTS_INTERVAL_MS`]); arrivals in between leave
    /// `busy_tenants` null.
    pub busy_tenants_interval: Duration,
    /// Look-back window of `busy_tenants` (`probe.busy_window_ms`).
    pub busy_window: Duration,
    /// The node's driver (upgrading, gone, present), one for every GPU.
    pub driver_gate: Arc<upgrade::DriverGate>,
    /// Shutdown.
    pub stop: Arc<StopSignal>,
}

/// Longest wait between retries of a failing GPU.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Consecutive failed cycles after which the backend is re-created.
pub const REOPEN_AFTER: u32 = 3;

/// The event clock of a kernel longer than a time slice rises beside
/// tenants because it is preempted mid-kernel: flagged above this multiple
/// of the quiet baseline's event p99.
pub const EVENT_INFLATED_FACTOR: f64 = 1.5;

/// Per-thread state of the loop that is not configuration.
struct LoopState {
    uuid: String,
    gpu_index: u32,
    failures: u32,
    /// The open backend on its runner thread; `None` while down.
    driver: Option<driver::Driver>,
    /// This thread's progress (for `/healthz`).
    beat: Arc<std::sync::atomic::AtomicU64>,
    /// When the next open attempt is due (while `driver` is `None`).
    next_open: Instant,
    /// Consecutive failed opens.
    open_failures: u32,
    /// Whether a backend ever opened (a GPU that stops opening is `lost`).
    ever_opened: bool,
    /// When the thread started.
    started: Instant,
    /// Whether `watchdog.plant_hang_after_ms` planted its hang yet.
    hang_planted: bool,
    /// Paused for a driver upgrade (contexts released).
    upgrading: bool,
    /// Other processes on the GPU at the last full sample (the run
    /// deadline grows with them).
    tenants: u32,
    /// The last full NVML sample and when it was taken.
    full: Option<(Instant, DeviceSample)>,
    /// When the process list in `full` was read.
    processes_at: Option<Instant>,
    /// This thread's CPU time per stage of an arrival.
    cpu: CpuLaps,
    /// NVML's per-process utilisation samples: who was busy (blame).
    busy: busy::BusyTracker,
    /// When they were last read.
    busy_read_at: Option<Instant>,
}

/// Oldest a full NVML sample (utilisation, power, temperature, memory,
/// processes) may be when it is joined to a run. The SM clock and throttle
/// reasons are read fresh right before and right after every run; the rest
/// changes slowly and costs far more to read (on a busy H100 a full sample
/// costs milliseconds of CPU), so it is refreshed at most this often.
pub const FULL_SAMPLE_MAX_AGE: Duration = Duration::from_secs(1);

/// Default of the oldest the GPU's process list (and so a row's
/// `gpu_processes`, `processes` and tenant count) may be
/// (`probe.process_list_max_age_ms`). NVML's process query is by far the
/// dearest reading on a busy GPU (about 230 µs of CPU per call on a busy
/// H200, where every other field costs 1–7 µs), and tenants come and go on
/// the scale of pod starts, so it is refreshed at most this often.
pub const PROCESS_LIST_MAX_AGE: Duration = Duration::from_secs(5);

/// Default least time between two reads of NVML's per-process utilisation,
/// ms: a read costs 1.5–2.7 ms of CPU on a busy H100 (measured,
/// docs/gpu-results/ §B), against well under 1 ms for the rest of an
/// arrival, so by default one arrival every 2 s carries `busy_tenants`.
pub const BUSY_TENANTS_INTERVAL_MS: u64 = 2000;

impl ProbeLoop {
    fn jittered(interval: Duration, jitter_pct: u32) -> Duration {
        let j = jitter_pct.min(90) as f64 / 100.0;
        let f = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        interval.mul_f64(f)
    }

    /// Charges the probe thread's CPU since the last lap to `stage`, in the
    /// thread's totals (logged when it stops) and on `/metrics`.
    fn lap(&self, st: &mut LoopState, stage: Stage) {
        if let Some(cpu) = st.cpu.lap(stage) {
            self.emit_cpu(st, stage, cpu);
        }
    }

    /// Charges CPU spent on the runner thread (the run itself) to `stage`.
    fn charge(&self, st: &mut LoopState, stage: Stage, cpu: Duration) {
        st.cpu.add(stage, cpu);
        self.emit_cpu(st, stage, cpu);
    }

    fn emit_cpu(&self, st: &LoopState, stage: Stage, cpu: Duration) {
        ProbeThreadCpuUsed {
            gpu_uuid: &st.uuid,
            stage,
            cpu,
        }
        .emit(&self.counters);
    }

    /// Joins telemetry, occupancy, live state and ids into `rows` (one
    /// arrival's or one cycle's), counts them and hands them to the fan-out.
    fn publish(&self, st: &mut LoopState, mut rows: Vec<ProbeRecord>, tel: BurstTelemetry) {
        let busy = self.busy_tenants(st, &rows);
        self.lap(st, Stage::Telemetry);
        let procs = tel.processes.clone().unwrap_or_default();
        let mut occ = self.occupancy.snapshot(&st.uuid, &procs);
        if tel.processes.is_none() {
            // Without NVML's process list nobody knows which pods run on
            // the GPU: absent, not an empty list.
            occ.active_pods = None;
        }
        let trace_id = new_trace_id();
        for r in &mut rows {
            r.device = tel.fields.clone();
            r.pods = occ.pods.clone();
            r.pod_count = occ.pod_count;
            r.active_pods = occ.active_pods.clone();
            r.replicas = occ.replicas;
            r.sharing_strategy = occ.sharing_strategy.clone();
            r.occupancy_stale = occ.stale;
            r.busy_count = busy.as_ref().map(|b| b.len() as u32);
            r.busy_tenants = busy.clone();
            let (verdict, contention, event_baseline) = self
                .live
                .read_kernel(&st.uuid, r.kernel, |k| {
                    (Some(k.verdict), k.contention, k.event_baseline_p99_ms)
                })
                .unwrap_or_default();
            r.verdict = verdict;
            r.contention = contention;
            r.event_inflated = event_inflated(r.gpu_ms, r.tenants(), event_baseline);
            r.trace_id = Some(trace_id);
            r.span_id = Some(new_span_id());
            if r.correct == Some(false) {
                CorrectnessCheckFailed { gpu_uuid: &st.uuid }.emit(&self.counters);
            }
        }
        ProbeRunsCompleted {
            gpu_uuid: &st.uuid,
            runs: rows.len() as u64,
        }
        .emit(&self.counters);
        self.fanout.send_probes(rows);
    }

    /// Bookkeeping after an arrival or cycle: readiness, recovery, errors,
    /// re-creating the backend. Returns the back-off to add before the next
    /// attempt (zero when it succeeded).
    fn settle(
        &mut self,
        st: &mut LoopState,
        error: Option<lifecycle::RunFailure>,
        base: Duration,
    ) -> Duration {
        use lifecycle::RunFailure;
        match error {
            // Down (hung, or not open): its lifecycle owns the back-off.
            Some(RunFailure::Hung) | Some(RunFailure::Closed) => self.until_open(st),
            None => {
                ProbeCycleCompleted.emit(&self.counters);
                self.live.ready.store(true, Ordering::Relaxed);
                if st.failures > 0 {
                    tracing::info!(gpu = %st.uuid, after_failures = st.failures, "probing recovered");
                    self.fanout.event(ProbeEvent::ProbeRecovered {
                        gpu_uuid: st.uuid.clone(),
                    });
                }
                st.failures = 0;
                Duration::ZERO
            }
            Some(RunFailure::Probe(msg)) => {
                st.failures += 1;
                ProbeRunFailed {
                    gpu_uuid: &st.uuid,
                    failures: st.failures,
                    error: &msg,
                }
                .emit(&self.counters);
                self.fanout.event(ProbeEvent::ProbeError {
                    gpu_uuid: st.uuid.clone(),
                    gpu_index: st.gpu_index,
                    error: msg,
                });
                if st.failures >= REOPEN_AFTER && self.opener.is_some() {
                    // Re-created on the next arrival; if it does not open,
                    // the GPU is lost (reason `lost`) and retried with
                    // backoff.
                    tracing::warn!(gpu = %st.uuid, failures = st.failures, "re-creating the probe backend after repeated failures");
                    self.close(st);
                }
                base.saturating_mul(1u32 << st.failures.min(6))
                    .min(MAX_BACKOFF)
            }
        }
    }

    /// Runs until the stop signal. Never panics on a probe or telemetry error.
    pub fn run(mut self) {
        let uuid = self.slot.uuid.clone();
        // Registers the GPU, so its per-GPU series exist from start (0).
        self.counters.gpu(&uuid);
        let beat = self.live.liveness.register(&uuid);
        let now = Instant::now();
        let mut st = LoopState {
            gpu_index: self.slot.index,
            uuid,
            failures: 0,
            driver: None,
            beat,
            next_open: now,
            open_failures: 0,
            ever_opened: false,
            started: now,
            hang_planted: false,
            upgrading: false,
            tenants: 0,
            full: None,
            processes_at: None,
            cpu: CpuLaps::start(),
            busy: busy::BusyTracker::new(
                u64::try_from(self.busy_window.as_micros()).unwrap_or(u64::MAX),
            ),
            busy_read_at: None,
        };
        let name = format!("gpu{}-runner", st.gpu_index);
        match self
            .slot
            .backend
            .take()
            .map(|b| driver::Driver::start(b, &name))
        {
            Some(Ok(d)) => {
                st.driver = Some(d);
                st.ever_opened = true;
                if self.self_test {
                    self.self_test(&mut st);
                }
            }
            Some(Err(e)) => {
                let msg = crate::internal_events::error_chain(&e);
                self.mark_down(&st, slicetrace_schema::Reason::Lost, msg);
            }
            None => {
                // Did not open at start: down (open_failed) until an
                // attempt here succeeds, the first one after a back-off.
                st.open_failures = 1;
                st.next_open = now + lifecycle::open_backoff(1);
                let why = self
                    .slot
                    .open_error
                    .clone()
                    .unwrap_or_else(|| "not opened".into());
                self.mark_down(&st, slicetrace_schema::Reason::OpenFailed, why);
            }
        }
        crate::memory::trim();
        let n = match self.arrivals {
            ArrivalPlan::Poisson { rate_hz } => self.run_poisson(&mut st, rate_hz),
            ArrivalPlan::Burst {
                interval,
                jitter_pct,
                burst_runs,
            } => self.run_bursts(&mut st, interval, jitter_pct, burst_runs),
        };
        self.lap(&mut st, Stage::Wait);
        let clock = st
            .driver
            .as_ref()
            .and_then(|d| d.clock_report(Duration::from_secs(5)));
        tracing::info!(
            gpu = %st.uuid,
            arrivals = n,
            clock_drift_ppm = clock.map(|c| c.drift_ppm),
            clock_error_us = clock.map(|c| c.err_us),
            clock_resets = clock.map(|c| c.resets),
            clock_exchanges = clock.map(|c| c.exchanges_answered),
            clock_exchanges_missed = clock.map(|c| c.exchanges_missed),
            clock_exchange_spin_ms = clock.map(|c| c.exchange_spin_ms),
            cpu_ms = st.cpu.sum().as_secs_f64() * 1e3,
            cpu_ms_per_arrival = st.cpu.sum().as_secs_f64() * 1e3 / n.max(1) as f64,
            cpu_ms_by_stage = %st.cpu.summary_ms(),
            nvml_process_sample_period_ms = st.busy.period_us() as f64 / 1e3,
            nvml_process_clock = ?st.busy.clock(),
            "probe thread stopped"
        );
    }

    /// One run per Poisson arrival, FFT and GEMM alternating.
    fn run_poisson(&mut self, st: &mut LoopState, rate_hz: f64) -> u64 {
        let mut rng = rand::rng();
        let mut kernel = if rng.random::<bool>() {
            Kernel::Fft
        } else {
            Kernel::Gemm
        };
        let mean = Duration::from_secs_f64(1.0 / rate_hz.max(1e-9));
        let mut backoff = Duration::ZERO;
        let mut arrival: u64 = 0;
        loop {
            let gap = exponential_gap(rate_hz, &mut rng);
            // The gap runs from the end of the previous run: never back to
            // back, and memoryless, so the arrival moment is independent of
            // the slice rotation.
            if self.pause(st, gap.max(backoff)) || self.stop.is_stopped() {
                break;
            }
            if self.driver_upgrade_pause(st) {
                backoff = Duration::from_secs(1);
                continue;
            }
            if !self.ensure_open(st) {
                backoff = self.until_open(st);
                continue;
            }
            self.lap(st, Stage::Wait);
            let before = self.sample_before(st);
            self.lap(st, Stage::Telemetry);
            let Some((device, shape)) = st
                .driver
                .as_ref()
                .map(|d| (d.device().clone(), d.shape(kernel)))
            else {
                continue;
            };
            let result = self.run_kernel(st, kernel);
            self.lap(st, Stage::Run);
            let after = self.sample(st, Reading::Clocks);
            self.lap(st, Stage::Telemetry);
            let (rows, error) = match result {
                Ok(s) => {
                    let mut r = record_for(&self.node, &device, &shape, &s, arrival, 0);
                    r.arrival = Some(true);
                    r.arrival_gap_ms = Some(gap.as_secs_f64() * 1e3);
                    (vec![r], None)
                }
                Err(e) => (Vec::new(), Some(e)),
            };
            self.publish(st, rows, BurstTelemetry::merge(before, after));
            self.lap(st, Stage::Publish);
            backoff = self.settle(st, error, mean);
            kernel = match kernel {
                Kernel::Fft => Kernel::Gemm,
                Kernel::Gemm => Kernel::Fft,
            };
            arrival += 1;
        }
        arrival
    }

    /// The first version's cycles: bursts of each kernel, back to back.
    fn run_bursts(
        &mut self,
        st: &mut LoopState,
        interval: Duration,
        jitter_pct: u32,
        burst_runs: u32,
    ) -> u64 {
        let mut cycle: u64 = 0;
        let mut next = Instant::now();
        let mut gap = Duration::ZERO;
        loop {
            let now = Instant::now();
            if next > now && self.pause(st, next - now) {
                break;
            }
            if self.stop.is_stopped() {
                break;
            }
            if self.driver_upgrade_pause(st) {
                next = Instant::now() + Duration::from_secs(1);
                continue;
            }
            if !self.ensure_open(st) {
                next = Instant::now() + self.until_open(st);
                continue;
            }
            let Some(device) = st.driver.as_ref().map(|d| d.device().clone()) else {
                continue;
            };
            let started = Instant::now();
            self.lap(st, Stage::Wait);
            let before = self.sample(st, Reading::Full);
            self.lap(st, Stage::Telemetry);
            let mut rows = Vec::with_capacity(2 * burst_runs as usize);
            let mut error: Option<lifecycle::RunFailure> = None;
            'bursts: for kernel in [Kernel::Fft, Kernel::Gemm] {
                let Some(shape) = st.driver.as_ref().map(|d| d.shape(kernel)) else {
                    error = Some(lifecycle::RunFailure::Closed);
                    break 'bursts;
                };
                for seq in 0..burst_runs {
                    match self.run_kernel(st, kernel) {
                        Ok(s) => {
                            let mut r = record_for(&self.node, &device, &shape, &s, cycle, seq);
                            // Only the cycle's first run starts at a moment
                            // the probe's own rhythm did not choose.
                            let first = rows.is_empty();
                            r.arrival = Some(first);
                            r.arrival_gap_ms = first.then_some(gap.as_secs_f64() * 1e3);
                            rows.push(r);
                        }
                        Err(e) => {
                            error = Some(e);
                            break 'bursts;
                        }
                    }
                }
            }
            self.lap(st, Stage::Run);
            let after = self.sample(st, Reading::Clocks);
            self.lap(st, Stage::Telemetry);
            self.publish(st, rows, BurstTelemetry::merge(before, after));
            self.lap(st, Stage::Publish);
            gap = Self::jittered(interval, jitter_pct);
            let backoff = self.settle(st, error, gap);
            next = if backoff.is_zero() {
                started + gap
            } else {
                Instant::now() + backoff
            };
            cycle += 1;
        }
        cycle
    }
}

/// Whether a run's event time is inflated against the quiet baseline while
/// other processes share the GPU (the kernel was preempted mid-run, longer
/// than a time slice), so nobody reads it as a slower GPU. `None` without a
/// baseline or an event time; `false` on a quiet GPU.
pub fn event_inflated(
    gpu_ms: Option<f64>,
    tenants: Option<u32>,
    baseline_p99_ms: Option<f64>,
) -> Option<bool> {
    let (g, base) = (gpu_ms?, baseline_p99_ms?);
    match tenants {
        Some(0) => Some(false),
        _ => Some(g > EVENT_INFLATED_FACTOR * base),
    }
}

#[cfg(test)]
mod tests;
