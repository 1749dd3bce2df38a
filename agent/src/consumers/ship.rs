//! The shipper as one of the agent's consumers: it reads no queue (the
//! closed Parquet files on disk are its input, see `slicetrace-ship`), so it
//! never slows the probes or the other consumers. Started after the Parquet
//! writer, stopped after it: the files the writer closes at shutdown are
//! tried once more in a last pass within what is left of the shutdown
//! deadline, and what does not ship by then waits on disk for the next
//! start (the keys are stable, so nothing is duplicated).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use slicetrace_ship::{ShipConfig, ShipSnapshot, Shipper};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::serve::live::LiveState;

/// Log and metrics name.
pub const NAME: &str = "ship";

/// Builds the shipper of `config` (`[ship]`) over the agent's `data_dir`,
/// or `None` when shipping is off. Validates and builds the S3 client; no
/// I/O.
pub fn build(
    config: &ShipConfig,
    data_dir: &Path,
) -> Result<Option<Shipper>, slicetrace_ship::ShipError> {
    if !config.enabled {
        return Ok(None);
    }
    Shipper::new(config.clone(), data_dir).map(Some)
}

/// A running shipper.
pub struct ShipTask {
    last_pass: oneshot::Sender<Option<tokio::time::Instant>>,
    task: JoinHandle<ShipSnapshot>,
}

impl ShipTask {
    /// Spawns `shipper` on the runtime; its counters go to `/metrics`
    /// through `live`.
    pub fn start(shipper: Shipper, live: &Arc<LiveState>) -> Self {
        let _ = live.ship.set(shipper.stats());
        let (last_pass, rx) = oneshot::channel();
        // A dropped sender (the agent gone) stops at once.
        let task = tokio::spawn(shipper.run_then_flush(async move { rx.await.ok().flatten() }));
        Self { last_pass, task }
    }

    /// One last pass until `by`, then stop. Returns the final counters, or
    /// `None` when the task did not answer by `by` (it is abandoned: an
    /// upload cut off is safe, the file waits for the next start).
    pub async fn stop(self, by: Instant) -> Option<ShipSnapshot> {
        let by = tokio::time::Instant::from_std(by);
        let _ = self.last_pass.send(Some(by));
        // The task honours `by` itself; the margin covers its last counter
        // update and return.
        let answer_by = by + std::time::Duration::from_millis(200);
        match tokio::time::timeout_at(answer_by, self.task).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the shipping task failed");
                None
            }
            Err(_) => None,
        }
    }
}
