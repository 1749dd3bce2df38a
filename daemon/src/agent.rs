//! Wires the pieces together: backends, telemetry, occupancy, sinks, live
//! health, `/metrics`, and the root shutdown signal.
//!
//! Shutdown order (Vector's `shutdown_all(deadline)`): stop the probe
//! threads, close every sink queue so the runners drain what is queued, then
//! each sink flushes and closes within the deadline (every Parquet file gets
//! its footer and is renamed into place; OTLP flushes its queue).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use slicetrace_probe::{ProbeBackend, ProbeError};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::health::{Evaluator, LiveState};
use crate::internal_events::Counters;
use crate::occupancy::OccupancySource;
use crate::pipeline::{
    Fanout, HealthInput, ProbeLoop, Reopen, RunSummary, SinkQueue, StopSignal, SummaryRow,
};
use crate::sinks::otlp::OtlpSink;
use crate::sinks::parquet::ParquetSink;
use crate::sinks::{run_sink, SinkMsg};
use crate::telemetry::TelemetrySource;

/// A function that re-opens the backend for a device index.
pub type BackendFactory =
    Arc<dyn Fn(u32) -> Result<Box<dyn ProbeBackend>, ProbeError> + Send + Sync>;

/// Everything the agent runs with. Built by `main` from the config, or by
/// tests with injected (faulty) backends and telemetry.
pub struct AgentParts {
    /// Final configuration.
    pub config: Config,
    /// Resolved node name.
    pub node: String,
    /// One backend per probed device.
    pub backends: Vec<Box<dyn ProbeBackend>>,
    /// How to re-create a backend after repeated failures.
    pub factory: Option<BackendFactory>,
    /// NVML or none.
    pub telemetry: Arc<dyn TelemetrySource>,
    /// Occupancy; `None` starts the configured sources.
    pub occupancy: Option<Arc<dyn OccupancySource>>,
    /// Counters (shared with the caller for inspection).
    pub counters: Arc<Counters>,
    /// Live state (shared with the caller for inspection).
    pub live: Arc<LiveState>,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// Exit tail table.
    pub summary: Vec<SummaryRow>,
    /// Whether every sink closed within the deadline.
    pub clean_shutdown: bool,
    /// The address `/metrics` was served on.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Runs the agent until `shutdown` resolves, then shuts down within the
/// configured deadline. `on_metrics` receives the bound metrics address.
pub async fn run(
    parts: AgentParts,
    shutdown: impl std::future::Future<Output = ()>,
    on_metrics: impl FnOnce(std::net::SocketAddr),
) -> Result<RunReport> {
    let AgentParts {
        config,
        node,
        backends,
        factory,
        telemetry,
        occupancy,
        counters,
        live,
    } = parts;
    // Every series carries this node; every GPU is known before its first
    // probe run (slicetrace_gpu_info, slicetrace_backend_up, /readyz).
    live.set_node(&node);
    for b in &backends {
        let d = b.device();
        live.register_gpu(
            &d.uuid,
            crate::health::GpuEntry {
                index: d.index,
                name: d.name.clone(),
                backend: d.backend.to_string(),
                down: None,
                probe_failing: None,
            },
        );
    }
    let telemetry = crate::telemetry::with_process_names(telemetry, config.process_names);
    let deadline = Duration::from_millis(config.shutdown_deadline_ms);
    // A sink starts its own shutdown clock only after the probes stopped and
    // its queue drained, later than ours: give it a little less, so that a
    // sink that needs its whole budget (a hung collector) still ends inside
    // the agent's deadline instead of being reported as late.
    let sink_deadline = deadline.saturating_sub((deadline / 10).min(Duration::from_millis(500)));
    let (stop_tx, stop_rx) = watch::channel(false);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("failed to create data_dir {}", config.data_dir.display()))?;

    let occupancy: Arc<dyn OccupancySource> = match occupancy {
        Some(o) => o,
        None => match crate::occupancy::start(
            &config.occupancy,
            &node,
            counters.clone(),
            stop_rx.clone(),
        )
        .await
        {
            Some(c) => {
                // Kept for /metrics (`slicetrace_occupancy_source_up`).
                let _ = live.occupancy.set(c.clone());
                c
            }
            None => Arc::new(crate::occupancy::NoOccupancy),
        },
    };

    // ---- sinks, each on its own task behind its own bounded queue ----
    // The sampling design is the same for every GPU (only the kernel sizes
    // differ by backend): it sizes the queues and shapes the traces.
    let plan = config.arrival_plan(&config.probe_spec("cuda"));
    let queue_msgs = (config.sink_queue_records / plan.rows_per_send()).max(4);
    let mut sink_queues = Vec::new();
    let mut sink_tasks = Vec::new();
    let mut health_sinks: Vec<mpsc::Sender<SinkMsg>> = Vec::new();
    if config.parquet.enabled {
        let sink = ParquetSink::new(
            config.parquet.clone(),
            config.data_dir.clone(),
            &node,
            counters.clone(),
        )
        .context("failed to start the parquet sink")?;
        let (tx, rx) = mpsc::channel(queue_msgs);
        health_sinks.push(tx.clone());
        sink_queues.push(SinkQueue {
            name: "parquet",
            tx,
            on_drop: crate::fanout::parquet_drops,
        });
        sink_tasks.push(tokio::spawn(run_sink(Box::new(sink), rx, sink_deadline)));
    }
    if config.otlp.is_enabled() {
        let k8s_node = (!config.node_name.is_empty()).then_some(node.as_str());
        let sink = OtlpSink::new(
            config.otlp.clone(),
            &crate::config::host_name(),
            k8s_node,
            counters.clone(),
        )
        .context("failed to start the otlp sink")?;
        sink.set_trace_per_run(matches!(plan, crate::pipeline::ArrivalPlan::Poisson { .. }));
        let (tx, rx) = mpsc::channel(queue_msgs);
        health_sinks.push(tx.clone());
        sink_queues.push(SinkQueue {
            name: "otlp",
            tx,
            on_drop: crate::fanout::otlp_drops,
        });
        sink_tasks.push(tokio::spawn(run_sink(Box::new(sink), rx, sink_deadline)));
    } else {
        tracing::info!("no OTLP endpoint configured: spans are not exported");
    }

    // ---- live health ----
    let (health_tx, mut health_rx) = mpsc::channel::<HealthInput>(queue_msgs);
    let mut evaluator = Evaluator::new(
        config.health.clone(),
        node.clone(),
        live.clone(),
        Some(&config.data_dir),
    );
    let eval_every = Duration::from_millis(config.health.evaluate_interval_ms);
    let health_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(eval_every);
        tick.tick().await;
        loop {
            tokio::select! {
                m = health_rx.recv() => match m {
                    Some(HealthInput::Rows(rows)) => evaluator.observe(&rows, Instant::now()),
                    Some(HealthInput::Event(ev)) => evaluator.event(ev, Instant::now()),
                    None => break,
                },
                _ = tick.tick() => {
                    let rows = evaluator.evaluate(Instant::now(), now_ns());
                    for tx in &health_sinks {
                        let _ = tx.try_send(SinkMsg::Health(rows.clone()));
                    }
                    evaluator.save_baselines();
                }
            }
        }
        // A last evaluation, so that a short run (or the tail of a long one)
        // still leaves its verdicts in the health table and as spans.
        let rows = evaluator.evaluate(Instant::now(), now_ns());
        for tx in &health_sinks {
            let _ = tx.try_send(SinkMsg::Health(rows.clone()));
        }
        evaluator.save_baselines();
    });

    // ---- /metrics ----
    let mut metrics_addr = None;
    let mut metrics_task = None;
    if config.metrics.is_enabled() {
        let addr = config.metrics.listen.parse().context("metrics.listen")?;
        let mut rx = stop_rx.clone();
        let (bound, h) = crate::metrics::serve(addr, live.clone(), counters.clone(), async move {
            let _ = rx.changed().await;
        })
        .await
        .with_context(|| format!("failed to listen on {}", config.metrics.listen))?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
        on_metrics(bound);
        metrics_addr = Some(bound);
        metrics_task = Some(h);
    }

    // ---- node condition ----
    if config.health.node_condition {
        let o = &config.occupancy;
        match crate::occupancy::kube_api::client_config(
            o.kube_api,
            o.kubeconfig.as_deref(),
            o.kube_server_url.as_deref(),
        )
        .await
        {
            Ok(Some(cfg)) => match kube::Client::try_from(cfg) {
                Ok(client) => {
                    tokio::spawn(crate::node_condition::run(
                        client,
                        node.clone(),
                        live.clone(),
                        eval_every,
                        Duration::from_millis(config.health.node_condition_min_interval_ms),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node conditions disabled: cannot build a Kubernetes client")
                }
            },
            Ok(None) => tracing::warn!(
                "node conditions enabled but no Kubernetes API is configured; disabled"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::internal_events::error_chain(&e), "node conditions disabled")
            }
        }
    }

    // ---- probe threads ----
    let fanout = Arc::new(Fanout {
        sinks: sink_queues,
        health: Some(health_tx),
        counters: counters.clone(),
        summary: RunSummary::default(),
    });
    let stop = Arc::new(StopSignal::default());
    let mut threads = Vec::new();
    for backend in backends {
        let idx = backend.device().index;
        let backend_name = backend.device().backend;
        let spec = config.probe_spec(backend_name.as_str());
        let reopen: Option<Reopen> = factory.clone().map(|f| Box::new(move || f(idx)) as Reopen);
        let lp = ProbeLoop {
            backend,
            reopen,
            telemetry: telemetry.clone(),
            occupancy: occupancy.clone(),
            fanout: fanout.clone(),
            live: live.clone(),
            counters: counters.clone(),
            node: node.clone(),
            arrivals: config.arrival_plan(&spec),
            self_test: config.probe.self_test,
            stop: stop.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("probe-gpu{idx}"))
            .spawn(move || lp.run())
            .context("failed to start a probe thread")?;
        threads.push(h);
    }

    shutdown.await;
    let t0 = Instant::now();
    tracing::info!(
        deadline_ms = deadline.as_millis() as u64,
        "shutting down: stopping probes, draining sinks"
    );
    stop.stop();
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = tokio::time::timeout(deadline, joined).await;
    let summary = fanout.summary.rows();
    // Dropping the last fanout reference closes every sink queue; the
    // runners drain and call shutdown(deadline).
    drop(fanout);
    let remaining = deadline.saturating_sub(t0.elapsed());
    let _ = tokio::time::timeout(remaining, health_task).await;
    let mut clean = true;
    for t in sink_tasks {
        let left = deadline.saturating_sub(t0.elapsed());
        if tokio::time::timeout(left, t).await.is_err() {
            clean = false;
        }
    }
    if let Some(h) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    }
    if !clean {
        tracing::error!("a sink did not close within the shutdown deadline");
    }
    Ok(RunReport {
        summary,
        clean_shutdown: clean,
        metrics_addr,
    })
}
