//! Sinks: where records leave the agent (Parquet files, OTLP spans).
//!
//! A sink is one consumer of the fan-out ([`crate::topology`]): it owns one
//! bounded input queue and one loop that reads it (Vector's shape: the
//! component runs `run(self, input)`, and batching, retries and
//! acknowledgements live inside that loop, not in a generic runner around
//! it). The Parquet writer is a thread that reads its `std` queue directly;
//! the OTLP exporter is one task that batches spans once. The fan-outs
//! `try_send` into the queue, so a slow or dead sink costs dropped and
//! counted records, never a stalled probe. [`Sink`] is the handle to a
//! running sink.

pub mod health;
pub mod otlp;
pub mod parquet;
pub mod rollups;
pub mod ship;
pub mod summary;

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use slicetrace_schema::{HealthRecord, ProbeRecord};

use crate::topology::{Msg, QueueError, SinkError, Tx};

/// The handle to a running sink (the seam, modelled on opentelemetry-rust's
/// `SpanExporter`).
///
/// Contract: the sink's loop owns its input queue ([`Sink::input`]); the
/// agent's fan-outs `try_send` into it and never wait. The methods here are
/// for callers that may wait (the stop sequence, tests, tools): `export`
/// and `export_health` wait only for room in the queue, never for I/O;
/// `force_flush` answers once everything queued before it is durable or
/// sent (or failed, counted and logged); `shutdown` must finish within
/// `deadline`, leaving no half-written output visible. Call them from one
/// task at a time.
pub trait Sink: Send {
    /// Short name for logs and metrics (`parquet`, `otlp`).
    fn name(&self) -> &'static str;

    /// The sink's one bounded input queue.
    fn input(&self) -> &Tx;

    /// Queues probe records (waits for room, never for I/O).
    fn export(&mut self, records: Vec<ProbeRecord>) -> BoxFuture<'_, Result<(), SinkError>> {
        queue(
            self.name(),
            self.input().clone(),
            Msg::Probes(records.into()),
        )
    }

    /// Queues live-health evaluations (waits for room, never for I/O).
    fn export_health(
        &mut self,
        records: Vec<HealthRecord>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        queue(
            self.name(),
            self.input().clone(),
            Msg::Health(records.into()),
        )
    }

    /// Makes everything queued so far durable or visible.
    fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        let (sink, input) = (self.name(), self.input().clone());
        Box::pin(async move { answer(sink, input.request(Msg::Flush, None).await) })
    }

    /// Handles what is queued, flushes and stops the loop within `deadline`.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// Queues `m` on `input`, waiting for room.
fn queue(sink: &'static str, input: Tx, m: Msg) -> BoxFuture<'static, Result<(), SinkError>> {
    Box::pin(async move {
        input
            .send(m, None)
            .await
            .map_err(|source| SinkError::Queue { sink, source })
    })
}

/// Sends [`Msg::Shutdown`] with the deadline `by` on `input` and waits for
/// the answer until `wait_until` (`by` plus whatever margin the sink keeps
/// for answering): the first half of every sink's `shutdown`.
pub(crate) async fn request_shutdown(
    sink: &'static str,
    input: &Tx,
    by: Instant,
    wait_until: Instant,
) -> Result<(), SinkError> {
    let sent = input
        .request(|ack| Msg::Shutdown { by, ack }, Some(wait_until))
        .await;
    answer(sink, sent)
}

/// Flattens a control's answer into the sink's error.
fn answer(
    sink: &'static str,
    r: Result<Result<(), SinkError>, QueueError>,
) -> Result<(), SinkError> {
    r.map_err(|source| SinkError::Queue { sink, source })?
}

/// Logs how a sink's shutdown went (the agent's stop sequence and tests).
pub(crate) fn log_shutdown(sink: &'static str, started: Instant, r: &Result<(), SinkError>) {
    match r {
        Ok(()) => tracing::info!(
            sink,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sink shut down"
        ),
        Err(e) => tracing::warn!(
            sink,
            error = %crate::internal_events::error_chain(e),
            "sink shutdown incomplete"
        ),
    }
}
