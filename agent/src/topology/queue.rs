//! A consumer's bounded queue: a Tokio channel for a consumer that runs as
//! a task, a `std` channel for one on its own thread. Senders never block
//! on it: the fan-out uses [`Tx::try_send`]; callers that may wait (the stop
//! sequence, tests) use [`Tx::send`] and [`Tx::request`] with a deadline.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Ack, Msg, QueueError, SinkError};

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
