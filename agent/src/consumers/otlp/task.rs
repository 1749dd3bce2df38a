//! The export task: the OTLP sink's one loop. It owns its bounded input
//! queue (the fan-outs feed it directly), the span queue (`queue.rs`, the
//! one batch) and the exporter. A message of records becomes spans at once;
//! when the span queue holds a full batch, full batches are sent, and every
//! `export_interval_ms` the roots of cycles that have gone quiet are emitted
//! and everything queued is sent. Each request is bounded by `timeout_ms`
//! (and by the deadline of a flush or shutdown); a failed one is dropped and
//! counted, and the next tries again. While a request is in flight the
//! input queue fills, and what does not fit is dropped and counted by the
//! fan-out.

use std::time::{Duration, Instant};

use opentelemetry_otlp::SpanExporter as OtlpSpanExporter;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::mpsc;

use super::queue::SpanQueue;
use crate::internal_events::{InternalEvent, OtlpExportFailed, OtlpSpansExported};
use crate::topology::Msg;

/// The export loop's state; [`ExportTask::run`] consumes it.
pub(super) struct ExportTask {
    pub(super) exporter: OtlpSpanExporter,
    pub(super) queue: SpanQueue,
    /// Limit of one export request, and the budget of a flush.
    pub(super) timeout: Duration,
    /// How often everything queued is sent.
    pub(super) interval: Duration,
    /// How long a root waits for more runs of its cycle.
    pub(super) linger: Duration,
}

/// Part of a flush's budget kept back so that the task can count what it
/// drops and answer before the caller stops waiting.
pub(super) fn margin(limit: Duration) -> Duration {
    (limit / 10).min(Duration::from_millis(100))
}

impl ExportTask {
    /// Sends queued spans in batches: all that are queued now (`all`), or
    /// only full batches. Stops at `deadline`, dropping what is left.
    async fn send(&mut self, all: bool, deadline: Option<Instant>) {
        let mut budget = self.queue.len();
        while budget > 0 {
            if !all && !self.queue.has_full_batch() {
                return;
            }
            let batch = self.queue.take_batch(budget);
            if batch.is_empty() {
                return;
            }
            budget -= batch.len();
            let taken = batch.len() as u64;
            let mut limit = self.timeout;
            if let Some(d) = deadline {
                limit = limit.min(d.saturating_duration_since(Instant::now()));
            }
            let started = Instant::now();
            let res = tokio::time::timeout(limit, self.exporter.export(batch)).await;
            let n = self.queue.settle(taken);
            let err = match res {
                Ok(Ok(())) => {
                    OtlpSpansExported { spans: n }.emit(self.queue.counters());
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
            .emit(self.queue.counters());
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let left = self.queue.len().min(budget);
                self.queue.settle(left as u64);
                self.queue.drop_front(left, "flush deadline passed");
                return;
            }
        }
    }

    /// Emits every pending root and sends everything queued before `by`.
    async fn flush(&mut self, by: Instant) {
        self.queue.close_all_roots();
        self.send(true, Some(by)).await;
    }

    /// Handles one message: data becomes spans at once; a control is
    /// carried out (everything received before it is already spans).
    /// Returns false when the loop must stop.
    async fn handle(&mut self, msg: Option<Msg>) -> bool {
        match msg {
            Some(Msg::Probes(rows)) => self.queue.enqueue(&rows),
            Some(Msg::Health(rows)) => self.queue.enqueue_health(&rows),
            Some(Msg::Event(_)) => {}
            Some(Msg::Flush(ack)) => {
                let by = Instant::now() + self.timeout.saturating_sub(margin(self.timeout));
                self.flush(by).await;
                let _ = ack.send(Ok(()));
            }
            Some(Msg::Shutdown { by, ack }) => {
                self.flush(by).await;
                let _ = self
                    .exporter
                    .shutdown_with_timeout(by.saturating_duration_since(Instant::now()));
                let _ = ack.send(Ok(()));
                return false;
            }
            None => {
                // Every sender is gone without a shutdown: one last
                // bounded attempt.
                self.flush(Instant::now() + self.timeout).await;
                return false;
            }
        }
        true
    }

    /// Runs until [`Msg::Shutdown`], or until every sender is gone (then
    /// makes one last bounded attempt to send what is queued).
    ///
    /// On every wake-up it first takes what its input queue holds (up to
    /// [`MAX_DRAIN`] messages: converting is cheap), and only then sends
    /// full batches, so a flush or shutdown waits behind at most one export
    /// request, never one per queued message.
    pub(super) async fn run(mut self, mut input: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.queue.close_lingering_roots(self.linger);
                    self.send(true, None).await;
                }
                msg = input.recv() => {
                    let (mut next, mut taken) = (msg, 0);
                    loop {
                        if !self.handle(next).await {
                            return;
                        }
                        taken += 1;
                        if taken >= MAX_DRAIN {
                            break;
                        }
                        next = match input.try_recv() {
                            Ok(m) => Some(m),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    }
                    self.send(false, None).await;
                }
            }
        }
    }
}

/// Most messages taken off the input queue before full batches are sent.
const MAX_DRAIN: usize = 1024;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use slicetrace_schema::ProbeRecord;

    use super::*;
    use crate::consumers::otlp::{OtlpConfig, OtlpSink, TraceShape};
    use crate::consumers::Sink;
    use crate::internal_events::Counters;
    use crate::topology::QueueError;

    /// Two runs, three spans each (run, `queued`, `executing`).
    fn two_runs() -> Msg {
        let r = ProbeRecord {
            ts_ns: 1_700_000_000_000_000_000,
            gpu_uuid: "GPU-1".into(),
            wall_ms: 1.0,
            gpu_ms: Some(0.4),
            queue_ms: Some(0.6),
            ..Default::default()
        };
        Msg::Probes(vec![r.clone(), r].into())
    }

    /// The one loop is bounded (its input queue and its span queue), counts
    /// every span it cannot send exactly once, answers a flush only after
    /// everything queued before it was handled, and drains within the
    /// shutdown deadline. The collector is a closed port.
    #[tokio::test]
    async fn one_loop_is_bounded_counts_every_span_keeps_flush_order_and_drains() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let counters = Arc::new(Counters::default());
        let cfg = OtlpConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            timeout_ms: 1000,
            export_interval_ms: 60_000,
            queue_capacity: 10,
            max_export_batch: 8,
            ..Default::default()
        };
        let mut sink =
            OtlpSink::new(cfg, "h", None, counters.clone(), 5, TraceShape::PerRun).expect("sink");
        // The task has not run yet (one-thread runtime, nothing awaited):
        // its input queue takes 5 messages and refuses the sixth.
        let input = sink.input().clone();
        for _ in 0..4 {
            input.try_send(two_runs()).expect("room");
        }
        let (ack, answer) = tokio::sync::oneshot::channel();
        input.try_send(Msg::Flush(ack)).expect("room");
        assert_eq!(input.try_send(two_runs()), Err(QueueError::Full));
        // The flush is handled right behind the records (in one wake-up, no
        // export in between): 24 spans into a span queue of 10, so 14
        // overflow and the 10 queued fail to export; all of it is counted
        // by the time the flush answers.
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("flush answered in time")
            .expect("flush answered")
            .expect("flushed");
        assert_eq!(Counters::get(&counters.otlp_spans_dropped), 24);
        assert_eq!(Counters::get(&counters.otlp_spans_exported), 0);
        assert!(Counters::get(&counters.otlp_export_errors) >= 1);
        // Shutdown drains what is queued before it, within its deadline.
        input.try_send(two_runs()).expect("room");
        let t = Instant::now();
        sink.shutdown(Duration::from_secs(2))
            .await
            .expect("shutdown");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(Counters::get(&counters.otlp_spans_dropped), 30);
        assert_eq!(input.try_send(two_runs()), Err(QueueError::Closed));
    }
}
