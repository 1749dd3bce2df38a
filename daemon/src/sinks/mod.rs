//! Sinks: where probe records go (Parquet files, OTLP spans, ...).
//!
//! Each sink runs on its own task and is fed through its own bounded channel;
//! the probe loop only ever `try_send`s into it, so a slow or dead sink costs
//! dropped-and-counted records, never a stalled probe.

use std::time::Duration;

use futures::future::BoxFuture;
use slicetrace_schema::{HealthRecord, ProbeRecord};

/// Errors a sink reports. The runner logs and counts them; they never stop
/// the agent.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// I/O failed (disk full, permissions, ...).
    #[error("{sink}: i/o failed: {context}")]
    Io {
        /// Sink name.
        sink: &'static str,
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure, with its cause.
    #[error("{sink}: {context}")]
    Other {
        /// Sink name.
        sink: &'static str,
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The sink seam (modelled on opentelemetry-rust's `SpanExporter`).
///
/// Contract: methods are called from one task, one at a time, never
/// concurrently. `export` may await I/O but must honour its own timeout and
/// return an error rather than hang. `shutdown` must finish within
/// `deadline`, leaving no half-written output visible.
pub trait Sink: Send + 'static {
    /// Short name for logs and metrics (`parquet`, `otlp`).
    fn name(&self) -> &'static str;
    /// Exports a batch of probe records.
    fn export(&mut self, records: Vec<ProbeRecord>) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Exports live-health evaluations. Sinks that do not store them ignore them.
    fn export_health(&mut self, _records: Vec<HealthRecord>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
    /// Makes everything exported so far durable/visible.
    fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Flushes and releases resources within `deadline`.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>>;
}
