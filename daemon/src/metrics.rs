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
//! self-test failed.
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use slicetrace_schema::Dimension;

use crate::health::{Contention, LiveState, Verdict};
use crate::internal_events::{Counters, GpuCounters};

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
    m("slicetrace_probe_runs", Kind::Counter, GPU, "Probe runs completed on this GPU."),
    m("slicetrace_probe_errors", Kind::Counter, GPU, "Probe runs that failed on this GPU."),
    m("slicetrace_telemetry_errors", Kind::Counter, GPU, "NVML samples of this GPU that failed."),
    m("slicetrace_probe_cycles", Kind::Counter, NODE, "Probe cycles completed, all GPUs."),
    m("slicetrace_occupancy_source_up", Kind::Gauge, &["node", "source"], "1 while an occupancy source answers: pod_resources when the last List succeeded, kube_api when the pod list is synced and the last API calls succeeded."),
    MetricDoc { unit: Some("seconds"), ..m("slicetrace_occupancy_sync_age_seconds", Kind::Gauge, NODE, "Age of the oldest occupancy source's last successful sync.") },
    m("slicetrace_otlp_spans_exported", Kind::Counter, NODE, "Spans acknowledged by the collector."),
    m("slicetrace_otlp_spans_dropped", Kind::Counter, NODE, "Spans dropped (queue full, collector down or slow)."),
    m("slicetrace_otlp_export_errors", Kind::Counter, NODE, "Failed OTLP export calls."),
    m("slicetrace_parquet_rows_written", Kind::Counter, NODE, "Rows in closed, visible Parquet files."),
    m("slicetrace_parquet_files_rotated", Kind::Counter, NODE, "Parquet files closed and made visible."),
    m("slicetrace_parquet_write_errors", Kind::Counter, NODE, "Parquet write errors (disk full, permissions)."),
    m("slicetrace_parquet_rows_dropped", Kind::Counter, NODE, "Rows lost to Parquet write errors or a full queue."),
    m("slicetrace_parquet_tmp_recovered", Kind::Counter, NODE, "Leftover temporary files recovered at start."),
    m("slicetrace_parquet_tmp_removed", Kind::Counter, NODE, "Unreadable leftover temporary files removed at start."),
    m("slicetrace_parquet_retention_deleted", Kind::Counter, NODE, "Files deleted by retention."),
    m("slicetrace_occupancy_errors", Kind::Counter, NODE, "Occupancy refresh errors."),
    m("slicetrace_occupancy_relists", Kind::Counter, NODE, "Kubernetes watch relists."),
    m("slicetrace_health_queue_drops", Kind::Counter, NODE, "Rows the health evaluator's full queue dropped."),
];

/// The documentation of a family by name.
pub fn metric_doc(name: &str) -> Option<&'static MetricDoc> {
    METRICS.iter().find(|d| d.name == name)
}

/// Samples of one family: label values in the order of its doc's labels
/// after `node` (which the renderer adds).
type Samples = BTreeMap<&'static str, Vec<(Vec<String>, f64)>>;

fn push(out: &mut Samples, name: &'static str, labels: Vec<String>, v: f64) {
    out.entry(name).or_default().push((labels, v));
}

fn one(b: bool) -> f64 {
    f64::from(u8::from(b))
}

fn families(live: &LiveState, counters: &Counters) -> Samples {
    let mut out = Samples::new();
    push(
        &mut out,
        "slicetrace_agent_info",
        vec![env!("CARGO_PKG_VERSION").into()],
        1.0,
    );
    let gpus = live.gpus.read().map(|g| g.clone()).unwrap_or_default();
    for (uuid, g) in &gpus {
        push(
            &mut out,
            "slicetrace_gpu_info",
            vec![
                uuid.clone(),
                g.index.to_string(),
                g.name.clone().unwrap_or_default(),
                g.backend.clone(),
            ],
            1.0,
        );
        push(
            &mut out,
            "slicetrace_backend_up",
            vec![uuid.clone(), g.backend.clone()],
            one(g.up()),
        );
    }
    let fallback = live
        .backend_fallback
        .read()
        .map(|f| f.is_some())
        .unwrap_or(false);
    push(
        &mut out,
        "slicetrace_backend_fallback",
        vec![],
        one(fallback),
    );
    push(
        &mut out,
        "slicetrace_ready",
        vec![],
        one(live.not_ready().is_empty()),
    );
    if let Ok(k) = live.kernels.read() {
        for ((uuid, kernel), h) in k.iter() {
            let idx = h.gpu_index.to_string();
            let base = || vec![uuid.clone(), idx.clone(), kernel.clone()];
            for (clock, q) in [("wall", h.wall), ("gpu", h.gpu), ("queue", h.queue)] {
                for (quantile, v) in [("0.5", q.p50), ("0.99", q.p99)] {
                    if let Some(v) = v {
                        let mut l = base();
                        l.extend([clock.to_string(), quantile.to_string()]);
                        push(&mut out, "slicetrace_probe_latency_seconds", l, v / 1000.0);
                    }
                }
            }
            for v in Verdict::ALL {
                let mut l = base();
                l.push(v.as_str().into());
                push(&mut out, "slicetrace_gpu_verdict", l, one(h.verdict == v));
            }
            if let Some(c) = h.contention {
                for s in Contention::ALL {
                    push(
                        &mut out,
                        "slicetrace_gpu_contention",
                        vec![uuid.clone(), kernel.clone(), s.as_str().into()],
                        one(c == s),
                    );
                }
            }
            for (dim, r) in [
                (Dimension::Health, h.health_reason),
                (Dimension::Contention, h.contention_reason),
            ] {
                push(
                    &mut out,
                    "slicetrace_gpu_verdict_reason",
                    vec![
                        uuid.clone(),
                        kernel.clone(),
                        dim.as_str().into(),
                        r.as_str().into(),
                    ],
                    1.0,
                );
            }
            let mut baselines: Vec<(&str, &str, &str, f64)> = Vec::new();
            if let Some((src, p50, p99)) = h.wall_baseline {
                for (q, v) in [("0.5", p50), ("0.99", p99)] {
                    if let Some(v) = v {
                        baselines.push(("wall", q, src.as_str(), v));
                    }
                }
            }
            if let Some((p50, p99)) = h.gpu_baseline {
                for (q, v) in [("0.5", p50), ("0.99", p99)] {
                    if let Some(v) = v {
                        baselines.push(("gpu", q, "learned", v));
                    }
                }
            }
            for (clock, q, src, v) in baselines {
                push(
                    &mut out,
                    "slicetrace_baseline_seconds",
                    vec![
                        uuid.clone(),
                        kernel.clone(),
                        clock.into(),
                        q.into(),
                        src.into(),
                    ],
                    v / 1000.0,
                );
            }
            if let Some(i) = h.inflation {
                push(&mut out, "slicetrace_p99_inflation", base(), i);
            }
            push(
                &mut out,
                "slicetrace_window_samples",
                base(),
                h.samples as f64,
            );
            push(
                &mut out,
                "slicetrace_correctness_failures",
                base(),
                h.correctness_failures_total as f64,
            );
        }
    }
    if let Ok(t) = live.self_tests.read() {
        for ((uuid, kernel), passed) in t.iter() {
            push(
                &mut out,
                "slicetrace_self_test_passed",
                vec![uuid.clone(), kernel.clone()],
                one(*passed),
            );
        }
    }
    if let Ok(m) = live.pod_count.read() {
        for (u, c) in m.iter() {
            if let Some(c) = c {
                push(
                    &mut out,
                    "slicetrace_gpu_pods",
                    vec![u.clone()],
                    f64::from(*c),
                );
            }
        }
    }
    // Per-GPU counters: every probed GPU has its series from start (0).
    let per_gpu = counters
        .per_gpu
        .read()
        .map(|m| m.clone())
        .unwrap_or_default();
    let mut uuids: Vec<&String> = gpus.keys().chain(per_gpu.keys()).collect();
    uuids.sort();
    uuids.dedup();
    let g = Counters::get;
    for uuid in uuids {
        let c = per_gpu.get(uuid);
        let v = |f: fn(&GpuCounters) -> &std::sync::atomic::AtomicU64| {
            c.map_or(0.0, |c| g(f(c)) as f64)
        };
        push(
            &mut out,
            "slicetrace_probe_runs",
            vec![uuid.clone()],
            v(|c| &c.probe_runs),
        );
        push(
            &mut out,
            "slicetrace_probe_errors",
            vec![uuid.clone()],
            v(|c| &c.probe_errors),
        );
        push(
            &mut out,
            "slicetrace_telemetry_errors",
            vec![uuid.clone()],
            v(|c| &c.telemetry_errors),
        );
    }
    if let Some(o) = live.occupancy.get() {
        let st = o.status();
        if o.pod_resources().is_some() {
            push(
                &mut out,
                "slicetrace_occupancy_source_up",
                vec!["pod_resources".into()],
                one(st.pod_resources_ok),
            );
        }
        if o.kube().is_some() {
            push(
                &mut out,
                "slicetrace_occupancy_source_up",
                vec!["kube_api".into()],
                one(st.kube_api_ok),
            );
        }
        if let Some(age) = st.last_sync_age_ms {
            push(
                &mut out,
                "slicetrace_occupancy_sync_age_seconds",
                vec![],
                age as f64 / 1000.0,
            );
        }
    }
    let c = counters;
    let node_wide: [(&'static str, u64); 14] = [
        ("slicetrace_probe_cycles", g(&c.probe_cycles)),
        ("slicetrace_otlp_spans_exported", g(&c.otlp_spans_exported)),
        ("slicetrace_otlp_spans_dropped", g(&c.otlp_spans_dropped)),
        ("slicetrace_otlp_export_errors", g(&c.otlp_export_errors)),
        (
            "slicetrace_parquet_rows_written",
            g(&c.parquet_rows_written),
        ),
        (
            "slicetrace_parquet_files_rotated",
            g(&c.parquet_files_rotated),
        ),
        (
            "slicetrace_parquet_write_errors",
            g(&c.parquet_write_errors),
        ),
        (
            "slicetrace_parquet_rows_dropped",
            g(&c.parquet_rows_dropped) + g(&c.sink_queue_drops_parquet),
        ),
        (
            "slicetrace_parquet_tmp_recovered",
            g(&c.parquet_tmp_recovered),
        ),
        ("slicetrace_parquet_tmp_removed", g(&c.parquet_tmp_removed)),
        (
            "slicetrace_parquet_retention_deleted",
            g(&c.parquet_retention_deleted),
        ),
        ("slicetrace_occupancy_errors", g(&c.occupancy_errors)),
        ("slicetrace_occupancy_relists", g(&c.occupancy_relists)),
        (
            "slicetrace_health_queue_drops",
            g(&c.sink_queue_drops_health),
        ),
    ];
    for (name, v) in node_wide {
        push(&mut out, name, vec![], v as f64);
    }
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
/// up and every self-test passed; else 503 with one cause per line.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let why = s.live.not_ready();
    if why.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("\n")),
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
    use crate::health::{GpuEntry, KernelHealth, Quantiles};
    use slicetrace_schema::{BaselineSource, Reason};

    fn live() -> LiveState {
        let st = LiveState::default();
        st.set_node("n1");
        let q = Quantiles {
            p50: Some(0.5),
            p99: Some(2.0),
        };
        st.register_gpu(
            "GPU-\"x\"\\",
            GpuEntry {
                index: 0,
                name: Some("NVIDIA H100 80GB HBM3".into()),
                backend: "cuda".into(),
                down: None,
                probe_failing: None,
            },
        );
        st.kernels.write().expect("lock").insert(
            ("GPU-\"x\"\\".into(), "fft".into()),
            KernelHealth {
                gpu_index: 0,
                verdict: Verdict::Degraded,
                reason: "r".into(),
                health_reason: Reason::EventSlow,
                health_source: Some(BaselineSource::Sku),
                wall: q,
                gpu: q,
                queue: Quantiles::default(),
                baseline_p99_ms: Some(0.15),
                inflation: Some(1.7),
                samples: 9,
                correctness_failures_total: 1,
                contention: Some(Contention::Contended),
                contention_reason: Reason::WaitOverBaseline,
                contention_detail: "3 tenants".into(),
                contention_source: Some(BaselineSource::Sku),
                wall_baseline: Some((BaselineSource::Sku, Some(0.08), Some(0.15))),
                gpu_baseline: None,
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
        assert!(text.contains(r#"slicetrace_probe_latency_seconds{node="n1",gpu_uuid="GPU-\"x\"\\",gpu_index="0",kernel="fft",clock="wall",quantile="0.99"} 0.002"#), "{text}");
        assert!(!text.contains("clock=\"queue\""), "{text}");
        // Counters: classic names the family with `_total`, OpenMetrics without.
        let runs = r#"slicetrace_probe_runs_total{node="n1",gpu_uuid="GPU-\"x\"\\"} 0"#;
        assert!(
            text.contains(&format!(
                "# TYPE slicetrace_probe_runs_total counter\n{runs}\n"
            )),
            "{text}"
        );
        assert!(
            om.contains(&format!("# TYPE slicetrace_probe_runs counter\n{runs}\n")),
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

    #[test]
    fn every_series_carries_node_and_the_new_families_their_labels() {
        let (st, c) = (live(), Counters::default());
        st.record_self_test("GPU-\"x\"\\", "gemm", false);
        let text = render_format(&st, &c, Format::Text);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{node=\"n1\""), "no node label: {line}");
        }
        for want in [
            r#"slicetrace_agent_info{node="n1",version=""#,
            r#"slicetrace_gpu_info{node="n1",gpu_uuid="GPU-\"x\"\\",gpu_index="0",gpu_name="NVIDIA H100 80GB HBM3",backend="cuda"} 1"#,
            r#"slicetrace_backend_up{node="n1",gpu_uuid="GPU-\"x\"\\",backend="cuda"} 1"#,
            r#"slicetrace_gpu_contention{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",state="contended"} 1"#,
            r#"slicetrace_gpu_verdict_reason{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",dimension="health",reason="event_slow"} 1"#,
            r#"slicetrace_gpu_verdict_reason{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",dimension="contention",reason="wait_over_baseline"} 1"#,
            r#"slicetrace_baseline_seconds{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",clock="wall",quantile="0.99",source="sku"} 0.00015"#,
            r#"slicetrace_self_test_passed{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="gemm"} 0"#,
            r#"slicetrace_gpu_verdict{node="n1",gpu_uuid="GPU-\"x\"\\",gpu_index="0",kernel="fft",verdict="unknown"} 0"#,
            r#"slicetrace_ready{node="n1"} 0"#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        // Every family rendered is in the table, with its declared labels.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap_or_default();
            let doc = METRICS
                .iter()
                .find(|d| d.sample_name() == name)
                .unwrap_or_else(|| panic!("{name} not in METRICS"));
            let keys: Vec<&str> = line
                .split('{')
                .nth(1)
                .unwrap_or_default()
                .split("\",")
                .filter_map(|kv| kv.split_once("=\"").map(|x| x.0))
                .collect();
            assert_eq!(keys, doc.labels, "{line}");
        }
    }

    /// Each internal event moves every family it declares, and every
    /// counter family is fed by some event: a counter without a row in
    /// [`METRICS`] (or a row nothing counts) fails here.
    #[test]
    fn every_internal_event_counts_into_a_metrics_row() {
        use crate::internal_events::*;
        let err = std::io::Error::other("disk full");
        let path = std::path::Path::new("/x.parquet");
        type Emit<'a> = Box<dyn Fn(&Counters) + 'a>;
        let emit: Vec<(&str, Emit)> = vec![
            (
                "ProbeRunsCompleted",
                Box::new(|c| {
                    ProbeRunsCompleted {
                        gpu_uuid: "GPU-1",
                        runs: 2,
                    }
                    .emit(c)
                }),
            ),
            (
                "ProbeCycleCompleted",
                Box::new(|c| ProbeCycleCompleted.emit(c)),
            ),
            (
                "ProbeRunFailed",
                Box::new(|c| {
                    ProbeRunFailed {
                        gpu_uuid: "GPU-1",
                        failures: 1,
                        error: "e",
                    }
                    .emit(c)
                }),
            ),
            (
                "CorrectnessCheckFailed",
                Box::new(|c| CorrectnessCheckFailed { gpu_uuid: "GPU-1" }.emit(c)),
            ),
            (
                "TelemetrySampleFailed",
                Box::new(|c| {
                    TelemetrySampleFailed {
                        gpu_uuid: "GPU-1",
                        error: &err,
                    }
                    .emit(c)
                }),
            ),
            (
                "SinkQueueFull",
                Box::new(|c| {
                    for sink in [Outlet::Parquet, Outlet::Otlp, Outlet::Health] {
                        SinkQueueFull { sink, records: 3 }.emit(c);
                    }
                }),
            ),
            (
                "OtlpSpansExported",
                Box::new(|c| OtlpSpansExported { spans: 2 }.emit(c)),
            ),
            (
                "OtlpExportFailed",
                Box::new(|c| {
                    OtlpExportFailed {
                        spans: 2,
                        elapsed_ms: 1,
                        error: "e",
                    }
                    .emit(c)
                }),
            ),
            (
                "OtlpSpansDropped",
                Box::new(|c| {
                    OtlpSpansDropped {
                        dropped: 2,
                        why: Some("queue full"),
                    }
                    .emit(c)
                }),
            ),
            (
                "ParquetFileRotated",
                Box::new(|c| ParquetFileRotated { rows: 2 }.emit(c)),
            ),
            (
                "ParquetWriteFailed",
                Box::new(|c| {
                    ParquetWriteFailed {
                        table: "probes",
                        rows_lost: 2,
                        error: &err,
                    }
                    .emit(c)
                }),
            ),
            (
                "ParquetTmpRecovered",
                Box::new(|c| ParquetTmpRecovered { path }.emit(c)),
            ),
            (
                "ParquetTmpRemoved",
                Box::new(|c| ParquetTmpRemoved { path }.emit(c)),
            ),
            (
                "ParquetRetentionDeleted",
                Box::new(|c| {
                    ParquetRetentionDeleted {
                        path,
                        too_old: true,
                        too_big: false,
                    }
                    .emit(c)
                }),
            ),
            (
                "OccupancyRefreshFailed",
                Box::new(|c| OccupancyRefreshFailed.emit(c)),
            ),
            (
                "OccupancyRelisted",
                Box::new(|c| OccupancyRelisted { node: "n1" }.emit(c)),
            ),
        ];
        let names: Vec<&str> = EVENTS.iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            emit.iter().map(|e| e.0).collect::<Vec<_>>(),
            "emit every event of EVENTS here"
        );
        let value = |text: &str, family: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        for ((event, families), (_, emit)) in EVENTS.iter().zip(&emit) {
            let c = Counters::default();
            emit(&c);
            let text = render_format(&live(), &c, Format::Text);
            for f in *families {
                let doc = metric_doc(f)
                    .unwrap_or_else(|| panic!("{event} counts {f}: no row in METRICS"));
                assert_eq!(doc.kind, Kind::Counter, "{event}: {f}");
                assert!(
                    value(&text, &doc.sample_name()) > 0.0,
                    "{event} did not move {f}:\n{text}"
                );
            }
        }
        for d in METRICS.iter().filter(|d| d.kind == Kind::Counter) {
            // Rendered from the health window, per kernel.
            if d.name == "slicetrace_correctness_failures" {
                continue;
            }
            assert!(
                EVENTS.iter().any(|(_, f)| f.contains(&d.name)),
                "{} is fed by no internal event",
                d.name
            );
        }
    }

    #[test]
    fn the_table_has_unique_names_node_first_and_help() {
        let mut seen = std::collections::HashSet::new();
        for d in METRICS {
            assert!(seen.insert(d.name), "duplicate {}", d.name);
            assert_eq!(d.labels.first(), Some(&"node"), "{}", d.name);
            assert!(d.name.starts_with("slicetrace_") && !d.help.is_empty());
            assert!(!d.name.ends_with("_total"), "{}", d.name);
        }
    }
}
