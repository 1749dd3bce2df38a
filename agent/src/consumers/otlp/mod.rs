//! OTLP sink: every probe arrival becomes one trace, sent to an OpenTelemetry
//! collector over gRPC or HTTP/protobuf.
//!
//! Trace model with Poisson arrivals (the default; one trace per arrival,
//! [`TraceShape::PerRun`]):
//!
//! ```text
//! probe fft                        ts .. ts + wall_ms      (root; id = ProbeRecord.span_id)
//! ├─ queued                        ts .. ts + queue_ms
//! └─ executing                     ts + queue_ms .. + gpu_ms
//! ```
//!
//! With `probe.arrivals = "burst"`, one trace per probe cycle of one GPU
//! ([`TraceShape::PerCycle`]):
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
//! [`crate::probe::ids::new_trace_id`] / [`crate::probe::ids::new_span_id`]) before a
//! record reaches any consumer, so the Parquet row and the run span agree.
//! The root span's id is derived from the trace id ([`root_span_id`]), so run
//! spans can name their parent before the cycle is complete, and records of
//! one cycle may arrive over several messages. The root span itself is emitted once its cycle is over:
//! when a later cycle of the same GPU shows up, when no run of the cycle has
//! arrived for [`ROOT_LINGER_MIN`] (or two export intervals, if longer), or on
//! flush/shutdown. Its extent is that of the runs seen until then; a run that
//! arrives after its root was emitted is still exported under the same root
//! id, and no second root is made.
//!
//! We use opentelemetry-otlp's `SpanExporter` directly, not the SDK's batch
//! processor, so that the one batch is ours: the sink is one task
//! (`task.rs`) that reads its own bounded input queue (fed by the fan-outs),
//! turns records into spans at once and keeps them in one bounded span queue
//! (`queue.rs`), dropping and counting what does not fit. It sends full
//! batches as soon as they are queued and everything every
//! `export_interval_ms`, each request bounded by `timeout_ms`. When the
//! collector is down or slow, the batch is dropped and counted and a WARN
//! line is logged at most once a minute; the next batch tries again, so
//! export resumes by itself when the collector returns.
//!
//! Where each job lives, in the order a record meets them:
//!
//! - `otel_ids.rs`: ids as opentelemetry's, and root span ids ([`root_span_id`]);
//! - `config.rs`: the `[otlp]` table, the `OTEL_*` environment and the one
//!   endpoint rule ([`OtlpConfig`], [`endpoint_url`]);
//! - `sampler.rs`: which span trees are exported ([`SpanSampler`]; it runs
//!   in the fan-outs, before any consumer sees a row, so the Parquet row
//!   says what the collector got);
//! - `attributes.rs`: what each span says, and the resource;
//! - `spans.rs`: records to spans;
//! - `queue.rs`: the bounded span queue and the root-span state machine;
//! - `exporter.rs`: the gRPC or HTTP exporter, TLS;
//! - `task.rs`: the one loop: input queue → spans → batches → exporter;
//! - this file: [`OtlpSink`], the [`Sink`] handle that starts the task.

mod attributes;
mod config;
mod exporter;
mod otel_ids;
mod queue;
mod sampler;
mod spans;
mod task;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opentelemetry::InstrumentationScope;

pub use attributes::{build_resource, extra_attr, run_attributes, DEFAULT_SERVICE_NAME};
pub use config::{endpoint_url, OtlpConfig, OtlpProtocol, SamplerName};
pub use otel_ids::root_span_id;
pub use sampler::SpanSampler;

use super::{log_shutdown, request_shutdown, Sink, SinkError};
use crate::internal_events::{Counters, InternalEvent, OtlpSpansDropped};
use crate::topology::{task_queue, Msg, QueueError, Tx};
use queue::SpanQueue;
use task::{margin, ExportTask};

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
    /// A flush did not finish within its deadline; what was still queued
    /// is dropped and counted.
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

/// How records map to traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceShape {
    /// Every record is its own trace, with its run span as the root
    /// (Poisson arrivals: one run per arrival).
    PerRun,
    /// The runs of one probe cycle share a trace under a `probe_cycle` root
    /// (`probe.arrivals = "burst"`).
    PerCycle,
}

/// The OTLP sink: the sending end of the export task's input queue, and
/// the task.
#[derive(Debug)]
pub struct OtlpSink {
    input: Tx,
    timeout: Duration,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Spans the task holds and has not counted (see `queue.rs`).
    pending: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl OtlpSink {
    /// Builds the exporter and starts the export task, reading a queue of
    /// `queue_msgs` messages. Must be called from within a Tokio runtime.
    /// `host_name` becomes `host.name`, `k8s_node_name` (when running in a
    /// cluster) `k8s.node.name`.
    ///
    /// Fails on an invalid or disabled config (no endpoint), an unreadable
    /// TLS file, or an exporter that refuses the settings. Does not connect:
    /// the collector may come up later.
    pub fn new(
        config: OtlpConfig,
        host_name: &str,
        k8s_node_name: Option<&str>,
        counters: Arc<Counters>,
        queue_msgs: usize,
        shape: TraceShape,
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
        let queue = SpanQueue::new(
            counters.clone(),
            scope,
            config.queue_capacity,
            config.max_export_batch,
            shape,
        );
        let pending = queue.pending();
        let (input, rx) = task_queue(queue_msgs);
        let task = ExportTask {
            exporter,
            queue,
            timeout,
            interval,
            linger: ROOT_LINGER_MIN.max(interval * 2),
        };
        let task = tokio::spawn(task.run(rx));
        tracing::info!(
            endpoint = config.endpoint.as_deref().unwrap_or_default(),
            protocol = ?config.protocol,
            timeout_ms = config.timeout_ms,
            "otlp sink started"
        );
        Ok(Self {
            input,
            timeout,
            task: Some(task),
            pending,
            counters,
        })
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        SINK_NAME
    }

    fn input(&self) -> &Tx {
        &self.input
    }

    /// Emits every pending root span and sends everything queued, within
    /// the export timeout; what is not sent by then is dropped and counted.
    fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let by = Instant::now() + self.timeout;
            match self.input.request(Msg::Flush, Some(by)).await {
                Ok(r) => r,
                Err(QueueError::Full | QueueError::NoAnswer) => {
                    Err(OtlpError::Deadline(self.timeout).into())
                }
                Err(QueueError::Closed) => Err(OtlpError::TaskGone.into()),
            }
        })
    }

    /// Flushes within `deadline`, then stops the export task. A task that
    /// does not answer in time (stuck in an export to a hung collector) is
    /// aborted and the spans it held are counted as dropped: nothing is lost
    /// uncounted, so that is an error for the log but not a late sink.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let started = Instant::now();
            // The task stops sending a little before the deadline, so that
            // it can count what it drops and answer before we stop waiting.
            let by = started + deadline.saturating_sub(margin(deadline));
            let mut r = request_shutdown(SINK_NAME, &self.input, by, started + deadline).await;
            if let Some(t) = self.task.take() {
                if r.is_err() {
                    t.abort();
                    if r.as_ref().is_err_and(SinkError::is_late) {
                        r = Err(OtlpError::Deadline(deadline).into());
                    }
                }
                let _ = t.await;
                let left = self.pending.swap(0, Ordering::SeqCst);
                OtlpSpansDropped {
                    dropped: left,
                    why: Some("shutdown deadline passed"),
                }
                .emit(&self.counters);
            }
            log_shutdown(SINK_NAME, started, &r);
            r
        })
    }
}
