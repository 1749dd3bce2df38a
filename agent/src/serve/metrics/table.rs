//! [`METRICS`]: every family `/metrics` serves, its type, unit, labels and
//! help, in one table that the renderer, the docs and the deploy tests (alert
//! rules, dashboard) all read.

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonic count; its samples carry `_total`.
    Counter,
    /// Quantiles (`quantile` label) of a distribution.
    Summary,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Summary => "summary",
        }
    }
}

/// Documentation of one metric family the agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDoc {
    /// Family name (a counter's samples add `_total`).
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// OpenMetrics unit, when the name ends in one.
    pub unit: Option<&'static str>,
    /// Label names, in the order they are written. Every series carries
    /// `node` (this agent's node name), so rules work under both
    /// ServiceMonitor and annotation scraping.
    pub labels: &'static [&'static str],
    /// `# HELP` text.
    pub help: &'static str,
}

impl MetricDoc {
    /// The name its samples carry (`_total` on counters).
    pub fn sample_name(&self) -> String {
        if self.kind == Kind::Counter {
            format!("{}_total", self.name)
        } else {
            self.name.to_string()
        }
    }
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        unit: None,
        labels,
        help,
    }
}

const NODE: &[&str] = &["node"];
const GPU: &[&str] = &["node", "gpu_uuid"];
const KERNEL_IDX: &[&str] = &["node", "gpu_uuid", "gpu_index", "kernel"];

/// Every metric family `/metrics` serves: the one list the exposition is
/// rendered from, and that docs and deploy tests (alert rules, dashboard)
/// read. A family with no sample yet (no GPU evaluated) is left out of the
/// exposition; `slicetrace_agent_info`, `slicetrace_gpu_info` and
/// `slicetrace_backend_up` exist from start.
pub const METRICS: &[MetricDoc] = &[
    m("slicetrace_agent_info", Kind::Gauge, &["node", "version"], "Always 1: this agent's node and version."),
    m("slicetrace_gpu_info", Kind::Gauge, &["node", "gpu_uuid", "gpu_index", "gpu_name", "backend"], "Always 1 for every GPU the agent probes (or failed to open), from start."),
    m("slicetrace_gpu_probing", Kind::Gauge, &["node", "gpu_uuid", "reason"], "1 while this GPU's backend is open and probing; 0 while it is not (reason: open_failed, lost, hung or backend_down; the agent keeps retrying it with backoff while the other GPUs probe on)."),
    m("slicetrace_backend_up", Kind::Gauge, &["node", "gpu_uuid", "backend"], "1 while this GPU's probe backend is open and its probes succeed; 0 when it failed to open or probes fail (reason in slicetrace_gpu_verdict_reason and the log). /readyz fails while any is 0."),
    m("slicetrace_backend_fallback", Kind::Gauge, NODE, "1 when backend = \"auto\" found no usable CUDA and fell back to the CPU backend (laptops and CI only)."),
    m("slicetrace_ready", Kind::Gauge, NODE, "1 once the first probe cycle completed and every backend is up and every self-test passed (what /readyz answers)."),
    MetricDoc { unit: Some("seconds"), ..m("slicetrace_probe_latency_seconds", Kind::Summary, &["node", "gpu_uuid", "gpu_index", "kernel", "clock", "quantile"], "Probe latency quantiles of arrival runs over the health window, seconds, per clock (wall = host launch-to-completion, gpu = CUDA events, queue = wall - gpu).") },
    m("slicetrace_gpu_verdict", Kind::Gauge, &["node", "gpu_uuid", "gpu_index", "kernel", "verdict"], "Health of the GPU itself (healthy, unknown, degraded, unhealthy): 1 for the current verdict of this GPU and kernel, 0 for the others. Contention never makes it unhealthy."),
    m("slicetrace_gpu_contention", Kind::Gauge, &["node", "gpu_uuid", "kernel", "state"], "Contention for time slices (ok, contended, over-shared): 1 for the current state of this GPU and kernel, 0 for the others."),
    m("slicetrace_gpu_verdict_reason", Kind::Gauge, &["node", "gpu_uuid", "kernel", "dimension", "reason"], "Always 1: the bounded reason of the current health (dimension=health) and contention (dimension=contention) state."),
    MetricDoc { unit: Some("seconds"), ..m("slicetrace_baseline_seconds", Kind::Gauge, &["node", "gpu_uuid", "kernel", "clock", "quantile", "source"], "Baseline latency the window is judged against, seconds: clock=wall from the SLO (source=slo, p99 only), the learned quiet runs (learned) or the per-SKU reference (sku); clock=gpu from the learned quiet runs.") },
    m("slicetrace_p99_inflation", Kind::Gauge, KERNEL_IDX, "Wall p99 over the SLO or quiet baseline it is judged against."),
    m("slicetrace_window_samples", Kind::Gauge, KERNEL_IDX, "Arrival runs in the health window."),
    m("slicetrace_self_test_passed", Kind::Gauge, &["node", "gpu_uuid", "kernel"], "Start-up self-test: 1 when the planted corruption was caught and a clean run passed, 0 when not (correctness unverified: the kernel is unhealthy and /readyz fails)."),
    m("slicetrace_correctness_failures", Kind::Counter, KERNEL_IDX, "Probe runs whose output failed its correctness check."),
    m("slicetrace_gpu_pods", Kind::Gauge, GPU, "Pods holding a replica of this physical GPU (absent while unknown)."),
    m("slicetrace_tenant_wait_share", Kind::Gauge, &["node", "gpu_uuid", "tenant"], "Attributed share (0-1) of this GPU's probe wait (queue_ms) over the health window for each tenant NVML saw busy (tenant = namespace/pod, else pid:N): each arrival's wait is split equally among its busy tenants (docs/blame-whatif.md). A tenant not busy in the window has no series."),
    m("slicetrace_probe_runs", Kind::Counter, GPU, "Probe runs completed on this GPU."),
    m("slicetrace_probe_errors", Kind::Counter, GPU, "Probe runs that failed on this GPU."),
    m("slicetrace_probe_hangs", Kind::Counter, GPU, "Runs on this GPU that the watchdog gave up on (past their deadline, watchdog.*): each made the GPU unhealthy (hung) and abandoned its context."),
    m("slicetrace_probe_backends_parked", Kind::Gauge, GPU, "Backends of this GPU abandoned with a hung run whose run has not returned yet: each keeps its CUDA context (never destroyed under a running kernel, never reset) until the run returns. One that never returns stays here."),
    m("slicetrace_probe_backends_released", Kind::Counter, GPU, "Abandoned backends of this GPU released with their context once their hung run returned."),
    m("slicetrace_gpu_open_failures", Kind::Counter, GPU, "Failed attempts to open this GPU's probe backend (at start or on a retry with backoff)."),
    m("slicetrace_xid_errors", Kind::Counter, &["node", "gpu_uuid", "xid"], "Xid errors NVML reported for this GPU, by code (48, 79, 94 and 95 make it unhealthy with reason xid_<code>)."),
    m("slicetrace_telemetry_errors", Kind::Counter, GPU, "NVML samples of this GPU that failed."),
    MetricDoc { unit: Some("seconds"), ..m("slicetrace_probe_thread_cpu_seconds", Kind::Counter, &["node", "gpu_uuid", "stage"], "CPU time of this GPU's probe thread by stage of an arrival (wait = sleeping until it and the loop's bookkeeping, telemetry = NVML, run = launch, wait for completion and check, publish = the join and hand-off), seconds: the sum's rate is the probe thread's share of one core.") },
    m("slicetrace_probe_cycles", Kind::Counter, NODE, "Probe cycles completed, all GPUs."),
    m("slicetrace_occupancy_source_up", Kind::Gauge, &["node", "source"], "1 while an occupancy source answers: pod_resources when the last List succeeded, kube_api when the pod list is synced and the last API calls succeeded."),
    MetricDoc { unit: Some("seconds"), ..m("slicetrace_occupancy_sync_age_seconds", Kind::Gauge, NODE, "Age of the oldest occupancy source's last successful sync.") },
    m("slicetrace_otlp_spans_exported", Kind::Counter, NODE, "Spans acknowledged by the collector."),
    m("slicetrace_otlp_spans_dropped", Kind::Counter, NODE, "Spans dropped (queue full, collector down or slow)."),
    m("slicetrace_otlp_export_errors", Kind::Counter, NODE, "Failed OTLP export calls."),
    m("slicetrace_otlp_unsampled", Kind::Counter, &["node", "kind"], "What the span sampler did not export (OTEL_TRACES_SAMPLER; by default about one span tree per second per GPU is kept): kind=run, probe runs whose spans were left out (their Parquet rows say span_sampled = false); kind=health, health evaluations whose span was left out."),
    m("slicetrace_otlp_forced", Kind::Counter, &["node", "reason"], "Span trees exported whatever the sampler's ratio: reason=wait_over_p99, an arrival whose wait was above its GPU's p99 in the health window; reason=state_changed, a health evaluation whose verdict or contention state changed."),
    m("slicetrace_otlp_forced_capped", Kind::Counter, NODE, "Span trees that would have been forced but were not exported, because their GPU had spent otlp.forced_spans_per_gpu_per_min."),
    m("slicetrace_parquet_rows_written", Kind::Counter, NODE, "Rows in closed, visible Parquet files."),
    m("slicetrace_parquet_files_rotated", Kind::Counter, NODE, "Parquet files closed and made visible."),
    m("slicetrace_parquet_write_errors", Kind::Counter, NODE, "Parquet write errors (disk full, permissions)."),
    m("slicetrace_parquet_rows_dropped", Kind::Counter, NODE, "Rows lost to Parquet write errors or a full queue."),
    m("slicetrace_parquet_tmp_recovered", Kind::Counter, NODE, "Leftover temporary files recovered at start."),
    m("slicetrace_parquet_tmp_removed", Kind::Counter, NODE, "Unreadable leftover temporary files removed at start."),
    m("slicetrace_parquet_retention_deleted", Kind::Counter, NODE, "Files deleted by retention."),
    m("slicetrace_occupancy_errors", Kind::Counter, NODE, "Occupancy refresh errors."),
    m("slicetrace_occupancy_relists", Kind::Counter, NODE, "Kubernetes watch relists."),
    m("slicetrace_driver_releases", Kind::Counter, NODE, "Times the agent let go of the driver (NVML shut down, every CUDA context released) for a driver upgrade (the node's nvidia.com/gpu-driver-upgrade-state label) or because NVML said the driver is gone or being replaced."),
    m("slicetrace_driver_changes", Kind::Counter, NODE, "Times NVML answered with another driver version than before (a driver upgraded under the agent)."),
    m("slicetrace_driver_info", Kind::Gauge, &["node", "version"], "Always 1: the driver version NVML last answered with (absent without NVML)."),
    m("slicetrace_health_queue_drops", Kind::Counter, NODE, "Rows or probe events the health evaluator's full queue dropped."),
    m("slicetrace_ship_files_waiting", Kind::Gauge, NODE, "Closed Parquet files waiting to be shipped to the bucket ([ship]), as of the shipper's last scan."),
    MetricDoc { unit: Some("bytes"), ..m("slicetrace_ship_waiting_bytes", Kind::Gauge, NODE, "Total size of the files waiting to be shipped, bytes.") },
    MetricDoc { unit: Some("seconds"), ..m("slicetrace_ship_oldest_waiting_age_seconds", Kind::Gauge, NODE, "Time since the oldest waiting file was closed, seconds; absent while nothing waits. It grows without bound while shipping stalls (the SlicetraceShippingStalled alert).") },
    m("slicetrace_ship_files_uploaded", Kind::Counter, NODE, "Files uploaded, verified in the bucket (size and MD5 ETag) and deleted locally."),
    MetricDoc { unit: Some("bytes"), ..m("slicetrace_ship_uploaded_bytes", Kind::Counter, NODE, "Bytes of the files uploaded and verified.") },
    m("slicetrace_ship_failed_attempts", Kind::Counter, NODE, "Shipping attempts that failed (read, upload, check, or a verification mismatch); each is retried after a backoff."),
    m("slicetrace_ship_verify_mismatches", Kind::Counter, NODE, "Failed attempts where the object in the bucket did not match the file's size or MD5."),
    m("slicetrace_ship_files_dropped", Kind::Counter, &["node", "reason"], "Files deleted locally without being shipped, by reason: backlog_full (over max_backlog_files or max_backlog_bytes, oldest first), max_age (waited over max_age_ms), vanished (deleted by someone else first)."),
    m("slicetrace_ship_scans", Kind::Counter, NODE, "Scans of the data directory for closed files completed by the shipper."),
    m("slicetrace_tail_table_queue_drops", Kind::Counter, NODE, "Rows the exit summary's full queue dropped (the tail table printed at exit misses them)."),
];

/// The documentation of a family by name.
pub fn metric_doc(name: &str) -> Option<&'static MetricDoc> {
    METRICS.iter().find(|d| d.name == name)
}
