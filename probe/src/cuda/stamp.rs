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
//! the end stamp precedes the wait's return), but beside tenants both are as
//! wide as a context switch. A two-way exchange between the host and a
//! one-thread kernel through mapped host memory
//! ([`CudaBackend::calibrate`]) bounds it to one PCIe round trip instead, at
//! start-up and every [`CALIBRATE_EVERY`]; [`crate::clock::GpuClock`] fits
//! the lot.
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
/// `slicetrace_exchange(u64* box, u64 patience_ns)` is the two-way
/// calibration (see [`CudaBackend::calibrate`]): it writes the timer to
/// `box[0]` in host memory, waits up to `patience_ns` of GPU time for the
/// host's answer in `box[1]` (any non-zero word, written right after the
/// host read its clock), and on seeing it writes the timer again to
/// `box[2]`; `slicetrace_spin(u64 ns)` spins one thread
/// on the timer for `ns` (the planted hang, [`crate::Fault::Hang`]);
/// `slicetrace_timer_trace(u64* out, u32 n)` reads
/// the timer `n` times in a row (resolution and monotonicity checks). PTX
/// ISA 7.0 for sm_70 and newer (`.relaxed.sys` loads and stores, so the
/// host's write is seen and the GPU's writes reach the host while the
/// kernel runs).
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

.visible .entry slicetrace_exchange(.param .u64 box, .param .u64 patience)
{
    .reg .pred %p<3>;
    .reg .b64 %rd<10>;
    ld.param.u64 %rd1, [box];
    cvta.to.global.u64 %rd2, %rd1;
    ld.param.u64 %rd3, [patience];
    mov.u64 %rd4, %globaltimer;
    st.relaxed.sys.global.u64 [%rd2], %rd4;
    fence.sc.sys;
WAIT:
    ld.relaxed.sys.global.u64 %rd5, [%rd2+8];
    setp.ne.u64 %p1, %rd5, 0;
    @%p1 bra GOT;
    mov.u64 %rd6, %globaltimer;
    sub.u64 %rd7, %rd6, %rd4;
    setp.lt.u64 %p2, %rd7, %rd3;
    @%p2 bra WAIT;
    bra DONE;
GOT:
    mov.u64 %rd8, %globaltimer;
    st.relaxed.sys.global.u64 [%rd2+16], %rd8;
DONE:
    fence.sc.sys;
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
/// Stamp slots.
pub(super) const SLOTS: usize = 2;

/// How often a two-way exchange recalibrates, besides the runs' own bounds.
pub const CALIBRATE_EVERY: Duration = Duration::from_secs(10);
/// How often while the error bound is above half of [`TARGET_ERROR_NS`].
pub const CALIBRATE_WIDE_EVERY: Duration = Duration::from_secs(1);
/// Exchanges at start-up, [`CALIBRATE_START_GAP`] apart: they span three
/// buckets of [`crate::clock::BUCKET_NS`], so the drift is bounded to a few
/// ppm before the first run.
pub const CALIBRATE_AT_START: u32 = 16;
/// The gap between start-up exchanges.
pub const CALIBRATE_START_GAP: Duration = Duration::from_millis(150);
/// How long the host spins for the exchange kernel to start: the launch
/// waits for this context's time slice (about 2 ms per tenant on an H100),
/// so this covers a dozen tenants; past it the host blocks and keeps only
/// the one-way bounds.
const EXCHANGE_HOST_SPIN: Duration = Duration::from_millis(30);
/// How long the exchange kernel waits for the host's answer, GPU ns (it
/// holds this context's own slice, never a tenant's).
const EXCHANGE_PATIENCE_NS: u64 = 200_000;

/// What the two-way exchanges cost and how many were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeStats {
    /// Exchanges the host answered in time.
    pub answered: u64,
    /// Exchanges the host gave up on (the kernel did not start within the
    /// host's spin budget) or the kernel stopped waiting for.
    pub missed: u64,
    /// Host time spent spinning for the kernel to start, in total.
    pub spin: Duration,
}

impl ExchangeStats {
    fn record(&mut self, answered: bool, spin: Duration) {
        if answered {
            self.answered += 1;
        } else {
            self.missed += 1;
        }
        self.spin += spin;
    }
}

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

/// The loaded stamp module, its functions, and the calibration mailbox.
pub(super) struct StampKernels {
    module: drv_sys::CUmodule,
    stamp: drv_sys::CUfunction,
    exchange: drv_sys::CUfunction,
    trace: drv_sys::CUfunction,
    mailbox: Mailbox,
    spin: drv_sys::CUfunction,
}

impl StampKernels {
    /// JIT-compiles the PTX into the current context and maps the mailbox.
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
                get("slicetrace_exchange")?,
                get("slicetrace_timer_trace")?,
                get("slicetrace_spin")?,
                Mailbox::map()?,
            ))
        })();
        match loaded {
            Ok((stamp, exchange, trace, spin, mailbox)) => Ok(Self {
                module,
                stamp,
                exchange,
                trace,
                mailbox,
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

/// Mailbox slots: the GPU's first stamp, the host's answer (1 once it read
/// its clock), the GPU's second stamp (0 while unwritten).
const BOX_GPU_SEEN: usize = 0;
const BOX_HOST: usize = 1;
const BOX_GPU_REPLY: usize = 2;
const BOX_SLOTS: usize = 3;

/// A few words of page-locked host memory that the GPU reads and writes
/// directly through its mapping, for the two-way calibration.
struct Mailbox {
    host: *mut u64,
    dev: u64,
}

impl Mailbox {
    /// Allocates and maps the mailbox in the current context.
    fn map() -> Result<Self, ProbeError> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: the context is current; p receives BOX_SLOTS u64.
        ck!("cuMemHostAlloc", unsafe {
            drv_sys::cuMemHostAlloc(&mut p, BOX_SLOTS * 8, drv_sys::CU_MEMHOSTALLOC_DEVICEMAP)
                .result()
        })?;
        let mut dev: drv_sys::CUdeviceptr = 0;
        // SAFETY: p was allocated above with DEVICEMAP.
        let mapped = unsafe { drv_sys::cuMemHostGetDevicePointer_v2(&mut dev, p, 0).result() };
        if let Err(e) = mapped {
            // SAFETY: p was allocated above and is not used again.
            let _ = unsafe { drv_sys::cuMemFreeHost(p) };
            return Err(super::cuda_err("cuMemHostGetDevicePointer")(&e));
        }
        let me = Self {
            host: p as *mut u64,
            dev,
        };
        me.clear();
        Ok(me)
    }

    fn get(&self, slot: usize) -> u64 {
        debug_assert!(slot < BOX_SLOTS);
        // SAFETY: host points at BOX_SLOTS u64 for the mailbox's life; the
        // GPU writes them concurrently, hence the volatile read.
        unsafe { std::ptr::read_volatile(self.host.add(slot)) }
    }

    fn set(&self, slot: usize, v: u64) {
        debug_assert!(slot < BOX_SLOTS);
        // SAFETY: as in `get`; the GPU polls this word.
        unsafe { std::ptr::write_volatile(self.host.add(slot), v) }
    }

    fn clear(&self) {
        for i in 0..BOX_SLOTS {
            self.set(i, 0);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // SAFETY: allocated once in `map`, freed once here; no kernel that
        // uses it is in flight (the backend synchronises after each use).
        let _ = unsafe { drv_sys::cuMemFreeHost(self.host as *mut c_void) };
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

    /// Calibrates with `n` two-way exchanges ([`Self::exchange`]); at
    /// start-up (`spread`) they are [`CALIBRATE_START_GAP`] apart, so that
    /// they span more than one bucket and pin the drift down before the
    /// first run. How many were answered is in [`Self::exchange_stats`].
    pub fn calibrate(&mut self, n: u32, spread: bool) -> Result<(), ProbeError> {
        for i in 0..n {
            if spread && i > 0 {
                std::thread::sleep(CALIBRATE_START_GAP);
            }
            self.exchange()?;
        }
        self.last_calibration = Some(Instant::now());
        Ok(())
    }

    /// One two-way exchange between the host and a one-thread kernel.
    ///
    /// The kernel writes the GPU timer `g0` into mapped host memory as soon
    /// as it runs, and waits (at most [`EXCHANGE_PATIENCE_NS`] of GPU time)
    /// for the host's answer; the host spins on the mailbox, reads its clock
    /// `h` the moment it sees `g0`, and answers; the kernel then writes the
    /// timer again, `g1`. `g0` happened before `h`, and `h` before `g1`, so
    /// `g0 − h ≤ offset ≤ g1 − h`: a bound as wide as one PCIe round trip,
    /// however long the launch waited for this context's time slice (the
    /// host is already spinning when it comes). That is what keeps the
    /// calibration tight beside tenants, where every other bound is as wide
    /// as a context switch. The launch and the completion add the one-way
    /// bounds of a lone stamp. Returns the round trip `g1 − g0` (GPU ns)
    /// when the host's answer arrived.
    pub(super) fn exchange(&mut self) -> Result<Option<i64>, ProbeError> {
        let Some(k) = &self.stamps else {
            return Ok(None);
        };
        let mb = &k.mailbox;
        mb.clear();
        let mut boxp: u64 = mb.dev;
        let mut patience: u64 = EXCHANGE_PATIENCE_NS;
        let mut params = [
            &mut boxp as *mut u64 as *mut c_void,
            &mut patience as *mut u64 as *mut c_void,
        ];
        let t0 = Instant::now();
        // SAFETY: the exchange function takes (u64*, u64); boxp is the
        // device address of the mapped mailbox of this context.
        unsafe { launch(k.exchange, self.stream.cu_stream(), &mut params) }?;
        ck!("cuEventRecord", self.ev_cal.record(&self.stream))?;
        let mut host_read = None;
        loop {
            if mb.get(BOX_GPU_SEEN) != 0 {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let h = Instant::now();
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                mb.set(BOX_HOST, 1);
                host_read = Some(h);
                break;
            }
            if t0.elapsed() >= EXCHANGE_HOST_SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        let spun = t0.elapsed();
        ck!("cuEventSynchronize", self.ev_cal.synchronize())?;
        let t1 = Instant::now();
        let (g0, g1) = (mb.get(BOX_GPU_SEEN) as i64, mb.get(BOX_GPU_REPLY) as i64);
        if g0 != 0 {
            self.clock.upper(host_ns(t0), g0);
            self.clock.lower(host_ns(t1), if g1 != 0 { g1 } else { g0 });
        }
        let answered = match host_read {
            Some(h) if g0 != 0 && g1 != 0 => {
                self.clock.lower(host_ns(h), g0);
                self.clock.upper(host_ns(h), g1);
                Some(g1 - g0)
            }
            _ => None,
        };
        self.exchanges.record(answered.is_some(), spun);
        // Refit (when due) so the next bounds are compared along the drift.
        self.clock.estimate(host_ns(t1));
        Ok(answered)
    }

    /// Recalibrates (outside the measured path) with one exchange when the
    /// last one is older than [`CALIBRATE_EVERY`], or older than
    /// [`CALIBRATE_WIDE_EVERY`] while the error bound is above half of
    /// [`TARGET_ERROR_NS`] (the drift not yet pinned down, or a reset).
    pub(super) fn calibrate_if_due(&mut self, err_us: Option<f64>) -> Result<(), ProbeError> {
        if self.stamps.is_none() {
            return Ok(());
        }
        let wide = err_us.is_none_or(|e| e * 1e3 > TARGET_ERROR_NS / 2.0);
        let due = self.last_calibration.is_none_or(|t| {
            let age = t.elapsed();
            age >= CALIBRATE_EVERY || (wide && age >= CALIBRATE_WIDE_EVERY)
        });
        if due {
            self.calibrate(1, false)?;
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

    /// The two-way exchanges so far.
    pub fn exchange_stats(&self) -> ExchangeStats {
        self.exchanges
    }

    /// The start and end stamps of the last run, GPU ns.
    pub fn last_stamps(&self) -> Option<(u64, u64)> {
        self.stamps
            .as_ref()
            .map(|_| (self.stamp_host[SLOT_START], self.stamp_host[SLOT_END]))
    }
}
