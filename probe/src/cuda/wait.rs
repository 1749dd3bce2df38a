//! The host's wait for the done event (after the end stamp), which ends
//! `host_wall_ms`: a short spin on
//! `cuEventQuery`, then either a sleep in the driver (the end event is a
//! blocking-sync event in a `CU_CTX_SCHED_BLOCKING_SYNC` context) or sleeps
//! between polls, as [`Wait`] says. A run waiting for its time slice thus
//! costs no CPU beyond the spin budget.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use cudarc::driver::sys as drv_sys;

use super::device::set_fine_timer_slack;
use super::CudaBackend;
use crate::spec::Wait;
use crate::ProbeError;

impl CudaBackend {
    /// Waits for the end event: polls it for the spin budget, then sleeps
    /// on its blocking sync or, with [`Wait::SpinThenPoll`], sleeps between
    /// polls. Returns how it waited (`spin`, `block` or `poll`).
    pub(super) fn wait_end(&self, t0: Instant) -> Result<&'static str, ProbeError> {
        let us = |n: u32| Duration::from_micros(u64::from(n));
        // The spin budget, and the sleep between later polls (None: block).
        let (budget, poll) = match self.spec.wait {
            Wait::Spin => {
                ck!("cuEventSynchronize", self.ev_done.synchronize())?;
                return Ok("spin");
            }
            Wait::SpinThenBlock { spin_us } => (us(spin_us), None),
            Wait::SpinThenPoll { spin_us, poll_us } => {
                set_fine_timer_slack();
                (us(spin_us), Some(us(poll_us.max(1))))
            }
        };
        let mut slept = false;
        loop {
            // SAFETY: the event belongs to this context.
            let r = unsafe { drv_sys::cuEventQuery(self.ev_done.cu_event()) };
            match r {
                drv_sys::CUresult::CUDA_SUCCESS => return Ok(if slept { "poll" } else { "spin" }),
                drv_sys::CUresult::CUDA_ERROR_NOT_READY => {}
                e => return Err(super::cuda_err("cuEventQuery")(&e)),
            }
            if t0.elapsed() < budget {
                std::hint::spin_loop();
                continue;
            }
            match poll {
                Some(p) => {
                    std::thread::sleep(p);
                    slept = true;
                }
                None => {
                    ck!("cuEventSynchronize", self.ev_done.synchronize())?;
                    return Ok("block");
                }
            }
        }
    }
}
