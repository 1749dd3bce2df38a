//! OTLP sink: every probe arrival becomes one trace, sent to an OpenTelemetry
//! collector over gRPC or HTTP/protobuf.
//!
//! Trace model with Poisson arrivals (the default; one trace per arrival,
//! [`OtlpSink::set_trace_per_run`]):
//!
//! ```text
//! probe fft                        ts .. ts + wall_ms      (root; id = ProbeRecord.span_id)
//! ├─ queued                        ts .. ts + queue_ms
//! └─ executing                     ts + queue_ms .. + gpu_ms
//! ```
//!
//! With `probe.arrivals = "burst"`, one trace per probe cycle of one GPU:
//!
//! ```text
//! probe_cycle                      first ts .. last ts + wall_ms
//! ├─ probe fft                     ts .. ts + wall_ms      (one per run, id = ProbeRecord.span_id)
//! │  ├─ queued                     ts .. ts + queue_ms
//! │  └─ executing                  ts + queue_ms .. + gpu_ms
//! └─ probe gemm ...
//! ```
//!
//! The pipeline fills `ProbeRecord.trace_id` and `span_id` (with
//! [`new_trace_id`] / [`new_span_id`]) before a record reaches any sink, so
//! the Parquet row and the run span agree. The root span's id is derived from
//! the trace id ([`root_span_id`]), so run spans can name their parent before
//! the cycle is complete, and records of one cycle may arrive over several
//! `export` calls. The root span itself is emitted once its cycle is over:
//! when a later cycle of the same GPU shows up, when no run of the cycle has
//! arrived for [`ROOT_LINGER_MIN`] (or two export intervals, if longer), or on
//! flush/shutdown. Its extent is that of the runs seen until then; a run that
//! arrives after its root was emitted is still exported under the same root
//! id, and no second root is made.
//!
//! We use opentelemetry-otlp's `SpanExporter` directly, not the SDK's batch
//! processor, so that the queue is ours: `export` converts records to spans
//! and pushes them into a bounded queue without awaiting anything, dropping
//! (and counting) what does not fit. A background task sends batches every
//! `export_interval_ms`, or sooner when a batch is full, each send bounded by
//! `timeout_ms`. When the collector is down or slow, the batch is dropped and
//! counted and a WARN line is logged at most once a minute; the next batch
//! tries again, so export resumes by itself when the collector returns.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{
    RetryPolicy, SpanExporter as OtlpSpanExporter, WithExportConfig, WithHttpConfig,
    WithTonicConfig,
};
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use slicetrace_schema::{attr, HealthRecord, ProbeRecord};
use tokio::sync::{mpsc, oneshot, Notify};

use super::{LogLimiter, Sink, SinkError};
use crate::internal_events::Counters;

const SINK_NAME: &str = "otlp";
/// Value of `service.name` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "slicetrace-agent";
/// Shortest time a cycle's root span waits for more runs of its cycle.
pub const ROOT_LINGER_MIN: Duration = Duration::from_secs(2);
/// Most cycles whose root span is pending at once; beyond this the oldest
/// is emitted early (bounds memory when many GPUs report at once).
const MAX_OPEN_ROOTS: usize = 1024;
/// How many emitted roots are remembered, so a late run creates no second root.
const MAX_CLOSED_ROOTS: usize = 4096;

/// Span attribute keys for readings that `slicetrace_schema::attr` does not
/// name yet. They follow its `nvml.*` / `k8s.gpu.*` scheme.
pub mod extra_attr {
    /// SM clock after the burst, MHz.
    pub const SM_CLOCK_MHZ_AFTER: &str = "nvml.sm_clock_mhz_after";
    /// Compute processes on the GPU, `pid:name:used_mib`.
    pub const PROCESSES: &str = "nvml.processes";
    /// The occupancy came from a stale cache.
    pub const OCCUPANCY_STALE: &str = "k8s.gpu.occupancy_stale";
    /// Node name of the record.
    pub const NODE: &str = "slicetrace.node";
    /// Runs seen in the cycle (root span).
    pub const RUNS: &str = "slicetrace.runs";
    /// The run began at a random arrival moment (the `arrival` column).
    pub const ARRIVAL: &str = "slicetrace.probe.arrival";
    /// Event time inflated by preemption while shared (`event_inflated`).
    pub const EVENT_INFLATED: &str = "slicetrace.probe.event_inflated";
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (default port 4317).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl FromStr for OtlpProtocol {
    type Err = OtlpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            _ => Err(OtlpError::Config {
                field: "protocol",
                reason: format!(
                    "unsupported protocol {s:?} (expected \"grpc\" or \"http/protobuf\")"
                ),
            }),
        }
    }
}

/// Configuration of the OTLP sink (`[otlp]` in the config file).
///
/// Precedence is file < environment < flags: the config layer loads the
/// file, calls [`OtlpConfig::apply_env`], then applies flags, and hands the
/// result to [`OtlpSink::new`]. Headers are the exception: the exporter
/// itself also reads `OTEL_EXPORTER_OTLP_HEADERS` /
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, and for a key set in both places the
/// environment wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector URL, e.g. `http://otel-collector:4317`. `None` disables the
    /// sink. For `http/protobuf`, a URL without a path gets `/v1/traces`
    /// appended (as with `OTEL_EXPORTER_OTLP_ENDPOINT`); a URL with a path
    /// is used as is. Without a scheme, `https://` is assumed unless
    /// `insecure` is set.
    pub endpoint: Option<String>,
    /// Transport: `grpc` (default) or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Time limit of one export request, retries included, ms. Default 5000.
    pub timeout_ms: u64,
    /// Extra request headers (gRPC metadata), e.g. an authorization token.
    pub headers: BTreeMap<String, String>,
    /// Most spans waiting to be sent; what does not fit is dropped and
    /// counted. Default 4096.
    pub queue_capacity: usize,
    /// Most spans per export request. Default 512.
    pub max_export_batch: usize,
    /// How often queued spans are sent, ms. Default 1000.
    pub export_interval_ms: u64,
    /// PEM file with the CA certificate(s) that sign the collector's
    /// certificate (gRPC only in this build). Default: the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (gRPC only; needs `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Use plain text (`http://`) for an endpoint written without a scheme,
    /// as `OTEL_EXPORTER_OTLP_INSECURE` does. An explicit scheme always wins.
    pub insecure: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            timeout_ms: 5000,
            headers: BTreeMap::new(),
            queue_capacity: 4096,
            max_export_batch: 512,
            export_interval_ms: 1000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            insecure: false,
        }
    }
}

impl OtlpConfig {
    /// Whether an endpoint is set.
    pub fn is_enabled(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty())
    }

    /// Overrides fields from the standard OpenTelemetry environment
    /// variables of this process (see [`OtlpConfig::apply_env_from`]).
    pub fn apply_env(&mut self) -> Result<(), OtlpError> {
        self.apply_env_from(|k| std::env::var(k).ok())
    }

    /// Overrides fields from OpenTelemetry variables read through `get`
    /// (empty values count as unset): endpoint from
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// protocol from `..._TRACES_PROTOCOL`, else `..._PROTOCOL`; timeout (ms)
    /// from `..._TRACES_TIMEOUT`, else `..._TIMEOUT`; `insecure` from
    /// `..._TRACES_INSECURE`, else `..._INSECURE`; `ca_file` from
    /// `..._TRACES_CERTIFICATE`, else `..._CERTIFICATE`. An invalid value is
    /// an error naming the variable. Headers are left to the exporter (see
    /// the type's doc). `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
    /// are read when the sink builds its resource.
    pub fn apply_env_from(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), OtlpError> {
        let var = |signal: &str, generic: &str| {
            get(signal)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (signal.to_string(), v))
                .or_else(|| {
                    get(generic)
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| (generic.to_string(), v))
                })
        };
        if let Some((_, v)) = var(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ) {
            self.endpoint = Some(v.trim().to_string());
        }
        if let Some((name, v)) = var(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            self.protocol = v.parse().map_err(|_| OtlpError::Env {
                var: name,
                reason: format!(
                    "unsupported protocol {v:?} (expected \"grpc\" or \"http/protobuf\")"
                ),
            })?;
        }
        if let Some((name, v)) = var(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            self.timeout_ms = v.trim().parse().map_err(|_| OtlpError::Env {
                var: name,
                reason: format!("timeout {v:?} is not a whole number of milliseconds"),
            })?;
        }
        if let Some((_, v)) = var(
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
            "OTEL_EXPORTER_OTLP_INSECURE",
        ) {
            self.insecure = v.trim().eq_ignore_ascii_case("true");
        }
        if let Some((_, v)) = var(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ) {
            self.ca_file = Some(PathBuf::from(v.trim()));
        }
        Ok(())
    }

    /// Checks values that serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), OtlpError> {
        let bad = |field: &'static str, reason: &str| {
            Err(OtlpError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "must be greater than 0");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be greater than 0");
        }
        if self.max_export_batch == 0 {
            return bad("max_export_batch", "must be greater than 0");
        }
        if self.export_interval_ms == 0 {
            return bad("export_interval_ms", "must be greater than 0");
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return bad(
                "client_cert_file",
                "and client_key_file must be set together",
            );
        }
        if self.protocol == OtlpProtocol::HttpProtobuf {
            if self.ca_file.is_some() || self.client_cert_file.is_some() {
                return bad(
                    "ca_file",
                    "is only supported with protocol \"grpc\" in this build",
                );
            }
            if self.endpoint.as_deref().is_some_and(|e| {
                with_scheme(e.trim(), self.insecure)
                    .to_ascii_lowercase()
                    .starts_with("https://")
            }) {
                return bad(
                    "endpoint",
                    "https (the default without a scheme unless insecure) is only supported \
                     with protocol \"grpc\" in this build",
                );
            }
        }
        if let Some(e) = self.endpoint.as_deref() {
            let url = with_scheme(e.trim(), self.insecure);
            if url.parse::<http::Uri>().is_err() {
                return bad("endpoint", &format!("{e:?} is not a valid URL"));
            }
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_str(k).is_err() || http::HeaderValue::from_str(v).is_err() {
                return bad("headers", &format!("{k:?} is not a valid header"));
            }
        }
        Ok(())
    }
}

/// Errors of the OTLP sink.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A configuration value is invalid.
    #[error("invalid otlp config: {field} {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// An OpenTelemetry environment variable is invalid.
    #[error("invalid environment variable {var}: {reason}")]
    Env {
        /// Variable name.
        var: String,
        /// Why.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("failed to read otlp tls file {path}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The exporter refused the configuration.
    #[error("failed to build the otlp exporter")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The export task is gone (it panicked or was shut down).
    #[error("otlp export task is not running")]
    TaskGone,
    /// A flush or shutdown did not finish within its deadline; what was
    /// still queued is dropped and counted.
    #[error("otlp flush did not finish within {0:?}")]
    Deadline(Duration),
}

impl From<OtlpError> for SinkError {
    fn from(e: OtlpError) -> Self {
        SinkError::Other {
            sink: SINK_NAME,
            context: e.to_string(),
            source: Box::new(e),
        }
    }
}

/// A new random, non-zero trace id as 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    format!("{:032x}", random_nonzero_u128())
}

/// A new random, non-zero span id as 16 lowercase hex digits.
pub fn new_span_id() -> String {
    format!("{:016x}", random_nonzero_u64())
}

fn random_nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn random_nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// The root (`probe_cycle`) span id of a trace: FNV-1a of the trace id,
/// never zero. Deterministic, so every run of a cycle names the same parent
/// whichever `export` call brings it.
pub fn root_span_id(trace: TraceId) -> SpanId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in trace.to_bytes().iter().chain(b"probe_cycle") {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SpanId::from_bytes(if h == 0 { 1 } else { h }.to_be_bytes())
}

fn parse_trace_id(s: Option<&str>) -> Option<TraceId> {
    let s = s?;
    (s.len() == 32)
        .then(|| TraceId::from_hex(s).ok())
        .flatten()
        .filter(|t| *t != TraceId::INVALID)
}

fn parse_span_id(s: Option<&str>) -> Option<SpanId> {
    let s = s?;
    (s.len() == 16)
        .then(|| SpanId::from_hex(s).ok())
        .flatten()
        .filter(|t| *t != SpanId::INVALID)
}

/// `ts_ns + plus_ms` as a `SystemTime`; negative or non-finite parts count as 0.
fn time_at(ts_ns: i64, plus_ms: f64) -> SystemTime {
    let base = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ts_ns).unwrap_or(0));
    let plus = if plus_ms.is_finite() && plus_ms > 0.0 {
        Duration::try_from_secs_f64(plus_ms / 1000.0).unwrap_or(Duration::ZERO)
    } else {
        Duration::ZERO
    };
    base + plus
}

fn end_ns(r: &ProbeRecord) -> i64 {
    let wall_ns = if r.wall_ms.is_finite() && r.wall_ms > 0.0 {
        (r.wall_ms * 1e6) as i64
    } else {
        0
    };
    r.ts_ns.saturating_add(wall_ns)
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(
        v.iter().cloned().map(StringValue::from).collect(),
    ))
}

/// Every reading of `r` that is known, as span attributes (absent fields
/// are omitted, never written as 0).
pub fn run_attributes(r: &ProbeRecord) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(attr::GPU_UUID, r.gpu_uuid.clone()),
        KeyValue::new(attr::GPU_INDEX, i64::from(r.gpu_index)),
        KeyValue::new(attr::BACKEND, r.backend.clone()),
        KeyValue::new(attr::KERNEL, r.kernel.clone()),
        KeyValue::new(attr::SHAPE, r.shape.clone()),
        KeyValue::new(attr::PRECISION, r.precision.clone()),
        KeyValue::new(attr::FLOPS, r.flops),
        // Cycle counts from 0 at agent start; it cannot reach 2^63.
        KeyValue::new(attr::CYCLE, r.cycle as i64),
        KeyValue::new(attr::BURST_SEQ, i64::from(r.burst_seq)),
        KeyValue::new(attr::WALL_MS, r.wall_ms),
        KeyValue::new(extra_attr::NODE, r.node.clone()),
    ];
    let mut f = |k: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v));
        }
    };
    f(attr::GPU_MS, r.gpu_ms);
    f(attr::QUEUE_MS, r.queue_ms);
    f(attr::TFLOPS, r.tflops);
    f(attr::REL_ERROR, r.rel_error);
    f(attr::POWER_W, r.power_w);
    let mut u = |k: &'static str, v: Option<u32>| {
        if let Some(v) = v {
            a.push(KeyValue::new(k, i64::from(v)));
        }
    };
    u(attr::SM_CLOCK_MHZ, r.sm_clock_mhz);
    u(attr::MEM_CLOCK_MHZ, r.mem_clock_mhz);
    u(attr::GPU_UTIL_PCT, r.gpu_util_pct);
    u(attr::MEM_UTIL_PCT, r.mem_util_pct);
    u(attr::TEMP_C, r.temp_c);
    u(attr::GPU_PROCESSES, r.gpu_processes);
    u(extra_attr::SM_CLOCK_MHZ_AFTER, r.sm_clock_mhz_after);
    u(attr::POD_COUNT, r.pod_count);
    u(attr::REPLICAS, r.replicas);
    if let Some(v) = &r.gpu_name {
        a.push(KeyValue::new(attr::GPU_NAME, v.clone()));
    }
    if let Some(v) = r.correct {
        a.push(KeyValue::new(attr::CORRECT, v));
    }
    if let Some(v) = r.throttle_reasons {
        // A bit mask: keep the bit pattern in OTLP's signed integer.
        a.push(KeyValue::new(attr::THROTTLE_REASONS, v as i64));
    }
    if let Some(v) = r.fb_used_mib {
        a.push(KeyValue::new(
            attr::FB_USED_MIB,
            i64::try_from(v).unwrap_or(i64::MAX),
        ));
    }
    if let Some(v) = &r.processes {
        a.push(KeyValue::new(extra_attr::PROCESSES, strings(v)));
    }
    if let Some(v) = &r.pods {
        a.push(KeyValue::new(attr::PODS, strings(v)));
    }
    if let Some(v) = &r.active_pods {
        a.push(KeyValue::new(attr::ACTIVE_PODS, strings(v)));
    }
    if let Some(v) = &r.sharing_strategy {
        a.push(KeyValue::new(attr::SHARING_STRATEGY, v.clone()));
    }
    if let Some(v) = r.occupancy_stale {
        a.push(KeyValue::new(extra_attr::OCCUPANCY_STALE, v));
    }
    if let Some(v) = &r.verdict {
        a.push(KeyValue::new(attr::VERDICT, v.clone()));
    }
    if let Some(v) = &r.contention {
        a.push(KeyValue::new(attr::CONTENTION, v.clone()));
    }
    if let Some(v) = r.arrival {
        a.push(KeyValue::new(extra_attr::ARRIVAL, v));
    }
    if let Some(v) = r.event_inflated {
        a.push(KeyValue::new(extra_attr::EVENT_INFLATED, v));
    }
    a
}

/// Builds the resource: `service.name` (default [`DEFAULT_SERVICE_NAME`]),
/// `host.name`, `k8s.node.name` when known, the SDK's `telemetry.sdk.*`, then
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` (later wins).
pub fn build_resource(host_name: &str, k8s_node_name: Option<&str>) -> Resource {
    let mut kvs = vec![
        KeyValue::new(attr::SERVICE_NAME, DEFAULT_SERVICE_NAME),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(attr::HOST_NAME, host_name.to_string()),
    ];
    if let Some(n) = k8s_node_name.filter(|n| !n.is_empty()) {
        kvs.push(KeyValue::new(attr::K8S_NODE_NAME, n.to_string()));
    }
    let mut b = Resource::builder_empty()
        .with_attributes(kvs)
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_detector(Box::new(EnvResourceDetector::new()));
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME") {
        if !name.trim().is_empty() {
            b = b.with_service_name(name.trim().to_string());
        }
    }
    b.build()
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`,
/// else `unknown`).
pub fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

fn with_scheme(endpoint: &str, insecure: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

/// For HTTP: a URL with no path gets `/v1/traces`.
fn http_traces_url(url: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        None => format!("{url}/v1/traces"),
        Some(i) if url[after_scheme + i..] == *"/" => format!("{}v1/traces", url),
        Some(_) => url.to_string(),
    }
}

/// Header keys that the exporter will take from the environment itself.
fn env_header_keys() -> HashSet<String> {
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, _)| k.trim().to_ascii_lowercase())
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn build_exporter(cfg: &OtlpConfig, resource: &Resource) -> Result<OtlpSpanExporter, OtlpError> {
    let endpoint = cfg.endpoint.as_deref().map(str::trim).unwrap_or_default();
    let url = with_scheme(endpoint, cfg.insecure);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let from_env = env_header_keys();
    let headers: Vec<(String, String)> = cfg
        .headers
        .iter()
        .filter(|(k, _)| !from_env.contains(&k.to_ascii_lowercase()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Retries stay inside `timeout` (the exporter bounds them by it, and we
    // wrap each call in our own timeout as well).
    let retry = RetryPolicy::recommended();
    let mut exporter = match cfg.protocol {
        OtlpProtocol::Grpc => {
            let mut map = http::HeaderMap::new();
            for (k, v) in &headers {
                let name = http::HeaderName::from_str(k).map_err(|_| OtlpError::Config {
                    field: "headers",
                    reason: format!("{k:?} is not a valid header name"),
                })?;
                let value = http::HeaderValue::from_str(v).map_err(|_| OtlpError::Config {
                    field: "headers",
                    reason: format!("value of {k:?} is not a valid header value"),
                })?;
                map.insert(name, value);
            }
            let mut b = OtlpSpanExporter::builder()
                .with_tonic()
                .with_endpoint(url.clone())
                .with_timeout(timeout)
                .with_retry_policy(retry)
                .with_metadata(MetadataMap::from_headers(map));
            if url.starts_with("https://") {
                let mut tls = ClientTlsConfig::new().with_enabled_roots();
                if let Some(ca) = &cfg.ca_file {
                    let pem = std::fs::read(ca).map_err(|source| OtlpError::TlsFile {
                        path: ca.clone(),
                        source,
                    })?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                if let (Some(cert), Some(key)) = (&cfg.client_cert_file, &cfg.client_key_file) {
                    let read = |p: &PathBuf| {
                        std::fs::read(p).map_err(|source| OtlpError::TlsFile {
                            path: p.clone(),
                            source,
                        })
                    };
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                b = b.with_tls_config(tls);
            }
            b.build().map_err(OtlpError::Build)?
        }
        OtlpProtocol::HttpProtobuf => OtlpSpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(http_traces_url(&url))
            .with_timeout(timeout)
            .with_retry_policy(retry)
            .with_headers(headers.into_iter().collect::<HashMap<_, _>>())
            .build()
            .map_err(OtlpError::Build)?,
    };
    exporter.set_resource(resource);
    Ok(exporter)
}

/// A cycle whose root span has not been emitted yet.
#[derive(Debug)]
struct OpenRoot {
    trace: TraceId,
    gpu_uuid: String,
    cycle: u64,
    start_ns: i64,
    end_ns: i64,
    attrs: Vec<KeyValue>,
    runs: u64,
    failed_checks: u64,
    last_update: Instant,
}

/// What `export` and the export task share.
#[derive(Debug, Default)]
struct Queue {
    spans: VecDeque<SpanData>,
    open_roots: HashMap<TraceId, OpenRoot>,
    closed_roots: HashSet<TraceId>,
    closed_order: VecDeque<TraceId>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    counters: Arc<Counters>,
    scope: InstrumentationScope,
    capacity: usize,
    batch: usize,
    /// Spans in the export request now in flight. Whoever swaps it to 0
    /// counts them (the task when the request ends, `shutdown` when it has
    /// to abort the task), so they are counted exactly once.
    in_flight: AtomicU64,
    drop_log: Mutex<LogLimiter>,
    /// Every record is its own trace: its run span is the root (Poisson
    /// arrivals). Otherwise runs of a cycle share a `probe_cycle` root.
    trace_per_run: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A poisoned lock only means another thread panicked mid-push; the
        // queue is still a valid VecDeque, so keep going.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn span(
        &self,
        (trace, id, parent): (TraceId, SpanId, SpanId),
        name: &'static str,
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                trace,
                id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// Pushes spans, dropping (and counting) those that do not fit.
    fn push(&self, q: &mut Queue, spans: impl IntoIterator<Item = SpanData>) -> u64 {
        let mut dropped = 0u64;
        for s in spans {
            if q.spans.len() >= self.capacity {
                dropped += 1;
            } else {
                q.spans.push_back(s);
            }
        }
        dropped
    }

    fn root_span(&self, r: OpenRoot) -> SpanData {
        let mut attrs = r.attrs;
        attrs.push(KeyValue::new(extra_attr::RUNS, r.runs as i64));
        let status = if r.failed_checks > 0 {
            Status::error(format!(
                "{} run(s) failed the correctness check",
                r.failed_checks
            ))
        } else {
            Status::Unset
        };
        self.span(
            (r.trace, root_span_id(r.trace), SpanId::INVALID),
            "probe_cycle",
            (time_at(r.start_ns, 0.0), time_at(r.end_ns, 0.0)),
            attrs,
            status,
        )
    }

    /// Moves the roots selected by `pred` into the span queue.
    fn close_roots(&self, q: &mut Queue, pred: impl Fn(&OpenRoot) -> bool) -> u64 {
        let ids: Vec<TraceId> = q
            .open_roots
            .values()
            .filter(|r| pred(r))
            .map(|r| r.trace)
            .collect();
        let mut dropped = 0;
        for id in ids {
            if let Some(r) = q.open_roots.remove(&id) {
                let span = self.root_span(r);
                dropped += self.push(q, [span]);
                q.closed_roots.insert(id);
                q.closed_order.push_back(id);
                while q.closed_order.len() > MAX_CLOSED_ROOTS {
                    if let Some(old) = q.closed_order.pop_front() {
                        q.closed_roots.remove(&old);
                    }
                }
            }
        }
        dropped
    }

    fn count_drops(&self, dropped: u64, why: &'static str) {
        if dropped == 0 {
            return;
        }
        Counters::add(&self.counters.otlp_spans_dropped, dropped);
        let mut l = self.drop_log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = l.check() {
            tracing::warn!(
                dropped,
                why,
                suppressed_since_last = suppressed,
                total_dropped = Counters::get(&self.counters.otlp_spans_dropped),
                "otlp spans dropped"
            );
        }
    }

    /// Converts records into spans and queues them. Never awaits.
    /// One span per live-health evaluation (its own trace), carrying the
    /// verdict and every input it was judged on.
    fn enqueue_health(&self, records: Vec<HealthRecord>) {
        let mut q = self.lock();
        let spans: Vec<SpanData> = records
            .into_iter()
            .map(|h| {
                let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(h.ts_ns.max(0) as u64);
                let mut a = vec![
                    KeyValue::new(attr::GPU_UUID, h.gpu_uuid.clone()),
                    KeyValue::new(attr::GPU_INDEX, i64::from(h.gpu_index)),
                    KeyValue::new(attr::KERNEL, h.kernel.clone()),
                    KeyValue::new(attr::VERDICT, h.verdict.clone()),
                    KeyValue::new(attr::VERDICT_REASON, h.reason.clone()),
                    KeyValue::new(attr::HEALTH_WINDOW_SECS, h.window_secs as i64),
                    KeyValue::new(attr::HEALTH_SAMPLES, h.samples as i64),
                    KeyValue::new(
                        attr::HEALTH_CORRECTNESS_FAILURES,
                        h.correctness_failures as i64,
                    ),
                ];
                for (k, v) in [
                    (attr::HEALTH_WALL_P50_MS, h.wall_p50_ms),
                    (attr::HEALTH_WALL_P99_MS, h.wall_p99_ms),
                    (attr::HEALTH_GPU_P99_MS, h.gpu_p99_ms),
                    (attr::HEALTH_QUEUE_P99_MS, h.queue_p99_ms),
                    (attr::HEALTH_BASELINE_P99_MS, h.baseline_p99_ms),
                    (attr::HEALTH_INFLATION, h.inflation),
                ] {
                    if let Some(v) = v {
                        a.push(KeyValue::new(k, v));
                    }
                }
                if let Some(t) = h.throttle_reasons {
                    a.push(KeyValue::new(attr::THROTTLE_REASONS, t as i64));
                }
                for (k, v) in [
                    (attr::HEALTH_REASON_CODE, &h.health_reason),
                    (attr::HEALTH_BASELINE_SOURCE, &h.health_baseline_source),
                    (attr::CONTENTION, &h.contention),
                    (attr::CONTENTION_REASON_CODE, &h.contention_reason),
                    (attr::CONTENTION_REASON, &h.contention_detail),
                    (
                        attr::CONTENTION_BASELINE_SOURCE,
                        &h.contention_baseline_source,
                    ),
                ] {
                    if let Some(v) = v {
                        a.push(KeyValue::new(k, v.clone()));
                    }
                }
                if let Some(t) = h.tenants {
                    a.push(KeyValue::new(attr::HEALTH_TENANTS, i64::from(t)));
                }
                let status = if h.verdict == "unhealthy" {
                    Status::error(h.reason.clone())
                } else {
                    Status::Unset
                };
                let trace = TraceId::from_bytes(random_nonzero_u128().to_be_bytes());
                let id = SpanId::from_bytes(random_nonzero_u64().to_be_bytes());
                self.span(
                    (trace, id, SpanId::INVALID),
                    "health_evaluation",
                    (t, t),
                    a,
                    status,
                )
            })
            .collect();
        let dropped = self.push(&mut q, spans);
        drop(q);
        if dropped > 0 {
            crate::internal_events::Counters::add(&self.counters.otlp_spans_dropped, dropped);
        }
        self.notify.notify_one();
    }

    /// The run span (`probe fft|gemm`) of a record and its `queued` and
    /// `executing` children. `parent` is the cycle root, or invalid when the
    /// run span is the root of its own trace.
    fn run_spans(
        &self,
        r: &ProbeRecord,
        trace: TraceId,
        run_id: SpanId,
        root: SpanId,
    ) -> Vec<SpanData> {
        let stop_ns = end_ns(r);
        let name = match r.kernel.as_str() {
            "fft" => "probe fft",
            "gemm" => "probe gemm",
            _ => "probe",
        };
        let status = if r.correct == Some(false) {
            Status::error("correctness check failed")
        } else {
            Status::Unset
        };
        let mut spans = Vec::with_capacity(3);
        spans.push(self.span(
            (trace, run_id, root),
            name,
            (time_at(r.ts_ns, 0.0), time_at(stop_ns, 0.0)),
            run_attributes(r),
            status,
        ));
        if let Some(q_ms) = r.queue_ms {
            spans.push(self.span(
                (
                    trace,
                    SpanId::from_bytes(random_nonzero_u64().to_be_bytes()),
                    run_id,
                ),
                "queued",
                (time_at(r.ts_ns, 0.0), time_at(r.ts_ns, q_ms)),
                vec![KeyValue::new(attr::QUEUE_MS, q_ms)],
                Status::Unset,
            ));
        }
        if let Some(g_ms) = r.gpu_ms {
            let wait_ms = r.queue_ms.unwrap_or((r.wall_ms - g_ms).max(0.0)).max(0.0);
            spans.push(self.span(
                (
                    trace,
                    SpanId::from_bytes(random_nonzero_u64().to_be_bytes()),
                    run_id,
                ),
                "executing",
                (
                    time_at(r.ts_ns, wait_ms),
                    time_at(r.ts_ns, wait_ms + g_ms.max(0.0)),
                ),
                vec![KeyValue::new(attr::GPU_MS, g_ms)],
                Status::Unset,
            ));
        }
        spans
    }

    fn enqueue(&self, records: Vec<ProbeRecord>) {
        let mut q = self.lock();
        let mut dropped = 0;
        let per_run = self.trace_per_run.load(Ordering::Relaxed);
        for r in records {
            if per_run {
                let trace = parse_trace_id(r.trace_id.as_deref())
                    .unwrap_or_else(|| TraceId::from_bytes(random_nonzero_u128().to_be_bytes()));
                let run_id = parse_span_id(r.span_id.as_deref())
                    .unwrap_or_else(|| SpanId::from_bytes(random_nonzero_u64().to_be_bytes()));
                let spans = self.run_spans(&r, trace, run_id, SpanId::INVALID);
                dropped += self.push(&mut q, spans);
                continue;
            }
            // A later cycle of this GPU means its earlier cycles are over.
            let (gpu, cycle) = (r.gpu_uuid.as_str(), r.cycle);
            if q.open_roots
                .values()
                .any(|o| o.gpu_uuid == gpu && o.cycle < cycle)
            {
                dropped += self.close_roots(&mut q, |o| o.gpu_uuid == gpu && o.cycle < cycle);
            }
            // The pipeline sets the trace id; without it, the runs of one
            // cycle still share one (made up here).
            let trace = parse_trace_id(r.trace_id.as_deref())
                .or_else(|| {
                    q.open_roots
                        .values()
                        .find(|o| o.gpu_uuid == gpu && o.cycle == cycle)
                        .map(|o| o.trace)
                })
                .unwrap_or_else(|| TraceId::from_bytes(random_nonzero_u128().to_be_bytes()));
            let run_id = parse_span_id(r.span_id.as_deref())
                .unwrap_or_else(|| SpanId::from_bytes(random_nonzero_u64().to_be_bytes()));
            let root = root_span_id(trace);
            let (start_ns, stop_ns) = (r.ts_ns, end_ns(&r));
            if !q.closed_roots.contains(&trace) {
                if q.open_roots.len() >= MAX_OPEN_ROOTS && !q.open_roots.contains_key(&trace) {
                    if let Some(oldest) = q
                        .open_roots
                        .values()
                        .min_by_key(|o| o.last_update)
                        .map(|o| o.trace)
                    {
                        dropped += self.close_roots(&mut q, |o| o.trace == oldest);
                    }
                }
                let o = q.open_roots.entry(trace).or_insert_with(|| OpenRoot {
                    trace,
                    gpu_uuid: r.gpu_uuid.clone(),
                    cycle,
                    start_ns,
                    end_ns: stop_ns,
                    attrs: root_attributes(&r),
                    runs: 0,
                    failed_checks: 0,
                    last_update: Instant::now(),
                });
                o.start_ns = o.start_ns.min(start_ns);
                o.end_ns = o.end_ns.max(stop_ns);
                o.runs += 1;
                o.failed_checks += u64::from(r.correct == Some(false));
                o.last_update = Instant::now();
            }
            let spans = self.run_spans(&r, trace, run_id, root);
            dropped += self.push(&mut q, spans);
        }
        let full = q.spans.len() >= self.batch;
        drop(q);
        self.count_drops(dropped, "queue full");
        if full {
            self.notify.notify_one();
        }
    }
}

fn root_attributes(r: &ProbeRecord) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(attr::GPU_UUID, r.gpu_uuid.clone()),
        KeyValue::new(attr::GPU_INDEX, i64::from(r.gpu_index)),
        KeyValue::new(attr::BACKEND, r.backend.clone()),
        KeyValue::new(attr::CYCLE, r.cycle as i64),
        KeyValue::new(extra_attr::NODE, r.node.clone()),
    ];
    if let Some(n) = &r.gpu_name {
        a.push(KeyValue::new(attr::GPU_NAME, n.clone()));
    }
    a
}

/// Requests to the export task.
#[derive(Debug)]
enum Ctl {
    /// Emit every pending root, send everything queued before `deadline`.
    Flush {
        deadline: Instant,
        ack: oneshot::Sender<()>,
    },
    /// Flush, shut the exporter down and stop.
    Shutdown {
        deadline: Instant,
        ack: oneshot::Sender<()>,
    },
}

struct ExportTask {
    exporter: OtlpSpanExporter,
    shared: Arc<Shared>,
    timeout: Duration,
    linger: Duration,
    error_log: LogLimiter,
}

impl ExportTask {
    /// Sends queued spans in batches: all that are queued now (`all`), or
    /// only full batches. Stops at `deadline`, dropping what is left.
    async fn send(&mut self, all: bool, deadline: Option<Instant>) {
        let mut budget = self.shared.lock().spans.len();
        while budget > 0 {
            let batch: Vec<SpanData> = {
                let mut q = self.shared.lock();
                if !all && q.spans.len() < self.shared.batch {
                    return;
                }
                let n = q.spans.len().min(self.shared.batch).min(budget);
                q.spans.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            budget -= batch.len();
            self.shared
                .in_flight
                .store(batch.len() as u64, Ordering::SeqCst);
            let mut limit = self.timeout;
            if let Some(d) = deadline {
                limit = limit.min(d.saturating_duration_since(Instant::now()));
            }
            let started = Instant::now();
            let res = tokio::time::timeout(limit, self.exporter.export(batch)).await;
            let n = self.shared.in_flight.swap(0, Ordering::SeqCst);
            let err = match res {
                Ok(Ok(())) => {
                    Counters::add(&self.shared.counters.otlp_spans_exported, n);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", limit.as_millis()),
            };
            Counters::inc(&self.shared.counters.otlp_export_errors);
            Counters::add(&self.shared.counters.otlp_spans_dropped, n);
            if let Some(suppressed) = self.error_log.check() {
                tracing::warn!(
                    spans = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    suppressed_since_last = suppressed,
                    total_errors = Counters::get(&self.shared.counters.otlp_export_errors),
                    total_dropped = Counters::get(&self.shared.counters.otlp_spans_dropped),
                    error = %err,
                    "otlp export failed; spans dropped"
                );
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let left = {
                    let mut q = self.shared.lock();
                    let k = q.spans.len().min(budget);
                    q.spans.drain(..k).count() as u64
                };
                self.shared.count_drops(left, "flush deadline passed");
                return;
            }
        }
    }

    fn close_lingering_roots(&self) {
        let linger = self.linger;
        let dropped = {
            let mut q = self.shared.lock();
            self.shared
                .close_roots(&mut q, |o| o.last_update.elapsed() >= linger)
        };
        self.shared.count_drops(dropped, "queue full");
    }

    fn close_all_roots(&self) {
        let dropped = {
            let mut q = self.shared.lock();
            self.shared.close_roots(&mut q, |_| true)
        };
        self.shared.count_drops(dropped, "queue full");
    }

    async fn run(mut self, mut ctl: mpsc::Receiver<Ctl>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.close_lingering_roots();
                    self.send(true, None).await;
                }
                _ = shared.notify.notified() => {
                    self.send(false, None).await;
                }
                msg = ctl.recv() => match msg {
                    Some(Ctl::Flush { deadline, ack }) => {
                        self.close_all_roots();
                        self.send(true, Some(deadline)).await;
                        let _ = ack.send(());
                    }
                    Some(Ctl::Shutdown { deadline, ack }) => {
                        self.close_all_roots();
                        self.send(true, Some(deadline)).await;
                        let _ = self.exporter.shutdown_with_timeout(
                            deadline.saturating_duration_since(Instant::now()),
                        );
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        // The sink was dropped without shutdown: one last
                        // bounded attempt.
                        self.close_all_roots();
                        self.send(true, Some(Instant::now() + self.timeout)).await;
                        return;
                    }
                },
            }
        }
    }
}

/// The OTLP sink: converts records to spans, queues them (bounded) and
/// sends them from its own task.
#[derive(Debug)]
pub struct OtlpSink {
    shared: Arc<Shared>,
    ctl: mpsc::Sender<Ctl>,
    timeout: Duration,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpSink {
    /// Makes every record its own trace, with its run span as the root (for
    /// Poisson arrivals: one run per arrival). Off by default (one trace per
    /// probe cycle, under a `probe_cycle` root).
    pub fn set_trace_per_run(&self, on: bool) {
        self.shared.trace_per_run.store(on, Ordering::Relaxed);
    }

    /// Builds the exporter and starts the export task. Must be called from
    /// within a Tokio runtime. `host_name` becomes `host.name`,
    /// `k8s_node_name` (when running in a cluster) `k8s.node.name`.
    ///
    /// Fails on an invalid or disabled config (no endpoint), an unreadable
    /// TLS file, or an exporter that refuses the settings. Does not connect:
    /// the collector may come up later.
    pub fn new(
        config: OtlpConfig,
        host_name: &str,
        k8s_node_name: Option<&str>,
        counters: Arc<Counters>,
    ) -> Result<Self, OtlpError> {
        if !config.is_enabled() {
            return Err(OtlpError::Config {
                field: "endpoint",
                reason: "is not set (the otlp sink is disabled)".into(),
            });
        }
        config.validate()?;
        let resource = build_resource(host_name, k8s_node_name);
        let exporter = build_exporter(&config, &resource)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let interval = Duration::from_millis(config.export_interval_ms);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            counters,
            scope: InstrumentationScope::builder(DEFAULT_SERVICE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            capacity: config.queue_capacity,
            batch: config.max_export_batch,
            in_flight: AtomicU64::new(0),
            drop_log: Mutex::new(LogLimiter::per_minute()),
            trace_per_run: std::sync::atomic::AtomicBool::new(false),
        });
        let (ctl, ctl_rx) = mpsc::channel(4);
        let task = ExportTask {
            exporter,
            shared: shared.clone(),
            timeout,
            linger: ROOT_LINGER_MIN.max(interval * 2),
            error_log: LogLimiter::per_minute(),
        };
        let task = tokio::spawn(task.run(ctl_rx, interval));
        tracing::info!(
            endpoint = config.endpoint.as_deref().unwrap_or_default(),
            protocol = ?config.protocol,
            timeout_ms = config.timeout_ms,
            "otlp sink started"
        );
        Ok(Self {
            shared,
            ctl,
            timeout,
            task: Some(task),
        })
    }

    /// Spans waiting to be sent (for tests and metrics).
    pub fn queued_spans(&self) -> usize {
        self.shared.lock().spans.len()
    }

    async fn flush_within(&mut self, limit: Duration, shutdown: bool) -> Result<(), OtlpError> {
        // The task stops sending a little before `limit`, so that it can
        // count what it drops and answer before we stop waiting.
        let margin = (limit / 10).min(Duration::from_millis(100));
        let deadline = Instant::now() + limit.saturating_sub(margin);
        let (ack, rx) = oneshot::channel();
        let msg = if shutdown {
            Ctl::Shutdown { deadline, ack }
        } else {
            Ctl::Flush { deadline, ack }
        };
        match tokio::time::timeout(limit, async {
            self.ctl.send(msg).await.map_err(|_| OtlpError::TaskGone)?;
            rx.await.map_err(|_| OtlpError::TaskGone)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(OtlpError::Deadline(limit)),
        }
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        SINK_NAME
    }

    /// Converts and queues; never waits for the network.
    fn export(&mut self, records: Vec<ProbeRecord>) -> BoxFuture<'_, Result<(), SinkError>> {
        self.shared.enqueue(records);
        Box::pin(async { Ok(()) })
    }

    /// Queues one `health_evaluation` span per verdict; never waits.
    fn export_health(
        &mut self,
        records: Vec<HealthRecord>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        self.shared.enqueue_health(records);
        Box::pin(async { Ok(()) })
    }

    /// Emits every pending root span and sends everything queued, within
    /// the export timeout; what is not sent by then is dropped and counted.
    fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let limit = self.timeout;
            Ok(self.flush_within(limit, false).await?)
        })
    }

    /// Flushes within `deadline`, then stops the export task.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let res = self.flush_within(deadline, true).await;
            if let Some(t) = self.task.take() {
                if res.is_err() {
                    t.abort();
                    let left = self.shared.lock().spans.drain(..).count() as u64
                        + self.shared.in_flight.swap(0, Ordering::SeqCst);
                    self.shared.count_drops(left, "shutdown deadline passed");
                }
            }
            Ok(res?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cycle: u64, seq: u32, kernel: &str, trace: &str) -> ProbeRecord {
        ProbeRecord {
            ts_ns: 1_700_000_000_000_000_000 + i64::from(seq) * 1_000_000,
            node: "n1".into(),
            gpu_uuid: "GPU-1".into(),
            kernel: kernel.into(),
            backend: "cuda".into(),
            cycle,
            burst_seq: seq,
            wall_ms: 0.5,
            gpu_ms: Some(0.2),
            queue_ms: Some(0.3),
            sm_clock_mhz: Some(1980),
            trace_id: Some(trace.into()),
            span_id: Some(new_span_id()),
            ..Default::default()
        }
    }

    fn shared(capacity: usize) -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            counters: Arc::new(Counters::default()),
            scope: InstrumentationScope::builder("t").build(),
            capacity,
            batch: 512,
            in_flight: AtomicU64::new(0),
            drop_log: Mutex::new(LogLimiter::per_minute()),
            trace_per_run: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[test]
    fn ids_are_hex_and_nonzero() {
        let t = new_trace_id();
        let s = new_span_id();
        assert_eq!(t.len(), 32);
        assert_eq!(s.len(), 16);
        assert!(parse_trace_id(Some(&t)).is_some());
        assert!(parse_span_id(Some(&s)).is_some());
        assert!(parse_trace_id(Some(&"0".repeat(32))).is_none());
        assert_ne!(root_span_id(TraceId::from_bytes([0; 16])), SpanId::INVALID);
    }

    #[test]
    fn absent_readings_are_omitted_not_zero() {
        let r = rec(0, 0, "fft", &new_trace_id());
        let a = run_attributes(&r);
        let has = |k: &str| a.iter().any(|kv| kv.key.as_str() == k);
        assert!(has(attr::SM_CLOCK_MHZ));
        assert!(!has(attr::POWER_W));
        assert!(!has(attr::PODS));
        assert!(!has(attr::THROTTLE_REASONS));
    }

    #[test]
    fn one_trace_per_cycle_with_queued_and_executing_children() {
        let s = shared(100);
        let t0 = new_trace_id();
        // The cycle arrives in two calls; the root waits for the next cycle.
        s.enqueue(vec![rec(0, 0, "fft", &t0), rec(0, 1, "fft", &t0)]);
        s.enqueue(vec![rec(0, 0, "gemm", &t0)]);
        assert_eq!(s.lock().spans.len(), 9);
        s.enqueue(vec![rec(1, 0, "fft", &new_trace_id())]);
        let q = s.lock();
        let roots: Vec<&SpanData> = q.spans.iter().filter(|d| d.name == "probe_cycle").collect();
        assert_eq!(roots.len(), 1);
        let root = roots[0];
        let trace = root.span_context.trace_id();
        assert_eq!(trace.to_string(), t0);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        let runs: Vec<&SpanData> = q
            .spans
            .iter()
            .filter(|d| d.name.starts_with("probe ") && d.span_context.trace_id() == trace)
            .collect();
        assert_eq!(runs.len(), 3);
        assert!(runs
            .iter()
            .all(|d| d.parent_span_id == root.span_context.span_id()));
        // Root covers first ts to last ts + wall.
        assert_eq!(root.start_time, time_at(1_700_000_000_000_000_000, 0.0));
        assert_eq!(root.end_time, time_at(1_700_000_000_001_000_000, 0.5));
        let run = runs[0];
        let kids: Vec<&SpanData> = q
            .spans
            .iter()
            .filter(|d| d.parent_span_id == run.span_context.span_id())
            .collect();
        assert_eq!(kids.len(), 2);
        let queued = kids.iter().find(|d| d.name == "queued").expect("queued");
        let exec = kids
            .iter()
            .find(|d| d.name == "executing")
            .expect("executing");
        assert_eq!(queued.start_time, run.start_time);
        assert_eq!(exec.start_time, queued.end_time);
        assert_eq!(exec.end_time, run.end_time);
    }

    /// Poisson arrivals: each record is its own trace, its run span is the
    /// root (trace and span ids as in the Parquet row), with `queued` and
    /// `executing` children, and no `probe_cycle` span is ever made.
    #[test]
    fn one_trace_per_arrival_with_the_run_span_as_root() {
        let s = shared(100);
        s.trace_per_run.store(true, Ordering::Relaxed);
        let recs: Vec<ProbeRecord> = (0..3)
            .map(|i| ProbeRecord {
                arrival: Some(true),
                contention: Some("contended".into()),
                ..rec(
                    i,
                    0,
                    if i % 2 == 0 { "fft" } else { "gemm" },
                    &new_trace_id(),
                )
            })
            .collect();
        s.enqueue(recs.clone());
        {
            let mut q = s.lock();
            s.close_roots(&mut q, |_| true);
        }
        let q = s.lock();
        assert!(q.spans.iter().all(|d| d.name != "probe_cycle"));
        assert_eq!(q.spans.len(), 9);
        for r in &recs {
            let run = q
                .spans
                .iter()
                .find(|d| d.span_context.span_id().to_string() == *r.span_id.as_ref().expect("id"))
                .expect("run span");
            assert_eq!(
                run.span_context.trace_id().to_string(),
                *r.trace_id.as_ref().expect("trace")
            );
            assert_eq!(
                run.parent_span_id,
                SpanId::INVALID,
                "the run span is the root"
            );
            let children: Vec<_> = q
                .spans
                .iter()
                .filter(|d| d.parent_span_id == run.span_context.span_id())
                .map(|d| d.name.to_string())
                .collect();
            assert_eq!(children, ["queued", "executing"]);
            let has = |k: &str| run.attributes.iter().any(|kv| kv.key.as_str() == k);
            assert!(has(attr::CONTENTION) && has(extra_attr::ARRIVAL));
        }
    }

    #[test]
    fn late_run_after_root_makes_no_second_root() {
        let s = shared(100);
        let t0 = new_trace_id();
        s.enqueue(vec![rec(0, 0, "fft", &t0)]);
        {
            let mut q = s.lock();
            s.close_roots(&mut q, |_| true);
        }
        s.enqueue(vec![rec(0, 1, "gemm", &t0)]);
        let mut q = s.lock();
        s.close_roots(&mut q, |_| true);
        assert_eq!(
            q.spans.iter().filter(|d| d.name == "probe_cycle").count(),
            1
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let s = shared(4);
        s.enqueue(vec![
            rec(0, 0, "fft", &new_trace_id()),
            rec(0, 1, "fft", &new_trace_id()),
        ]);
        assert_eq!(s.lock().spans.len(), 4);
        assert_eq!(Counters::get(&s.counters.otlp_spans_dropped), 2);
    }

    #[test]
    fn env_overrides_file_values() {
        let mut c = OtlpConfig {
            endpoint: Some("http://file:4317".into()),
            ..Default::default()
        };
        let env: HashMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1234"),
        ]
        .into_iter()
        .collect();
        c.apply_env_from(|k| env.get(k).map(|v| v.to_string()))
            .expect("env");
        assert_eq!(c.endpoint.as_deref(), Some("http://traces:4318"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.timeout_ms, 1234);
        let err = c
            .apply_env_from(|k| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".into()))
            .expect_err("bad protocol");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{err}"
        );
    }

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let c: OtlpConfig = toml::from_str(
            "endpoint = \"http://c:4318\"\nprotocol = \"http/protobuf\"\n[headers]\nauthorization = \"Bearer x\"\n",
        )
        .expect("parse");
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.queue_capacity, 4096);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<OtlpConfig>("endpoint_url = \"x\"").is_err());
        assert!(toml::from_str::<OtlpConfig>("protocol = \"http/json\"").is_err());
    }

    #[test]
    fn http_url_gets_traces_path_only_when_it_has_none() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/custom/v1/traces"),
            "http://c:4318/custom/v1/traces"
        );
    }
}
