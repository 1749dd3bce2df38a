//! The root stop signal of the probe threads: a flag with a condvar, so a
//! thread sleeping until its next arrival wakes at once on shutdown.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

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
