//! Events of the occupancy sources: failed refreshes and watch relists.

use super::{Counters, InternalEvent};

/// An occupancy source failed to refresh. Counted only: each source logs
/// its own failing/recovered transitions, which depend on its state.
#[derive(Debug)]
pub struct OccupancyRefreshFailed;

impl InternalEvent for OccupancyRefreshFailed {
    const METRICS: &'static [&'static str] = &["slicetrace_occupancy_errors"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.occupancy_errors);
    }
}

/// The Kubernetes pod watch relisted (after the first list).
#[derive(Debug)]
pub struct OccupancyRelisted<'a> {
    /// This agent's node, for the log line.
    pub node: &'a str,
}

impl InternalEvent for OccupancyRelisted<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_occupancy_relists"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.occupancy_relists);
        tracing::debug!(node = %self.node, "relisting pods");
    }
}
