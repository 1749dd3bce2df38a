//! The one message type of every consumer queue, [`Msg`], and what travels
//! with it: data (probe rows, verdicts, [`ProbeEvent`]s) and the two
//! controls, [`Msg::Flush`] and [`Msg::Shutdown`], answered through an
//! [`Ack`] with the consumer's own [`SinkError`]. Controls travel behind the
//! data already queued, so a flush or shutdown answers only after
//! everything sent before it was handled.

use std::sync::Arc;
use std::time::Instant;

use slicetrace_schema::{HealthRecord, ProbeRecord};
use tokio::sync::oneshot;

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
    Event(ProbeEvent),
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

/// What a probe thread reports besides its rows: an error or a recovery
/// (the health evaluator takes them, see [`Outlet::with_events`]).
///
/// [`Outlet::with_events`]: super::Outlet::with_events
#[derive(Debug, Clone)]
pub enum ProbeEvent {
    /// A probe burst failed on this GPU.
    ProbeError {
        /// GPU.
        gpu_uuid: String,
        /// GPU index.
        gpu_index: u32,
        /// One-line error.
        error: String,
    },
    /// The GPU is probing again after errors.
    ProbeRecovered {
        /// GPU.
        gpu_uuid: String,
    },
}

/// Errors a sink reports. They are counted and logged by the sink; they
/// never stop the agent.
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
    /// The sink's queue is closed, or stayed full or unanswered until the
    /// deadline.
    #[error("{sink}: queue")]
    Queue {
        /// Sink name.
        sink: &'static str,
        /// Cause.
        #[source]
        source: QueueError,
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

impl SinkError {
    /// The sink did not answer in time, or its loop is gone: what it still
    /// held may not have been written or sent. (Other errors are failures
    /// the sink counted and logged while it did answer.)
    pub fn is_late(&self) -> bool {
        matches!(self, SinkError::Queue { .. })
    }
}
