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
//! * `consumer.rs`: [`Consumer`], the handle that stops a consumer task.

mod consumer;
mod fanout;
mod message;
mod queue;

pub use consumer::Consumer;
pub use fanout::{Fanout, Outlet};
pub use message::{Ack, Msg, ProbeEvent, QueueError, SinkError};
pub use queue::{task_queue, thread_queue, Tx};
