//! The node's driver, as every probe thread sees it: present, or away
//! (being upgraded, or gone) — in which case the agent holds nothing in it.
//!
//! Two signals make the driver away:
//! - the GPU Operator's `nvidia.com/gpu-driver-upgrade-state` node label
//!   (with the Kubernetes API component), from the moment it leaves
//!   `upgrade-done`/empty until it returns;
//! - without it, NVML itself ([`TelemetrySource::driver_gone`]): errors that
//!   mean the kernel module is unloaded or being replaced.
//!
//! While away, every probe thread releases its GPU's backend and CUDA
//! context, the telemetry source lets go of NVML (`nvmlShutdown`,
//! [`TelemetrySource::release`]), and every GPU is `unknown` with reason
//! `driver_upgrade` (paging nobody). The gate then tries to open NVML again
//! with backoff ([`super::lifecycle::open_backoff`]: 1 s doubling to a
//! minute); for the label, the first try is the moment the label says the
//! upgrade is done, and a driver that does not answer yet is retried the
//! same way. When NVML answers, the driver is present again (its version,
//! if new, is logged and counted) and every GPU is opened again.
//!
//! ```text
//!            label in progress / NVML says gone
//!  present ─────────────────────────────────────► away (released)
//!     ▲                                             │ label done (or none):
//!     └──────── NVML answers (reacquire ok) ◄───────┘ reacquire with backoff
//! ```
//!
//! The gate is one per agent, shared by the probe threads, so NVML is
//! released once and reopened once, whichever thread gets there first.

use std::sync::Mutex;
use std::time::Instant;

use super::lifecycle::open_backoff;
use super::telemetry::TelemetrySource;
use crate::internal_events::{
    error_chain, Counters, DriverAnswered, DriverReleased, InternalEvent,
};

/// Why the driver is away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Away {
    /// The node's driver-upgrade label says an upgrade is in progress (its
    /// state).
    Label(String),
    /// NVML said the driver is gone (its error).
    Gone(String),
}

impl Away {
    /// A one-line reason for the GPUs' verdicts and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            Away::Label(s) => format!("driver upgrade in progress ({s})"),
            Away::Gone(e) => format!("the driver is gone or being replaced ({e})"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    away: Option<Away>,
    /// Failed reacquire attempts since the driver went away.
    attempts: u32,
    /// When the next reacquire attempt is due.
    next_try: Option<Instant>,
    /// Whether NVML answered once already (the version logged).
    answered: bool,
}

/// The node's driver, shared by every probe thread.
#[derive(Debug, Default)]
pub struct DriverGate {
    state: Mutex<State>,
}

impl DriverGate {
    /// A gate with the driver present.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the driver is away now, and why: called by every probe
    /// thread before each arrival with the driver-upgrade label's state
    /// when it says an upgrade is in progress (`None` otherwise, or without
    /// the Kubernetes API). Moves the gate (releasing or reacquiring the
    /// telemetry's hold on the driver) as the signals say.
    pub fn check(
        &self,
        upgrade_label: Option<&str>,
        telemetry: &dyn TelemetrySource,
        counters: &Counters,
    ) -> Option<Away> {
        self.check_at(Instant::now(), upgrade_label, telemetry, counters)
    }

    /// [`DriverGate::check`] at `now`: the clock is the caller's, so a test
    /// steps through the back-off instead of sleeping through it.
    fn check_at(
        &self,
        now: Instant,
        upgrade_label: Option<&str>,
        telemetry: &dyn TelemetrySource,
        counters: &Counters,
    ) -> Option<Away> {
        let Ok(mut s) = self.state.lock() else {
            return None;
        };
        if let Some(label) = upgrade_label {
            let away = Away::Label(label.to_string());
            if !matches!(s.away, Some(Away::Label(_))) {
                if s.away.is_none() {
                    telemetry.release();
                    DriverReleased {
                        why: &away.describe(),
                    }
                    .emit(counters);
                }
                s.attempts = 0;
            }
            // The first try is due the moment the label says done.
            s.next_try = Some(now);
            s.away = Some(away.clone());
            return Some(away);
        }
        if s.away.is_none() {
            let gone = telemetry.driver_gone()?;
            let away = Away::Gone(gone);
            telemetry.release();
            DriverReleased {
                why: &away.describe(),
            }
            .emit(counters);
            s.attempts = 0;
            s.next_try = Some(now + open_backoff(1));
            s.away = Some(away.clone());
            return Some(away);
        }
        if s.next_try.is_some_and(|t| now < t) {
            return s.away.clone();
        }
        match telemetry.reacquire() {
            Ok(version) => {
                tracing::info!(after_attempts = s.attempts, "the driver answers again");
                DriverAnswered {
                    version: version.as_deref(),
                    after_release: true,
                }
                .emit(counters);
                *s = State {
                    answered: true,
                    ..State::default()
                };
                None
            }
            Err(e) => {
                s.attempts += 1;
                // The first try came a second after the loss (or at once
                // after the label): the gaps then double from two seconds.
                let retry_in = open_backoff(s.attempts + 1);
                s.next_try = Some(now + retry_in);
                // A driver the label said was done but that does not answer
                // yet is away for NVML's reason now.
                let away = match s.away.take() {
                    Some(Away::Label(_)) | None => Away::Gone(error_chain(&e)),
                    Some(a) => a,
                };
                tracing::info!(attempts = s.attempts, retry_in_ms = retry_in.as_millis() as u64, error = %error_chain(&e), "the driver does not answer yet");
                s.away = Some(away.clone());
                Some(away)
            }
        }
    }

    /// Records the driver's version the first time NVML answers (at
    /// start), for `slicetrace_driver_info` and to notice a new one later.
    pub fn note_version(&self, telemetry: &dyn TelemetrySource, counters: &Counters) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.answered || s.away.is_some() {
            return;
        }
        if let Ok(v) = telemetry.reacquire() {
            s.answered = true;
            DriverAnswered {
                version: v.as_deref(),
                after_release: false,
            }
            .emit(counters);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::telemetry::{DeviceSample, TelemetryError};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    /// A driver that goes away and answers again on the test's word.
    #[derive(Default)]
    struct Scripted {
        gone: AtomicBool,
        answers: AtomicBool,
        releases: AtomicU32,
        tries: AtomicU32,
    }

    impl TelemetrySource for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn sample(&self, _: &str) -> Result<DeviceSample, TelemetryError> {
            Ok(DeviceSample::default())
        }
        fn driver_gone(&self) -> Option<String> {
            self.gone
                .load(Ordering::SeqCst)
                .then(|| "driver not loaded".to_string())
        }
        fn release(&self) {
            self.releases.fetch_add(1, Ordering::SeqCst);
        }
        fn reacquire(&self) -> Result<Option<String>, TelemetryError> {
            self.tries.fetch_add(1, Ordering::SeqCst);
            if self.answers.load(Ordering::SeqCst) {
                self.gone.store(false, Ordering::SeqCst);
                Ok(Some("999.1".into()))
            } else {
                Err(TelemetryError::Released)
            }
        }
    }

    /// On the test's clock (`check_at`), so the back-off is stepped
    /// through, to the millisecond on either side of each try, without
    /// sleeping through it.
    #[test]
    fn a_driver_that_goes_away_is_released_once_and_retried_with_backoff() {
        let (g, t, c) = (DriverGate::new(), Scripted::default(), Counters::default());
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        assert_eq!(g.check_at(t0, None, &t, &c), None);
        t.gone.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(matches!(g.check_at(t0, None, &t, &c), Some(Away::Gone(_))));
        }
        assert_eq!(t.releases.load(Ordering::SeqCst), 1);
        assert_eq!(Counters::get(&c.driver_releases), 1);
        // The first retry is a second away: nothing tried before it.
        let first = t0 + Duration::from_secs(1);
        assert!(g.check_at(first - ms, None, &t, &c).is_some());
        assert_eq!(t.tries.load(Ordering::SeqCst), 0);
        assert!(g.check_at(first, None, &t, &c).is_some());
        assert_eq!(t.tries.load(Ordering::SeqCst), 1);
        // The next is two seconds after that: not before.
        let second = first + Duration::from_secs(2);
        assert!(g.check_at(first, None, &t, &c).is_some());
        assert!(g.check_at(second - ms, None, &t, &c).is_some());
        assert_eq!(t.tries.load(Ordering::SeqCst), 1);
        t.answers.store(true, Ordering::SeqCst);
        assert_eq!(g.check_at(second, None, &t, &c), None);
        assert_eq!(t.tries.load(Ordering::SeqCst), 2);
        assert_eq!(
            c.driver_version.lock().expect("lock").as_deref(),
            Some("999.1")
        );
    }

    #[test]
    fn the_label_releases_at_once_and_reacquires_the_moment_it_is_done() {
        let (g, t, c) = (DriverGate::new(), Scripted::default(), Counters::default());
        t.answers.store(true, Ordering::SeqCst);
        g.note_version(&t, &c);
        let a = g.check(Some("upgrade-required"), &t, &c);
        assert_eq!(a, Some(Away::Label("upgrade-required".into())));
        assert_eq!(
            g.check(Some("drain-required"), &t, &c),
            Some(Away::Label("drain-required".into()))
        );
        assert_eq!(t.releases.load(Ordering::SeqCst), 1);
        assert_eq!(g.check(None, &t, &c), None);
        assert_eq!(t.releases.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_new_driver_version_is_counted() {
        let (g, t, c) = (DriverGate::new(), Scripted::default(), Counters::default());
        *c.driver_version.lock().expect("lock") = Some("580.1".into());
        t.answers.store(true, Ordering::SeqCst);
        assert!(g.check(Some("upgrade-required"), &t, &c).is_some());
        assert_eq!(g.check(None, &t, &c), None);
        assert_eq!(Counters::get(&c.driver_changes), 1);
        assert_eq!(
            c.driver_version.lock().expect("lock").as_deref(),
            Some("999.1")
        );
    }
}
