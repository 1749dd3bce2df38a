//! `slicetrace-schema`: the one definition of what a probe *is*.
//!
//! Every other crate speaks in these types. The agent (`agent/`) fills a
//! [`ProbeRecord`] per kernel run, turns batches of them into Arrow record
//! batches with [`probes_batch`], and writes them to Parquet with
//! [`SCHEMA_VERSION`] in the key-value metadata; it also turns each record into
//! an OTLP span whose attribute keys live in [`attr`]. The `slicetrace` CLI
//! (`analysis/`) reads the same columns back with DataFusion and refuses files
//! whose schema version is newer than [`SCHEMA_VERSION`]. Every writer of
//! those files takes its settings from [`writer_properties`] and its paths
//! from [`layout`], which the CLI also uses to recognise partitions.
//!
//! Verdicts have one definition, in [`judge`]: two dimensions, health
//! ([`Verdict`]) and contention ([`Contention`]), with bounded reasons
//! ([`Reason`]), one set of thresholds ([`Thresholds::DEFAULT`]) and per-SKU
//! references ([`SKU_REFERENCES`]) for GPUs that are never idle.
//!
//! The column list in `README.md` is checked against [`COLUMNS`] and
//! [`probes_schema`] by a test, so the documentation cannot drift.

mod columns;
mod health;
mod ids;
mod kinds;
pub mod layout;
pub mod precision;
mod record;
pub mod rollup;
mod verdict;
mod writer;

pub use columns::{ColumnDoc, COLUMNS, HEALTH_COLUMNS};
pub use health::{health_batch, health_schema, HealthRecord};
pub use ids::{BadId, SpanId, TraceId};
pub use kinds::{Backend, Kernel, UnknownName, WallClock};
pub use record::{probes_batch, probes_from_batch, probes_schema, DeviceFields, ProbeRecord};
pub use rollup::{
    rollups_batch, rollups_from_batch, rollups_schema, Rollup, RollupKey, RollupRecord, Sketch,
    SketchAcc, SketchSet, ROLLUP_COLUMNS, ROLLUP_SCHEMA_VERSION, ROLLUP_SCHEMA_VERSION_KEY,
    SKETCH_ALPHA,
};
pub use verdict::{
    event_eligible, event_mcycles, is_quiet, judge, sku_reference, BaselineSource, Contention,
    Dimension, Faults, Judgement, LearnedBaseline, Reason, SkuReference, Thresholds, Verdict,
    WindowStats, SKU_REFERENCES,
};
pub use writer::{
    writer_properties, DEFAULT_ROW_GROUP_ROWS, DELTA_COLUMNS, SKETCH_SUFFIX, SPLIT_COLUMNS,
    ZSTD_LEVEL,
};

/// Version of the `probes` and `health` table layouts. Bump on any change that
/// an older reader would misinterpret (a renamed, retyped or re-meant column).
/// Adding a nullable column does not need a bump.
///
/// Version 3: `trace_id` no longer implies a span in the collector (spans
/// are sampled); `span_sampled` says which were exported.
///
/// Version 4: `trace_id` and `span_id` are null unless the run's spans were
/// exported (`span_sampled = true`); the clock columns are stored at the
/// precision of [`precision`] (same types and units). Readers of version 3
/// read version 4 files unchanged; what changed is what a null id means.
pub const SCHEMA_VERSION: u32 = 4;

/// SQL predicate that selects arrival runs (see the `arrival` column): the
/// one rule every command of the CLI and the live verdict use. Old files
/// without the column count the first FFT run of each burst.
pub const ARRIVAL_SQL: &str = "coalesce(arrival, burst_seq = 0 AND kernel = 'fft')";

/// SQL expression of the derived `tenants` column: compute processes on the
/// GPU other than the agent (NVML). The same rule as [`ProbeRecord::tenants`].
pub const TENANTS_SQL: &str = "gpu_processes";

/// Parquet key-value metadata key that carries [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "slicetrace.schema_version";

/// Parquet key-value metadata key naming the table (`probes` or `health`).
pub const TABLE_KEY: &str = "slicetrace.table";

/// Errors raised while converting between records and Arrow.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Arrow refused to build or read a batch.
    #[error("failed to convert probe records to or from arrow")]
    Arrow(#[source] arrow::error::ArrowError),
    /// A batch lacks a column this build needs.
    #[error("record batch has no column {0:?}")]
    MissingColumn(String),
    /// A column has an unexpected Arrow type.
    #[error("column {column:?} has type {found}, expected {expected}")]
    WrongType {
        /// Column name.
        column: String,
        /// The type found in the batch.
        found: String,
        /// The type this build expects.
        expected: String,
    },
    /// A utf8 column holds a word outside its closed set (a kernel, backend,
    /// verdict or contention state this build does not know), or an id that
    /// is not hex of the right width.
    #[error("column {column:?} holds unknown value {value:?}")]
    UnknownValue {
        /// Column name.
        column: String,
        /// The value found.
        value: String,
    },
}

/// OTLP span attribute keys. OpenTelemetry semantic-convention names are used
/// where one exists (`k8s.*`, `host.name`, `service.name`); the rest live under
/// `slicetrace.*` (probe fields) and `gpu.*` / `nvml.*` (device readings).
pub mod attr {
    /// Resource: `service.name`.
    pub const SERVICE_NAME: &str = "service.name";
    /// Resource: `host.name`.
    pub const HOST_NAME: &str = "host.name";
    /// Resource: `k8s.node.name`, when the node name is known.
    pub const K8S_NODE_NAME: &str = "k8s.node.name";
    /// Physical GPU UUID (`GPU-...`) or the CPU pseudo-device id.
    pub const GPU_UUID: &str = "gpu.uuid";
    /// Device index on the node.
    pub const GPU_INDEX: &str = "gpu.index";
    /// Product name.
    pub const GPU_NAME: &str = "gpu.name";
    /// Backend that ran the probe (`cuda` or `cpu`).
    pub const BACKEND: &str = "slicetrace.backend";
    /// Probe kernel (`fft` or `gemm`).
    pub const KERNEL: &str = "slicetrace.kernel";
    /// Probe shape, e.g. `c2c n=4096 batch=8`.
    pub const SHAPE: &str = "slicetrace.shape";
    /// Numeric precision of the kernel.
    pub const PRECISION: &str = "slicetrace.precision";
    /// Floating-point operations per run.
    pub const FLOPS: &str = "slicetrace.flops";
    /// Probe cycle number.
    pub const CYCLE: &str = "slicetrace.cycle";
    /// Index of the run inside its burst.
    pub const BURST_SEQ: &str = "slicetrace.burst_seq";
    /// CUDA-event execution time, ms.
    pub const GPU_MS: &str = "slicetrace.gpu_ms";
    /// Launch-to-completion time, ms (the clock `wall_clock` names).
    pub const WALL_MS: &str = "slicetrace.wall_ms";
    /// Launch → GPU start stamp (or `wall_ms - gpu_ms`), ms: the wait for a
    /// time slice.
    pub const QUEUE_MS: &str = "slicetrace.queue_ms";
    /// `host_wall_ms`.
    pub const HOST_WALL_MS: &str = "slicetrace.host_wall_ms";
    /// `wall_clock` (`gpu` or `host`).
    pub const WALL_CLOCK: &str = "slicetrace.wall_clock";
    /// `clock_error_us`.
    pub const CLOCK_ERROR_US: &str = "slicetrace.clock_error_us";
    /// Achieved TFLOP/s against the event clock.
    pub const TFLOPS: &str = "slicetrace.tflops";
    /// Output passed its correctness check.
    pub const CORRECT: &str = "slicetrace.correct";
    /// Relative error of the correctness check.
    pub const REL_ERROR: &str = "slicetrace.rel_error";
    /// SM clock, MHz.
    pub const SM_CLOCK_MHZ: &str = "nvml.sm_clock_mhz";
    /// Memory clock, MHz.
    pub const MEM_CLOCK_MHZ: &str = "nvml.mem_clock_mhz";
    /// GPU utilisation, %.
    pub const GPU_UTIL_PCT: &str = "nvml.gpu_util_pct";
    /// Memory-controller utilisation, %.
    pub const MEM_UTIL_PCT: &str = "nvml.mem_util_pct";
    /// Board power, W.
    pub const POWER_W: &str = "nvml.power_w";
    /// GPU temperature, °C.
    pub const TEMP_C: &str = "nvml.temp_c";
    /// NVML clocks-event (throttle) reason bit mask.
    pub const THROTTLE_REASONS: &str = "nvml.throttle_reasons";
    /// Framebuffer memory used, MiB.
    pub const FB_USED_MIB: &str = "nvml.fb_used_mib";
    /// Compute processes on the GPU.
    pub const GPU_PROCESSES: &str = "nvml.gpu_processes";
    /// Pods holding a replica of this GPU (`namespace/name`).
    pub const PODS: &str = "k8s.gpu.pods";
    /// Number of pods holding a replica of this GPU.
    pub const POD_COUNT: &str = "k8s.gpu.pod_count";
    /// Pods with a process running on the GPU.
    pub const ACTIVE_PODS: &str = "k8s.gpu.active_pods";
    /// Time-slicing replicas advertised per GPU (node label).
    pub const REPLICAS: &str = "k8s.gpu.replicas";
    /// Device-plugin sharing strategy (node label).
    pub const SHARING_STRATEGY: &str = "k8s.gpu.sharing_strategy";
    /// Live health verdict of this GPU and kernel.
    pub const VERDICT: &str = "slicetrace.health.verdict";
    /// Reason for the verdict.
    pub const VERDICT_REASON: &str = "slicetrace.health.reason";
    /// Health window length, s.
    pub const HEALTH_WINDOW_SECS: &str = "slicetrace.health.window_secs";
    /// Runs in the health window.
    pub const HEALTH_SAMPLES: &str = "slicetrace.health.samples";
    /// p50 of `wall_ms` in the window.
    pub const HEALTH_WALL_P50_MS: &str = "slicetrace.health.wall_p50_ms";
    /// p99 of `wall_ms` in the window.
    pub const HEALTH_WALL_P99_MS: &str = "slicetrace.health.wall_p99_ms";
    /// p99 of `gpu_ms` in the window.
    pub const HEALTH_GPU_P99_MS: &str = "slicetrace.health.gpu_p99_ms";
    /// p99 of `queue_ms` in the window.
    pub const HEALTH_QUEUE_P99_MS: &str = "slicetrace.health.queue_p99_ms";
    /// Baseline (or SLO) p99 of `wall_ms`.
    pub const HEALTH_BASELINE_P99_MS: &str = "slicetrace.health.baseline_p99_ms";
    /// p99 inflation over the baseline.
    pub const HEALTH_INFLATION: &str = "slicetrace.health.inflation";
    /// Correctness failures in the window.
    pub const HEALTH_CORRECTNESS_FAILURES: &str = "slicetrace.health.correctness_failures";
    /// Bounded reason of the health verdict ([`crate::Reason`]).
    pub const HEALTH_REASON_CODE: &str = "slicetrace.health.reason_code";
    /// Baseline the event clock was judged against (`learned`, `sku`).
    pub const HEALTH_BASELINE_SOURCE: &str = "slicetrace.health.baseline_source";
    /// Live contention state (`ok`, `contended`, `over-shared`).
    pub const CONTENTION: &str = "slicetrace.contention.state";
    /// Bounded reason of the contention state ([`crate::Reason`]).
    pub const CONTENTION_REASON_CODE: &str = "slicetrace.contention.reason_code";
    /// One-line contention reason, with the tenant count.
    pub const CONTENTION_REASON: &str = "slicetrace.contention.reason";
    /// Baseline the wall clock was judged against (`slo`, `learned`, `sku`).
    pub const CONTENTION_BASELINE_SOURCE: &str = "slicetrace.contention.baseline_source";
    /// Largest tenant count in the health window.
    pub const HEALTH_TENANTS: &str = "slicetrace.health.tenants";
}
