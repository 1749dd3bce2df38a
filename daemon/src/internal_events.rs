//! Internal events: every drop, retry, rotation and error the agent hits is
//! counted here, and the counts appear on `/metrics` and in the logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Lets a log line through at most once per `period` (per limiter). Used for
/// "sink down" and "disk full" errors, which would otherwise repeat every cycle.
#[derive(Debug)]
pub struct RateLimit {
    period: std::time::Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateLimit {
    /// A limiter letting one event through per `period`.
    pub fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            last: std::sync::Mutex::new(None),
        }
    }
    /// True when the caller may log now.
    pub fn allow(&self) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        match *last {
            Some(t) if now.duration_since(t) < self.period => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}
