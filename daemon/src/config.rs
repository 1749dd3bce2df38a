//! Agent configuration: one TOML file (the `[parquet]`, `[otlp]`, `[metrics]`,
//! `[health]` and `[occupancy]` tables belong to those components), then
//! environment variables, then command-line flags — later wins.
//!
//! Every struct rejects unknown keys, so a typo is a usage error (exit 2)
//! with a one-line reason naming the field, never a silently ignored setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slicetrace_probe::{BackendKind, FftDims, Precision, Preset, ProbeSpec};

use crate::health::HealthConfig;
use crate::occupancy::OccupancyConfig;
use crate::sinks::otlp::OtlpConfig;
use crate::sinks::parquet::ParquetConfig;

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
pub struct ProbeOverrides {
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
}

impl Default for ProbeOverrides {
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

/// How the host waits for a CUDA run (`probe.wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// Poll for `spin_us`, then block.
    #[default]
    SpinThenBlock,
    /// Spin until done.
    Spin,
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
    pub probe: ProbeOverrides,
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
            probe: ProbeOverrides::default(),
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
pub struct Overrides {
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

/// Turns a TOML error into `field: reason` on one line. toml reports a byte
/// span; the key is the text before `=` on that line, and its table the last
/// `[header]` above it.
fn toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid value")
        .trim()
        .to_string();
    let mut field = String::from("config");
    if let Some(span) = e.span() {
        let before = &src[..span.start.min(src.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[line_start..]
            .find('\n')
            .map_or(src.len(), |i| line_start + i);
        let line = &src[line_start..line_end];
        let section = src[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string());
        let line_no = before.matches('\n').count() + 1;
        field = match (section, key) {
            (Some(s), Some(k)) if !line.trim_start().starts_with('[') => format!("{s}.{k}"),
            (None, Some(k)) => k,
            (Some(s), None) => s,
            _ => format!("line {line_no}"),
        };
        // Unknown keys: serde names the key itself in the message.
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            if let Some(k) = rest.split('`').next() {
                field = match field.rsplit_once('.') {
                    Some((s, _)) => format!("{s}.{k}"),
                    None => k.to_string(),
                };
            }
        }
        field = format!("{field} (line {line_no})");
    }
    ConfigError::Parse {
        field,
        message: msg,
    }
}

/// A key read from its old place: its value still applies, and the operator
/// is told where it lives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecated {
    /// The old key, e.g. `interval_ms`.
    pub old: &'static str,
    /// Where it belongs now, e.g. `probe.interval_ms`.
    pub new: &'static str,
}

impl Deprecated {
    /// Logs the deprecation (WARN: the file works, but should be edited).
    pub fn warn(&self) {
        tracing::warn!(
            key = self.old,
            new_key = self.new,
            "deprecated config key `{}`: move it to `{}`",
            self.old,
            self.new
        );
    }
}

/// The probe keys that used to sit at the top level. Read on their own, with
/// spans, so an error in one still names its line; the parse of `Config`
/// then sees the document with those lines blanked.
#[derive(Deserialize, Default)]
#[serde(default)]
struct TopLevelProbeKeys {
    interval_ms: Option<toml::Spanned<u64>>,
    jitter_pct: Option<toml::Spanned<u32>>,
    self_test: Option<toml::Spanned<bool>>,
    probe: Option<toml::Table>,
}

/// Replaces `key = value` (from the start of its line to the end of the value)
/// with spaces, keeping every other byte offset, so later errors keep their
/// line numbers.
fn blank_key_line(text: &mut [u8], value: std::ops::Range<usize>) {
    let start = text[..value.start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = value.end.min(text.len());
    for b in &mut text[start..end] {
        *b = b' ';
    }
}

impl Config {
    /// Parses a TOML document, logging a warning for each deprecated key.
    pub fn from_toml(src: &str) -> Result<Self, ConfigError> {
        let (c, deprecated) = Self::from_toml_reporting(src)?;
        for d in &deprecated {
            d.warn();
        }
        Ok(c)
    }

    /// Parses a TOML document and returns the deprecated keys it used (their
    /// values applied), for the caller to report once logging is set up. A
    /// key given both in its old place and its new one is an error.
    pub fn from_toml_reporting(src: &str) -> Result<(Self, Vec<Deprecated>), ConfigError> {
        let old: TopLevelProbeKeys = toml::from_str(src).map_err(|e| toml_error(src, &e))?;
        let probe = old.probe.unwrap_or_default();
        let mut text = src.as_bytes().to_vec();
        let mut deprecated = Vec::new();
        for (key, new, span) in [
            (
                "interval_ms",
                "probe.interval_ms",
                old.interval_ms.as_ref().map(|v| v.span()),
            ),
            (
                "jitter_pct",
                "probe.jitter_pct",
                old.jitter_pct.as_ref().map(|v| v.span()),
            ),
            (
                "self_test",
                "probe.self_test",
                old.self_test.as_ref().map(|v| v.span()),
            ),
        ] {
            let Some(span) = span else { continue };
            if probe.contains_key(key) {
                return Err(invalid(
                    key,
                    format!("set both at the top level (deprecated) and as {new}; keep only {new}"),
                ));
            }
            blank_key_line(&mut text, span);
            deprecated.push(Deprecated { old: key, new });
        }
        let rest = String::from_utf8(text).map_err(|e| invalid("config", e.to_string()))?;
        let mut c: Config = toml::from_str(&rest).map_err(|e| toml_error(&rest, &e))?;
        if let Some(v) = old.interval_ms {
            c.probe.interval_ms = v.into_inner();
        }
        if let Some(v) = old.jitter_pct {
            c.probe.jitter_pct = v.into_inner();
        }
        if let Some(v) = old.self_test {
            c.probe.self_test = v.into_inner();
        }
        Ok((c, deprecated))
    }

    /// Reads and parses `path`, logging a warning for each deprecated key.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (c, deprecated) = Self::from_file_reporting(path)?;
        for d in &deprecated {
            d.warn();
        }
        Ok(c)
    }

    /// Reads and parses `path`; see [`Config::from_toml_reporting`].
    pub fn from_file_reporting(path: &Path) -> Result<(Self, Vec<Deprecated>), ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_reporting(&src)
    }

    /// Applies `SLICETRACE_*` and `NODE_NAME` environment variables. The OTLP
    /// `OTEL_*` variables are applied by the OTLP sink itself, between the
    /// file and the flags.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("SLICETRACE_BACKEND") {
            self.backend = v
                .parse()
                .map_err(|m: String| invalid("SLICETRACE_BACKEND", m))?;
        }
        if let Some(v) = env("SLICETRACE_PRESET") {
            self.preset = v
                .parse()
                .map_err(|m: String| invalid("SLICETRACE_PRESET", m))?;
        }
        if let Some(v) = env("SLICETRACE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("SLICETRACE_INTERVAL") {
            let d = humantime::parse_duration(&v)
                .map_err(|e| invalid("SLICETRACE_INTERVAL", e.to_string()))?;
            self.probe.interval_ms = d.as_millis() as u64;
        }
        if let Some(v) = env("SLICETRACE_RATE_HZ") {
            self.probe.rate_hz =
                Some(v.parse().map_err(|_| {
                    invalid("SLICETRACE_RATE_HZ", format!("{v:?} is not a number"))
                })?);
        }
        if let Some(v) = env("SLICETRACE_METRICS_LISTEN") {
            self.metrics.listen = v;
        }

        self.otlp
            .apply_env_from(env)
            .map_err(|e| invalid("otlp", crate::internal_events::error_chain(&e)))?;
        if self.node_name.is_empty() {
            if let Some(v) = env("NODE_NAME").filter(|v| !v.is_empty()) {
                self.node_name = v;
            }
        }
        Ok(())
    }

    /// Applies command-line flags (highest precedence).
    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(b) = o.backend {
            self.backend = b;
        }
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(i) = o.interval {
            self.probe.interval_ms = i.as_millis() as u64;
        }
        if let Some(r) = o.rate_hz {
            self.probe.rate_hz = Some(r);
        }
        if let Some(p) = o.preset {
            self.preset = p;
        }
        if let Some(e) = &o.otlp_endpoint {
            self.otlp.endpoint = Some(e.clone()).filter(|e| !e.is_empty());
        }
        if let Some(l) = &o.metrics_listen {
            self.metrics.listen = l.clone();
        }
        if let Some(n) = &o.node_name {
            self.node_name = n.clone();
        }
        if let Some(n) = o.cpu_devices {
            self.cpu_devices = n;
        }
    }

    /// The node name to use: configured, else the host name.
    pub fn resolved_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        host_name()
    }

    /// The probe spec for a backend, after the overrides.
    pub fn probe_spec(&self, backend: &str) -> ProbeSpec {
        let mut s = ProbeSpec::preset_for(self.preset, backend);
        let p = &self.probe;
        if p.fft_n.is_some() || p.fft_batch.is_some() || p.fft_2d.is_some() {
            let (n0, b0) = match s.fft.dims {
                FftDims::D1 { n, batch } => (n, batch),
                FftDims::D2 { nx, .. } => (nx, 1),
            };
            let n = p.fft_n.unwrap_or(n0);
            s.fft.dims = if p.fft_2d.unwrap_or(matches!(s.fft.dims, FftDims::D2 { .. })) {
                FftDims::D2 { nx: n, ny: n }
            } else {
                FftDims::D1 {
                    n,
                    batch: p.fft_batch.unwrap_or(b0),
                }
            };
        }
        if let Some(n) = p.gemm_n {
            s.gemm.n = n;
        }
        if let Some(pr) = p.gemm_precision {
            s.gemm.precision = pr;
        }
        if let Some(b) = p.burst_runs {
            s.burst_runs = b;
        }
        if let Some(t) = p.timing {
            s.timing = t;
        }
        s.wait = match p.wait.unwrap_or_default() {
            WaitMode::Spin => slicetrace_probe::Wait::Spin,
            WaitMode::SpinThenBlock => slicetrace_probe::Wait::SpinThenBlock {
                spin_us: p.spin_us.unwrap_or(200),
            },
        };
        if let Some(m) = p.fp32_math {
            s.fp32_math = m;
        }
        if let Some(k) = p.cublas_workspace_kib {
            s.cublas_workspace_kib = Some(k);
        }
        s
    }

    /// The arrival plan of the probe threads.
    pub fn arrival_plan(&self, spec: &ProbeSpec) -> crate::pipeline::ArrivalPlan {
        match self.probe.arrivals.unwrap_or_default() {
            Arrivals::Poisson => crate::pipeline::ArrivalPlan::Poisson {
                rate_hz: self.probe.rate_hz.unwrap_or(DEFAULT_RATE_HZ),
            },
            Arrivals::Burst => crate::pipeline::ArrivalPlan::Burst {
                interval: Duration::from_millis(self.probe.interval_ms),
                jitter_pct: self.probe.jitter_pct,
                burst_runs: spec.burst_runs,
            },
        }
    }

    /// Checks every value that parsed but is not usable. Writes nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.probe;
        if p.interval_ms == 0 || p.interval_ms > 3_600_000 {
            return Err(invalid(
                "probe.interval_ms",
                format!("{} is out of range 1..=3600000", p.interval_ms),
            ));
        }
        if p.jitter_pct > 90 {
            return Err(invalid(
                "probe.jitter_pct",
                format!("{} is above 90", p.jitter_pct),
            ));
        }
        if self.shutdown_deadline_ms == 0 {
            return Err(invalid("shutdown_deadline_ms", "must be positive"));
        }
        if self.sink_queue_records == 0 {
            return Err(invalid("sink_queue_records", "must be positive"));
        }
        if self.cpu_devices == 0 || self.cpu_devices > 64 {
            return Err(invalid(
                "cpu_devices",
                format!("{} is out of range 1..=64", self.cpu_devices),
            ));
        }
        if let Some(r) = self.probe.rate_hz {
            if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
                return Err(invalid(
                    "probe.rate_hz",
                    format!("{r} is out of range (0, 1000]"),
                ));
            }
        }
        if let Some(us) = self.probe.spin_us {
            if us > 1_000_000 {
                return Err(invalid("probe.spin_us", format!("{us} is above 1000000")));
            }
        }
        for b in ["cuda", "cpu"] {
            self.probe_spec(b)
                .validate()
                .map_err(|e| invalid("probe", e.to_string()))?;
        }
        check_dir_writable(&self.data_dir).map_err(|m| invalid("data_dir", m))?;
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!("{:?} is not an address:port", self.metrics.listen),
            ));
        }
        if let Some(ep) = &self.otlp.endpoint {
            crate::sinks::otlp::endpoint_url(ep, self.otlp.insecure)
                .map_err(|m| invalid("otlp.endpoint", m))?;
        }
        self.otlp.validate().map_err(|e| e.in_table("otlp"))?;
        self.health.validate().map_err(|e| e.in_table("health"))?;
        self.parquet.validate().map_err(|e| e.in_table("parquet"))?;
        self.occupancy
            .validate()
            .map_err(|e| e.in_table("occupancy"))?;
        Ok(())
    }
}

/// The directory must exist and be writable, or be creatable under the
/// nearest existing ancestor. Nothing is created.
fn check_dir_writable(dir: &Path) -> Result<(), String> {
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                return if writable(p) {
                    Ok(())
                } else {
                    Err(format!("{} is not writable", p.display()))
                };
            }
            Ok(_) => return Err(format!("{} is not a directory", p.display())),
            Err(_) => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return Ok(()),
            },
        }
    }
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    #[allow(unsafe_code)]
    // SAFETY: c is a valid NUL-terminated path; access only reads it.
    let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
    rc == 0
}

/// The host name, from the kernel.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_roundtrip() {
        let c = Config::default();
        let s = toml::to_string(&c).expect("serialise");
        assert_eq!(Config::from_toml(&s).expect("parse"), c);
        // The default data_dir is relative to wherever the test runs, so it
        // is the one value taken from a directory the test controls.
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config {
            data_dir: dir.path().join("slicetrace-data"),
            ..c
        };
        c.validate().expect("the defaults validate");
    }

    #[test]
    fn unknown_key_names_the_field() {
        let e = Config::from_toml("node_name = \"n\"\nbogus = 1\n").expect_err("unknown key");
        let m = e.to_string();
        assert!(m.starts_with("bogus (line 2)"), "{m}");
        let e = Config::from_toml("[parquet]\nrotate_bytez = 1\n").expect_err("unknown nested key");
        assert!(e.to_string().starts_with("parquet.rotate_bytez"), "{e}");
    }

    #[test]
    fn negative_duration_names_the_field() {
        let e = Config::from_toml("[health]\nwindow_ms = -5\n").expect_err("negative");
        assert!(
            e.to_string().starts_with("health.window_ms (line 2)"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn bad_endpoint_and_unwritable_dir_are_invalid() {
        let mut c = Config::from_toml("[otlp]\nendpoint = \"not a url\"\n").expect("parses");
        c.data_dir = std::env::temp_dir();
        assert!(c
            .validate()
            .expect_err("bad url")
            .to_string()
            .starts_with("otlp.endpoint"));
        let c = Config {
            data_dir: PathBuf::from("/etc/hostname/sub"),
            ..Config::default()
        };
        assert!(c
            .validate()
            .expect_err("file as dir")
            .to_string()
            .starts_with("data_dir"));
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let mut c =
            Config::from_toml("backend = \"cuda\"\n[probe]\ninterval_ms = 500\n").expect("parse");
        let env = |k: &str| match k {
            "SLICETRACE_BACKEND" => Some("cpu".to_string()),
            "SLICETRACE_INTERVAL" => Some("2s".to_string()),
            _ => None,
        };
        c.apply_env(&env).expect("env");
        assert_eq!((c.backend, c.probe.interval_ms), (BackendKind::Cpu, 2000));
        c.apply_overrides(&Overrides {
            interval: Some(Duration::from_millis(250)),
            ..Default::default()
        });
        assert_eq!((c.backend, c.probe.interval_ms), (BackendKind::Cpu, 250));
    }

    #[test]
    fn probe_overrides_apply() {
        let c = Config::from_toml(
            "[probe]\nfft_n = 1024\nfft_2d = true\ngemm_n = 512\ngemm_precision = \"bf16\"\n",
        )
        .expect("parse");
        let s = c.probe_spec("cuda");
        assert_eq!(s.fft.dims, FftDims::D2 { nx: 1024, ny: 1024 });
        assert_eq!((s.gemm.n, s.gemm.precision), (512, Precision::Bf16));
    }

    #[test]
    fn top_level_probe_keys_still_apply_with_a_deprecation() {
        let src = "interval_ms = 300 # old place\njitter_pct = 5\nself_test = false\n[probe]\nrate_hz = 2.0\n";
        let (c, d) = Config::from_toml_reporting(src).expect("parse");
        assert_eq!(
            (c.probe.interval_ms, c.probe.jitter_pct, c.probe.self_test),
            (300, 5, false)
        );
        assert_eq!(c.probe.rate_hz, Some(2.0));
        let news: Vec<_> = d.iter().map(|d| (d.old, d.new)).collect();
        assert_eq!(
            news,
            [
                ("interval_ms", "probe.interval_ms"),
                ("jitter_pct", "probe.jitter_pct"),
                ("self_test", "probe.self_test"),
            ]
        );
        // The new place reads without a deprecation, and to the same config.
        let (n, d) = Config::from_toml_reporting(
            "[probe]\ninterval_ms = 300\njitter_pct = 5\nself_test = false\nrate_hz = 2.0\n",
        )
        .expect("parse");
        assert!(d.is_empty());
        assert_eq!(n, c);
    }

    #[test]
    fn a_probe_key_in_both_places_is_an_error() {
        let e = Config::from_toml("interval_ms = 300\n[probe]\ninterval_ms = 400\n")
            .expect_err("conflict");
        let m = e.to_string();
        assert!(
            m.starts_with("interval_ms: ") && m.contains("probe.interval_ms"),
            "{m}"
        );
        assert!(!m.contains('\n'), "{m}");
    }

    #[test]
    fn errors_after_a_deprecated_key_keep_their_line() {
        let e = Config::from_toml("interval_ms = 300\n[parquet]\nrotate_bytez = 1\n")
            .expect_err("unknown key");
        assert!(
            e.to_string().starts_with("parquet.rotate_bytez (line 3)"),
            "{e}"
        );
        let e = Config::from_toml("node_name = \"n\"\ninterval_ms = -1\n").expect_err("negative");
        assert!(e.to_string().starts_with("interval_ms (line 2)"), "{e}");
    }

    #[test]
    fn component_errors_are_prefixed_with_their_table() {
        let check = |f: fn(&mut Config), want: &str| {
            let mut c = Config {
                data_dir: std::env::temp_dir(),
                ..Config::default()
            };
            f(&mut c);
            assert_eq!(c.validate().expect_err(want).to_string(), want);
        };
        check(
            |c| c.otlp.timeout_ms = 0,
            "otlp.timeout_ms: must be greater than 0",
        );
        check(
            |c| c.parquet.row_group_rows = 0,
            "parquet.row_group_rows: must be greater than 0",
        );
        check(
            |c| c.health.window_ms = 999,
            "health.window_ms: 999 is below 1000",
        );
        check(
            |c| c.occupancy.stale_after_ms = 0,
            "occupancy.stale_after_ms: must be greater than zero",
        );
    }

    #[test]
    fn enabled_false_disables_every_component_and_old_spellings_still_do() {
        let c = Config::from_toml(
            "[parquet]\nenabled = false\n[otlp]\nenabled = false\nendpoint = \"http://c:4317\"\n\
             [metrics]\nenabled = false\n",
        )
        .expect("parse");
        assert!(!c.parquet.enabled && !c.otlp.is_enabled() && !c.metrics.is_enabled());
        // The defaults: parquet and metrics on; otlp on once it has an endpoint.
        let c = Config::from_toml("[otlp]\nendpoint = \"http://c:4317\"\n").expect("parse");
        assert!(c.parquet.enabled && c.otlp.is_enabled() && c.metrics.is_enabled());
        // The old spellings: no endpoint, an empty listen address.
        let c = Config::from_toml("[metrics]\nlisten = \"\"\n").expect("parse");
        assert!(!c.otlp.is_enabled() && !c.metrics.is_enabled());
    }
}
