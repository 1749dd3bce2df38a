//! Internal events: every drop, retry, rotation and error the agent hits is
//! counted here, and the counts appear on `/metrics` and in the logs.
//!
//! In Vector's style (`src/internal_events/*`), each event is one struct
//! whose [`InternalEvent::emit`] writes its log line (rate-limited where a
//! failure can repeat every cycle) and bumps its counters, so a call site is
//! one line and the log text and the count of one event cannot drift apart.
//! The counters are plain fields of [`Counters`]; the metric families they
//! feed are declared by each event ([`InternalEvent::METRICS`]) and must be
//! rows of `metrics::METRICS`, which a test checks against [`EVENTS`].
//!
//! The events live by the part of the agent that emits them: `probe.rs`,
//! `sinks.rs` and `occupancy.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod occupancy;
mod probe;
mod sinks;

pub use occupancy::{OccupancyRefreshFailed, OccupancyRelisted};
pub use probe::{
    CorrectnessCheckFailed, DriverAnswered, DriverReleased, GpuOpenFailed, ParkedBackendReleased,
    ProbeCycleCompleted, ProbeRunFailed, ProbeRunHung, ProbeRunsCompleted, ProbeThreadCpuUsed,
    Stage, TelemetrySampleFailed, XidReported,
};
pub use sinks::{
    ForcedReason, ForcedSpanCapped, OtlpExportFailed, OtlpSpansDropped, OtlpSpansExported,
    ParquetFileRotated, ParquetRetentionDeleted, ParquetTmpRecovered, ParquetTmpRemoved,
    ParquetWriteFailed, QueueOwner, SinkQueueFull, SpanForced, SpansSampledOut,
};

/// Process-wide counters, shared as `Arc<Counters>`. Relaxed ordering: these
/// are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Counters {
    /// Probe runs completed (rows produced).
    pub probe_runs: AtomicU64,
    /// Probe cycles completed.
    pub probe_cycles: AtomicU64,
    /// Probe bursts that failed (backend error).
    pub probe_errors: AtomicU64,
    /// Runs whose correctness check failed.
    pub correctness_failures: AtomicU64,
    /// NVML sampling errors.
    pub telemetry_errors: AtomicU64,
    /// Records dropped because a sink's queue was full, per sink.
    pub sink_queue_drops_parquet: AtomicU64,
    /// Records dropped because the OTLP queue was full.
    pub sink_queue_drops_otlp: AtomicU64,
    /// Records and probe events dropped because the health queue was full.
    pub sink_queue_drops_health: AtomicU64,
    /// Records dropped because the exit summary's queue was full.
    pub sink_queue_drops_summary: AtomicU64,
    /// Spans handed to the OTLP exporter and acknowledged.
    pub otlp_spans_exported: AtomicU64,
    /// Spans dropped (queue full, export failure or timeout).
    pub otlp_spans_dropped: AtomicU64,
    /// Failed OTLP export calls.
    pub otlp_export_errors: AtomicU64,
    /// Probe runs whose span tree the sampler did not export.
    pub otlp_unsampled_runs: AtomicU64,
    /// Health evaluations whose span the sampler did not export.
    pub otlp_unsampled_health: AtomicU64,
    /// Span trees exported because the arrival's wait was above its GPU's p99.
    pub otlp_forced_wait: AtomicU64,
    /// Health spans exported because the verdict or contention changed.
    pub otlp_forced_state: AtomicU64,
    /// Forced exports refused because the GPU's cap was spent.
    pub otlp_forced_capped: AtomicU64,
    /// Rows written to Parquet (in files that were closed and made visible).
    pub parquet_rows_written: AtomicU64,
    /// Parquet files closed and renamed into place.
    pub parquet_files_rotated: AtomicU64,
    /// Parquet write errors (disk full, permissions...).
    pub parquet_write_errors: AtomicU64,
    /// Rows lost because a Parquet write failed.
    pub parquet_rows_dropped: AtomicU64,
    /// Leftover temporary files recovered at start.
    pub parquet_tmp_recovered: AtomicU64,
    /// Leftover temporary files removed at start (unreadable).
    pub parquet_tmp_removed: AtomicU64,
    /// Files deleted by retention.
    pub parquet_retention_deleted: AtomicU64,
    /// Occupancy refresh errors (pod-resources, kube API).
    pub occupancy_errors: AtomicU64,
    /// Kube watcher relists (including after 410 Gone).
    pub occupancy_relists: AtomicU64,
    /// Times the agent let go of the driver (every CUDA context and NVML
    /// handle) for a driver upgrade or a driver that went away.
    pub driver_releases: AtomicU64,
    /// Times the driver answered again with another version than before.
    pub driver_changes: AtomicU64,
    /// The driver version NVML last answered with (`None` until it did).
    pub driver_version: Mutex<Option<String>>,
    /// Per-GPU counters, by GPU UUID (for series that are about one GPU).
    pub per_gpu: std::sync::RwLock<std::collections::BTreeMap<String, Arc<GpuCounters>>>,
    /// Limits [`ParquetWriteFailed`] lines (one Parquet sink per agent).
    parquet_error_log: RateLimit,
    /// Limits [`OtlpExportFailed`] lines.
    otlp_export_log: RateLimit,
    /// Limits [`OtlpSpansDropped`] lines.
    otlp_drop_log: RateLimit,
}

/// Counters about one GPU (exported with a `gpu_uuid` label).
#[derive(Debug, Default)]
pub struct GpuCounters {
    /// Probe runs completed on this GPU.
    pub probe_runs: AtomicU64,
    /// Failed probe runs on this GPU.
    pub probe_errors: AtomicU64,
    /// NVML sampling errors for this GPU.
    pub telemetry_errors: AtomicU64,
    /// Runs whose correctness check failed on this GPU.
    pub correctness_failures: AtomicU64,
    /// CPU time of this GPU's probe thread by stage (indexed by
    /// [`crate::internal_events::Stage::index`]), nanoseconds.
    pub probe_thread_cpu_ns: [AtomicU64; 4],
    /// Runs the watchdog gave up on (past their deadline) on this GPU.
    pub probe_hangs: AtomicU64,
    /// Failed attempts to open this GPU's backend.
    pub open_failures: AtomicU64,
    /// Backends abandoned with a hung run and not yet released (a gauge:
    /// their run has not returned).
    pub backends_parked: AtomicU64,
    /// Abandoned backends released once their run returned.
    pub backends_released: AtomicU64,
    /// Xid errors NVML reported for this GPU, by code.
    pub xids: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Limits [`TelemetrySampleFailed`] lines of this GPU.
    telemetry_log: RateLimit,
    /// Limits [`GpuOpenFailed`] lines of this GPU.
    open_error_log: RateLimit,
    /// Limits [`ProbeRunFailed`] lines of this GPU.
    probe_error_log: RateLimit,
}

impl Counters {
    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one to `c`.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// The counters of one GPU, created on first use.
    pub fn gpu(&self, gpu_uuid: &str) -> Arc<GpuCounters> {
        if let Some(c) = self
            .per_gpu
            .read()
            .ok()
            .and_then(|m| m.get(gpu_uuid).cloned())
        {
            return c;
        }
        match self.per_gpu.write() {
            Ok(mut m) => m.entry(gpu_uuid.to_string()).or_default().clone(),
            Err(_) => Arc::new(GpuCounters::default()),
        }
    }
    /// Reads `c`.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Formats an error and its `source()` chain on one line (`a: b: c`), for
/// log fields and one-line usage errors.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// Lets a repeated log line through at most once per `period`, and says how
/// many were held back in between. Used for "sink down", "disk full" and
/// other errors that would otherwise repeat every cycle (STYLE.md: one line a
/// minute for a persistent failure, not one per batch). Takes `&self`, so one
/// limiter can be shared by the threads that report the same event.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for RateLimit {
    /// One line a minute (STYLE.md).
    fn default() -> Self {
        Self::per_minute()
    }
}

impl RateLimit {
    /// A limiter letting one event through per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new(LimitState::default()),
        }
    }

    /// A limiter letting one event through per minute.
    pub fn per_minute() -> Self {
        Self::new(Duration::from_secs(60))
    }

    /// True when the caller may log now.
    pub fn allow(&self) -> bool {
        self.check().is_some()
    }

    /// `Some(n)` when a line may be logged now, `n` being the number of
    /// lines held back since the last one; `None` when it must be dropped.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging:
        // the state is two plain values, still usable.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                st.suppressed += 1;
                None
            }
            _ => {
                st.last = Some(now);
                Some(std::mem::take(&mut st.suppressed))
            }
        }
    }
}

/// One thing that happened inside the agent: emitting it logs its line and
/// counts it.
pub trait InternalEvent {
    /// The `/metrics` families (rows of `metrics::METRICS`) this event's
    /// counters feed; empty when they are only read by tests and summaries.
    const METRICS: &'static [&'static str];
    /// Logs the event (rate-limited where it can repeat) and counts it.
    fn emit(self, counters: &Counters);
}

/// Every event and the families it feeds, so a test can check that each
/// counter has a row in `metrics::METRICS`. Add a new event here.
pub const EVENTS: &[(&str, &[&str])] = &[
    ("ProbeRunsCompleted", ProbeRunsCompleted::METRICS),
    ("ProbeCycleCompleted", ProbeCycleCompleted::METRICS),
    ("ProbeRunFailed", ProbeRunFailed::METRICS),
    ("CorrectnessCheckFailed", CorrectnessCheckFailed::METRICS),
    ("TelemetrySampleFailed", TelemetrySampleFailed::METRICS),
    ("ProbeThreadCpuUsed", ProbeThreadCpuUsed::METRICS),
    ("ProbeRunHung", ProbeRunHung::METRICS),
    ("GpuOpenFailed", GpuOpenFailed::METRICS),
    ("XidReported", XidReported::METRICS),
    ("ParkedBackendReleased", ParkedBackendReleased::METRICS),
    ("DriverReleased", DriverReleased::METRICS),
    ("DriverAnswered", DriverAnswered::METRICS),
    ("SinkQueueFull", SinkQueueFull::METRICS),
    ("OtlpSpansExported", OtlpSpansExported::METRICS),
    ("OtlpExportFailed", OtlpExportFailed::METRICS),
    ("OtlpSpansDropped", OtlpSpansDropped::METRICS),
    ("SpansSampledOut", SpansSampledOut::METRICS),
    ("SpanForced", SpanForced::METRICS),
    ("ForcedSpanCapped", ForcedSpanCapped::METRICS),
    ("ParquetFileRotated", ParquetFileRotated::METRICS),
    ("ParquetWriteFailed", ParquetWriteFailed::METRICS),
    ("ParquetTmpRecovered", ParquetTmpRecovered::METRICS),
    ("ParquetTmpRemoved", ParquetTmpRemoved::METRICS),
    ("ParquetRetentionDeleted", ParquetRetentionDeleted::METRICS),
    ("OccupancyRefreshFailed", OccupancyRefreshFailed::METRICS),
    ("OccupancyRelisted", OccupancyRelisted::METRICS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_reports_how_many_lines_it_held_back() {
        let l = RateLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(59)), None);
        // The period is over: the line goes through and counts the two
        // held back, and the count starts again from zero.
        assert_eq!(l.check_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.check_at(t0 + Duration::from_secs(61)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(120)), Some(1));
        assert!(!l.allow(), "within the period of the last line");
    }

    #[test]
    fn rate_limit_with_zero_period_holds_nothing_back() {
        let l = RateLimit::new(Duration::ZERO);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert!(l.allow());
    }

    #[test]
    fn error_chain_joins_causes_once_on_one_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to write file")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk\nfull"));
        assert_eq!(error_chain(&e), "failed to write file: disk full");
        // A cause whose text the outer message already ends with is not repeated.
        #[derive(Debug, thiserror::Error)]
        #[error("connect: refused")]
        struct Dup(#[source] std::io::Error);
        let e = Dup(std::io::Error::other("refused"));
        assert_eq!(error_chain(&e), "connect: refused");
    }
}
