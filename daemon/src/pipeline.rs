//! The probe loop: one OS thread per GPU, never an async worker, because CUDA
//! synchronisation blocks.
//!
//! Each cycle: wait for the jittered tick → NVML sample → FFT burst → GEMM
//! burst → NVML sample → occupancy snapshot (cache read) → rows joined with
//! all of it, stamped with a trace id per cycle and a span id per run → one
//! `try_send` per sink. A full sink queue drops that sink's copy and counts it;
//! nothing here waits on a sink.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use slicetrace_probe::{record_for, Kernel, ProbeBackend, ProbeError};
use slicetrace_schema::ProbeRecord;
use tokio::sync::mpsc;

use crate::health::{HealthEvent, LiveState};
use crate::internal_events::{Counters, RateLimit};
use crate::occupancy::OccupancySource;
use crate::sinks::otlp::{new_span_id, new_trace_id};
use crate::sinks::SinkMsg;
use crate::telemetry::{BurstTelemetry, TelemetrySource};

/// Input of the health evaluator.
#[derive(Debug)]
pub enum HealthInput {
    /// Rows of one burst.
    Rows(Vec<ProbeRecord>),
    /// A probe error or recovery.
    Event(HealthEvent),
}

/// The root stop signal shared by the probe threads: a flag with a condvar,
/// so a thread sleeping until its next tick wakes at once on shutdown.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    /// Signals every waiter.
    pub fn stop(&self) {
        if let Ok(mut s) = self.stopped.lock() {
            *s = true;
        }
        self.cv.notify_all();
    }
    /// True once stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.lock().map(|s| *s).unwrap_or(true)
    }
    /// Sleeps up to `d`; returns true if stopped meanwhile.
    pub fn wait(&self, d: Duration) -> bool {
        let Ok(guard) = self.stopped.lock() else {
            return true;
        };
        match self.cv.wait_timeout_while(guard, d, |s| !*s) {
            Ok((g, _)) => *g,
            Err(_) => true,
        }
    }
}

/// Per-(GPU, kernel, tenant count) histograms of the whole run, for the exit
/// tail table: a run that spans quiet and contended periods shows each
/// occupancy level on its own line.
#[derive(Debug, Default)]
pub struct RunSummary {
    inner: Mutex<BTreeMap<SummaryKey, Acc>>,
}

/// (GPU index, GPU UUID, kernel, tenant count).
type SummaryKey = (u32, String, String, Option<u32>);

#[derive(Debug)]
struct Acc {
    h: [Histogram<u32>; 3],
    gpu_ms_sum: f64,
    first_ns: i64,
    last_ns: i64,
}

/// One line of the exit tail table.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// GPU index.
    pub gpu_index: u32,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Kernel.
    pub kernel: String,
    /// Other compute processes on the GPU (NVML), `None` when unknown.
    pub tenants: Option<u32>,
    /// Runs.
    pub runs: u64,
    /// (p50, p99) of gpu_ms, wall_ms, queue_ms.
    pub quantiles: [(f64, f64); 3],
    /// Sum of gpu_ms, ms (the probe's own GPU time).
    pub gpu_ms_sum: f64,
    /// First and last launch time, ns.
    pub span_ns: (i64, i64),
}

fn summary_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds"))
}

impl RunSummary {
    fn record(&self, r: &ProbeRecord) {
        let Ok(mut m) = self.inner.lock() else { return };
        let acc = m
            .entry((
                r.gpu_index,
                r.gpu_uuid.clone(),
                r.kernel.clone(),
                r.gpu_processes,
            ))
            .or_insert_with(|| Acc {
                h: [summary_hist(), summary_hist(), summary_hist()],
                gpu_ms_sum: 0.0,
                first_ns: r.ts_ns,
                last_ns: r.ts_ns,
            });
        acc.gpu_ms_sum += r.gpu_ms.unwrap_or(0.0);
        acc.first_ns = acc.first_ns.min(r.ts_ns);
        acc.last_ns = acc.last_ns.max(r.ts_ns);
        let h = &mut acc.h;
        let us = crate::health::us;
        if let Some(g) = r.gpu_ms {
            let _ = h[0].record(us(g));
        }
        let _ = h[1].record(us(r.wall_ms));
        if let Some(q) = r.queue_ms {
            let _ = h[2].record(us(q));
        }
    }

    /// The table rows, ordered by GPU and kernel.
    pub fn rows(&self) -> Vec<SummaryRow> {
        let Ok(m) = self.inner.lock() else {
            return Vec::new();
        };
        m.iter()
            .map(|((idx, uuid, kernel, tenants), acc)| {
                let h = &acc.h;
                let q = |h: &Histogram<u32>| {
                    (
                        h.value_at_quantile(0.5) as f64 / 1000.0,
                        h.value_at_quantile(0.99) as f64 / 1000.0,
                    )
                };
                SummaryRow {
                    gpu_index: *idx,
                    gpu_uuid: uuid.clone(),
                    kernel: kernel.clone(),
                    tenants: *tenants,
                    runs: h[1].len(),
                    quantiles: [q(&h[0]), q(&h[1]), q(&h[2])],
                    gpu_ms_sum: acc.gpu_ms_sum,
                    span_ns: (acc.first_ns, acc.last_ns),
                }
            })
            .collect()
    }
}

/// One sink's queue.
#[derive(Debug, Clone)]
pub struct SinkQueue {
    /// Sink name (`parquet`, `otlp`).
    pub name: &'static str,
    /// Its bounded channel.
    pub tx: mpsc::Sender<SinkMsg>,
}

/// Fans rows out to every sink without ever blocking.
#[derive(Debug)]
pub struct Fanout {
    /// Sink queues.
    pub sinks: Vec<SinkQueue>,
    /// Health evaluator queue.
    pub health: Option<mpsc::Sender<HealthInput>>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Whole-run histograms.
    pub summary: RunSummary,
}

impl Fanout {
    /// Sends `rows` to every sink and the evaluator; full queues drop and count.
    pub fn send(&self, rows: Vec<ProbeRecord>) {
        for r in &rows {
            self.summary.record(r);
        }
        let n = rows.len() as u64;
        for s in &self.sinks {
            if s.tx.try_send(SinkMsg::Probes(rows.clone())).is_err() {
                let c = match s.name {
                    "otlp" => {
                        Counters::add(&self.counters.otlp_spans_dropped, n);
                        &self.counters.sink_queue_drops_otlp
                    }
                    _ => &self.counters.sink_queue_drops_parquet,
                };
                Counters::add(c, n);
            }
        }
        if let Some(h) = &self.health {
            if h.try_send(HealthInput::Rows(rows)).is_err() {
                Counters::add(&self.counters.sink_queue_drops_health, n);
            }
        }
    }

    fn event(&self, ev: HealthEvent) {
        if let Some(h) = &self.health {
            let _ = h.try_send(HealthInput::Event(ev));
        }
    }
}

/// Re-creates a backend after repeated failures (a GPU reset, a lost context).
pub type Reopen = Box<dyn FnMut() -> Result<Box<dyn ProbeBackend>, ProbeError> + Send>;

/// Everything one GPU's probe thread needs.
pub struct ProbeLoop {
    /// The backend (owned by the thread).
    pub backend: Box<dyn ProbeBackend>,
    /// How to re-create it after repeated failures.
    pub reopen: Option<Reopen>,
    /// NVML or none.
    pub telemetry: Arc<dyn TelemetrySource>,
    /// Occupancy cache.
    pub occupancy: Arc<dyn OccupancySource>,
    /// Where rows go.
    pub fanout: Arc<Fanout>,
    /// Live verdicts (read to stamp rows).
    pub live: Arc<LiveState>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Node name.
    pub node: String,
    /// Mean interval between cycles.
    pub interval: Duration,
    /// ± jitter percent.
    pub jitter_pct: u32,
    /// Runs per burst.
    pub burst_runs: u32,
    /// Plant a corruption per kernel at start and require it to be caught.
    pub self_test: bool,
    /// Shutdown.
    pub stop: Arc<StopSignal>,
}

/// Longest wait between retries of a failing GPU.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Consecutive failed cycles after which the backend is re-created.
pub const REOPEN_AFTER: u32 = 3;

impl ProbeLoop {
    fn jittered(&self) -> Duration {
        let j = self.jitter_pct.min(90) as f64 / 100.0;
        let f = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        self.interval.mul_f64(f)
    }

    fn self_test(&mut self) {
        for k in [Kernel::Fft, Kernel::Gemm] {
            self.backend.corrupt_next_output(k);
            let caught = matches!(self.backend.run(k), Ok(s) if s.correct == Some(false));
            let clean = matches!(self.backend.run(k), Ok(s) if s.correct == Some(true));
            if caught && clean {
                tracing::info!(gpu = %self.backend.device().uuid, kernel = k.as_str(), "self-test passed: planted corruption caught");
            } else {
                tracing::error!(gpu = %self.backend.device().uuid, kernel = k.as_str(), caught, clean, "self-test failed: the correctness check did not behave");
            }
        }
    }

    /// Runs until the stop signal. Never panics on a probe or telemetry error.
    pub fn run(mut self) {
        let uuid = self.backend.device().uuid.clone();
        let gpu_index = self.backend.device().index;
        let tel_log = RateLimit::new(Duration::from_secs(60));
        let err_log = RateLimit::new(Duration::from_secs(60));
        if self.self_test {
            self.self_test();
        }
        let mut cycle: u64 = 0;
        let mut failures: u32 = 0;
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if next > now && self.stop.wait(next - now) {
                break;
            }
            if self.stop.is_stopped() {
                break;
            }
            let started = Instant::now();
            let sample = |t: &Arc<dyn TelemetrySource>| match t.sample(&uuid) {
                Ok(s) => Some(s),
                Err(e) => {
                    Counters::inc(&self.counters.telemetry_errors);
                    if tel_log.allow() {
                        tracing::warn!(gpu = %uuid, error = %crate::internal_events::error_chain(&e), "telemetry sample failed; NVML columns are null for this cycle");
                    }
                    None
                }
            };
            let before = sample(&self.telemetry);
            let trace_id = new_trace_id();
            let mut rows = Vec::with_capacity(2 * self.burst_runs as usize);
            let mut error: Option<ProbeError> = None;
            'bursts: for kernel in [Kernel::Fft, Kernel::Gemm] {
                let shape = self.backend.shape(kernel);
                for seq in 0..self.burst_runs {
                    match self.backend.run(kernel) {
                        Ok(s) => rows.push(record_for(
                            &self.node,
                            self.backend.device(),
                            &shape,
                            &s,
                            cycle,
                            seq,
                        )),
                        Err(e) => {
                            error = Some(e);
                            break 'bursts;
                        }
                    }
                }
            }
            let after = sample(&self.telemetry);
            let tel = BurstTelemetry::merge(before, after);
            let procs = tel.processes.clone().unwrap_or_default();
            let mut occ = self.occupancy.snapshot(&uuid, &procs);
            if tel.processes.is_none() {
                // Without NVML's process list nobody knows which pods run on
                // the GPU: absent, not an empty list.
                occ.active_pods = None;
            }
            let proc_strings = tel.process_strings();
            for r in &mut rows {
                let b = &tel.before;
                r.sm_clock_mhz = b.sm_clock_mhz;
                r.mem_clock_mhz = b.mem_clock_mhz;
                r.gpu_util_pct = b.gpu_util_pct;
                r.mem_util_pct = b.mem_util_pct;
                r.power_w = b.power_w;
                r.temp_c = b.temp_c;
                r.fb_used_mib = b.fb_used_mib;
                r.throttle_reasons = tel.throttle_reasons;
                r.sm_clock_mhz_after = tel.sm_clock_mhz_after;
                r.gpu_processes = tel.processes.as_ref().map(|p| p.len() as u32);
                r.processes = proc_strings.clone();
                r.pods = occ.pods.clone();
                r.pod_count = occ.pod_count;
                r.active_pods = occ.active_pods.clone();
                r.replicas = occ.replicas;
                r.sharing_strategy = occ.sharing_strategy.clone();
                r.occupancy_stale = occ.stale;
                r.verdict = self
                    .live
                    .verdict(&uuid, &r.kernel)
                    .map(|v| v.as_str().to_string());
                r.trace_id = Some(trace_id.clone());
                r.span_id = Some(new_span_id());
                if r.correct == Some(false) {
                    Counters::inc(&self.counters.correctness_failures);
                }
            }
            Counters::add(&self.counters.probe_runs, rows.len() as u64);
            if !rows.is_empty() {
                self.fanout.send(rows);
            }
            let interval = self.jittered();
            match error {
                None => {
                    Counters::inc(&self.counters.probe_cycles);
                    self.live.ready.store(true, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(gpu = %uuid, after_failures = failures, "probing recovered");
                        self.fanout.event(HealthEvent::ProbeRecovered {
                            gpu_uuid: uuid.clone(),
                        });
                    }
                    failures = 0;
                    next = started + interval;
                }
                Some(e) => {
                    failures += 1;
                    Counters::inc(&self.counters.probe_errors);
                    let msg = crate::internal_events::error_chain(&e);
                    if err_log.allow() || failures == 1 {
                        tracing::error!(gpu = %uuid, failures, error = %msg, "probe burst failed; GPU marked unhealthy, retrying with backoff");
                    }
                    self.fanout.event(HealthEvent::ProbeError {
                        gpu_uuid: uuid.clone(),
                        gpu_index,
                        error: msg,
                    });
                    if failures >= REOPEN_AFTER {
                        if let Some(reopen) = self.reopen.as_mut() {
                            match reopen() {
                                Ok(b) => {
                                    tracing::warn!(gpu = %uuid, "re-created the probe backend after repeated failures");
                                    self.backend = b;
                                }
                                Err(e) => {
                                    tracing::debug!(gpu = %uuid, error = %e, "re-creating the backend failed");
                                }
                            }
                        }
                    }
                    let backoff = interval
                        .saturating_mul(1u32 << failures.min(6))
                        .min(MAX_BACKOFF);
                    next = Instant::now() + backoff;
                }
            }
            cycle += 1;
        }
        tracing::debug!(gpu = %uuid, cycles = cycle, "probe thread stopped");
    }
}
