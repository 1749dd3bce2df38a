//! `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! Everything is rendered at scrape time from [`LiveState`] and
//! [`Counters`]: there is no second copy of any value to keep in sync.
//!
//! The exposition is negotiated like client_golang does it: OpenMetrics 1.0
//! when the scraper's `Accept` asks for it (Prometheus does), else the
//! classic text format 0.0.4 (curl, `promtool check metrics`). It is written
//! here rather than with prometheus-client because that crate encodes only
//! OpenMetrics and has no summary type, and latency quantiles over the health
//! window are exactly a summary: as gauges with a `quantile` label, or with a
//! `_ms` or `_count` suffix, `promtool check metrics` rejects them. So names
//! follow the Prometheus conventions: base units (seconds), `_total` on
//! counters, and no `_count` outside summaries.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::health::{LiveState, Verdict};
use crate::internal_events::Counters;

type Labels = Vec<(&'static str, String)>;

/// The two exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// The classic Prometheus text format (`text/plain; version=0.0.4`).
    Text,
}

impl Format {
    /// Picks the format an `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Self {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Summary,
}

struct Family {
    /// Name without the `_total` a counter's samples carry.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    samples: Vec<(Labels, f64)>,
}

fn family(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, f64)>,
) -> Family {
    Family {
        name,
        help,
        kind,
        unit: None,
        samples,
    }
}

fn families(live: &LiveState, counters: &Counters) -> Vec<Family> {
    let (mut lat, mut verdicts, mut infl, mut fails, mut samples) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if let Ok(k) = live.kernels.read() {
        for ((uuid, kernel), h) in k.iter() {
            let base = |extra: &[(&'static str, String)]| -> Labels {
                let mut l = vec![
                    ("gpu_uuid", uuid.clone()),
                    ("gpu_index", h.gpu_index.to_string()),
                    ("kernel", kernel.clone()),
                ];
                l.extend_from_slice(extra);
                l
            };
            for (clock, q) in [("wall", h.wall), ("gpu", h.gpu), ("queue", h.queue)] {
                for (quantile, v) in [("0.5", q.p50), ("0.99", q.p99)] {
                    if let Some(v) = v {
                        lat.push((
                            base(&[("clock", clock.into()), ("quantile", quantile.into())]),
                            v / 1000.0,
                        ));
                    }
                }
            }
            for v in Verdict::ALL {
                verdicts.push((
                    base(&[("verdict", v.as_str().into())]),
                    f64::from(u8::from(h.verdict == v)),
                ));
            }
            if let Some(i) = h.inflation {
                infl.push((base(&[]), i));
            }
            fails.push((base(&[]), h.correctness_failures_total as f64));
            samples.push((base(&[]), h.samples as f64));
        }
    }
    let pods: Vec<(Labels, f64)> = live
        .pod_count
        .read()
        .map(|m| {
            m.iter()
                .filter_map(|(u, c)| c.map(|c| (vec![("gpu_uuid", u.clone())], f64::from(c))))
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![
        Family {
            unit: Some("seconds"),
            ..family(
                "slicetrace_probe_latency_seconds",
                "Probe latency quantiles over the health window, seconds, per clock (wall = host launch-to-completion, gpu = CUDA events, queue = wall - gpu).",
                Kind::Summary,
                lat,
            )
        },
        family("slicetrace_gpu_verdict", "Live verdict: 1 for the current verdict of this GPU and kernel, 0 for the others.", Kind::Gauge, verdicts),
        family("slicetrace_p99_inflation", "p99 wall latency over the quiet baseline (or SLO).", Kind::Gauge, infl),
        family("slicetrace_window_samples", "Probe runs in the health window.", Kind::Gauge, samples),
        family("slicetrace_correctness_failures", "Probe runs whose output failed its correctness check.", Kind::Counter, fails),
        family("slicetrace_gpu_pods", "Pods holding a replica of this physical GPU (absent while unknown).", Kind::Gauge, pods),
    ];
    if let Some(o) = live.occupancy.get() {
        let st = o.status();
        let mut up: Vec<(Labels, f64)> = Vec::new();
        if o.pod_resources().is_some() {
            up.push((
                vec![("source", "pod_resources".into())],
                f64::from(u8::from(st.pod_resources_ok)),
            ));
        }
        if o.kube().is_some() {
            up.push((
                vec![("source", "kube_api".into())],
                f64::from(u8::from(st.kube_api_ok)),
            ));
        }
        out.push(family(
            "slicetrace_occupancy_source_up",
            "1 while an occupancy source answers: pod_resources when the last List succeeded, kube_api when the pod list is synced and the last API calls succeeded.",
            Kind::Gauge,
            up,
        ));
        if let Some(age) = st.last_sync_age_ms {
            out.push(Family {
                unit: Some("seconds"),
                ..family(
                    "slicetrace_occupancy_sync_age_seconds",
                    "Age of the oldest occupancy source's last successful sync.",
                    Kind::Gauge,
                    vec![(Vec::new(), age as f64 / 1000.0)],
                )
            });
        }
    }
    let c = counters;
    let g = Counters::get;
    let plain: [(&'static str, &'static str, u64); 17] = [
        (
            "slicetrace_probe_runs",
            "Probe runs completed.",
            g(&c.probe_runs),
        ),
        (
            "slicetrace_probe_cycles",
            "Probe cycles completed.",
            g(&c.probe_cycles),
        ),
        (
            "slicetrace_probe_errors",
            "Probe bursts that failed.",
            g(&c.probe_errors),
        ),
        (
            "slicetrace_telemetry_errors",
            "NVML samples that failed.",
            g(&c.telemetry_errors),
        ),
        (
            "slicetrace_otlp_spans_exported",
            "Spans acknowledged by the collector.",
            g(&c.otlp_spans_exported),
        ),
        (
            "slicetrace_otlp_spans_dropped",
            "Spans dropped (queue full, collector down or slow).",
            g(&c.otlp_spans_dropped),
        ),
        (
            "slicetrace_otlp_export_errors",
            "Failed OTLP export calls.",
            g(&c.otlp_export_errors),
        ),
        (
            "slicetrace_parquet_rows_written",
            "Rows in closed, visible Parquet files.",
            g(&c.parquet_rows_written),
        ),
        (
            "slicetrace_parquet_files_rotated",
            "Parquet files closed and made visible.",
            g(&c.parquet_files_rotated),
        ),
        (
            "slicetrace_parquet_write_errors",
            "Parquet write errors (disk full, permissions).",
            g(&c.parquet_write_errors),
        ),
        (
            "slicetrace_parquet_rows_dropped",
            "Rows lost to Parquet write errors or a full queue.",
            g(&c.parquet_rows_dropped) + g(&c.sink_queue_drops_parquet),
        ),
        (
            "slicetrace_parquet_tmp_recovered",
            "Leftover temporary files recovered at start.",
            g(&c.parquet_tmp_recovered),
        ),
        (
            "slicetrace_parquet_tmp_removed",
            "Unreadable leftover temporary files removed at start.",
            g(&c.parquet_tmp_removed),
        ),
        (
            "slicetrace_parquet_retention_deleted",
            "Files deleted by retention.",
            g(&c.parquet_retention_deleted),
        ),
        (
            "slicetrace_occupancy_errors",
            "Occupancy refresh errors.",
            g(&c.occupancy_errors),
        ),
        (
            "slicetrace_occupancy_relists",
            "Kubernetes watch relists.",
            g(&c.occupancy_relists),
        ),
        (
            "slicetrace_health_queue_drops",
            "Rows the health evaluator's full queue dropped.",
            g(&c.sink_queue_drops_health),
        ),
    ];
    for (name, help, v) in plain {
        out.push(family(
            name,
            help,
            Kind::Counter,
            vec![(Vec::new(), v as f64)],
        ));
    }
    out.push(family(
        "slicetrace_ready",
        "1 once the first probe cycle completed.",
        Kind::Gauge,
        vec![(
            Vec::new(),
            f64::from(u8::from(live.ready.load(Ordering::Relaxed))),
        )],
    ));
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Renders the exposition in `format`.
pub fn render_format(live: &LiveState, counters: &Counters, format: Format) -> String {
    let mut out = String::new();
    for f in families(live, counters) {
        // A family without samples (no GPU evaluated yet) is left out.
        if f.samples.is_empty() {
            continue;
        }
        let sample_name = if f.kind == Kind::Counter {
            format!("{}_total", f.name)
        } else {
            f.name.to_string()
        };
        // Classic text names a counter family by its samples' name.
        let family_name = if format == Format::Text {
            sample_name.as_str()
        } else {
            f.name
        };
        let kind = match f.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Summary => "summary",
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {family_name} {help}");
        let _ = writeln!(out, "# TYPE {family_name} {kind}");
        if let (Format::OpenMetrics, Some(unit)) = (format, f.unit) {
            let _ = writeln!(out, "# UNIT {family_name} {unit}");
        }
        for (labels, v) in &f.samples {
            out.push_str(&sample_name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(val));
                }
                out.push('}');
            }
            out.push(' ');
            write_value(&mut out, *v);
            out.push('\n');
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// Renders the OpenMetrics exposition (what Prometheus scrapes).
pub fn render(live: &Arc<LiveState>, counters: &Arc<Counters>) -> String {
    render_format(live, counters, Format::OpenMetrics)
}

#[derive(Clone)]
struct AppState {
    live: Arc<LiveState>,
    counters: Arc<Counters>,
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        render_format(&s.live, &s.counters, format),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.live.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no probe cycle completed yet\n",
        )
    }
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound
/// address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    live: Arc<LiveState>,
    counters: Arc<Counters>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { live, counters });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let h = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{KernelHealth, Quantiles};

    fn live() -> LiveState {
        let st = LiveState::default();
        let q = Quantiles {
            p50: Some(0.5),
            p99: Some(2.0),
        };
        st.kernels.write().expect("lock").insert(
            ("GPU-\"x\"\\".into(), "fft".into()),
            KernelHealth {
                gpu_index: 0,
                verdict: Verdict::Degraded,
                reason: "r".into(),
                wall: q,
                gpu: q,
                queue: Quantiles::default(),
                baseline_p99_ms: None,
                inflation: Some(1.7),
                samples: 9,
                correctness_failures_total: 1,
                contention: None,
                event_baseline_p99_ms: None,
            },
        );
        st
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn classic_and_openmetrics_differ_only_where_the_formats_do() {
        let (st, c) = (live(), Counters::default());
        let text = render_format(&st, &c, Format::Text);
        let om = render_format(&st, &c, Format::OpenMetrics);
        // Latency in seconds, as a summary; a missing quantile is left out.
        assert!(
            text.contains("# TYPE slicetrace_probe_latency_seconds summary\n"),
            "{text}"
        );
        assert!(text.contains(r#"slicetrace_probe_latency_seconds{gpu_uuid="GPU-\"x\"\\",gpu_index="0",kernel="fft",clock="wall",quantile="0.99"} 0.002"#), "{text}");
        assert!(!text.contains("clock=\"queue\""), "{text}");
        // Counters: classic names the family with `_total`, OpenMetrics without.
        assert!(
            text.contains(
                "# TYPE slicetrace_probe_runs_total counter\nslicetrace_probe_runs_total 0\n"
            ),
            "{text}"
        );
        assert!(
            om.contains("# TYPE slicetrace_probe_runs counter\nslicetrace_probe_runs_total 0\n"),
            "{om}"
        );
        assert!(
            om.contains("# UNIT slicetrace_probe_latency_seconds seconds\n")
                && om.ends_with("# EOF\n")
        );
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
        // No pod count known: the family is absent, not zero.
        assert!(!text.contains("slicetrace_gpu_pods"), "{text}");
    }
}
