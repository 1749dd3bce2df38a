//! Events of the consumers the fan-out feeds: full queues, OTLP exports and
//! drops, Parquet rotations, write errors, recovery and retention.

use super::{error_chain, Counters, InternalEvent};

/// A consumer of probe records whose queue the fan-out feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOwner {
    /// The Parquet sink.
    Parquet,
    /// The OTLP sink (its records' spans are lost too).
    Otlp,
    /// The health evaluator (probe rows and probe events).
    Health,
    /// The exit summary (its tail table misses the dropped rows).
    Summary,
}

/// A consumer's queue was full (or its loop had stopped): its records, or
/// the health evaluator's probe events, were dropped, not waited for.
#[derive(Debug)]
pub struct SinkQueueFull {
    /// Whose queue.
    pub sink: QueueOwner,
    /// Records (or probe events) dropped.
    pub records: u64,
}

impl InternalEvent for SinkQueueFull {
    const METRICS: &'static [&'static str] = &[
        "slicetrace_parquet_rows_dropped",
        "slicetrace_otlp_spans_dropped",
        "slicetrace_health_queue_drops",
        "slicetrace_tail_table_queue_drops",
    ];
    fn emit(self, c: &Counters) {
        match self.sink {
            QueueOwner::Parquet => Counters::add(&c.sink_queue_drops_parquet, self.records),
            QueueOwner::Otlp => {
                Counters::add(&c.sink_queue_drops_otlp, self.records);
                Counters::add(&c.otlp_spans_dropped, self.records);
            }
            QueueOwner::Health => Counters::add(&c.sink_queue_drops_health, self.records),
            QueueOwner::Summary => Counters::add(&c.sink_queue_drops_summary, self.records),
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

/// Span trees the sampler chose not to export (counted, never logged: it
/// is the sampler doing its job).
#[derive(Debug)]
pub struct SpansSampledOut {
    /// Probe runs whose span tree was not exported.
    pub runs: u64,
    /// Health evaluations whose span was not exported.
    pub health: u64,
}

impl InternalEvent for SpansSampledOut {
    const METRICS: &'static [&'static str] = &["slicetrace_otlp_unsampled"];
    fn emit(self, c: &Counters) {
        Counters::add(&c.otlp_unsampled_runs, self.runs);
        Counters::add(&c.otlp_unsampled_health, self.health);
    }
}

/// Why a span tree was exported whatever the ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedReason {
    /// The arrival's wait was above its GPU's p99 in the health window.
    WaitOverP99,
    /// The health verdict or contention state changed.
    StateChanged,
}

impl ForcedReason {
    /// Both, in the order of the `reason` label's series.
    pub const ALL: [ForcedReason; 2] = [Self::WaitOverP99, Self::StateChanged];
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitOverP99 => "wait_over_p99",
            Self::StateChanged => "state_changed",
        }
    }
}

/// A span tree exported whatever the ratio.
#[derive(Debug)]
pub struct SpanForced {
    /// Why.
    pub reason: ForcedReason,
}

impl InternalEvent for SpanForced {
    const METRICS: &'static [&'static str] = &["slicetrace_otlp_forced"];
    fn emit(self, c: &Counters) {
        Counters::inc(match self.reason {
            ForcedReason::WaitOverP99 => &c.otlp_forced_wait,
            ForcedReason::StateChanged => &c.otlp_forced_state,
        });
    }
}

/// A span tree that would have been forced, refused by its GPU's cap.
#[derive(Debug)]
pub struct ForcedSpanCapped;

impl InternalEvent for ForcedSpanCapped {
    const METRICS: &'static [&'static str] = &["slicetrace_otlp_forced_capped"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.otlp_forced_capped);
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
