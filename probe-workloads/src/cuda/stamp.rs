//! GPU stamps: one-thread kernels that write the GPU's global nanosecond
//! timer (`%globaltimer`), and the calibration that maps them to host time.
//!
//! A run's graph begins with a start stamp (it executes when this context
//! gets the GPU, so launch → start stamp is the wait for a time slice) and
//! has an end stamp right after the end event (the kernel has finished); the
//! host waits on a third event after the end stamp. `wall_ms` is then launch
//! → end stamp on the host's time line, which does not depend on how late
//! the probe thread wakes up from its blocking wait. Every run also bounds
//! the offset between the two clocks (the launch precedes the start stamp,
//! the end stamp precedes the wait's return), and a lone stamp kernel, polled
//! for a short budget, calibrates at start-up and every
//! [`CALIBRATE_EVERY`]; [`crate::clock::GpuClock`] fits the lot.
//!
//! The kernels are PTX written here and JIT-compiled by the driver when the
//! backend is created (`cuModuleLoadData`), so nothing needs NVRTC or nvcc.
#![allow(unsafe_code)]

use std::ffi::{c_void, CString};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cudarc::driver::{sys as drv_sys, DevicePtr};

use super::CudaBackend;
use crate::clock::{MAX_ERROR_NS, TARGET_ERROR_NS};
use crate::ProbeError;

/// The stamp kernels: `slicetrace_stamp(u64* out)` writes the timer once;
/// `slicetrace_timer_trace(u64* out, u32 n)` reads it `n` times in a row
/// (resolution and monotonicity checks); `slicetrace_spin(u64 ns)` spins
/// one thread on the timer for `ns` (the planted hang, [`crate::Fault::Hang`]).
/// PTX ISA 7.0 for sm_70 and newer.
const PTX: &str = r#"
.version 7.0
.target sm_70
.address_size 64

.visible .entry slicetrace_stamp(.param .u64 out)
{
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u64 %rd3, %globaltimer;
    st.global.u64 [%rd2], %rd3;
    ret;
}

.visible .entry slicetrace_timer_trace(.param .u64 out, .param .u32 n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .b64 %rd<6>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd2, %rd1;
    ld.param.u32 %r1, [n];
    mov.u32 %r2, 0;
LOOP:
    setp.ge.u32 %p1, %r2, %r1;
    @%p1 bra DONE;
    mov.u64 %rd3, %globaltimer;
    mul.wide.u32 %rd4, %r2, 8;
    add.s64 %rd5, %rd2, %rd4;
    st.global.u64 [%rd5], %rd3;
    add.u32 %r2, %r2, 1;
    bra LOOP;
DONE:
    ret;
}

.visible .entry slicetrace_spin(.param .u64 ns)
{
    .reg .pred %p<2>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [ns];
    mov.u64 %rd2, %globaltimer;
SPIN:
    mov.u64 %rd3, %globaltimer;
    sub.s64 %rd4, %rd3, %rd2;
    setp.lt.u64 %p1, %rd4, %rd1;
    @%p1 bra SPIN;
    ret;
}
"#;

/// Slots of the stamp buffer.
pub(super) const SLOT_START: usize = 0;
pub(super) const SLOT_END: usize = 1;
const SLOT_CAL: usize = 2;
/// Stamp slots, then room for a timer trace.
pub(super) const SLOTS: usize = 3;

/// How often a lone stamp kernel recalibrates, besides the runs' own bounds.
pub const CALIBRATE_EVERY: Duration = Duration::from_secs(10);
/// Calibration launches at start-up.
pub const CALIBRATE_AT_START: u32 = 16;
/// Lone launches after a run that found the GPU idle, while the bound is
/// above [`TARGET_ERROR_NS`].
pub const CALIBRATE_WHEN_IDLE: u32 = 2;
/// A run this quick (launch → wait returned, inside the spin budget) found
/// the GPU idle and this context resident.
const IDLE_RUN: Duration = Duration::from_micros(300);
/// How long a calibration launch is polled before the host blocks (a
/// launch that waited for a slice gives a wide bound, so spinning longer
/// buys nothing).
const CALIBRATE_SPIN: Duration = Duration::from_micros(50);

/// Host monotonic time in ns since a process-wide origin (the scale the
/// calibration uses).
pub fn host_ns(t: Instant) -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    match t.checked_duration_since(origin) {
        Some(d) => d.as_nanos() as i64,
        None => -(origin.duration_since(t).as_nanos() as i64),
    }
}

/// The loaded stamp module and its two functions.
pub(super) struct StampKernels {
    module: drv_sys::CUmodule,
    stamp: drv_sys::CUfunction,
    trace: drv_sys::CUfunction,
    spin: drv_sys::CUfunction,
}

impl StampKernels {
    /// JIT-compiles the PTX into the current context.
    pub(super) fn load() -> Result<Self, ProbeError> {
        let src = CString::new(PTX).map_err(|e| ProbeError::Cuda {
            what: "stamp ptx",
            detail: e.to_string(),
        })?;
        let mut module: drv_sys::CUmodule = std::ptr::null_mut();
        // SAFETY: src is a NUL-terminated PTX string; the context is current.
        ck!("cuModuleLoadData", unsafe {
            drv_sys::cuModuleLoadData(&mut module, src.as_ptr() as *const c_void).result()
        })?;
        let get = |name: &str| -> Result<drv_sys::CUfunction, ProbeError> {
            let n = CString::new(name).map_err(|e| ProbeError::Cuda {
                what: "stamp ptx",
                detail: e.to_string(),
            })?;
            let mut f: drv_sys::CUfunction = std::ptr::null_mut();
            // SAFETY: module was loaded above; n is NUL-terminated.
            ck!("cuModuleGetFunction", unsafe {
                drv_sys::cuModuleGetFunction(&mut f, module, n.as_ptr()).result()
            })?;
            Ok(f)
        };
        let loaded = (|| {
            Ok::<_, ProbeError>((
                get("slicetrace_stamp")?,
                get("slicetrace_timer_trace")?,
                get("slicetrace_spin")?,
            ))
        })();
        match loaded {
            Ok((stamp, trace, spin)) => Ok(Self {
                module,
                stamp,
                trace,
                spin,
            }),
            Err(e) => {
                // SAFETY: module was loaded above and is not used again.
                let _ = unsafe { drv_sys::cuModuleUnload(module) };
                Err(e)
            }
        }
    }
}

impl Drop for StampKernels {
    fn drop(&mut self) {
        // SAFETY: loaded once in `load`, unloaded once here (after the graphs
        // that reference its functions: field order in the backend).
        let _ = unsafe { drv_sys::cuModuleUnload(self.module) };
    }
}

/// Launches a one-block kernel with the given parameter pointers.
///
/// # Safety
/// `f` is a function of a module loaded in the stream's context, and
/// `params` match its signature.
unsafe fn launch(
    f: drv_sys::CUfunction,
    stream: drv_sys::CUstream,
    params: &mut [*mut c_void],
) -> Result<(), ProbeError> {
    // SAFETY: as the caller vouches; one thread, no shared memory.
    ck!("cuLaunchKernel", unsafe {
        drv_sys::cuLaunchKernel(
            f,
            1,
            1,
            1,
            1,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
    })
}

/// The GPU-stamped timing of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stamped {
    pub(super) wall_ms: f64,
    pub(super) queue_ms: f64,
    pub(super) err_us: f64,
}

impl CudaBackend {
    /// Enqueues a stamp of the GPU timer into `slot` (nothing without the
    /// stamp kernels).
    pub(super) fn enqueue_stamp(&mut self, slot: usize) -> Result<(), ProbeError> {
        let Some(k) = &self.stamps else {
            return Ok(());
        };
        let (base, _g) = self.stamp_buf.device_ptr(&self.stream);
        let mut ptr: u64 = base + (slot * 8) as u64;
        let mut params = [&mut ptr as *mut u64 as *mut c_void];
        // SAFETY: the stamp function takes one u64* and the buffer holds
        // SLOTS u64 on this context.
        unsafe { launch(k.stamp, self.stream.cu_stream(), &mut params) }
    }

    /// Enqueues the planted hang: one thread spinning on the GPU timer for
    /// [`crate::PLANTED_HANG`]. Returns false without the stamp kernels (no
    /// hang can be planted then).
    pub(super) fn enqueue_spin(&mut self) -> Result<bool, ProbeError> {
        let Some(k) = &self.stamps else {
            return Ok(false);
        };
        let mut ns: u64 = crate::PLANTED_HANG.as_nanos() as u64;
        let mut params = [&mut ns as *mut u64 as *mut c_void];
        // SAFETY: the spin function takes one u64 by value.
        unsafe { launch(k.spin, self.stream.cu_stream(), &mut params) }?;
        Ok(true)
    }

    /// Reads the start and end stamps of the run that just completed (the
    /// stream is synchronised by the check read before this).
    pub(super) fn read_stamps(&mut self) -> Result<Option<(i64, i64)>, ProbeError> {
        if self.stamps.is_none() {
            return Ok(None);
        }
        ck!(
            "copy stamps",
            self.stream
                .memcpy_dtoh(&self.stamp_buf, &mut self.stamp_host)
        )?;
        ck!("cuStreamSynchronize", self.stream.synchronize())?;
        let (s, e) = (
            self.stamp_host[SLOT_START] as i64,
            self.stamp_host[SLOT_END] as i64,
        );
        // A stamp that did not run leaves the previous run's value: the
        // start of this run must follow the end of the last one.
        let fresh = e >= s && s > self.last_end_stamp;
        self.last_end_stamp = e.max(self.last_end_stamp);
        Ok(fresh.then_some((s, e)))
    }

    /// Turns a run's stamps into `wall_ms`/`queue_ms` on the host's time
    /// line, after adding the run's bounds to the calibration. `None` when
    /// the calibration's error bound is above [`MAX_ERROR_NS`].
    pub(super) fn stamped(
        &mut self,
        launch: Instant,
        done: Instant,
        (start, end): (i64, i64),
    ) -> (Option<Stamped>, Option<f64>) {
        let (l, d) = (host_ns(launch), host_ns(done));
        self.clock.observe_run(l, start, end, d);
        let Some(e) = self.clock.estimate(d) else {
            return (None, None);
        };
        let err_us = e.err_ns / 1e3;
        if e.err_ns > MAX_ERROR_NS {
            return (None, Some(err_us));
        }
        let to_ms = |gpu: i64| (gpu - e.offset_ns - l) as f64 / 1e6;
        let s = Stamped {
            wall_ms: to_ms(end).max(0.0),
            queue_ms: to_ms(start).max(0.0),
            err_us,
        };
        (Some(s), Some(err_us))
    }

    /// Calibrates with `n` lone stamp launches, each polled for a short
    /// budget; returns how many completed inside it.
    pub fn calibrate(&mut self, n: u32) -> Result<u32, ProbeError> {
        let Some(k) = &self.stamps else {
            return Ok(0);
        };
        let stamp = k.stamp;
        let mut quick = 0;
        for _ in 0..n {
            let (base, _g) = self.stamp_buf.device_ptr(&self.stream);
            let mut ptr: u64 = base + (SLOT_CAL * 8) as u64;
            let mut params = [&mut ptr as *mut u64 as *mut c_void];
            drop(_g);
            let t0 = Instant::now();
            // SAFETY: as in enqueue_stamp.
            unsafe { launch(stamp, self.stream.cu_stream(), &mut params) }?;
            ck!("cuEventRecord", self.ev_cal.record(&self.stream))?;
            let mut done = false;
            while t0.elapsed() < CALIBRATE_SPIN {
                // SAFETY: the event belongs to this context.
                match unsafe { drv_sys::cuEventQuery(self.ev_cal.cu_event()) } {
                    drv_sys::CUresult::CUDA_SUCCESS => {
                        done = true;
                        break;
                    }
                    drv_sys::CUresult::CUDA_ERROR_NOT_READY => std::hint::spin_loop(),
                    e => return Err(super::cuda_err("cuEventQuery")(&e)),
                }
            }
            if !done {
                ck!("cuEventSynchronize", self.ev_cal.synchronize())?;
            }
            let t1 = Instant::now();
            quick += u32::from(done);
            let mut g = [0u64; SLOTS];
            ck!(
                "copy stamps",
                self.stream.memcpy_dtoh(&self.stamp_buf, &mut g)
            )?;
            ck!("cuStreamSynchronize", self.stream.synchronize())?;
            let g = g[SLOT_CAL] as i64;
            self.clock.upper(host_ns(t0), g);
            self.clock.lower(host_ns(t1), g);
        }
        self.last_calibration = Some(Instant::now());
        Ok(quick)
    }

    /// Recalibrates (outside the measured path) when the last calibration is
    /// older than [`CALIBRATE_EVERY`], or with [`CALIBRATE_WHEN_IDLE`] lone
    /// launches when the run just made looks like an idle GPU (it completed
    /// inside the spin budget, within [`IDLE_RUN`]) while the error bound is
    /// above [`TARGET_ERROR_NS`]: a launch then runs at once, so its bounds
    /// are tight, and it costs a tenant nothing because there is none.
    pub(super) fn calibrate_if_due(
        &mut self,
        host_wall: Duration,
        waited: &str,
        err_us: Option<f64>,
    ) -> Result<(), ProbeError> {
        if self.stamps.is_none() {
            return Ok(());
        }
        let idle = waited == "spin" && host_wall <= IDLE_RUN;
        if idle && err_us.is_none_or(|e| e * 1e3 > TARGET_ERROR_NS) {
            self.calibrate(CALIBRATE_WHEN_IDLE)?;
        } else if self
            .last_calibration
            .is_none_or(|t| t.elapsed() >= CALIBRATE_EVERY)
        {
            self.calibrate(1)?;
        }
        Ok(())
    }

    /// Reads the GPU timer `n` times in a row in one thread and returns the
    /// values (resolution and monotonicity checks, the GPU test tier).
    pub fn timer_trace(&mut self, n: u32) -> Result<Vec<u64>, ProbeError> {
        let Some(k) = &self.stamps else {
            return Err(ProbeError::Cuda {
                what: "timer trace",
                detail: "stamp kernels not loaded".into(),
            });
        };
        let trace = k.trace;
        let buf = ck!("alloc trace", self.stream.alloc_zeros::<u64>(n as usize))?;
        let (p, _g) = buf.device_ptr(&self.stream);
        let mut ptr: u64 = p;
        let mut count: u32 = n;
        let mut params = [
            &mut ptr as *mut u64 as *mut c_void,
            &mut count as *mut u32 as *mut c_void,
        ];
        // SAFETY: the trace function takes (u64*, u32); buf holds n u64.
        unsafe { launch(trace, self.stream.cu_stream(), &mut params) }?;
        drop(_g);
        let mut out = vec![0u64; n as usize];
        ck!("copy trace", self.stream.memcpy_dtoh(&buf, &mut out))?;
        ck!("cuStreamSynchronize", self.stream.synchronize())?;
        Ok(out)
    }

    /// The GPU clock's calibration (drift, error bound, resets).
    pub fn clock(&self) -> &crate::clock::GpuClock {
        &self.clock
    }

    /// The start and end stamps of the last run, GPU ns.
    pub fn last_stamps(&self) -> Option<(u64, u64)> {
        self.stamps
            .as_ref()
            .map(|_| (self.stamp_host[SLOT_START], self.stamp_host[SLOT_END]))
    }
}
