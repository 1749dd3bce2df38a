//! One GPU's lifecycle on its probe thread: opened (at start, or here with
//! backoff), probing, and down with a reason (`open_failed`, `lost`,
//! `hung`) while the thread keeps trying to bring it back, on its own,
//! while the other GPUs' threads probe on.
//!
//! ```text
//!            open ok                    run past its deadline
//!  closed ───────────► probing ───────────────────────────────► hung ─┐
//!    ▲  open fails       │  runs fail REOPEN_AFTER times, reopen fails │
//!    └── open_failed ◄───┴──────────────► lost ◄──────────────────────┘
//!        (retry with backoff; a GPU that opens again is probing again)
//! ```
//!
//! The state is written straight to [`LiveState`] (`/readyz`,
//! `slicetrace_gpu_probing`, the evaluator's next verdict), so a hung GPU is
//! `unhealthy` from the next evaluation on. A GPU is never reset: a hung
//! backend is abandoned to its runner thread ([`super::driver`]), which
//! releases its context if the run ever returns.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slicetrace_probe::{Fault, Kernel, ProbeBackend, RunSample};
use slicetrace_schema::Reason;

use super::driver::{Driver, DriverError};
use super::{LoopState, ProbeLoop, MAX_BACKOFF};
use crate::internal_events::Counters;
use crate::internal_events::{
    error_chain, GpuOpenFailed, InternalEvent, ParkedBackendReleased, ProbeRunHung, Stage,
};
use crate::serve::live::Liveness;

/// One GPU as its probe thread starts: its identity as registered, the
/// backend if it opened at start, why not if it did not, and how to open
/// it (again).
pub struct GpuSlot {
    /// Device index.
    pub index: u32,
    /// The UUID it is registered under (a placeholder such as
    /// `GPU-index-1` until its backend opens and says).
    pub uuid: String,
    /// The backend, if it opened at start.
    pub backend: Option<Box<dyn ProbeBackend>>,
    /// Why it did not open at start.
    pub open_error: Option<String>,
}

/// Most backends of one GPU that may be parked (abandoned with a hung run
/// that has not returned, each keeping its context) before no new one is
/// opened.
pub const MAX_PARKED: u64 = 2;

/// Why a run produced no sample.
#[derive(Debug)]
pub(super) enum RunFailure {
    /// The backend answered with an error.
    Probe(String),
    /// No answer within the deadline; the backend was abandoned.
    Hung,
    /// No backend is open.
    Closed,
}

/// The back-off before open attempt `n + 1` after `n` failures: doubling
/// from one second, at most [`MAX_BACKOFF`] (kube-rs's shape, as a value
/// the tests check).
pub fn open_backoff(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

impl ProbeLoop {
    /// Plants a wrong answer and a skipped kernel into each kernel through
    /// the backend's real submission path, and requires both to be caught
    /// and a clean run to pass. The outcome goes to the live state (a failed
    /// self-test means correctness is unverified: the GPU is `unhealthy`).
    pub(super) fn self_test(&mut self, st: &mut LoopState) {
        let uuid = st.uuid.clone();
        for k in [Kernel::Fft, Kernel::Gemm] {
            let mut caught = [false; 2];
            for (i, fault) in [Fault::Corrupt, Fault::Skip].into_iter().enumerate() {
                self.plant(st, k, fault);
                caught[i] = matches!(self.run_kernel(st, k), Ok(s) if s.correct == Some(false));
            }
            let clean = matches!(self.run_kernel(st, k), Ok(s) if s.correct == Some(true));
            if st.driver.is_none() {
                // It hung or went away mid-test: judged again on reopen.
                return;
            }
            let passed = caught[0] && caught[1] && clean;
            self.live.record_self_test(&uuid, k, passed);
            if passed {
                tracing::info!(gpu = %uuid, kernel = k.as_str(), "self-test passed: planted corruption and skipped kernel caught");
            } else {
                tracing::error!(gpu = %uuid, kernel = k.as_str(), corruption_caught = caught[0], skip_caught = caught[1], clean, "self-test failed: correctness of this GPU is unverified");
            }
        }
    }

    /// Beats this thread's progress (for `/healthz`).
    pub(super) fn beat(&self, st: &LoopState) {
        st.beat.store(Liveness::now_ms(), Ordering::Relaxed);
    }

    /// Sleeps up to `d` in slices of at most a second, beating between
    /// them; true once stopped.
    pub(super) fn pause(&self, st: &LoopState, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            self.beat(st);
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.stop.is_stopped();
            }
            if self.stop.wait(left.min(Duration::from_secs(1))) {
                return true;
            }
        }
    }

    /// How long until the next open attempt (zero while a backend is open
    /// or an attempt is due).
    pub(super) fn until_open(&self, st: &LoopState) -> Duration {
        if st.driver.is_some() {
            return Duration::ZERO;
        }
        st.next_open.saturating_duration_since(Instant::now())
    }

    /// Makes sure a backend is open: true when one is. Opens through the
    /// opener when an attempt is due, and on success brings the GPU back
    /// (`probing`), runs the self-test on the new backend and resets the
    /// back-off; on failure marks it down and schedules the next attempt.
    pub(super) fn ensure_open(&mut self, st: &mut LoopState) -> bool {
        if st.driver.is_some() {
            return true;
        }
        if Instant::now() < st.next_open {
            return false;
        }
        let Some(opener) = self.opener.clone() else {
            // Nothing can open it again: it stays down, the thread idles.
            st.next_open = Instant::now() + MAX_BACKOFF;
            return false;
        };
        let parked = Counters::get(&self.counters.gpu(&st.uuid).backends_parked);
        if parked >= MAX_PARKED {
            // Each parked backend holds a context's GPU memory: a GPU that
            // hangs every backend would otherwise take the tenants' memory
            // one context at a time. Wait for one to be released.
            st.next_open = Instant::now() + open_backoff(1);
            self.mark_down(
                st,
                Reason::Hung,
                format!("{parked} abandoned backends still wait for their hung runs: not opening another until one returns"),
            );
            return false;
        }
        let name = format!("gpu{}-runner", st.gpu_index);
        self.beat(st);
        match Driver::open(opener, &name, self.watchdog.open) {
            Ok(d) => {
                let real = d.device().uuid.clone();
                if real != st.uuid {
                    self.live.rename_gpu(&st.uuid, &real);
                    st.uuid = real;
                }
                if st.ever_opened {
                    tracing::warn!(gpu = %st.uuid, index = st.gpu_index, "re-created the probe backend after repeated failures or a hang");
                } else {
                    tracing::info!(gpu = %st.uuid, index = st.gpu_index, after_attempts = st.open_failures, "GPU backend opened: probing");
                }
                st.driver = Some(d);
                st.open_failures = 0;
                st.ever_opened = true;
                // Runs that fail on it stay `probe_failing` until one passes.
                self.live.update_gpu(&st.uuid, |e| {
                    e.down = None;
                    e.down_reason = None;
                });
                if self.self_test {
                    self.self_test(st);
                }
                st.driver.is_some()
            }
            Err(e) => {
                st.open_failures += 1;
                let retry_in = open_backoff(st.open_failures);
                st.next_open = Instant::now() + retry_in;
                let msg = match &e {
                    DriverError::Hung(d) => format!("open did not finish within {d:?}"),
                    e => error_chain(e),
                };
                GpuOpenFailed {
                    gpu_uuid: &st.uuid,
                    attempts: st.open_failures,
                    error: &msg,
                    retry_in,
                }
                .emit(&self.counters);
                // A GPU that probed before and now does not open is lost;
                // one that never opened failed to open.
                let reason = if st.ever_opened {
                    Reason::Lost
                } else {
                    Reason::OpenFailed
                };
                self.mark_down(st, reason, msg);
                false
            }
        }
    }

    /// Pauses the GPU while the node's driver is away ([`super::upgrade`]):
    /// being upgraded (the GPU Operator's `nvidia.com/gpu-driver-upgrade-state`
    /// label, read through the occupancy source's Kubernetes API cache), or
    /// gone as NVML says. The backend and its CUDA context are released (and
    /// NVML, by the gate) so the kernel module can unload, and the GPU is
    /// down with reason `driver_upgrade` (`unknown`, paging nobody) until the
    /// driver answers again, when it is opened again. True while paused.
    pub(super) fn driver_upgrade_pause(&mut self, st: &mut LoopState) -> bool {
        let state = self
            .occupancy
            .node_label(crate::probe::occupancy::LABEL_DRIVER_UPGRADE_STATE);
        let label = state
            .as_deref()
            .filter(|s| crate::probe::occupancy::driver_upgrade_in_progress(Some(s)));
        if let Some(away) = self
            .driver_gate
            .check(label, self.telemetry.as_ref(), &self.counters)
        {
            let why = away.describe();
            if !st.upgrading {
                st.upgrading = true;
                let released = st.driver.take().is_some();
                tracing::warn!(gpu = %st.uuid, why = %why, released, "the driver is away: CUDA context released, GPU not probed until the driver answers again");
            }
            // Every turn: the reason may move from the label to NVML's error.
            self.mark_down(st, Reason::DriverUpgrade, why);
            return true;
        }
        if st.upgrading {
            st.upgrading = false;
            st.open_failures = 0;
            st.next_open = Instant::now();
            tracing::info!(gpu = %st.uuid, "the driver is back: reopening the GPU");
        }
        false
    }

    /// Marks the GPU down with `reason` (a hang stays the reason while the
    /// hung GPU fails to reopen: the hang is what the operator must see).
    pub(super) fn mark_down(&self, st: &LoopState, reason: Reason, detail: String) {
        self.live.update_gpu(&st.uuid, |e| {
            if e.down_reason == Some(Reason::Hung)
                && matches!(reason, Reason::OpenFailed | Reason::Lost)
            {
                e.down = Some(format!("{}; {detail}", e.down.clone().unwrap_or_default()));
                return;
            }
            e.down = Some(detail);
            e.down_reason = Some(reason);
        });
    }

    /// Closes the backend (after repeated failures, to reopen it).
    pub(super) fn close(&mut self, st: &mut LoopState) {
        st.driver = None;
        st.next_open = Instant::now();
    }

    /// Plants `fault` into the next run of `kernel`, if a backend is open.
    pub(super) fn plant(&self, st: &LoopState, kernel: Kernel, fault: Fault) {
        if let Some(d) = &st.driver {
            d.plant_fault(kernel, fault);
        }
    }

    /// One run under the watchdog's deadline. A run past it marks the GPU
    /// `hung`, abandons the backend and schedules a reopen.
    pub(super) fn run_kernel(
        &mut self,
        st: &mut LoopState,
        kernel: Kernel,
    ) -> Result<RunSample, RunFailure> {
        if let Some(after) = self.watchdog.plant_hang_after {
            if !st.hang_planted && st.started.elapsed() >= after {
                st.hang_planted = true;
                tracing::warn!(gpu = %st.uuid, kernel = kernel.as_str(), "planting a hang into the next run (watchdog.plant_hang_after_ms)");
                self.plant(st, kernel, Fault::Hang);
            }
        }
        let deadline = self.watchdog.run_deadline(st.tenants);
        let Some(d) = &st.driver else {
            return Err(RunFailure::Closed);
        };
        self.beat(st);
        let r = d.run(kernel, deadline);
        self.beat(st);
        match r {
            Ok((s, cpu)) => {
                if let Some(cpu) = cpu {
                    self.charge(st, Stage::Run, cpu);
                }
                Ok(s)
            }
            Err(DriverError::Probe(e)) => Err(RunFailure::Probe(error_chain(&e))),
            Err(DriverError::Hung(deadline)) => {
                ProbeRunHung {
                    gpu_uuid: &st.uuid,
                    deadline,
                }
                .emit(&self.counters);
                if let Some(d) = st.driver.take() {
                    let (uuid, counters) = (st.uuid.clone(), self.counters.clone());
                    d.abandon(Box::new(move |parked| {
                        ParkedBackendReleased {
                            gpu_uuid: &uuid,
                            parked,
                        }
                        .emit(&counters)
                    }));
                }
                st.open_failures = 0;
                st.next_open = Instant::now() + open_backoff(1);
                self.mark_down(
                    st,
                    Reason::Hung,
                    format!(
                        "a {} run did not finish within {deadline:?}: context abandoned, reopening",
                        kernel.as_str()
                    ),
                );
                Err(RunFailure::Hung)
            }
            Err(DriverError::Gone) => {
                st.driver = None;
                st.next_open = Instant::now();
                Err(RunFailure::Probe(
                    "the backend's runner thread is gone".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-rs style: the back-off is a value, and it grows to its cap.
    #[test]
    fn open_backoff_doubles_up_to_the_cap() {
        assert_eq!(open_backoff(1), Duration::from_secs(1));
        assert_eq!(open_backoff(2), Duration::from_secs(2));
        assert_eq!(open_backoff(4), Duration::from_secs(8));
        assert!(open_backoff(5) > open_backoff(4));
        assert_eq!(open_backoff(40), MAX_BACKOFF);
    }
}
