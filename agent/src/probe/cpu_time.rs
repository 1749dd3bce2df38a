//! Where a probe thread's CPU goes: its own CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`, a vDSO read of well under a microsecond),
//! read between the stages of an arrival and summed per stage. The probe
//! loop counts each lap on `/metrics` and logs the totals when the thread
//! stops, so the agent's cost on a GPU node can be split into NVML, the run
//! itself (launch, wait, check) and the join and hand-off, without a
//! profiler on the node.

#![allow(unsafe_code)] // one libc clock read, see `thread_cpu`

use std::time::Duration;

use crate::internal_events::Stage;

/// This thread's CPU time so far; `None` where the clock is unsupported.
pub fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 || ts.tv_nsec < 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// A lap counter over the thread CPU clock: each [`CpuLaps::lap`] charges the
/// CPU used since the previous lap to one stage.
#[derive(Debug, Default, Clone)]
pub struct CpuLaps {
    last: Option<Duration>,
    totals: [Duration; 4],
}

impl CpuLaps {
    /// Starts counting from now.
    pub fn start() -> Self {
        Self {
            last: thread_cpu(),
            totals: [Duration::ZERO; 4],
        }
    }

    /// Charges the CPU used since the previous lap to `stage` and returns
    /// it (`None` where the clock is unsupported).
    pub fn lap(&mut self, stage: Stage) -> Option<Duration> {
        let now = thread_cpu();
        let used = match (now, self.last) {
            (Some(now), Some(last)) => Some(now.saturating_sub(last)),
            _ => None,
        };
        if let Some(d) = used {
            self.totals[stage.index()] += d;
        }
        self.last = now;
        used
    }

    /// Charges `d` spent on another thread on this one's behalf (the run
    /// on the backend's runner thread) to `stage`.
    pub fn add(&mut self, stage: Stage, d: Duration) {
        self.totals[stage.index()] += d;
    }

    /// CPU charged to `stage` so far.
    pub fn total(&self, stage: Stage) -> Duration {
        self.totals[stage.index()]
    }

    /// All CPU counted so far.
    pub fn sum(&self) -> Duration {
        self.totals.iter().sum()
    }

    /// Milliseconds per stage, for a log line: `wait=… telemetry=… …`.
    pub fn summary_ms(&self) -> String {
        Stage::ALL
            .iter()
            .map(|s| format!("{}={:.1}", s.as_str(), self.total(*s).as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn(d: Duration) {
        let t = thread_cpu().expect("thread cpu clock");
        let mut x = 0u64;
        while thread_cpu().expect("thread cpu clock") - t < d {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[test]
    fn every_stage_sits_at_its_index() {
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(s.index(), i, "{}", s.as_str());
        }
    }

    #[test]
    fn laps_charge_cpu_to_the_stage_that_used_it_and_not_sleep() {
        let mut laps = CpuLaps::start();
        burn(Duration::from_millis(30));
        laps.lap(Stage::Run);
        std::thread::sleep(Duration::from_millis(50));
        laps.lap(Stage::Wait);
        burn(Duration::from_millis(10));
        laps.lap(Stage::Telemetry);
        let run = laps.total(Stage::Run);
        let tel = laps.total(Stage::Telemetry);
        assert!(run >= Duration::from_millis(30), "run {run:?}");
        assert!(
            tel >= Duration::from_millis(10) && tel < run,
            "telemetry {tel:?}"
        );
        // Sleeping costs (almost) no CPU: far less than the 50 ms slept.
        assert!(laps.total(Stage::Wait) < Duration::from_millis(10));
        assert_eq!(laps.total(Stage::Publish), Duration::ZERO);
        assert_eq!(laps.sum(), run + tel + laps.total(Stage::Wait));
        let s = laps.summary_ms();
        assert!(
            s.starts_with("wait=") && s.contains(" run=3") && s.contains(" publish=0.0"),
            "{s}"
        );
    }
}
