//! Sinks: where probe records go (Parquet files, OTLP spans, ...).
//!
//! Each sink runs on its own task and is fed through its own bounded channel;
//! the probe loop only ever `try_send`s into it, so a slow or dead sink costs
//! dropped-and-counted records, never a stalled probe. [`run_sink`] is that
//! task: it batches what the channel holds, calls [`Sink::export`], answers
//! flush requests and, when the channel closes, shuts the sink down within a
//! deadline.

pub mod otlp;
pub mod parquet;

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use slicetrace_schema::{HealthRecord, ProbeRecord};
use tokio::sync::{mpsc, oneshot};

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
    fn export_health(
        &mut self,
        _records: Vec<HealthRecord>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
    /// Makes everything exported so far durable/visible.
    fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Flushes and releases resources within `deadline`.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// One message on a sink's channel.
#[derive(Debug)]
pub enum SinkMsg {
    /// Probe records to export.
    Probes(Vec<ProbeRecord>),
    /// Live-health evaluations to export.
    Health(Vec<HealthRecord>),
    /// Export everything received before this message, call
    /// [`Sink::force_flush`], then answer on the sender (also when the flush
    /// failed: failures are logged and counted by the sink).
    Flush(oneshot::Sender<()>),
}

/// Most probe records handed to one [`Sink::export`] call by [`run_sink`].
/// Bounds the memory of one batch while still coalescing bursts.
pub const RUNNER_MAX_BATCH_RECORDS: usize = 4096;

/// Runs one sink until its channel closes, then shuts it down.
///
/// Consecutive `Probes` (or `Health`) messages that are already waiting are
/// merged into one export call of at most [`RUNNER_MAX_BATCH_RECORDS`]
/// records, so a sink sees few, large batches when it falls behind. `Flush`
/// keeps its order: everything received before it is exported first. When
/// every sender is dropped, the runner exports what is left and calls
/// [`Sink::shutdown`] with `shutdown_deadline`.
///
/// Errors returned by the sink are logged at DEBUG only: each sink counts its
/// own failures in [`crate::internal_events::Counters`] and logs them at a
/// limited rate, so the runner does not log the same failure twice.
pub async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<SinkMsg>,
    shutdown_deadline: Duration,
) {
    let name = sink.name();
    // A message taken from the channel that did not fit the batch being
    // built; it starts the next round.
    let mut carry: Option<SinkMsg> = None;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        match first {
            SinkMsg::Probes(mut batch) => {
                while batch.len() < RUNNER_MAX_BATCH_RECORDS {
                    match rx.try_recv() {
                        Ok(SinkMsg::Probes(more)) => batch.extend(more),
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = sink.export(batch).await {
                    tracing::debug!(sink = name, error = %e, "sink export failed");
                }
            }
            SinkMsg::Health(mut batch) => {
                while batch.len() < RUNNER_MAX_BATCH_RECORDS {
                    match rx.try_recv() {
                        Ok(SinkMsg::Health(more)) => batch.extend(more),
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = sink.export_health(batch).await {
                    tracing::debug!(sink = name, error = %e, "sink health export failed");
                }
            }
            SinkMsg::Flush(ack) => {
                if let Err(e) = sink.force_flush().await {
                    tracing::debug!(sink = name, error = %e, "sink flush failed");
                }
                // The requester may have given up waiting; nothing to do then.
                let _ = ack.send(());
            }
        }
    }
    let start = Instant::now();
    match sink.shutdown(shutdown_deadline).await {
        Ok(()) => tracing::info!(
            sink = name,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "sink shut down"
        ),
        Err(e) => tracing::warn!(sink = name, error = %e, "sink shutdown incomplete"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log {
        calls: Vec<String>,
    }

    struct Recorder(Arc<Mutex<Log>>);

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn export(&mut self, records: Vec<ProbeRecord>) -> BoxFuture<'_, Result<(), SinkError>> {
            let log = self.0.clone();
            Box::pin(async move {
                log.lock()
                    .expect("lock")
                    .calls
                    .push(format!("probes:{}", records.len()));
                Ok(())
            })
        }
        fn export_health(
            &mut self,
            records: Vec<HealthRecord>,
        ) -> BoxFuture<'_, Result<(), SinkError>> {
            let log = self.0.clone();
            Box::pin(async move {
                log.lock()
                    .expect("lock")
                    .calls
                    .push(format!("health:{}", records.len()));
                Ok(())
            })
        }
        fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
            let log = self.0.clone();
            Box::pin(async move {
                log.lock().expect("lock").calls.push("flush".into());
                Ok(())
            })
        }
        fn shutdown(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
            let log = self.0.clone();
            Box::pin(async move {
                log.lock().expect("lock").calls.push("shutdown".into());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn runner_merges_batches_keeps_flush_order_and_shuts_down() {
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = mpsc::channel(16);
        // Queue everything before the runner starts, so merging is deterministic.
        tx.send(SinkMsg::Probes(vec![ProbeRecord::default(); 2]))
            .await
            .expect("send");
        tx.send(SinkMsg::Probes(vec![ProbeRecord::default(); 3]))
            .await
            .expect("send");
        let (ack_tx, ack_rx) = oneshot::channel();
        tx.send(SinkMsg::Flush(ack_tx)).await.expect("send");
        tx.send(SinkMsg::Health(vec![HealthRecord::default()]))
            .await
            .expect("send");
        tx.send(SinkMsg::Probes(vec![ProbeRecord::default()]))
            .await
            .expect("send");
        drop(tx);
        run_sink(Box::new(Recorder(log.clone())), rx, Duration::from_secs(1)).await;
        ack_rx.await.expect("flush answered");
        let calls = log.lock().expect("lock").calls.clone();
        assert_eq!(
            calls,
            ["probes:5", "flush", "health:1", "probes:1", "shutdown"]
        );
    }
}
