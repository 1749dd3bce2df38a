//! The fan-out: the one road a record takes from a probe thread to its
//! consumers. Every consumer (the Parquet writer thread, the OTLP export
//! task, the health evaluator, the exit summary) owns exactly one bounded
//! queue and one loop that reads it; the fan-out holds a list of
//! [`Outlet`]s, one per consumer queue, and hands every one of them the same
//! rows, shared as an `Arc<[ProbeRecord]>` (no copy per consumer). It never
//! blocks: a full queue drops that consumer's copy and counts it under that
//! outlet's name.
//!
//! The health evaluator's verdicts take the same road through a second
//! fan-out of their own (outlets: Parquet and OTLP), so no consumer writes
//! into another consumer's queue behind the fan-out's back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use slicetrace_schema::{HealthRecord, ProbeRecord};

use super::{Msg, ProbeEvent, SpanSampling, Tx};
use crate::internal_events::{Counters, InternalEvent, QueueOwner, SinkQueueFull};

/// One consumer's queue as the fan-out sees it: its name, its bounded
/// sender and its drop counter.
#[derive(Debug)]
pub struct Outlet {
    name: &'static str,
    tx: Tx,
    /// Takes [`Msg::Event`]s (the health evaluator).
    events: bool,
    /// Records (or events) this outlet dropped because its queue was full
    /// or closed.
    dropped: AtomicU64,
    /// Whose queue this is, for the agent's drop counters.
    owner: QueueOwner,
    /// Its loop was found gone (its queue closed) on a send.
    closed: AtomicBool,
}

impl Outlet {
    /// An outlet named `name` feeding `tx`; drops are also reported to
    /// `owner`'s counter.
    pub fn new(name: &'static str, tx: Tx, owner: QueueOwner) -> Self {
        Self {
            name,
            tx,
            events: false,
            dropped: AtomicU64::new(0),
            owner,
            closed: AtomicBool::new(false),
        }
    }

    /// This consumer also takes the probe threads' errors and recoveries.
    pub fn with_events(mut self) -> Self {
        self.events = true;
        self
    }
}

/// Hands data to every outlet without ever blocking.
#[derive(Debug)]
pub struct Fanout {
    outlets: Vec<Outlet>,
    counters: Arc<Counters>,
    /// Decides which span trees are exported, before the rows are shared.
    sampler: Option<Arc<dyn SpanSampling>>,
}

impl Fanout {
    /// A fan-out with no outlets yet.
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            outlets: Vec::new(),
            counters,
            sampler: None,
        }
    }

    /// Stamps every row's span decision with `sampler` before sharing it.
    pub fn with_sampler(mut self, sampler: Arc<dyn SpanSampling>) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// Adds an outlet when there is one.
    pub fn with_opt(self, outlet: Option<Outlet>) -> Self {
        match outlet {
            Some(o) => self.with(o),
            None => self,
        }
    }

    /// Adds an outlet.
    pub fn with(mut self, outlet: Outlet) -> Self {
        self.outlets.push(outlet);
        self
    }

    /// The outlets' names, in the order they are fed.
    pub fn names(&self) -> Vec<&'static str> {
        self.outlets.iter().map(|o| o.name).collect()
    }

    /// What the outlet `name` dropped so far (`None`: no such outlet).
    pub fn dropped(&self, name: &str) -> Option<u64> {
        self.outlets
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.dropped.load(Ordering::Relaxed))
    }

    /// Offers `make()` to every outlet that `takes`; a refusal costs that
    /// outlet `n`, counted under its name.
    fn offer(&self, n: u64, takes: impl Fn(&Outlet) -> bool, make: impl Fn() -> Msg) {
        for o in self.outlets.iter().filter(|o| takes(o)) {
            if let Err(e) = o.tx.try_send(make()) {
                if e == super::QueueError::Closed {
                    o.closed.store(true, Ordering::Relaxed);
                }
                o.dropped.fetch_add(n, Ordering::Relaxed);
                SinkQueueFull {
                    sink: o.owner,
                    records: n,
                }
                .emit(&self.counters);
            }
        }
    }

    /// The consumers whose loop was found gone (their queue closed) while
    /// the agent runs: `/healthz` fails on any (a restart would help).
    pub fn closed(&self) -> Vec<&'static str> {
        self.outlets
            .iter()
            .filter(|o| o.closed.load(Ordering::Relaxed))
            .map(|o| o.name)
            .collect()
    }

    /// Shares `rows` (one arrival's or cycle's) with every outlet.
    pub fn send_probes(&self, rows: impl Into<Arc<[ProbeRecord]>>) {
        let mut rows: Arc<[ProbeRecord]> = rows.into();
        if rows.is_empty() {
            return;
        }
        if let Some(s) = &self.sampler {
            // Fresh from the caller's Vec, so not shared yet.
            match Arc::get_mut(&mut rows) {
                Some(r) => s.probes(r),
                None => {
                    let mut r = rows.to_vec();
                    s.probes(&mut r);
                    rows = r.into();
                }
            }
        }
        self.offer(rows.len() as u64, |_| true, || Msg::Probes(rows.clone()));
    }

    /// Shares the verdicts of one evaluation with every outlet.
    pub fn send_health(&self, rows: impl Into<Arc<[HealthRecord]>>) {
        let mut rows: Arc<[HealthRecord]> = rows.into();
        if rows.is_empty() {
            return;
        }
        if let Some(s) = &self.sampler {
            match Arc::get_mut(&mut rows) {
                Some(r) => s.health(r),
                None => {
                    let mut r = rows.to_vec();
                    s.health(&mut r);
                    rows = r.into();
                }
            }
        }
        self.offer(rows.len() as u64, |_| true, || Msg::Health(rows.clone()));
    }

    /// Hands a probe error or recovery to the outlets that take events.
    pub fn event(&self, ev: ProbeEvent) {
        self.offer(1, |o| o.events, || Msg::Event(ev.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::topology::{task_queue, thread_queue, QueueError};

    fn row() -> ProbeRecord {
        ProbeRecord {
            kernel: slicetrace_schema::Kernel::Fft,
            arrival: Some(true),
            wall_ms: 1.0,
            ..Default::default()
        }
    }

    fn probes(m: Msg) -> Arc<[ProbeRecord]> {
        match m {
            Msg::Probes(r) => r,
            other => panic!("not probe rows: {other:?}"),
        }
    }

    /// Every outlet gets the very same allocation: no copy per consumer.
    #[test]
    fn every_outlet_shares_one_arc_of_the_rows() {
        let (a, mut arx) = task_queue(4);
        let (b, brx) = thread_queue(4);
        let f = Fanout::new(Arc::new(Counters::default()))
            .with(Outlet::new("a", a, QueueOwner::Parquet))
            .with(Outlet::new("b", b, QueueOwner::Otlp));
        f.send_probes(vec![row(), row()]);
        let x = probes(arx.try_recv().expect("a got it"));
        let y = probes(brx.try_recv().expect("b got it"));
        assert!(Arc::ptr_eq(&x, &y));
        assert_eq!(x.len(), 2);
        // The fan-out kept no reference of its own.
        assert_eq!(Arc::strong_count(&x), 2);
        assert_eq!(f.names(), ["a", "b"]);
    }

    /// A full queue never blocks the probe thread: only that consumer's
    /// copy is dropped, counted under its own outlet name (and on its own
    /// agent counter); the other consumers still get theirs.
    #[test]
    fn a_full_queue_drops_only_its_own_copy_and_counts_it_under_its_name() {
        let (p, mut prx) = task_queue(1);
        let (o, _orx) = thread_queue(1);
        let (h, mut hrx) = task_queue(8);
        let f = Fanout::new(Arc::new(Counters::default()))
            .with(Outlet::new("parquet", p, QueueOwner::Parquet))
            .with(Outlet::new("otlp", o, QueueOwner::Otlp))
            .with(Outlet::new("health", h, QueueOwner::Health).with_events());
        f.send_probes(vec![row(), row()]);
        f.send_probes(vec![row(), row(), row()]);
        assert_eq!(f.dropped("parquet"), Some(3));
        assert_eq!(f.dropped("otlp"), Some(3));
        assert_eq!(f.dropped("health"), Some(0));
        assert_eq!(f.dropped("nobody"), None);
        let c = &f.counters;
        assert_eq!(Counters::get(&c.sink_queue_drops_parquet), 3);
        assert_eq!(Counters::get(&c.sink_queue_drops_otlp), 3);
        assert_eq!(Counters::get(&c.otlp_spans_dropped), 3);
        assert_eq!(Counters::get(&c.sink_queue_drops_health), 0);
        assert_eq!(probes(prx.try_recv().expect("first")).len(), 2);
        let mut health_rows = 0;
        while let Ok(m) = hrx.try_recv() {
            health_rows += probes(m).len();
        }
        assert_eq!(health_rows, 5);
    }

    /// Events go only to the outlets that take them; a closed queue counts
    /// as a drop too (its consumer stopped).
    #[test]
    fn events_reach_only_their_outlet_and_a_closed_queue_counts_drops() {
        let (p, prx) = task_queue(4);
        let (h, mut hrx) = task_queue(4);
        let f = Fanout::new(Arc::new(Counters::default()))
            .with(Outlet::new("parquet", p, QueueOwner::Parquet))
            .with(Outlet::new("health", h, QueueOwner::Health).with_events());
        f.event(ProbeEvent::ProbeRecovered {
            gpu_uuid: "GPU-1".into(),
        });
        assert!(matches!(hrx.try_recv(), Ok(Msg::Event(_))));
        drop(prx);
        f.send_probes(vec![row()]);
        assert_eq!(f.dropped("parquet"), Some(1));
        assert_eq!(f.dropped("health"), Some(0));
        // Nothing to share, nothing sent.
        f.send_probes(Vec::new());
        assert!(hrx.try_recv().is_ok());
        assert!(hrx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_thread_queue_send_waits_for_room_until_its_deadline() {
        let (tx, rx) = thread_queue(1);
        tx.send(Msg::Probes(vec![row()].into()), None)
            .await
            .expect("room");
        let t = Instant::now();
        let by = t + Duration::from_millis(50);
        let r = tx.send(Msg::Probes(vec![row()].into()), Some(by)).await;
        assert_eq!(r, Err(QueueError::Full));
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(rx);
        let r = tx.send(Msg::Probes(vec![row()].into()), None).await;
        assert_eq!(r, Err(QueueError::Closed));
    }
}
