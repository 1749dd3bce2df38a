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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Records dropped because the health queue was full.
    pub sink_queue_drops_health: AtomicU64,
    /// Spans handed to the OTLP exporter and acknowledged.
    pub otlp_spans_exported: AtomicU64,
    /// Spans dropped (queue full, export failure or timeout).
    pub otlp_spans_dropped: AtomicU64,
    /// Failed OTLP export calls.
    pub otlp_export_errors: AtomicU64,
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
    /// Limits [`TelemetrySampleFailed`] lines of this GPU.
    telemetry_log: RateLimit,
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
    ("SinkQueueFull", SinkQueueFull::METRICS),
    ("OtlpSpansExported", OtlpSpansExported::METRICS),
    ("OtlpExportFailed", OtlpExportFailed::METRICS),
    ("OtlpSpansDropped", OtlpSpansDropped::METRICS),
    ("ParquetFileRotated", ParquetFileRotated::METRICS),
    ("ParquetWriteFailed", ParquetWriteFailed::METRICS),
    ("ParquetTmpRecovered", ParquetTmpRecovered::METRICS),
    ("ParquetTmpRemoved", ParquetTmpRemoved::METRICS),
    ("ParquetRetentionDeleted", ParquetRetentionDeleted::METRICS),
    ("OccupancyRefreshFailed", OccupancyRefreshFailed::METRICS),
    ("OccupancyRelisted", OccupancyRelisted::METRICS),
];

/// Probe runs completed on one GPU (rows produced).
#[derive(Debug)]
pub struct ProbeRunsCompleted<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
    /// Runs (rows) completed.
    pub runs: u64,
}

impl InternalEvent for ProbeRunsCompleted<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_runs"];
    fn emit(self, c: &Counters) {
        Counters::add(&c.probe_runs, self.runs);
        Counters::add(&c.gpu(self.gpu_uuid).probe_runs, self.runs);
    }
}

/// A probe cycle (or arrival) completed without a backend error.
#[derive(Debug)]
pub struct ProbeCycleCompleted;

impl InternalEvent for ProbeCycleCompleted {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_cycles"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.probe_cycles);
    }
}

/// A probe burst failed with a backend error. Logged on the first failure
/// of a streak and then at most once a minute per GPU.
#[derive(Debug)]
pub struct ProbeRunFailed<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
    /// Consecutive failures, this one included.
    pub failures: u32,
    /// The error, as [`error_chain`] formats it.
    pub error: &'a str,
}

impl InternalEvent for ProbeRunFailed<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_errors"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        Counters::inc(&c.probe_errors);
        Counters::inc(&gpu.probe_errors);
        if gpu.probe_error_log.allow() || self.failures == 1 {
            tracing::error!(gpu = %self.gpu_uuid, failures = self.failures, error = %self.error, "probe run failed; GPU marked unhealthy, retrying with backoff");
        }
    }
}

/// A probe run's output failed its correctness check. Not logged here: the
/// health evaluator reports it in the verdict.
#[derive(Debug)]
pub struct CorrectnessCheckFailed<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
}

impl InternalEvent for CorrectnessCheckFailed<'_> {
    // `slicetrace_correctness_failures` is rendered from the health window
    // (per kernel), not from these counters.
    const METRICS: &'static [&'static str] = &[];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.correctness_failures);
        Counters::inc(&c.gpu(self.gpu_uuid).correctness_failures);
    }
}

/// An NVML sample failed; logged at most once a minute per GPU.
#[derive(Debug)]
pub struct TelemetrySampleFailed<'a> {
    /// The GPU sampled.
    pub gpu_uuid: &'a str,
    /// Why.
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for TelemetrySampleFailed<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_telemetry_errors"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        Counters::inc(&c.telemetry_errors);
        Counters::inc(&gpu.telemetry_errors);
        if gpu.telemetry_log.allow() {
            tracing::warn!(gpu = %self.gpu_uuid, error = %error_chain(self.error), "telemetry sample failed; NVML columns are null for this run");
        }
    }
}

/// A consumer of probe records whose queue the fan-out feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outlet {
    /// The Parquet sink.
    Parquet,
    /// The OTLP sink (its records' spans are lost too).
    Otlp,
    /// The health evaluator.
    Health,
}

/// A consumer's queue was full: its records were dropped, not waited for.
#[derive(Debug)]
pub struct SinkQueueFull {
    /// Whose queue.
    pub sink: Outlet,
    /// Records dropped.
    pub records: u64,
}

impl InternalEvent for SinkQueueFull {
    const METRICS: &'static [&'static str] = &[
        "slicetrace_parquet_rows_dropped",
        "slicetrace_otlp_spans_dropped",
        "slicetrace_health_queue_drops",
    ];
    fn emit(self, c: &Counters) {
        match self.sink {
            Outlet::Parquet => Counters::add(&c.sink_queue_drops_parquet, self.records),
            Outlet::Otlp => {
                Counters::add(&c.sink_queue_drops_otlp, self.records);
                Counters::add(&c.otlp_spans_dropped, self.records);
            }
            Outlet::Health => Counters::add(&c.sink_queue_drops_health, self.records),
        }
    }
}

/// The collector acknowledged an export.
#[derive(Debug)]
pub struct OtlpSpansExported {
    /// Spans acknowledged.
    pub spans: u64,
}

impl InternalEvent for OtlpSpansExported {
    const METRICS: &'static [&'static str] = &["slicetrace_otlp_spans_exported"];
    fn emit(self, c: &Counters) {
        Counters::add(&c.otlp_spans_exported, self.spans);
    }
}

/// An OTLP export call failed or timed out; its spans are dropped. Logged
/// at most once a minute.
#[derive(Debug)]
pub struct OtlpExportFailed<'a> {
    /// Spans in the failed call.
    pub spans: u64,
    /// How long the call took.
    pub elapsed_ms: u64,
    /// Why.
    pub error: &'a str,
}

impl InternalEvent for OtlpExportFailed<'_> {
    const METRICS: &'static [&'static str] = &[
        "slicetrace_otlp_export_errors",
        "slicetrace_otlp_spans_dropped",
    ];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.otlp_export_errors);
        Counters::add(&c.otlp_spans_dropped, self.spans);
        if let Some(suppressed) = c.otlp_export_log.check() {
            tracing::warn!(
                spans = self.spans,
                elapsed_ms = self.elapsed_ms,
                suppressed_since_last = suppressed,
                total_errors = Counters::get(&c.otlp_export_errors),
                total_dropped = Counters::get(&c.otlp_spans_dropped),
                error = %self.error,
                "otlp export failed; spans dropped"
            );
        }
    }
}

/// Spans dropped inside the OTLP sink (its queue full, a deadline passed).
#[derive(Debug)]
pub struct OtlpSpansDropped {
    /// Spans dropped; nothing happens when 0.
    pub dropped: u64,
    /// Why, for the log line; `None` counts without logging.
    pub why: Option<&'static str>,
}

impl InternalEvent for OtlpSpansDropped {
    const METRICS: &'static [&'static str] = &["slicetrace_otlp_spans_dropped"];
    fn emit(self, c: &Counters) {
        if self.dropped == 0 {
            return;
        }
        Counters::add(&c.otlp_spans_dropped, self.dropped);
        let Some(why) = self.why else { return };
        if let Some(suppressed) = c.otlp_drop_log.check() {
            tracing::warn!(
                dropped = self.dropped,
                why,
                suppressed_since_last = suppressed,
                total_dropped = Counters::get(&c.otlp_spans_dropped),
                "otlp spans dropped"
            );
        }
    }
}

/// A Parquet file was closed and renamed into place.
#[derive(Debug)]
pub struct ParquetFileRotated {
    /// Rows in it.
    pub rows: u64,
}

impl InternalEvent for ParquetFileRotated {
    const METRICS: &'static [&'static str] = &[
        "slicetrace_parquet_rows_written",
        "slicetrace_parquet_files_rotated",
    ];
    fn emit(self, c: &Counters) {
        Counters::add(&c.parquet_rows_written, self.rows);
        Counters::inc(&c.parquet_files_rotated);
    }
}

/// A Parquet file could not be opened, written or closed; its rows are
/// lost. Logged at most once a minute, counted always.
#[derive(Debug)]
pub struct ParquetWriteFailed<'a> {
    /// The table (`probes`, `health`).
    pub table: &'a str,
    /// Rows lost with the file.
    pub rows_lost: u64,
    /// Why.
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for ParquetWriteFailed<'_> {
    const METRICS: &'static [&'static str] = &[
        "slicetrace_parquet_write_errors",
        "slicetrace_parquet_rows_dropped",
    ];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.parquet_write_errors);
        Counters::add(&c.parquet_rows_dropped, self.rows_lost);
        if let Some(suppressed) = c.parquet_error_log.check() {
            tracing::error!(
                table = self.table,
                rows_lost = self.rows_lost,
                suppressed_since_last = suppressed,
                total_write_errors = Counters::get(&c.parquet_write_errors),
                total_rows_dropped = Counters::get(&c.parquet_rows_dropped),
                error = %error_chain(self.error),
                "parquet write failed; rows lost, will retry with a new file"
            );
        }
    }
}

/// A leftover temporary file was readable and renamed into place at start.
#[derive(Debug)]
pub struct ParquetTmpRecovered<'a> {
    /// Where it now is.
    pub path: &'a std::path::Path,
}

impl InternalEvent for ParquetTmpRecovered<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_parquet_tmp_recovered"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.parquet_tmp_recovered);
        tracing::info!(path = %self.path.display(), "recovered leftover parquet temporary file");
    }
}

/// A leftover temporary file was unreadable and removed at start.
#[derive(Debug)]
pub struct ParquetTmpRemoved<'a> {
    /// The file removed.
    pub path: &'a std::path::Path,
}

impl InternalEvent for ParquetTmpRemoved<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_parquet_tmp_removed"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.parquet_tmp_removed);
        tracing::warn!(path = %self.path.display(), "removed unreadable leftover parquet temporary file");
    }
}

/// Retention deleted a Parquet file.
#[derive(Debug)]
pub struct ParquetRetentionDeleted<'a> {
    /// The file deleted.
    pub path: &'a std::path::Path,
    /// Older than the age limit.
    pub too_old: bool,
    /// Over the size limit.
    pub too_big: bool,
}

impl InternalEvent for ParquetRetentionDeleted<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_parquet_retention_deleted"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.parquet_retention_deleted);
        tracing::debug!(path = %self.path.display(), too_old = self.too_old, too_big = self.too_big, "retention deleted parquet file");
    }
}

/// An occupancy source failed to refresh. Counted only: each source logs
/// its own failing/recovered transitions, which depend on its state.
#[derive(Debug)]
pub struct OccupancyRefreshFailed;

impl InternalEvent for OccupancyRefreshFailed {
    const METRICS: &'static [&'static str] = &["slicetrace_occupancy_errors"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.occupancy_errors);
    }
}

/// The Kubernetes pod watch relisted (after the first list).
#[derive(Debug)]
pub struct OccupancyRelisted<'a> {
    /// This agent's node, for the log line.
    pub node: &'a str,
}

impl InternalEvent for OccupancyRelisted<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_occupancy_relists"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.occupancy_relists);
        tracing::debug!(node = %self.node, "relisting pods");
    }
}

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
