//! Agent configuration: one TOML file (the `[parquet]`, `[otlp]`, `[metrics]`,
//! `[health]` and `[occupancy]` tables belong to those components), then
//! environment variables, then command-line flags — later wins.
//!
//! Every struct rejects unknown keys, so a typo is a usage error (exit 2)
//! with a one-line reason naming the field, never a silently ignored setting.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slicetrace_probe::{BackendKind, Precision, Preset};

use crate::health::HealthConfig;
use crate::occupancy::OccupancyConfig;
use crate::sinks::otlp::OtlpConfig;
use crate::sinks::parquet::ParquetConfig;

mod parse;
mod resolve;

pub use parse::Deprecated;
pub use resolve::host_name;

/// A configuration error: always a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("{field}: {message}")]
    Parse {
        /// Dotted path of the offending key (or `config` when unknown).
        field: String,
        /// One-line reason.
        message: String,
    },
    /// A value parsed but is not allowed.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted field path.
        field: String,
        /// Why.
        message: String,
    },
}

/// The first unusable value of one component's table: the one shape every
/// component's `validate()` returns, so [`Config::validate`] only prefixes
/// the table name (`otlp.timeout_ms: must be greater than 0`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The key inside its table, e.g. `timeout_ms`.
    pub field: &'static str,
    /// Why the value is unusable, lowercase, one line.
    pub message: String,
}

impl FieldError {
    /// A field and its reason.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The `ConfigError` for this field inside `[table]`.
    fn in_table(self, table: &str) -> ConfigError {
        invalid(&format!("{table}.{}", self.field), self.message)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// How the probe runs (the `[probe]` table): when runs start, the start-up
/// self-test, and per-kernel overrides of the preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Mean time between probe cycles per GPU, ms (`arrivals = "burst"`
    /// only; Poisson arrivals use `rate_hz`). Formerly the top-level
    /// `interval_ms`, still read with a deprecation warning.
    pub interval_ms: u64,
    /// Random jitter of each burst interval, ± percent (0–90). Formerly the
    /// top-level `jitter_pct`, still read with a deprecation warning.
    pub jitter_pct: u32,
    /// At start, plant one corrupted output per kernel and require the
    /// checker to catch it. Formerly the top-level `self_test`, still read
    /// with a deprecation warning.
    pub self_test: bool,
    /// FFT length (1-D) or side (2-D), a power of two.
    pub fft_n: Option<usize>,
    /// FFT batch (1-D only).
    pub fft_batch: Option<usize>,
    /// Use a 2-D `fft_n × fft_n` transform instead of a 1-D batch.
    pub fft_2d: Option<bool>,
    /// GEMM matrix size n.
    pub gemm_n: Option<usize>,
    /// GEMM precision: `fp32`, `fp16` or `bf16`.
    pub gemm_precision: Option<Precision>,
    /// Runs per burst (`arrivals = "burst"` only).
    pub burst_runs: Option<u32>,
    /// CUDA submission of a timed run: `graph` (default), `stream` or
    /// `legacy`; only `graph` keeps slice waits out of `gpu_ms`.
    pub timing: Option<slicetrace_probe::Timing>,
    /// When runs start: `poisson` (default: one run per arrival, exponential
    /// gaps, FFT and GEMM alternating, so the latencies are what a caller
    /// arriving at random sees) or `burst` (the first version's FFT burst
    /// then GEMM burst every `interval_ms`; only the first run of a burst
    /// counts as an arrival).
    pub arrivals: Option<Arrivals>,
    /// Mean arrivals per second per GPU, both kernels together (`poisson`);
    /// default 5 (about 750 runs per kernel in a 5-minute health window).
    pub rate_hz: Option<f64>,
    /// CUDA: how the host waits for a run: `spin-then-block` (default: poll
    /// the end event for `spin_us`, then sleep in the driver) or `spin` (the
    /// CUDA default: a core spins while a run waits for its time slice).
    pub wait: Option<WaitMode>,
    /// Polling budget of `spin-then-block`, µs (default 200: a light run on
    /// an idle GPU completes inside it, so the timing floor is unchanged).
    pub spin_us: Option<u32>,
    /// CUDA: math mode of an fp32 GEMM, `strict` (default) or `tf32`; the
    /// check's tolerance follows it (and `NVIDIA_TF32_OVERRIDE`).
    pub fp32_math: Option<slicetrace_probe::Fp32Math>,
    /// CUDA: cuBLAS workspace, KiB (default 1024 for `light`, cuBLAS's own
    /// 32 MiB for `article`).
    pub cublas_workspace_kib: Option<u32>,
    /// CUDA: per-thread stack limit of the probe context, bytes (default 0
    /// for `light`, the driver's 1024 for `article`). The driver reserves it
    /// for every thread the GPU can hold (about 264 MiB of GPU memory per KiB
    /// on an H100) and raises it for a kernel that needs more.
    pub cuda_stack_bytes: Option<u32>,
    /// CUDA: stamp each run's start and end with the GPU's own timer and
    /// take `wall_ms` (launch → end stamp) and `queue_ms` (launch → start
    /// stamp) from them, calibrated to the host clock per GPU (default
    /// true). `false` takes `wall_ms` from the host clock until the wait
    /// returned, which includes how late the probe thread woke up; that
    /// time is in `host_wall_ms` either way.
    pub gpu_stamps: Option<bool>,
    /// Oldest the GPU's process list (a row's `gpu_processes`, `processes`
    /// and tenant count) may be, ms (default 5000, 1000–300000). NVML's
    /// process query is its dearest call on a busy GPU; the other device
    /// fields are refreshed every second regardless.
    pub process_list_max_age_ms: Option<u64>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            jitter_pct: 20,
            self_test: true,
            fft_n: None,
            fft_batch: None,
            fft_2d: None,
            gemm_n: None,
            gemm_precision: None,
            burst_runs: None,
            timing: None,
            arrivals: None,
            rate_hz: None,
            wait: None,
            spin_us: None,
            fp32_math: None,
            cublas_workspace_kib: None,
            cuda_stack_bytes: None,
            gpu_stamps: None,
            process_list_max_age_ms: None,
        }
    }
}

/// When probe runs start (`probe.arrivals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// A Poisson process per GPU: one run per arrival.
    #[default]
    Poisson,
    /// Bursts of each kernel per jittered interval.
    Burst,
}

/// How the host waits for a CUDA run (`probe.wait`): the mode of
/// [`slicetrace_probe::Wait`] that the config offers. Its budget
/// (`probe.spin_us`) and both defaults are the probe's own
/// (`Wait::default()`), so they are written once, in the probe crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// Poll for `spin_us`, then block.
    #[default]
    SpinThenBlock,
    /// Spin until done.
    Spin,
}

impl WaitMode {
    /// The probe's wait for `probe.wait` and `probe.spin_us`: what is not
    /// set keeps `preset` (the preset's wait, `Wait::default()`); a budget
    /// without a mode, or a mode without a budget, takes the other half
    /// from the probe's default.
    pub fn wait(
        mode: Option<WaitMode>,
        spin_us: Option<u32>,
        preset: slicetrace_probe::Wait,
    ) -> slicetrace_probe::Wait {
        use slicetrace_probe::Wait;
        let default_spin = |w: Wait| match w {
            Wait::SpinThenBlock { spin_us } | Wait::SpinThenPoll { spin_us, .. } => Some(spin_us),
            Wait::Spin => None,
        };
        match (mode, spin_us) {
            (None, None) => preset,
            (Some(WaitMode::Spin), _) => Wait::Spin,
            (_, Some(spin_us)) => Wait::SpinThenBlock { spin_us },
            (Some(WaitMode::SpinThenBlock), None) => match preset {
                Wait::SpinThenBlock { .. } => preset,
                other => Wait::SpinThenBlock {
                    spin_us: default_spin(other)
                        .or_else(|| default_spin(Wait::default()))
                        .unwrap_or_default(),
                },
            },
        }
    }
}

/// Default mean arrival rate per GPU, Hz: a 5-minute health window then holds
/// about 750 arrivals per kernel (at least 600 with overwhelming probability).
pub const DEFAULT_RATE_HZ: f64 = 5.0;

/// Prometheus endpoint (the `[metrics]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz` at all. Default `true`
    /// (the rule of every component: `enabled = false` turns it off; the old
    /// spelling, an empty `listen`, still does).
    pub enabled: bool,
    /// Listen address for `/metrics`, `/healthz` and `/readyz`; empty
    /// disables (prefer `enabled = false`). Loopback by default (a
    /// standalone agent on a workstation);
    /// the DaemonSet's ConfigMap sets `0.0.0.0:9464` so Prometheus can scrape
    /// the pod IP.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    /// Whether the endpoint is served: `enabled` and an address is set.
    pub fn is_enabled(&self) -> bool {
        self.enabled && !self.listen.is_empty()
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name; empty means `$NODE_NAME`, else the host name.
    pub node_name: String,
    /// Where Parquet files, the health baseline and state live.
    pub data_dir: PathBuf,
    /// `auto`, `cuda` or `cpu`.
    pub backend: BackendKind,
    /// `light` (default) or `article`.
    pub preset: Preset,
    /// How the probe runs, and overrides of the preset's kernels.
    pub probe: ProbeConfig,
    /// Number of CPU pseudo-devices on the CPU backend (tests of multi-GPU
    /// behaviour without GPUs).
    pub cpu_devices: u32,
    /// Run only on these device indices; empty probes every device.
    pub devices: Vec<u32>,
    /// Deadline for draining and closing every sink on shutdown, ms. Keep it
    /// below the pod's terminationGracePeriodSeconds.
    pub shutdown_deadline_ms: u64,
    /// Capacity of each sink's queue, in probe records.
    pub sink_queue_records: usize,
    /// Parquet sink.
    pub parquet: ParquetConfig,
    /// OTLP sink.
    pub otlp: OtlpConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Live health.
    pub health: HealthConfig,
    /// Pod occupancy.
    pub occupancy: OccupancyConfig,
    /// Record tenants' command names in the `processes` column and span
    /// attribute (`pid:name:used_mib`). Off by default: other tenants'
    /// command lines are theirs, so only PIDs and memory are kept
    /// (`pid::used_mib`).
    pub process_names: bool,
    /// Log format on stderr: `text` (colour only when stderr is a terminal)
    /// or `json` (one object per line, for log collectors). Also
    /// `SLICETRACE_LOG_FORMAT` and `--log-format`; `SLICETRACE_LOG` sets the
    /// filter (`info`, `slicetrace_agent=debug`, ...).
    pub log_format: LogFormat,
}

/// Log output format (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            data_dir: PathBuf::from("./slicetrace-data"),
            backend: BackendKind::Auto,
            preset: Preset::Light,
            probe: ProbeConfig::default(),
            cpu_devices: 1,
            devices: Vec::new(),
            shutdown_deadline_ms: 10_000,
            sink_queue_records: 8192,
            parquet: ParquetConfig::default(),
            otlp: OtlpConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            occupancy: OccupancyConfig::default(),
            process_names: false,
            log_format: LogFormat::Text,
        }
    }
}

/// Flag values that override the file and the environment: the agent's
/// `run` flattens this struct into its command line, so each field is one
/// flag and its doc comment is that flag's help. clap is a dependency of
/// this package anyway (the binary shares its `Cargo.toml`); deriving here
/// keeps one list of flags instead of a hand copy in `main.rs`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CliFlags {
    /// auto, cuda or cpu.
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// Where Parquet files and state go (default ./slicetrace-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Mean time between probe cycles per GPU with `probe.arrivals = "burst"`
    /// (`probe.interval_ms`; e.g. 1s, 250ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Mean Poisson arrivals per second per GPU (`probe.rate_hz`, default 5).
    #[arg(long)]
    pub rate_hz: Option<f64>,
    /// light or article.
    #[arg(long)]
    pub preset: Option<Preset>,
    /// OTLP collector URL (gRPC :4317 or HTTP :4318); OTEL_EXPORTER_OTLP_* also work.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// /metrics listen address; empty disables.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Node name (default $NODE_NAME, else the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// CPU pseudo-devices to probe on the CPU backend.
    #[arg(long)]
    pub cpu_devices: Option<u32>,
}

#[cfg(test)]
mod tests;
