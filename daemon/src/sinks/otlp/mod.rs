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
//!
//! Where each job lives, in the order a record meets them:
//!
//! - `ids.rs`: trace and span ids ([`new_trace_id`], [`root_span_id`]);
//! - `config.rs`: the `[otlp]` table, the `OTEL_*` environment and the one
//!   endpoint rule ([`OtlpConfig`], [`endpoint_url`]);
//! - `attributes.rs`: what each span says, and the resource;
//! - `spans.rs`: records to spans;
//! - `queue.rs`: the bounded queue and the root-span state machine;
//! - `exporter.rs`: the gRPC or HTTP exporter, TLS;
//! - `task.rs`: the export loop;
//! - this file: [`OtlpSink`], the [`Sink`] that ties them together.

mod attributes;
mod config;
mod exporter;
mod ids;
mod queue;
mod spans;
mod task;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opentelemetry::InstrumentationScope;
use slicetrace_schema::{HealthRecord, ProbeRecord};
use tokio::sync::{mpsc, oneshot};

pub use attributes::{build_resource, extra_attr, run_attributes, DEFAULT_SERVICE_NAME};
pub use config::{endpoint_url, OtlpConfig, OtlpProtocol};
pub use ids::{new_span_id, new_trace_id, root_span_id};

use super::{Sink, SinkError};
use crate::internal_events::Counters;
use queue::Shared;
use task::{Ctl, ExportTask};

const SINK_NAME: &str = "otlp";
/// Shortest time a cycle's root span waits for more runs of its cycle.
pub const ROOT_LINGER_MIN: Duration = Duration::from_secs(2);

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
        let exporter = exporter::build_exporter(&config, &resource)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let interval = Duration::from_millis(config.export_interval_ms);
        let scope = InstrumentationScope::builder(DEFAULT_SERVICE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let shared = Arc::new(Shared::new(
            counters,
            scope,
            config.queue_capacity,
            config.max_export_batch,
        ));
        let (ctl, ctl_rx) = mpsc::channel(4);
        let task = ExportTask {
            exporter,
            shared: shared.clone(),
            timeout,
            linger: ROOT_LINGER_MIN.max(interval * 2),
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
