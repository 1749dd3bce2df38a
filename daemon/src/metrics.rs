//! `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! Everything is rendered at scrape time from [`LiveState`] and
//! [`Counters`]: there is no second copy of any value to keep in sync.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::health::{LiveState, Verdict};
use crate::internal_events::Counters;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct AgentCollector {
    live: Arc<LiveState>,
    counters: Arc<Counters>,
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut lat, mut verdicts, mut infl, mut fails, mut samples) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if let Ok(k) = self.live.kernels.read() {
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
                            lat.push((base(&[("clock", clock.into()), ("quantile", quantile.into())]), v));
                        }
                    }
                }
                for v in Verdict::ALL {
                    verdicts.push((base(&[("verdict", v.as_str().into())]), f64::from(u8::from(h.verdict == v))));
                }
                if let Some(i) = h.inflation {
                    infl.push((base(&[]), i));
                }
                fails.push((base(&[]), h.correctness_failures_total));
                samples.push((base(&[]), h.samples as f64));
            }
        }
        gauge_family(&mut enc, "slicetrace_probe_latency_ms", "Probe latency quantile over the health window, ms, per clock (wall = host launch-to-completion, gpu = CUDA events, queue = wall - gpu).", &lat)?;
        gauge_family(&mut enc, "slicetrace_gpu_verdict", "Live verdict: 1 for the current verdict of this GPU and kernel, 0 for the others.", &verdicts)?;
        gauge_family(&mut enc, "slicetrace_p99_inflation", "p99 wall_ms over the quiet baseline (or SLO).", &infl)?;
        gauge_family(&mut enc, "slicetrace_window_samples", "Probe runs in the health window.", &samples)?;
        counter_family(&mut enc, "slicetrace_correctness_failures", "Probe runs whose output failed its correctness check.", &fails)?;
        let pods: Vec<(Labels, f64)> = self
            .live
            .pod_count
            .read()
            .map(|m| {
                m.iter()
                    .filter_map(|(u, c)| c.map(|c| (vec![("gpu_uuid", u.clone())], f64::from(c))))
                    .collect()
            })
            .unwrap_or_default();
        gauge_family(&mut enc, "slicetrace_gpu_pod_count", "Pods holding a replica of this physical GPU.", &pods)?;
        let c = &self.counters;
        let g = Counters::get;
        let plain: [(&str, &str, u64); 16] = [
            ("slicetrace_probe_runs", "Probe runs completed.", g(&c.probe_runs)),
            ("slicetrace_probe_cycles", "Probe cycles completed.", g(&c.probe_cycles)),
            ("slicetrace_probe_errors", "Probe bursts that failed.", g(&c.probe_errors)),
            ("slicetrace_telemetry_errors", "NVML samples that failed.", g(&c.telemetry_errors)),
            ("slicetrace_otlp_spans_exported", "Spans acknowledged by the collector.", g(&c.otlp_spans_exported)),
            ("slicetrace_otlp_spans_dropped", "Spans dropped (queue full, collector down or slow).", g(&c.otlp_spans_dropped)),
            ("slicetrace_otlp_export_errors", "Failed OTLP export calls.", g(&c.otlp_export_errors)),
            ("slicetrace_parquet_rows_written", "Rows in closed, visible Parquet files.", g(&c.parquet_rows_written)),
            ("slicetrace_parquet_files_rotated", "Parquet files closed and made visible.", g(&c.parquet_files_rotated)),
            ("slicetrace_parquet_write_errors", "Parquet write errors (disk full, permissions).", g(&c.parquet_write_errors)),
            ("slicetrace_parquet_rows_dropped", "Rows lost to Parquet write errors or a full queue.", g(&c.parquet_rows_dropped) + g(&c.sink_queue_drops_parquet)),
            ("slicetrace_parquet_tmp_recovered", "Leftover temporary files recovered at start.", g(&c.parquet_tmp_recovered)),
            ("slicetrace_parquet_tmp_removed", "Unreadable leftover temporary files removed at start.", g(&c.parquet_tmp_removed)),
            ("slicetrace_parquet_retention_deleted", "Files deleted by retention.", g(&c.parquet_retention_deleted)),
            ("slicetrace_occupancy_errors", "Occupancy refresh errors.", g(&c.occupancy_errors)),
            ("slicetrace_occupancy_relists", "Kubernetes watch relists.", g(&c.occupancy_relists)),
        ];
        for (name, help, v) in plain {
            counter_family(&mut enc, name, help, &[(Vec::new(), v)])?;
        }
        counter_family(
            &mut enc,
            "slicetrace_health_queue_drops",
            "Rows the health evaluator's full queue dropped.",
            &[(Vec::new(), g(&c.sink_queue_drops_health))],
        )?;
        gauge_family(
            &mut enc,
            "slicetrace_ready",
            "1 once the first probe cycle completed.",
            &[(Vec::new(), f64::from(u8::from(self.live.ready.load(Ordering::Relaxed))))],
        )?;
        Ok(())
    }
}

/// Renders the Prometheus text exposition.
pub fn render(live: &Arc<LiveState>, counters: &Arc<Counters>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(AgentCollector { live: live.clone(), counters: counters.clone() }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        tracing::warn!("failed to encode metrics");
    }
    out
}

#[derive(Clone)]
struct AppState {
    live: Arc<LiveState>,
    counters: Arc<Counters>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        render(&s.live, &s.counters),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.live.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no probe cycle completed yet\n")
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
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, h))
}
