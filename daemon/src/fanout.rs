//! The fan-out: the one place a probe thread hands its rows to. Every
//! consumer (the Parquet and OTLP sinks, the health evaluator, the exit
//! summary) has its own bounded queue; `send` never blocks: a full queue
//! drops that consumer's copy and counts it.

use std::sync::Arc;

use slicetrace_schema::ProbeRecord;
use tokio::sync::mpsc;

use crate::health::HealthEvent;
use crate::internal_events::{Counters, InternalEvent, Outlet, SinkQueueFull};
use crate::sinks::SinkMsg;
use crate::summary::RunSummary;

/// Input of the health evaluator.
#[derive(Debug)]
pub enum HealthInput {
    /// Rows of one burst.
    Rows(Vec<ProbeRecord>),
    /// A probe error or recovery.
    Event(HealthEvent),
}

/// One sink's queue: the outlet of the fan-out for that sink.
#[derive(Debug, Clone)]
pub struct SinkQueue {
    /// Sink name (`parquet`, `otlp`), for logs.
    pub name: &'static str,
    /// Its bounded channel.
    pub tx: mpsc::Sender<SinkMsg>,
    /// Counts `n` records this sink lost because its queue was full (each
    /// sink names its own counters, so a new sink needs no edit here).
    pub on_drop: fn(&Counters, u64),
}

/// [`SinkQueue::on_drop`] of the Parquet sink.
pub fn parquet_drops(c: &Counters, n: u64) {
    SinkQueueFull {
        sink: Outlet::Parquet,
        records: n,
    }
    .emit(c);
}

/// [`SinkQueue::on_drop`] of the OTLP sink: the records' spans are lost too.
pub fn otlp_drops(c: &Counters, n: u64) {
    SinkQueueFull {
        sink: Outlet::Otlp,
        records: n,
    }
    .emit(c);
}

/// Fans rows out to every sink without ever blocking.
#[derive(Debug)]
pub struct Fanout {
    /// Sink queues.
    pub sinks: Vec<SinkQueue>,
    /// Health evaluator queue.
    pub health: Option<mpsc::Sender<HealthInput>>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Whole-run histograms.
    pub summary: RunSummary,
}

impl Fanout {
    /// Sends `rows` to every sink and the evaluator; full queues drop and count.
    pub fn send(&self, rows: Vec<ProbeRecord>) {
        for r in &rows {
            self.summary.record(r);
        }
        let n = rows.len() as u64;
        for s in &self.sinks {
            if s.tx.try_send(SinkMsg::Probes(rows.clone())).is_err() {
                (s.on_drop)(&self.counters, n);
            }
        }
        if let Some(h) = &self.health {
            if h.try_send(HealthInput::Rows(rows)).is_err() {
                SinkQueueFull {
                    sink: Outlet::Health,
                    records: n,
                }
                .emit(&self.counters);
            }
        }
    }

    pub(crate) fn event(&self, ev: HealthEvent) {
        if let Some(h) = &self.health {
            let _ = h.try_send(HealthInput::Event(ev));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue never blocks the probe thread: the sink's copy is
    /// dropped and counted by that sink's own counter, the other consumers
    /// still get theirs.
    #[test]
    fn a_full_sink_queue_drops_and_counts_without_blocking() {
        let (ptx, mut prx) = mpsc::channel(1);
        let (otx, _orx) = mpsc::channel(1);
        let (htx, mut hrx) = mpsc::channel(8);
        let f = Fanout {
            sinks: vec![
                SinkQueue {
                    name: "parquet",
                    tx: ptx,
                    on_drop: parquet_drops,
                },
                SinkQueue {
                    name: "otlp",
                    tx: otx,
                    on_drop: otlp_drops,
                },
            ],
            health: Some(htx),
            counters: Arc::new(Counters::default()),
            summary: RunSummary::default(),
        };
        let row = ProbeRecord {
            kernel: slicetrace_schema::Kernel::Fft,
            arrival: Some(true),
            wall_ms: 1.0,
            ..Default::default()
        };
        f.send(vec![row.clone(), row.clone()]);
        f.send(vec![row.clone(), row.clone(), row]);
        let c = &f.counters;
        assert_eq!(Counters::get(&c.sink_queue_drops_parquet), 3);
        assert_eq!(Counters::get(&c.sink_queue_drops_otlp), 3);
        assert_eq!(Counters::get(&c.otlp_spans_dropped), 3);
        assert!(matches!(prx.try_recv(), Ok(SinkMsg::Probes(r)) if r.len() == 2));
        let mut health_rows = 0;
        while let Ok(HealthInput::Rows(r)) = hrx.try_recv() {
            health_rows += r.len();
        }
        assert_eq!(health_rows, 5);
        assert_eq!(f.summary.rows()[0].runs, 5);
    }
}
