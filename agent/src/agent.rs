//! The agent: [`build`] opens everything from the config, [`Agent::run`]
//! runs it until the root shutdown signal and stops it in order. Read top to
//! bottom, this file is the whole road of a record:
//!
//! 1. [`build`]: one backend per GPU, each with the probe spec of its kind,
//!    computed once ([`open::open_gpus`]; `auto` falls back to the CPU);
//!    the telemetry source that matches them (NVML or none).
//! 2. [`Agent::run`]: occupancy (started in the background), then the
//!    consumers of the probe rows, each with one bounded queue and one loop,
//!    fed by one fan-out ([`crate::topology`]):
//!    the Parquet writer thread (`consumers/parquet/`), if enabled; the OTLP
//!    export task (`consumers/otlp/`), if an endpoint is set; the health
//!    evaluator (`consumers/health/task.rs`), whose verdicts go out to those two
//!    sinks through their own fan-out; the exit summary (`consumers/summary.rs`);
//!    then `/metrics` and the node condition, which read the live state the
//!    evaluator writes; the shipper of the closed files (`consumers/ship.rs`),
//!    if `[ship]` is on; then one probe thread per GPU (`probe/mod.rs`).
//! 3. The stop order (Vector's `shutdown_all(deadline)`): the probe threads
//!    first, then each consumer in turn, upstream before downstream, each
//!    with a [`crate::topology::Msg::Shutdown`] queued behind what it still
//!    holds, so it drains, flushes and closes within the one deadline
//!    (every Parquet file gets its footer and is renamed into place; OTLP
//!    sends its queue); last the shipper, whose last pass within the same
//!    deadline takes the files the writer just closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use slicetrace_probe::{ProbeBackend, ProbeError};
use tokio::sync::watch;

use crate::config::Config;
use crate::consumers::health::Evaluator;
use crate::consumers::otlp::{OtlpSink, TraceShape};
use crate::consumers::parquet::ParquetSink;
use crate::consumers::summary::{RunSummary, SummaryRow};
use crate::consumers::Sink;
use crate::internal_events::{Counters, QueueOwner};
use crate::probe::occupancy::OccupancySource;
use crate::probe::telemetry::TelemetrySource;
use crate::probe::{ArrivalPlan, ProbeLoop, Reopen, StopSignal};
use crate::serve::live::LiveState;
use crate::topology::{Consumer, Fanout, Outlet};

mod open;

pub use open::{open_gpu, opener, Gpu};

/// A function that re-opens the backend for a device index (tests wrap
/// their backends with one, see [`Agent::reopen_with`]).
pub type BackendFactory =
    Arc<dyn Fn(u32) -> Result<Box<dyn ProbeBackend>, ProbeError> + Send + Sync>;

/// Everything the agent runs with: built from the config by [`build`], or
/// by tests with injected (faulty) backends and telemetry
/// ([`Agent::new`]).
pub struct Agent {
    /// Final configuration.
    pub config: Config,
    /// Resolved node name.
    pub node: String,
    /// One entry per probed device.
    pub gpus: Vec<Gpu>,
    /// NVML or none.
    pub telemetry: Arc<dyn TelemetrySource>,
    /// Occupancy; `None` starts the configured sources.
    pub occupancy: Option<Arc<dyn OccupancySource>>,
    /// Counters (shared with the caller for inspection).
    pub counters: Arc<Counters>,
    /// Live state (shared with the caller for inspection).
    pub live: Arc<LiveState>,
    /// Ships closed files to S3 (`[ship]`); `None` when off.
    pub shipper: Option<slicetrace_ship::Shipper>,
}

/// Builds the agent from a validated config: every GPU's backend (with the
/// CPU fallback of `backend = "auto"`) and the telemetry that matches them.
/// Nothing runs until [`Agent::run`].
pub fn build(config: Config) -> Result<Agent> {
    let live = Arc::new(LiveState::default());
    let gpus = open::open_gpus(&config, &live)?;
    let telemetry = open::telemetry_for(&config, &gpus);
    let shipper = crate::consumers::ship::build(&config.ship, &config.data_dir)
        .context("failed to set up shipping ([ship])")?;
    Ok(Agent {
        node: config.resolved_node_name(),
        gpus,
        telemetry,
        occupancy: None,
        counters: Arc::new(Counters::default()),
        live,
        shipper,
        config,
    })
}

impl Agent {
    /// An agent over backends opened by the caller (tests, tools), with the
    /// configured occupancy sources, fresh counters and live state, and no
    /// shipper (set [`Agent::shipper`] to ship).
    pub fn new(
        config: Config,
        backends: Vec<Box<dyn ProbeBackend>>,
        telemetry: Arc<dyn TelemetrySource>,
    ) -> Self {
        let gpus = backends
            .into_iter()
            .map(|b| Gpu::opened(b, &config))
            .collect();
        Self::with_gpus(config, gpus, telemetry)
    }

    /// An agent over GPUs prepared by the caller, some of which may not
    /// have opened ([`Gpu::unopened`]: tests of a GPU that fails to open).
    pub fn with_gpus(config: Config, gpus: Vec<Gpu>, telemetry: Arc<dyn TelemetrySource>) -> Self {
        Self {
            node: config.resolved_node_name(),
            gpus,
            telemetry,
            occupancy: None,
            counters: Arc::new(Counters::default()),
            live: Arc::new(LiveState::default()),
            shipper: None,
            config,
        }
    }

    /// Every GPU reopens through `factory` (called with its index).
    pub fn reopen_with(mut self, factory: BackendFactory) -> Self {
        for g in &mut self.gpus {
            let (f, i) = (factory.clone(), g.index);
            g.reopen = Some(Arc::new(move || f(i)) as Reopen);
        }
        self
    }
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

impl Agent {
    /// Runs the agent until `shutdown` resolves, then shuts down within the
    /// configured deadline. `on_metrics` receives the bound metrics address.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
        on_metrics: impl FnOnce(std::net::SocketAddr),
    ) -> Result<RunReport> {
        let Agent {
            config,
            node,
            gpus,
            telemetry,
            occupancy,
            counters,
            live,
            shipper,
        } = self;
        // Every series carries this node; every GPU is known before its first
        // probe run (slicetrace_gpu_info, slicetrace_backend_up, /readyz).
        live.set_node(&node);
        for g in &gpus {
            let mut e = crate::serve::live::GpuEntry::new(g.index, g.name.clone(), g.kind.as_str());
            if let Some(why) = &g.open_error {
                e.down = Some(why.clone());
                e.down_reason = Some(slicetrace_schema::Reason::OpenFailed);
            }
            live.register_gpu(&g.uuid, e);
        }
        let telemetry =
            crate::probe::telemetry::with_process_names(telemetry, config.process_names);
        let deadline = Duration::from_millis(config.shutdown_deadline_ms);
        let (stop_tx, stop_rx) = watch::channel(false);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("failed to create data_dir {}", config.data_dir.display()))?;

        let occupancy: Arc<dyn OccupancySource> = match occupancy {
            Some(o) => o,
            None => match crate::probe::occupancy::start(
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
                None => Arc::new(crate::probe::occupancy::NoOccupancy),
            },
        };

        // ---- the consumers: one bounded queue and one loop each ----
        // The sampling design is the same for every GPU; only burst sizes may
        // differ by backend. The largest message sizes the queues.
        let plans: Vec<ArrivalPlan> = gpus
            .iter()
            .map(|g| ArrivalPlan::new(&config.probe, &g.spec))
            .collect();
        let consumers = Consumers::start(&config, &node, &counters, &live, &plans)?;
        let fanout = Arc::new(consumers.probe_fanout(&counters));
        tracing::info!(consumers = ?fanout.names(), "fan-out ready");
        // /healthz: a consumer loop found gone, or every probe thread silent
        // for longer than a run, an open or a back-off may take.
        let weak = Arc::downgrade(&fanout);
        live.liveness.set_consumer_check(Box::new(move || {
            weak.upgrade().map(|f| f.closed()).unwrap_or_default()
        }));
        let watchdogs: Vec<_> = gpus
            .iter()
            .map(|g| config.watchdog.resolve(config.preset, g.index))
            .collect();
        if let Some(w) = watchdogs.first() {
            live.liveness.set_stall_after(w.stall_after(16));
        }

        // ---- /metrics ----
        let mut metrics_addr = None;
        let mut metrics_task = None;
        if config.metrics.is_enabled() {
            let addr = config.metrics.listen.parse().context("metrics.listen")?;
            let mut rx = stop_rx.clone();
            let (bound, h) =
                crate::serve::metrics::serve(addr, live.clone(), counters.clone(), async move {
                    let _ = rx.changed().await;
                })
                .await
                .with_context(|| format!("failed to listen on {}", config.metrics.listen))?;
            tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
            on_metrics(bound);
            metrics_addr = Some(bound);
            metrics_task = Some(h);
        }

        // ---- shipping the closed files (no queue: it reads the disk) ----
        let ship = shipper.map(|s| crate::consumers::ship::ShipTask::start(s, &live));

        // ---- node condition ----
        let node_condition = if config.health.node_condition {
            start_node_condition(&config, &node, &live, stop_rx.clone()).await
        } else {
            None
        };

        // ---- probe threads ----
        let stop = Arc::new(StopSignal::default());
        let mut threads = Vec::new();
        let driver_gate = Arc::new(crate::probe::upgrade::DriverGate::new());
        driver_gate.note_version(telemetry.as_ref(), &counters);
        for ((gpu, arrivals), watchdog) in gpus.into_iter().zip(plans).zip(watchdogs) {
            let Gpu {
                index,
                uuid,
                backend,
                open_error,
                reopen,
                ..
            } = gpu;
            let idx = index;
            let lp = ProbeLoop {
                slot: crate::probe::GpuSlot {
                    index,
                    uuid,
                    backend,
                    open_error,
                },
                opener: reopen,
                watchdog,
                telemetry: telemetry.clone(),
                occupancy: occupancy.clone(),
                fanout: fanout.clone(),
                live: live.clone(),
                counters: counters.clone(),
                node: node.clone(),
                arrivals,
                self_test: config.probe.self_test,
                process_list_max_age: config.probe.process_list_max_age(),
                busy_tenants_interval: config.probe.busy_tenants_interval(),
                busy_window: config.probe.busy_window(),
                driver_gate: driver_gate.clone(),
                stop: stop.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("probe-gpu{idx}"))
                .spawn(move || lp.run())
                .context("failed to start a probe thread")?;
            threads.push(h);
        }

        // ---- the GPUs' own fault reports (NVML events) ----
        if let Some(h) = crate::probe::telemetry::spawn_fault_watch(
            telemetry.clone(),
            live.clone(),
            counters.clone(),
            stop.clone(),
        ) {
            threads.push(h);
        }

        shutdown.await;
        let by = Instant::now() + deadline;
        tracing::info!(
            deadline_ms = deadline.as_millis() as u64,
            "shutting down: stopping probes, then draining each consumer"
        );
        // 1. The probe threads and the background watchers.
        stop.stop();
        let _ = stop_tx.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = tokio::time::timeout_at(by.into(), joined).await;
        // The node condition's last patch (`Unknown`: not observed).
        if let Some(h) = node_condition {
            let _ = tokio::time::timeout_at(by.into(), h).await;
        }
        let summary_dropped = fanout.dropped(crate::consumers::summary::NAME).unwrap_or(0);
        drop(fanout);
        // 2. Each consumer, in order, drains its queue and stops.
        let (summary, clean) = consumers.stop(by, deadline, summary_dropped).await;
        // 3. The shipper, after the writer closed its files: a last pass.
        if let Some(t) = ship {
            if t.stop(by).await.is_none() {
                tracing::warn!("shipping did not stop within the shutdown deadline");
            }
        }
        if let Some(h) = metrics_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
        }
        if !clean {
            tracing::error!("a consumer did not close within the shutdown deadline");
        }
        Ok(RunReport {
            summary,
            clean_shutdown: clean,
            metrics_addr,
        })
    }
}

/// The consumers of the probe rows, each with one bounded queue and one
/// loop.
struct Consumers {
    /// The Parquet writer thread, if enabled.
    parquet: Option<ParquetSink>,
    /// The rollups writer thread (with the Parquet sink).
    rollups: Option<crate::consumers::rollups::RollupSink>,
    /// The OTLP export task, if an endpoint is set.
    otlp: Option<OtlpSink>,
    /// The health evaluator; its verdicts go to the sinks above.
    health: Consumer<()>,
    /// The exit summary.
    summary: Consumer<RunSummary>,
    /// Which span trees are exported (with the OTLP exporter only).
    sampler: Option<Arc<dyn crate::topology::SpanSampling>>,
}

impl Consumers {
    /// Starts every consumer, sinks first (the evaluator's own fan-out
    /// needs their queues).
    fn start(
        config: &Config,
        node: &str,
        counters: &Arc<Counters>,
        live: &Arc<LiveState>,
        plans: &[ArrivalPlan],
    ) -> Result<Self> {
        // The arrival plans size the queues (rows per message) and shape the
        // traces (one per run, or one per burst cycle).
        let rows_per_send = plans
            .iter()
            .map(ArrivalPlan::rows_per_send)
            .max()
            .unwrap_or(1);
        let queue_msgs = (config.sink_queue_records / rows_per_send.max(1)).max(4);
        let parquet = if config.parquet.enabled {
            let sink = ParquetSink::new(
                config.parquet.clone(),
                config.data_dir.clone(),
                node,
                counters.clone(),
                queue_msgs,
            )
            .context("failed to start the parquet sink")?;
            Some(sink)
        } else {
            None
        };
        let rollups = if config.parquet.enabled {
            Some(
                crate::consumers::rollups::RollupSink::new(
                    config.data_dir.clone(),
                    node,
                    queue_msgs,
                )
                .context("failed to start the rollups writer")?,
            )
        } else {
            None
        };
        let otlp = if config.otlp.is_enabled() {
            let shape = match config.probe.arrivals.unwrap_or_default() {
                crate::probe::config::Arrivals::Poisson => TraceShape::PerRun,
                crate::probe::config::Arrivals::Burst => TraceShape::PerCycle,
            };
            let k8s_node = (!config.node_name.is_empty()).then_some(node);
            let sink = OtlpSink::new(
                config.otlp.clone(),
                &crate::config::host_name(),
                k8s_node,
                counters.clone(),
                queue_msgs,
                shape,
            )
            .context("failed to start the otlp sink")?;
            Some(sink)
        } else {
            tracing::info!("no OTLP endpoint configured: spans are not exported");
            None
        };
        let sampler = otlp.as_ref().map(|_| {
            let trees_per_sec = plans.iter().map(trees_per_sec).fold(0.0, f64::max);
            Arc::new(crate::consumers::otlp::SpanSampler::new(
                &config.otlp,
                trees_per_sec,
                live.clone(),
                counters.clone(),
            )) as Arc<dyn crate::topology::SpanSampling>
        });
        let verdicts = sink_fanout(parquet.as_ref(), otlp.as_ref(), counters, &sampler);
        let evaluator = Evaluator::new(
            config.health.clone(),
            node.to_string(),
            live.clone(),
            Some(&config.data_dir),
        );
        let every = Duration::from_millis(config.health.evaluate_interval_ms);
        let health = crate::consumers::health::spawn(evaluator, queue_msgs, verdicts, every);
        let summary = crate::consumers::summary::spawn(queue_msgs);
        Ok(Self {
            parquet,
            rollups,
            otlp,
            health,
            summary,
            sampler,
        })
    }

    /// The probe rows' fan-out: every consumer's queue.
    fn probe_fanout(&self, counters: &Arc<Counters>) -> Fanout {
        let (h, s) = (&self.health, &self.summary);
        sink_fanout(
            self.parquet.as_ref(),
            self.otlp.as_ref(),
            counters,
            &self.sampler,
        )
        .with_opt(self.rollups.as_ref().map(|r| {
            // Its drops count as the Parquet output's (the rollups are
            // part of it).
            Outlet::new(r.name(), r.input().clone(), QueueOwner::Parquet)
        }))
        .with(Outlet::new(h.name(), h.input().clone(), QueueOwner::Health).with_events())
        .with(Outlet::new(
            s.name(),
            s.input().clone(),
            QueueOwner::Summary,
        ))
    }

    /// Stops every consumer in order, upstream first, within `by` (the end
    /// of the shutdown budget `deadline`): the summary, the evaluator (its
    /// last verdicts still reach the sinks), then the Parquet writer and the
    /// OTLP exporter. Returns the exit table and whether every consumer
    /// closed in time (a sink's own errors, such as a full disk, are counted
    /// and logged, and do not make the shutdown unclean).
    async fn stop(
        self,
        by: Instant,
        deadline: Duration,
        summary_dropped: u64,
    ) -> (Vec<SummaryRow>, bool) {
        // A task consumer answers a little before the deadline, so that the
        // sinks after it (a hung collector may need its whole budget) still
        // get their turn inside it.
        let margin = (deadline / 10).min(Duration::from_millis(500));
        let answer_by = by.checked_sub(margin).unwrap_or(by);
        let summary = self.summary.stop(answer_by).await;
        let mut clean = summary.is_some();
        if summary_dropped > 0 {
            tracing::warn!(
                runs = summary_dropped,
                "exit summary queue was full: these runs are missing from the tail table"
            );
        }
        clean &= self.health.stop(answer_by).await.is_some();
        let sinks: [Option<Box<dyn Sink>>; 3] = [
            self.parquet.map(|s| Box::new(s) as Box<dyn Sink>),
            self.rollups.map(|s| Box::new(s) as Box<dyn Sink>),
            self.otlp.map(|s| Box::new(s) as Box<dyn Sink>),
        ];
        for mut s in sinks.into_iter().flatten() {
            let left = by.saturating_duration_since(Instant::now());
            clean &= !s.shutdown(left).await.is_err_and(|e| e.is_late());
        }
        let rows = summary.map(|s| s.rows()).unwrap_or_default();
        (rows, clean)
    }
}

/// A fan-out to the sinks' queues: the evaluator's verdicts take it, and
/// the probe rows' fan-out starts from it.
fn sink_fanout(
    parquet: Option<&ParquetSink>,
    otlp: Option<&OtlpSink>,
    counters: &Arc<Counters>,
    sampler: &Option<Arc<dyn crate::topology::SpanSampling>>,
) -> Fanout {
    let mut f = Fanout::new(counters.clone());
    if let Some(s) = sampler {
        f = f.with_sampler(s.clone());
    }
    if let Some(s) = parquet {
        f = f.with(Outlet::new(
            s.name(),
            s.input().clone(),
            QueueOwner::Parquet,
        ));
    }
    if let Some(s) = otlp {
        f = f.with(Outlet::new(s.name(), s.input().clone(), QueueOwner::Otlp));
    }
    f
}

/// Span trees one GPU makes per second under `plan`: one per arrival, or
/// one per burst cycle (for the sampler's default ratio).
fn trees_per_sec(plan: &ArrivalPlan) -> f64 {
    match plan {
        ArrivalPlan::Poisson { rate_hz } => *rate_hz,
        ArrivalPlan::Burst { interval, .. } => 1.0 / interval.as_secs_f64().max(1e-3),
    }
}

/// Starts the node-condition task, if a Kubernetes client can be built.
async fn start_node_condition(
    config: &Config,
    node: &str,
    live: &Arc<LiveState>,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let o = &config.occupancy;
    match crate::probe::occupancy::kube_api::client_config(
        o.kube_api,
        o.kubeconfig.as_deref(),
        o.kube_server_url.as_deref(),
    )
    .await
    {
        Ok(Some(cfg)) => match kube::Client::try_from(cfg) {
            Ok(client) => {
                return Some(tokio::spawn(crate::serve::node_condition::run(
                    client,
                    node.to_string(),
                    live.clone(),
                    Duration::from_millis(config.health.evaluate_interval_ms),
                    Duration::from_millis(config.health.node_condition_min_interval_ms),
                    stop,
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "node conditions disabled: cannot build a Kubernetes client")
            }
        },
        Ok(None) => {
            tracing::warn!("node conditions enabled but no Kubernetes API is configured; disabled")
        }
        Err(e) => {
            tracing::warn!(error = %crate::internal_events::error_chain(&e), "node conditions disabled")
        }
    }
    None
}
