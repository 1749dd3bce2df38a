//! The `[otlp]` table: where spans go and how. The config layer reads the
//! file, applies the standard `OTEL_EXPORTER_OTLP_*` environment
//! ([`OtlpConfig::apply_env`]), then the flags, and validates the result;
//! [`OtlpSink::new`](super::OtlpSink::new) validates again and hands the
//! config to the exporter builder. The one rule for an endpoint lives here
//! ([`endpoint_url`]), so the agent's config check and the exporter agree on
//! what an endpoint means.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::OtlpError;
#[cfg(doc)]
use super::OtlpSink;
use crate::field_error::FieldError;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Export spans at all. Default `true`; the sink runs only when an
    /// endpoint is set too (the rule of every component: `enabled = false`
    /// turns it off, and so does the old spelling, no endpoint).
    pub enabled: bool,
    /// Collector URL, e.g. `http://otel-collector:4317`. `None` (and no
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT`) leaves the sink off. An `http://` or `https://` URL with a host is used as written;
    /// `host:port` without a scheme means `https://host:port`, or
    /// `http://host:port` when `insecure` is set (as OpenTelemetry specifies
    /// for `OTEL_EXPORTER_OTLP_INSECURE`); any other scheme is an error. For
    /// `http/protobuf`, a URL without a path gets `/v1/traces` appended (as
    /// with `OTEL_EXPORTER_OTLP_ENDPOINT`); a URL with a path is used as is.
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
    /// Which span trees are exported (`OTEL_TRACES_SAMPLER` overrides it):
    /// `always_on`, `always_off`, `traceidratio` (a share `sampler_arg` of
    /// the trace ids), or `parentbased_always_on`, `parentbased_always_off`,
    /// `parentbased_traceidratio` (the agent's traces all start at the
    /// agent, so these act as the sampler they name). `None`: the fleet
    /// default, a trace-id ratio of 0.9 span trees per second per GPU over
    /// the trees each GPU makes (one per arrival, or per cycle with
    /// `probe.arrivals = "burst"`), which with the forced exports below
    /// averages at most one tree per second per GPU.
    pub sampler: Option<SamplerName>,
    /// The ratio of the `traceidratio` samplers, 0 to 1
    /// (`OTEL_TRACES_SAMPLER_ARG` overrides it). `None`: 1.
    pub sampler_arg: Option<f64>,
    /// Most forced exports per GPU per minute: arrivals whose wait
    /// (`queue_ms`) is above the GPU's p99 in the health window, and health
    /// evaluations whose verdict or contention state changed, are exported
    /// whatever the ratio, up to this many (a token bucket of one minute).
    /// Default 6. 0: nothing is forced. Never with `always_off`.
    pub forced_spans_per_gpu_per_min: u32,
}

/// The standard `OTEL_TRACES_SAMPLER` values this agent supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    /// Every span tree.
    AlwaysOn,
    /// None: not even the forced ones.
    AlwaysOff,
    /// A share `sampler_arg` of the trace ids.
    Traceidratio,
    /// As `always_on` (the agent's traces have no parent).
    ParentbasedAlwaysOn,
    /// As `always_off` (the agent's traces have no parent).
    ParentbasedAlwaysOff,
    /// As `traceidratio` (the agent's traces have no parent).
    ParentbasedTraceidratio,
}

impl std::str::FromStr for SamplerName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::Traceidratio,
            "parentbased_always_on" => Self::ParentbasedAlwaysOn,
            "parentbased_always_off" => Self::ParentbasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentbasedTraceidratio,
            other => {
                return Err(format!(
                    "unsupported sampler {other:?} (expected always_on, always_off, traceidratio \
                     or parentbased_ of one of them)"
                ))
            }
        })
    }
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
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
            sampler: None,
            sampler_arg: None,
            forced_spans_per_gpu_per_min: 6,
        }
    }
}

impl OtlpConfig {
    /// Whether the sink runs: `enabled` and an endpoint is set.
    pub fn is_enabled(&self) -> bool {
        self.enabled
            && self
                .endpoint
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
        if let Some(v) = get("OTEL_TRACES_SAMPLER").filter(|v| !v.trim().is_empty()) {
            self.sampler = Some(v.parse().map_err(|reason| OtlpError::Env {
                var: "OTEL_TRACES_SAMPLER".into(),
                reason,
            })?);
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty()) {
            let ratio = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r));
            self.sampler_arg = Some(ratio.ok_or_else(|| OtlpError::Env {
                var: "OTEL_TRACES_SAMPLER_ARG".into(),
                reason: format!("{v:?} is not a ratio from 0 to 1"),
            })?);
        }
        Ok(())
    }

    /// Checks values that serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(ep) = &self.endpoint {
            endpoint_url(ep, self.insecure).map_err(|m| FieldError::new("endpoint", m))?;
        }
        let bad = |field, reason: &str| Err(FieldError::new(field, reason));
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
        if let Some(r) = self.sampler_arg {
            if !(0.0..=1.0).contains(&r) {
                return bad("sampler_arg", &format!("{r} is not a ratio from 0 to 1"));
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return bad(
                "client_cert_file",
                "and client_key_file must be set together",
            );
        }
        if self.protocol == OtlpProtocol::HttpProtobuf
            && (self.ca_file.is_some() || self.client_cert_file.is_some())
        {
            return bad(
                "ca_file",
                "is only supported with protocol \"grpc\" in this build",
            );
        }
        if let Some(e) = self.endpoint.as_deref() {
            let url = endpoint_url(e, self.insecure).map_err(|m| FieldError::new("endpoint", m))?;
            if self.protocol == OtlpProtocol::HttpProtobuf && url.starts_with("https://") {
                return bad(
                    "endpoint",
                    "https (the default without a scheme unless insecure) is only supported \
                     with protocol \"grpc\" in this build",
                );
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

impl From<FieldError> for OtlpError {
    fn from(e: FieldError) -> Self {
        OtlpError::Config {
            field: e.field,
            reason: e.message,
        }
    }
}

/// The URL an endpoint stands for: the one rule for `otlp.endpoint`, used by
/// the agent's config check and by the exporter builder alike.
///
/// - `http://...` or `https://...` (scheme in any case): used as written,
///   `insecure` has no effect;
/// - no scheme (`collector:4317`): `https://` is prepended, or `http://` when
///   `insecure` is set, as OpenTelemetry specifies for
///   `OTEL_EXPORTER_OTLP_INSECURE`;
/// - any other scheme, no host, or text that is not a URL: an error, whose
///   one-line reason quotes the endpoint.
///
/// Surrounding whitespace is ignored and the scheme comes back in lowercase.
pub fn endpoint_url(endpoint: &str, insecure: bool) -> Result<String, String> {
    let e = endpoint.trim();
    if e.is_empty() {
        return Err("is empty (leave it unset to disable the otlp sink)".into());
    }
    let url = match e.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return Err(format!(
                    "{e:?} must start with http:// or https://, or be host:port without a scheme"
                ));
            }
            format!("{scheme}://{rest}")
        }
        None if insecure => format!("http://{e}"),
        None => format!("https://{e}"),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|err| format!("{e:?} is not a valid URL: {err}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{e:?} has no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

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
    fn endpoint_rule_accepts_http_https_and_bare_host_port() {
        let ok = |e: &str, insecure: bool| endpoint_url(e, insecure).expect(e);
        assert_eq!(ok("http://c:4317", false), "http://c:4317");
        assert_eq!(ok("https://c:4317", false), "https://c:4317");
        assert_eq!(
            ok("  HTTP://c:4318/v1/traces ", false),
            "http://c:4318/v1/traces"
        );
        assert_eq!(ok("c:4317", false), "https://c:4317");
        assert_eq!(ok("c:4317", true), "http://c:4317");
        assert_eq!(ok("10.0.0.1:4317", true), "http://10.0.0.1:4317");
        // An explicit scheme wins over `insecure`.
        assert_eq!(ok("https://c:4317", true), "https://c:4317");
    }

    #[test]
    fn endpoint_rule_rejects_other_schemes_no_host_and_non_urls() {
        for (e, why) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("ftp://c:4317", "must start with http:// or https://"),
            (
                "unix:///run/otel.sock",
                "must start with http:// or https://",
            ),
            ("grpc://c:4317", "must start with http:// or https://"),
            ("not a url", "is not a valid URL"),
            ("http://", "http://"),
            ("http:///v1/traces", "http:///v1/traces"),
        ] {
            for insecure in [false, true] {
                let err = endpoint_url(e, insecure).expect_err(e);
                assert!(err.contains(why), "{e:?}: {err}");
                assert!(!err.contains('\n'), "{e:?}: {err}");
            }
        }
    }

    /// `insecure` matters exactly when the endpoint has no scheme; with
    /// `http/protobuf` (plain text only in this build) it decides whether a
    /// bare `host:port` is usable at all.
    #[test]
    fn insecure_decides_the_scheme_of_a_bare_endpoint_in_validate() {
        let cfg = |e: &str, protocol, insecure| OtlpConfig {
            endpoint: Some(e.into()),
            protocol,
            insecure,
            ..Default::default()
        };
        let http = OtlpProtocol::HttpProtobuf;
        assert!(cfg("c:4318", http, true).validate().is_ok());
        let err = cfg("c:4318", http, false).validate().expect_err("https");
        assert!(err.to_string().contains("endpoint: https"), "{err}");
        assert!(cfg("http://c:4318", http, false).validate().is_ok());
        assert!(cfg("c:4317", OtlpProtocol::Grpc, false).validate().is_ok());
        let err = cfg("ftp://c:4317", OtlpProtocol::Grpc, true)
            .validate()
            .expect_err("ftp");
        assert!(err.to_string().starts_with("endpoint: "), "{err}");
    }

    #[test]
    fn insecure_comes_from_the_environment() {
        let mut c = OtlpConfig::default();
        c.apply_env_from(|k| (k == "OTEL_EXPORTER_OTLP_INSECURE").then(|| "TRUE".into()))
            .expect("env");
        assert!(c.insecure);
        c.apply_env_from(|k| (k == "OTEL_EXPORTER_OTLP_TRACES_INSECURE").then(|| "false".into()))
            .expect("env");
        assert!(!c.insecure);
    }
}
