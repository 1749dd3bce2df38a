//! The host's wait for the end event, which ends `wall_ms`: a short spin on
//! `cuEventQuery`, then either a sleep in the driver (the end event is a
//! blocking-sync event in a `CU_CTX_SCHED_BLOCKING_SYNC` context) or sleeps
//! between polls, as [`Wait`] says. A run waiting for its time slice thus
//! costs no CPU beyond the spin budget.
#![allow(unsafe_code)]

use std::time::Instant;

use cudarc::driver::sys as drv_sys;

use super::device::set_fine_timer_slack;
use super::CudaBackend;
use crate::spec::Wait;
use crate::ProbeError;

impl CudaBackend {
    /// Waits for the end event: polls it for the spin budget, then sleeps on
    /// its blocking sync. Returns how it waited (`spin` or `block`).
    pub(super) fn wait_end(&self, t0: Instant) -> Result<&'static str, ProbeError> {
        let budget = match self.spec.wait {
            Wait::Spin => {
                ck!("cuEventSynchronize", self.ev_end.synchronize())?;
                return Ok("spin");
            }
            Wait::SpinThenBlock { spin_us } => std::time::Duration::from_micros(spin_us as u64),
            Wait::SpinThenPoll { spin_us, .. } => std::time::Duration::from_micros(spin_us as u64),
        };
        let poll = match self.spec.wait {
            Wait::SpinThenPoll { poll_us, .. } => {
                set_fine_timer_slack();
                Some(std::time::Duration::from_micros(poll_us.max(1) as u64))
            }
            _ => None,
        };
        let mut continue_polling = false;
        loop {
            // SAFETY: the event belongs to this context.
            let r = unsafe { drv_sys::cuEventQuery(self.ev_end.cu_event()) };
            match r {
                drv_sys::CUresult::CUDA_SUCCESS if continue_polling => return Ok("poll"),
                drv_sys::CUresult::CUDA_SUCCESS => return Ok("spin"),
                drv_sys::CUresult::CUDA_ERROR_NOT_READY => {}
                e => {
                    return Err(ProbeError::Cuda {
                        what: "cuEventQuery",
                        detail: format!("{e:?}"),
                    })
                }
            }
            if t0.elapsed() >= budget {
                match poll {
                    Some(p) => {
                        std::thread::sleep(p);
                        continue_polling = true;
                    }
                    None => {
                        ck!("cuEventSynchronize", self.ev_end.synchronize())?;
                        return Ok("block");
                    }
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }
}
