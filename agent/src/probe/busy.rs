//! Which tenant processes were *busy* on the GPU around one arrival (the
//! `busy_tenants` and `busy_count` columns), from NVML's per-process
//! utilisation samples (`nvmlDeviceGetProcessUtilization`).
//!
//! A process that holds a context but runs nothing is resident (it is in
//! NVML's process list, the `processes` column) but not busy: NVML gives it
//! no sample with an SM share above 0.
//!
//! NVML stamps one sample per process per driver sample period (about
//! 200 ms on an H100, learned here from consecutive samples of a process),
//! but under time-slicing a process's sample shows an SM share above 0 only
//! in some periods: on an H100 a continuously busy GEMM tenant among six had
//! a non-zero sample every 1.7 s at the median (0.6–4 s, p10–p90), and one
//! among three every 0.75 s (docs/gpu-results/README.md §B). So "busy" is
//! judged over a look-back window (`probe.busy_window_ms`, default
//! [`DEFAULT_WINDOW_US`]): a process with a non-zero sample stamped from
//! `window` before launch up to now. Attribution is therefore as fine as
//! seconds, not slices. Samples are kept for the window, since NVML hands
//! each one out once.
use std::collections::{BTreeMap, HashMap, VecDeque};

use super::telemetry::ProcessActivity;

/// NVML's sample period assumed until three gaps have been seen, µs.
pub const DEFAULT_PERIOD_US: u64 = 1_000_000;
/// Default look-back window for "busy", µs (`probe.busy_window_ms`).
pub const DEFAULT_WINDOW_US: u64 = 3_000_000;
/// The learned period is kept within these bounds, µs.
const PERIOD_BOUNDS_US: (u64, u64) = (10_000, 5_000_000);
/// Gaps kept for the period's median.
const GAPS_KEPT: usize = 64;

/// Which clock NVML stamps its samples with (documented as "CPU time
/// stamp"): told apart at the first answer by which of the two the newest
/// stamp is nearer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmlClock {
    /// µs since the Unix epoch.
    Unix,
    /// µs of `CLOCK_MONOTONIC`; the field is Unix − monotonic, µs.
    Monotonic(i64),
}

/// Per-GPU state of the busy-tenant join (owned by its probe thread).
#[derive(Debug)]
pub struct BusyTracker {
    /// Look-back window, µs.
    window_us: u64,
    /// Non-zero samples of the last window (and a little more).
    recent: VecDeque<ProcessActivity>,
    newest: HashMap<u32, u64>,
    gaps: VecDeque<u64>,
    newest_seen: Option<u64>,
    clock: Option<NvmlClock>,
    /// NVML answered "not supported" for this GPU: stop asking.
    pub unsupported: bool,
}

impl Default for BusyTracker {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW_US)
    }
}

impl BusyTracker {
    /// A tracker judging "busy" over `window_us` before launch.
    pub fn new(window_us: u64) -> Self {
        Self {
            window_us,
            recent: VecDeque::new(),
            newest: HashMap::new(),
            gaps: VecDeque::new(),
            newest_seen: None,
            clock: None,
            unsupported: false,
        }
    }

    /// NVML's sample period: the median gap between consecutive samples of
    /// one process, or [`DEFAULT_PERIOD_US`] until three gaps were seen.
    pub fn period_us(&self) -> u64 {
        if self.gaps.len() < 3 {
            return DEFAULT_PERIOD_US;
        }
        let mut g: Vec<u64> = self.gaps.iter().copied().collect();
        g.sort_unstable();
        g[g.len() / 2].clamp(PERIOD_BOUNDS_US.0, PERIOD_BOUNDS_US.1)
    }

    /// The clock NVML's stamps are on, once known.
    pub fn clock(&self) -> Option<NvmlClock> {
        self.clock
    }

    /// What to pass NVML as "last seen": the newest stamp seen so far (so
    /// no sample is skipped and the period can be learned), 0 at first.
    pub fn ask_since(&self) -> u64 {
        self.newest_seen.unwrap_or(0)
    }

    /// Folds one NVML answer in and returns the busy processes of a run
    /// launched at `launch_unix_us`: PID → the largest SM share among its
    /// samples stamped from one period before launch on (share > 0 only).
    /// `now_unix_us` and `now_mono_us` are read right after NVML answered.
    pub fn observe(
        &mut self,
        samples: &[ProcessActivity],
        launch_unix_us: u64,
        now_unix_us: u64,
        now_mono_us: u64,
    ) -> BTreeMap<u32, u32> {
        if self.clock.is_none() {
            if let Some(newest) = samples.iter().map(|s| s.ts_us).max() {
                let clock = if newest.abs_diff(now_unix_us) <= newest.abs_diff(now_mono_us) {
                    NvmlClock::Unix
                } else {
                    NvmlClock::Monotonic(now_unix_us as i64 - now_mono_us as i64)
                };
                tracing::debug!(?clock, "NVML process samples: clock told apart");
                self.clock = Some(clock);
            }
        }
        let mut sorted: Vec<&ProcessActivity> = samples.iter().collect();
        sorted.sort_by_key(|s| (s.pid, s.ts_us));
        for s in sorted {
            let last = self.newest.entry(s.pid).or_insert(0);
            if s.ts_us > *last {
                // A sample not seen before: kept for later launches'
                // windows when it shows the process busy.
                if s.sm_pct > 0 {
                    self.recent.push_back(*s);
                }
                if *last > 0 {
                    if self.gaps.len() == GAPS_KEPT {
                        self.gaps.pop_front();
                    }
                    self.gaps.push_back(s.ts_us - *last);
                }
                *last = s.ts_us;
            }
            self.newest_seen = Some(self.newest_seen.map_or(s.ts_us, |n| n.max(s.ts_us)));
        }
        if self.newest.len() > 4096 {
            // PIDs of processes long gone.
            let keep_after = self.newest_seen.unwrap_or(0).saturating_sub(600_000_000);
            self.newest.retain(|_, t| *t >= keep_after);
        }
        let launch = match self.clock {
            Some(NvmlClock::Monotonic(d)) => (launch_unix_us as i64 - d).max(0) as u64,
            _ => launch_unix_us,
        };
        let from = launch.saturating_sub(self.window_us);
        // Keep what a later launch's window can still reach.
        let keep_from = self
            .newest_seen
            .unwrap_or(0)
            .saturating_sub(self.window_us.saturating_mul(2));
        self.recent.retain(|s| s.ts_us >= keep_from);
        while self.recent.len() > 65_536 {
            self.recent.pop_front();
        }
        let mut busy = BTreeMap::new();
        for s in self.recent.iter().filter(|s| s.ts_us >= from) {
            let e = busy.entry(s.pid).or_insert(0);
            *e = (*e).max(s.sm_pct);
        }
        busy
    }
}

/// `CLOCK_MONOTONIC` now, µs.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The Unix time now, µs.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pid: u32, ts_us: u64, sm_pct: u32) -> ProcessActivity {
        ProcessActivity { pid, ts_us, sm_pct }
    }

    #[test]
    fn busy_means_a_share_above_zero_within_one_period_of_launch() {
        let mut t = BusyTracker::new(100_000);
        // Learn a 100 ms period from pid 1's consecutive samples.
        let base = 1_700_000_000_000_000u64;
        let learn: Vec<_> = (0..6).map(|k| s(1, base + k * 100_000, 90)).collect();
        t.observe(&learn, base + 500_000, base + 500_000, 5_000);
        assert_eq!(t.period_us(), 100_000);
        assert_eq!(t.clock(), Some(NvmlClock::Unix));
        let launch = base + 1_000_000;
        let got = t.observe(
            &[
                s(1, launch - 50_000, 80),  // covers the launch: busy
                s(2, launch - 50_000, 0),   // holds a context, runs nothing
                s(3, launch - 150_000, 60), // more than a period before
                s(4, launch + 2_000, 10),
                s(4, launch - 20_000, 30),
            ],
            launch,
            launch + 5_000,
            9_000,
        );
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![(1, 80), (4, 30)]);
        assert_eq!(t.ask_since(), launch + 2_000);
        // NVML hands each sample out once: the next arrival, 30 ms later,
        // gets nothing new yet still sees who was busy within its window.
        let again = t.observe(&[], launch + 30_000, launch + 35_000, 9_000);
        assert_eq!(
            again.into_iter().collect::<Vec<_>>(),
            vec![(1, 80), (4, 30)]
        );
        // And a window later, nobody.
        assert!(t
            .observe(&[], launch + 300_000, launch + 300_000, 9_000)
            .is_empty());
    }

    #[test]
    fn monotonic_stamps_are_placed_on_the_unix_clock() {
        let mut t = BusyTracker::new(1_000_000);
        let (unix, mono) = (1_700_000_000_000_000u64, 3_600_000_000u64);
        // Stamps near the monotonic clock: launch 10 ms ago in Unix time.
        let got = t.observe(
            &[s(7, mono - 5_000, 50), s(8, mono - 2_000_000, 50)],
            unix - 10_000,
            unix,
            mono,
        );
        assert_eq!(t.clock(), Some(NvmlClock::Monotonic((unix - mono) as i64)));
        // A 1 s window: pid 8's sample, 2 s old, is out.
        assert_eq!(got.into_keys().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn no_samples_mean_nobody_busy_and_the_default_period() {
        let mut t = BusyTracker::default();
        assert!(t.observe(&[], 10, 10, 10).is_empty());
        assert_eq!(t.period_us(), DEFAULT_PERIOD_US);
        assert_eq!(t.ask_since(), 0);
    }
}
