//! The export task: the one loop that owns the exporter. Every
//! `export_interval_ms` it emits the roots of cycles that have gone quiet
//! and sends everything queued; when the queue holds a full batch it is
//! woken early and sends full batches. Each request is bounded by
//! `timeout_ms`; a failed one is dropped and counted, and the next tries
//! again. [`OtlpSink`](super::OtlpSink)'s flush and shutdown reach it
//! through [`Ctl`] and wait for its answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_otlp::SpanExporter as OtlpSpanExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, oneshot};

use super::queue::Shared;
use crate::internal_events::{InternalEvent, OtlpExportFailed, OtlpSpansExported};

/// Requests to the export task.
#[derive(Debug)]
pub(super) enum Ctl {
    /// Emit every pending root, send everything queued before `deadline`.
    Flush {
        deadline: Instant,
        ack: oneshot::Sender<()>,
    },
    /// Flush, shut the exporter down and stop.
    Shutdown {
        deadline: Instant,
        ack: oneshot::Sender<()>,
    },
}

/// The export loop's state; [`ExportTask::run`] consumes it.
pub(super) struct ExportTask {
    pub(super) exporter: OtlpSpanExporter,
    pub(super) shared: Arc<Shared>,
    /// Limit of one export request.
    pub(super) timeout: Duration,
    /// How long a root waits for more runs of its cycle.
    pub(super) linger: Duration,
}

impl ExportTask {
    /// Sends queued spans in batches: all that are queued now (`all`), or
    /// only full batches. Stops at `deadline`, dropping what is left.
    async fn send(&mut self, all: bool, deadline: Option<Instant>) {
        let mut budget = self.shared.lock().spans.len();
        while budget > 0 {
            let batch: Vec<SpanData> = {
                let mut q = self.shared.lock();
                if !all && q.spans.len() < self.shared.batch {
                    return;
                }
                let n = q.spans.len().min(self.shared.batch).min(budget);
                q.spans.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            budget -= batch.len();
            self.shared
                .in_flight
                .store(batch.len() as u64, Ordering::SeqCst);
            let mut limit = self.timeout;
            if let Some(d) = deadline {
                limit = limit.min(d.saturating_duration_since(Instant::now()));
            }
            let started = Instant::now();
            let res = tokio::time::timeout(limit, self.exporter.export(batch)).await;
            let n = self.shared.in_flight.swap(0, Ordering::SeqCst);
            let err = match res {
                Ok(Ok(())) => {
                    OtlpSpansExported { spans: n }.emit(&self.shared.counters);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", limit.as_millis()),
            };
            OtlpExportFailed {
                spans: n,
                elapsed_ms: started.elapsed().as_millis() as u64,
                error: &err,
            }
            .emit(&self.shared.counters);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let left = {
                    let mut q = self.shared.lock();
                    let k = q.spans.len().min(budget);
                    q.spans.drain(..k).count() as u64
                };
                self.shared.count_drops(left, "flush deadline passed");
                return;
            }
        }
    }

    fn close_lingering_roots(&self) {
        let linger = self.linger;
        let dropped = {
            let mut q = self.shared.lock();
            self.shared
                .close_roots(&mut q, |o| o.last_update.elapsed() >= linger)
        };
        self.shared.count_drops(dropped, "queue full");
    }

    fn close_all_roots(&self) {
        let dropped = {
            let mut q = self.shared.lock();
            self.shared.close_roots(&mut q, |_| true)
        };
        self.shared.count_drops(dropped, "queue full");
    }

    /// Runs until shutdown, or until the sink is dropped (then makes one
    /// last bounded attempt to send what is queued).
    pub(super) async fn run(mut self, mut ctl: mpsc::Receiver<Ctl>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.close_lingering_roots();
                    self.send(true, None).await;
                }
                _ = shared.notify.notified() => {
                    self.send(false, None).await;
                }
                msg = ctl.recv() => match msg {
                    Some(Ctl::Flush { deadline, ack }) => {
                        self.close_all_roots();
                        self.send(true, Some(deadline)).await;
                        let _ = ack.send(());
                    }
                    Some(Ctl::Shutdown { deadline, ack }) => {
                        self.close_all_roots();
                        self.send(true, Some(deadline)).await;
                        let _ = self.exporter.shutdown_with_timeout(
                            deadline.saturating_duration_since(Instant::now()),
                        );
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        // The sink was dropped without shutdown: one last
                        // bounded attempt.
                        self.close_all_roots();
                        self.send(true, Some(Instant::now() + self.timeout)).await;
                        return;
                    }
                },
            }
        }
    }
}
