//! The handle to a consumer that runs as a task: its name, its queue and
//! its loop. The agent's stop sequence (`agent.rs`) stops the probe threads
//! first, then every consumer in turn with a [`Msg::Shutdown`] behind what
//! its queue holds, so each drains before it stops (see
//! docs/architecture.md, Shutdown).

use std::time::Instant;

use super::{Msg, Tx};

/// A consumer that runs as a task (the health evaluator, the exit summary):
/// the sending end of its one bounded queue, and the task running its one
/// loop, which returns what the consumer leaves behind (`T`).
#[derive(Debug)]
pub struct Consumer<T> {
    name: &'static str,
    input: Tx,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Consumer<T> {
    /// The consumer `name` reading the queue `input` in `task`.
    pub fn new(name: &'static str, input: Tx, task: tokio::task::JoinHandle<T>) -> Self {
        Self { name, input, task }
    }

    /// Its name (the name of its outlet).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its queue (what its outlet feeds).
    pub fn input(&self) -> &Tx {
        &self.input
    }

    /// Sends [`Msg::Shutdown`] behind what is queued and waits until `by`
    /// for the loop to end. `None` when it did not end in time (the task is
    /// aborted) or failed.
    pub async fn stop(self, by: Instant) -> Option<T> {
        let Consumer {
            name,
            input,
            mut task,
        } = self;
        let (ack, _answer) = tokio::sync::oneshot::channel();
        // A loop that already ended has closed its queue: just join it.
        let _ = input.send(Msg::Shutdown { by, ack }, Some(by)).await;
        match tokio::time::timeout_at(by.into(), &mut task).await {
            Ok(Ok(left)) => Some(left),
            Ok(Err(e)) => {
                tracing::error!(consumer = name, error = %e, "consumer task failed");
                None
            }
            Err(_) => {
                task.abort();
                tracing::warn!(
                    consumer = name,
                    "consumer did not stop within the shutdown deadline"
                );
                None
            }
        }
    }
}
