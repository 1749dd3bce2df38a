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
//!
//! Every queue carries one message type, [`Msg`]: data (probe rows,
//! verdicts, probe events) and the two controls, [`Msg::Flush`] and
//! [`Msg::Shutdown`]. Controls travel behind the data already queued, so a
//! flush or shutdown answers only after everything sent before it was
//! handled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slicetrace_schema::{HealthRecord, ProbeRecord};
use tokio::sync::{mpsc, oneshot};

use crate::health::HealthEvent;
use crate::internal_events::{Counters, InternalEvent, QueueOwner, SinkQueueFull};
use crate::sinks::SinkError;

/// The answer to a [`Msg::Flush`] or [`Msg::Shutdown`]: the consumer's own
/// error when it could not make its output durable (already counted and
/// logged by the consumer).
pub type Ack = oneshot::Sender<Result<(), SinkError>>;

/// One message on a consumer's queue: the one control enum of every
/// consumer. A consumer ignores data it does not take (the summary takes
/// no verdicts, the sinks take no probe events).
#[derive(Debug)]
pub enum Msg {
    /// The rows of one arrival or cycle, shared by every consumer.
    Probes(Arc<[ProbeRecord]>),
    /// The verdicts of one health evaluation.
    Health(Arc<[HealthRecord]>),
    /// A probe error or recovery (for the health evaluator).
    Event(HealthEvent),
    /// Make everything received before this durable or visible (close the
    /// open Parquet files, send the queued spans, evaluate now), then answer.
    Flush(Ack),
    /// Handle everything received before this, flush and release within
    /// `by`, answer, and stop the loop.
    Shutdown {
        /// When the consumer must be done (it answers by then).
        by: Instant,
        /// The answer.
        ack: Ack,
    },
}

/// A consumer's queue is gone or did not make room in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The consumer's loop has stopped (its queue is closed).
    #[error("its loop is not running")]
    Closed,
    /// The queue is full: no room now (`try_send`), or none came before
    /// the deadline (`send`).
    #[error("its queue is full")]
    Full,
    /// The message was queued but its answer did not come before the
    /// deadline.
    #[error("no answer before the deadline")]
    NoAnswer,
}

/// The sending end of a consumer's bounded queue: a Tokio channel for a
/// consumer that runs as a task, a `std` channel for one that runs on its
/// own thread (the Parquet writer reads it directly, with no async hop).
#[derive(Debug, Clone)]
pub enum Tx {
    /// Read by a task.
    Task(mpsc::Sender<Msg>),
    /// Read by a thread.
    Thread(std_mpsc::SyncSender<Msg>),
}

/// A bounded queue of `capacity` messages read by a task.
pub fn task_queue(capacity: usize) -> (Tx, mpsc::Receiver<Msg>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Tx::Task(tx), rx)
}

/// A bounded queue of `capacity` messages read by a thread.
pub fn thread_queue(capacity: usize) -> (Tx, std_mpsc::Receiver<Msg>) {
    let (tx, rx) = std_mpsc::sync_channel(capacity.max(1));
    (Tx::Thread(tx), rx)
}

/// How often a sender waiting for room in a thread's queue looks again.
const THREAD_QUEUE_POLL: Duration = Duration::from_millis(2);

impl Tx {
    /// Queues `m` if there is room now; never blocks.
    pub fn try_send(&self, m: Msg) -> Result<(), QueueError> {
        match self {
            Tx::Task(tx) => tx.try_send(m).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => QueueError::Full,
                mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
            }),
            Tx::Thread(tx) => tx.try_send(m).map_err(|e| match e {
                std_mpsc::TrySendError::Full(_) => QueueError::Full,
                std_mpsc::TrySendError::Disconnected(_) => QueueError::Closed,
            }),
        }
    }

    /// Queues `m`, waiting for room until `by` (without a deadline, as long
    /// as it takes). For callers that may wait (tests, direct users of a
    /// sink, the stop sequence); the fan-out uses [`Tx::try_send`].
    pub async fn send(&self, m: Msg, by: Option<Instant>) -> Result<(), QueueError> {
        match self {
            Tx::Task(tx) => {
                let send = tx.send(m);
                match by {
                    None => send.await.map_err(|_| QueueError::Closed),
                    Some(by) => match tokio::time::timeout_at(by.into(), send).await {
                        Ok(r) => r.map_err(|_| QueueError::Closed),
                        Err(_) => Err(QueueError::Full),
                    },
                }
            }
            Tx::Thread(tx) => {
                // A std `send` would block the runtime: poll for room.
                let mut m = m;
                loop {
                    match tx.try_send(m) {
                        Ok(()) => return Ok(()),
                        Err(std_mpsc::TrySendError::Disconnected(_)) => {
                            return Err(QueueError::Closed)
                        }
                        Err(std_mpsc::TrySendError::Full(back)) => m = back,
                    }
                    if by.is_some_and(|by| Instant::now() >= by) {
                        return Err(QueueError::Full);
                    }
                    tokio::time::sleep(THREAD_QUEUE_POLL).await;
                }
            }
        }
    }

    /// Sends the control `make(ack)` and waits for its answer, both until
    /// `by` (without a deadline, as long as it takes).
    pub async fn request(
        &self,
        make: impl FnOnce(Ack) -> Msg,
        by: Option<Instant>,
    ) -> Result<Result<(), SinkError>, QueueError> {
        let (ack, answer) = oneshot::channel();
        self.send(make(ack), by).await?;
        match by {
            None => answer.await.map_err(|_| QueueError::Closed),
            Some(by) => match tokio::time::timeout_at(by.into(), answer).await {
                Ok(r) => r.map_err(|_| QueueError::Closed),
                Err(_) => Err(QueueError::NoAnswer),
            },
        }
    }
}

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
}

impl Fanout {
    /// A fan-out with no outlets yet.
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            outlets: Vec::new(),
            counters,
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
            if o.tx.try_send(make()).is_err() {
                o.dropped.fetch_add(n, Ordering::Relaxed);
                SinkQueueFull {
                    sink: o.owner,
                    records: n,
                }
                .emit(&self.counters);
            }
        }
    }

    /// Shares `rows` (one arrival's or cycle's) with every outlet.
    pub fn send_probes(&self, rows: impl Into<Arc<[ProbeRecord]>>) {
        let rows: Arc<[ProbeRecord]> = rows.into();
        if rows.is_empty() {
            return;
        }
        self.offer(rows.len() as u64, |_| true, || Msg::Probes(rows.clone()));
    }

    /// Shares the verdicts of one evaluation with every outlet.
    pub fn send_health(&self, rows: impl Into<Arc<[HealthRecord]>>) {
        let rows: Arc<[HealthRecord]> = rows.into();
        if rows.is_empty() {
            return;
        }
        self.offer(rows.len() as u64, |_| true, || Msg::Health(rows.clone()));
    }

    /// Hands a probe error or recovery to the outlets that take events.
    pub fn event(&self, ev: HealthEvent) {
        self.offer(1, |o| o.events, || Msg::Event(ev.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        f.event(HealthEvent::ProbeRecovered {
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
