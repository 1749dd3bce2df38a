//! The transport: turns a validated [`OtlpConfig`] into opentelemetry-otlp's
//! `SpanExporter` for gRPC (tonic, with TLS for `https://`) or HTTP/protobuf.
//! [`OtlpSink::new`](super::OtlpSink::new) builds it once; the export task
//! (`task.rs`) owns it and calls `export` on it batch by batch. Building it
//! does not connect: the collector may come up later.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{
    RetryPolicy, SpanExporter as OtlpSpanExporter, WithExportConfig, WithHttpConfig,
    WithTonicConfig,
};
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;

use super::config::endpoint_url;
use super::{OtlpConfig, OtlpError, OtlpProtocol};

/// The URL the exporter is built with: the endpoint under the endpoint rule
/// ([`endpoint_url`]), plus `/v1/traces` for HTTP when it has no path.
pub(super) fn exporter_url(cfg: &OtlpConfig) -> Result<String, OtlpError> {
    let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
    let url = endpoint_url(endpoint, cfg.insecure).map_err(|reason| OtlpError::Config {
        field: "endpoint",
        reason,
    })?;
    Ok(match cfg.protocol {
        OtlpProtocol::Grpc => url,
        OtlpProtocol::HttpProtobuf => http_traces_url(&url),
    })
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

/// Builds the exporter for `cfg` (already validated), with `resource` on
/// every span. The URL is [`endpoint_url`]'s, so `insecure` takes effect here
/// exactly as the config check promised; TLS is set up for `https://` only.
pub(super) fn build_exporter(
    cfg: &OtlpConfig,
    resource: &Resource,
) -> Result<OtlpSpanExporter, OtlpError> {
    let url = exporter_url(cfg)?;
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
            .with_endpoint(url)
            .with_timeout(timeout)
            .with_retry_policy(retry)
            .with_headers(headers.into_iter().collect::<HashMap<_, _>>())
            .build()
            .map_err(OtlpError::Build)?,
    };
    exporter.set_resource(resource);
    Ok(exporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_url_gets_traces_path_only_when_it_has_none() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/custom/v1/traces"),
            "http://c:4318/custom/v1/traces"
        );
    }

    /// The exporter is built with the URL the endpoint rule gives: a bare
    /// `host:port` is plain text only with `insecure`.
    #[test]
    fn exporter_url_follows_the_endpoint_rule_and_insecure() {
        let url = |e: &str, protocol, insecure| {
            exporter_url(&OtlpConfig {
                endpoint: Some(e.into()),
                protocol,
                insecure,
                ..Default::default()
            })
            .expect(e)
        };
        let (grpc, http) = (OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf);
        assert_eq!(url("c:4317", grpc, false), "https://c:4317");
        assert_eq!(url("c:4317", grpc, true), "http://c:4317");
        assert_eq!(url("https://c:4317", grpc, true), "https://c:4317");
        assert_eq!(url("c:4318", http, true), "http://c:4318/v1/traces");
        assert_eq!(url("HTTP://c:4318/x", http, false), "http://c:4318/x");
    }
}
