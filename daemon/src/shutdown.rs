//! Stopping: the root stop signal of the probe threads, and the handle that
//! stops a consumer task. `agent::run` owns the one shutdown: it stops the
//! probe threads through [`StopSignal`] first, then stops every consumer in
//! turn with a [`Msg::Shutdown`] behind what its queue holds, so each drains
//! before it stops (see docs/architecture.md, Shutdown).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::fanout::{Msg, Tx};

/// The root stop signal shared by the probe threads: a flag with a condvar,
/// so a thread sleeping until its next tick wakes at once on shutdown.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    /// Signals every waiter.
    pub fn stop(&self) {
        if let Ok(mut s) = self.stopped.lock() {
            *s = true;
        }
        self.cv.notify_all();
    }
    /// True once stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.lock().map(|s| *s).unwrap_or(true)
    }
    /// Sleeps up to `d`; returns true if stopped meanwhile.
    pub fn wait(&self, d: Duration) -> bool {
        let Ok(guard) = self.stopped.lock() else {
            return true;
        };
        match self.cv.wait_timeout_while(guard, d, |s| !*s) {
            Ok((g, _)) => *g,
            Err(_) => true,
        }
    }
}

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
