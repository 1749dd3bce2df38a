//! Agent configuration: one TOML file (the `[parquet]`, `[otlp]`, `[metrics]`,
//! `[health]`, `[watchdog]`, `[occupancy]` and `[ship]` tables belong to those
//! components), then
//! environment variables, then command-line flags — later wins.
//!
//! Every struct rejects unknown keys, so a typo is a usage error (exit 2)
//! with a one-line reason naming the field, never a silently ignored setting.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slicetrace_probe::{BackendKind, Preset};
use slicetrace_ship::ShipConfig;

use crate::consumers::health::HealthConfig;
use crate::consumers::otlp::OtlpConfig;
use crate::consumers::parquet::ParquetConfig;
use crate::field_error::FieldError;
use crate::probe::config::ProbeConfig;
use crate::probe::occupancy::OccupancyConfig;
use crate::probe::watchdog::WatchdogConfig;

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

/// The `ConfigError` for `e` inside `[table]`.
fn in_table(e: FieldError, table: &str) -> ConfigError {
    invalid(&format!("{table}.{}", e.field), e.message)
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

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
    /// The watchdog for hung runs (per-run deadlines).
    pub watchdog: WatchdogConfig,
    /// Pod occupancy.
    pub occupancy: OccupancyConfig,
    /// Shipping closed Parquet files to S3-compatible storage (off by
    /// default; `slicetrace fleet s3://…` reads the bucket).
    pub ship: ShipConfig,
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
            watchdog: WatchdogConfig::default(),
            occupancy: OccupancyConfig::default(),
            ship: ShipConfig::default(),
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
    /// Ship closed files to s3://BUCKET/PREFIX/ (`ship.destination`; turns
    /// shipping on, empty turns it off).
    #[arg(long)]
    pub ship_destination: Option<String>,
}

#[cfg(test)]
mod tests;
