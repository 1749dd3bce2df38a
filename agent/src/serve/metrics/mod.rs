//! `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! Everything is rendered at scrape time from [`LiveState`] and
//! [`Counters`]: there is no second copy of any value to keep in sync. The
//! families, their types, labels and help texts are one table, [`METRICS`],
//! which the docs and the deploy tests (alert rules, dashboard) read too.
//! Every series carries `node="<agent node name>"`, so the same rules work
//! whether Prometheus scrapes through a ServiceMonitor (which may add its
//! own `node` target label; keep it equal or use `honor_labels`) or through
//! the pod's `prometheus.io/scrape` annotations (which add none).
//!
//! `/readyz` answers 503, one cause per line, until the first probe cycle
//! completed, and again while any GPU's backend is not up or any start-up
//! self-test failed; its body then lists every GPU as `probing` or not,
//! with why. `/healthz` fails only when the agent itself is stuck (every
//! probe thread silent, or a consumer loop gone), never for a failing GPU.
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
//!
//! One job per file: `table.rs` is the list of families ([`METRICS`]),
//! `families.rs` reads their samples from the live state, and this file
//! writes them in the negotiated format and serves the endpoints.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::internal_events::Counters;
use crate::serve::live::LiveState;

mod families;
mod table;

use families::families;
pub use table::{metric_doc, Kind, MetricDoc, METRICS};

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

/// Renders the exposition in `format`, family by family in the order of
/// [`METRICS`].
pub fn render_format(live: &LiveState, counters: &Counters, format: Format) -> String {
    let node = live.node();
    let samples = families(live, counters);
    let mut out = String::new();
    for f in METRICS {
        // A family without samples (no GPU evaluated yet) is left out.
        let Some(rows) = samples.get(f.name).filter(|r| !r.is_empty()) else {
            continue;
        };
        let sample_name = f.sample_name();
        // Classic text names a counter family by its samples' name.
        let family_name = if format == Format::Text {
            sample_name.as_str()
        } else {
            f.name
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {family_name} {help}");
        let _ = writeln!(out, "# TYPE {family_name} {}", f.kind.as_str());
        if let (Format::OpenMetrics, Some(unit)) = (format, f.unit) {
            let _ = writeln!(out, "# UNIT {family_name} {unit}");
        }
        for (values, v) in rows {
            out.push_str(&sample_name);
            out.push('{');
            let _ = write!(out, "node=\"{}\"", escape_label(&node));
            for (k, val) in f.labels.iter().skip(1).zip(values) {
                let _ = write!(out, ",{k}=\"{}\"", escape_label(val));
            }
            out.push('}');
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

/// 200 once the first probe cycle completed while every GPU's backend is
/// up and every self-test passed; else 503 with one cause per line. Either
/// way, one line per GPU follows: `probing`, or why not.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let why = s.live.not_ready();
    let gpus = s.live.gpu_states().join("\n");
    if why.is_empty() {
        (StatusCode::OK, format!("ready\n{gpus}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n{gpus}\n", why.join("\n")),
        )
    }
}

/// 200 while the agent makes progress; 503 with why when it is stuck
/// (every probe thread silent, or a consumer loop gone): the one case a
/// kubelet restart helps. A failing GPU is not the agent being stuck.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let why = s.live.liveness.stuck();
    if why.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stuck: {}\n", why.join("\n")),
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
        .route("/healthz", get(healthz))
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
mod tests;
