//! How records travel from the probe threads to the consumers, and nothing
//! about any consumer:
//!
//! * `message.rs`: [`Msg`], the one message type of every queue (probe
//!   rows, verdicts, [`ProbeEvent`]s, flush and shutdown with their
//!   [`Ack`]);
//! * `queue.rs`: [`Tx`], the sending end of a bounded queue (task or
//!   thread), which never blocks the fan-out;
//! * `fanout.rs`: [`Fanout`], one [`Outlet`] per consumer queue, every
//!   outlet handed the same rows; a full queue drops that consumer's copy
//!   and counts it for its [`QueueOwner`](crate::internal_events::QueueOwner);
//! * `consumer.rs`: [`Consumer`], the handle that stops a consumer task;
//! * [`SpanSampling`]: the one decision a fan-out makes on the rows before
//!   sharing them (which span trees are exported), so every consumer sees it.

mod consumer;
mod fanout;
mod message;
mod queue;

pub use consumer::Consumer;
pub use fanout::{Fanout, Outlet};
pub use message::{Ack, Msg, ProbeEvent, QueueError, SinkError};
pub use queue::{task_queue, thread_queue, Tx};

use slicetrace_schema::{HealthRecord, ProbeRecord};

/// The span-sampling seam: a fan-out with a sampler stamps each row's
/// `span_sampled` before it shares the rows with any consumer, so the
/// Parquet row says what the OTLP exporter did.
///
/// Contract: called on the sending thread (a probe thread, the health
/// evaluator) once per message, before the rows are shared; it must not
/// block (no I/O, only short locks) and must decide every row (`Some`).
/// Rows of one trace get one decision.
pub trait SpanSampling: Send + Sync + std::fmt::Debug {
    /// Decides the probe rows of one arrival or cycle.
    fn probes(&self, rows: &mut [ProbeRecord]);
    /// Decides the verdicts of one health evaluation.
    fn health(&self, rows: &mut [HealthRecord]);
}
