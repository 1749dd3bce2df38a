//! The CUDA backend: cuFFT and cuBLAS through cudarc, loaded at run time.
//!
//! Nothing here is a build-time requirement: cudarc loads libcuda, libcufft
//! and libcublas with `dlopen` on first use, and panics if one is missing, so
//! [`device_count`] checks each library with `is_culib_present()` first and
//! turns absence into a [`ProbeError::LibraryMissing`] naming it.
//!
//! The measured path of a run (graph mode, the default) is one graph launch:
//! start stamp → poison the outputs with NaN → fence kernel → start event →
//! kernel → end event → end stamp → done event → (disabled) plant node →
//! correctness reductions. The events give `gpu_ms`; the GPU's own stamps
//! give `wall_ms` (launch → end stamp) and `queue_ms` (launch → start stamp)
//! on the host's time line ([`stamp`], [`crate::clock`]); the host clock
//! until the wait for the done event returned is `host_wall_ms`.
//! Plans, handles, events and buffers are created once in
//! [`CudaBackend::new`] and warmed up, so the measured path allocates nothing.
//!
//! * **No blind spots in the check.** The outputs and the check results are
//!   poisoned inside the same submission, so a kernel (or a check) that never
//!   ran leaves NaN behind and fails. Faults are planted through the real
//!   graph: the plant node (a one-element memset after the end event) is
//!   enabled for one launch, or the kernel's nodes are disabled for one launch
//!   (`cuGraphNodeSetEnabled`).
//! * **A context of its own, when asked.** [`ContextKind::Own`] creates a
//!   context with `cuCtxCreate` instead of retaining the device's primary
//!   context. Within one context, opening a backend (loading modules,
//!   cuFFT's and cuBLAS's lazily loaded kernels, freeing memory) may wait
//!   for the context to go idle, so a replacement opened in the primary
//!   context beside a run that spins there waits for the spin to end.
//!   Separate contexts are time-sliced on the GPU like separate processes,
//!   so a backend in its own context opens and runs beside a hung one.
//! * **No busy-waiting.** The context is put in
//!   `CU_CTX_SCHED_BLOCKING_SYNC` and the end event is a blocking-sync event:
//!   the host polls it for a short budget ([`Wait`]) and then sleeps in the
//!   driver, so a run waiting for its time slice costs no CPU.
//! * **Small footprint.** cuBLAS gets a small workspace of our own (the
//!   default is 32 MiB on Hopper) and an explicit math mode, from which the
//!   fp32 check's tolerance follows.
//!
//! The module is split by job: `device` sets up the context and checks the
//! libraries, `kernel` enqueues the measured kernels, `checks` poisons and
//! checks their outputs, `graph` captures the graphs and plants faults
//! through them, `stamp` stamps and calibrates the GPU's timer, and `wait`
//! waits for the done event.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::cufft::{result as fft_result, sys as fft_sys};
use cudarc::driver::{
    sys as drv_sys, CudaContext, CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtr,
};
use num_complex::Complex32;

use crate::check::{FftReference, GemmReference};
use crate::spec::{FftDims, Fp32Math, Kernel, Precision, ProbeSpec, Timing, Wait};
use crate::{DeviceInfo, Fault, KernelShape, ProbeBackend, ProbeError, RunSample};

fn cuda_err(what: &'static str) -> impl Fn(&dyn std::fmt::Debug) -> ProbeError {
    move |e| ProbeError::Cuda {
        what,
        detail: format!("{e:?}"),
    }
}

/// Maps a cudarc error to [`ProbeError::Cuda`] naming the call that failed.
/// Defined before the submodules so that they can use it.
macro_rules! ck {
    ($what:expr, $e:expr) => {
        $e.map_err(|e| $crate::cuda::cuda_err($what)(&e))
    };
}

mod checks;
mod device;
mod graph;
mod kernel;
mod stamp;
#[cfg(test)]
mod tests;
mod wait;

pub use stamp::{host_ns, ExchangeStats, CALIBRATE_AT_START, CALIBRATE_EVERY, CALIBRATE_START_GAP};

pub use device::{device_count, device_used_mib, effective_fp32_math, format_uuid, ContextKind};
use device::{own_context, set_blocking_sync, set_stack_limit};
use graph::{set_fault_nodes, FaultNodes};
use kernel::{to_bytes, Matrix};

/// CUDA probe backend for one device.
pub struct CudaBackend {
    info: DeviceInfo,
    spec: ProbeSpec,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    fft_plan: fft_sys::cufftHandle,
    fft_in: CudaSlice<f32>,
    fft_out: CudaSlice<f32>,
    fft_w: CudaSlice<f32>,
    fft_ref: FftReference,
    blas: CudaBlas,
    a: Matrix,
    b: Matrix,
    c: Matrix,
    v: Matrix,
    y: CudaSlice<f32>,
    y_host: Vec<f32>,
    /// FFT check results on the device: `[‖X‖, pad, Re dot, Im dot]`
    /// (the complex dot is 8-byte aligned).
    chk: CudaSlice<f32>,
    chk_host: Vec<f32>,
    /// One element scaled by 1.0: the fence kernel.
    fence: CudaSlice<f32>,
    gemm_ref: GemmReference,
    ev_start: CudaEvent,
    ev_end: CudaEvent,
    /// Recorded after the end stamp: what the host waits on.
    ev_done: CudaEvent,
    /// Recorded after a calibration stamp.
    ev_cal: CudaEvent,
    /// GPU timer stamps: start, end, calibration.
    stamp_buf: CudaSlice<u64>,
    stamp_host: Vec<u64>,
    /// The end stamp of the last run (a stale stamp is not newer).
    last_end_stamp: i64,
    /// The GPU timer's calibration against the host clock.
    clock: crate::clock::GpuClock,
    last_calibration: Option<Instant>,
    /// The two-way calibration exchanges so far.
    exchanges: stamp::ExchangeStats,
    /// One captured graph per kernel in [`Timing::Graph`] mode, with the
    /// nodes used to plant faults through it.
    graphs: [Option<(CudaGraph, Option<FaultNodes>)>; 2],
    fault_next: [Option<Fault>; 2],
    /// Workspace handed to cuBLAS (kept alive as long as the handle).
    _blas_workspace: Option<CudaSlice<u8>>,
    /// Math mode the fp32 GEMM may run in (its check's tolerance follows).
    fp32_math: Fp32Math,
    /// The stamp kernels; `None` when stamps are off or failed to load.
    /// Declared after the graphs, so the graphs that launch them go first.
    stamps: Option<stamp::StampKernels>,
}

/// Stages of [`CudaBackend::new_traced`], reported as they complete (the
/// footprint breakdown measures memory after each; `stack_limit` only when
/// the spec sets one).
pub const STAGES: [&str; 8] = [
    "context",
    "stack_limit",
    "cufft_plan",
    "cublas_handle",
    "buffers",
    "warmup",
    "graphs",
    "calibration",
];

// SAFETY: the cuFFT plan handle is only used from the thread that owns the
// backend (the trait contract: one probe thread per backend).
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Creates the context, plans, handles, events and buffers on device
    /// `index`, uploads the fixed inputs, warms up both kernels and, in
    /// graph mode, captures one graph per kernel. Runs in the device's
    /// primary context ([`ContextKind::Primary`]).
    pub fn new(index: u32, spec: &ProbeSpec) -> Result<Self, ProbeError> {
        Self::new_traced(index, spec, &mut |_| {})
    }

    /// [`Self::new`] in a context of `kind`: the agent opens every backend
    /// in a context of its own ([`ContextKind::Own`]), so that a backend
    /// abandoned with a hung run never stands in the way of its
    /// replacement.
    pub fn new_in(index: u32, spec: &ProbeSpec, kind: ContextKind) -> Result<Self, ProbeError> {
        Self::new_traced_in(index, spec, kind, &mut |_| {})
    }

    /// [`Self::new`], calling `stage` after each of [`STAGES`] completes.
    pub fn new_traced(
        index: u32,
        spec: &ProbeSpec,
        stage: &mut dyn FnMut(&'static str),
    ) -> Result<Self, ProbeError> {
        Self::new_traced_in(index, spec, ContextKind::Primary, stage)
    }

    /// [`Self::new_in`], calling `stage` after each of [`STAGES`] completes.
    pub fn new_traced_in(
        index: u32,
        spec: &ProbeSpec,
        kind: ContextKind,
        stage: &mut dyn FnMut(&'static str),
    ) -> Result<Self, ProbeError> {
        spec.validate()?;
        let count = device_count()?;
        if index >= count {
            return Err(ProbeError::BadIndex { index, count });
        }
        let ctx = match kind {
            ContextKind::Primary => {
                if !matches!(spec.wait, Wait::Spin) {
                    set_blocking_sync(index);
                }
                ck!("cuDevicePrimaryCtxRetain", CudaContext::new(index as usize))?
            }
            // Never touches the primary context: its flags come with it.
            ContextKind::Own => own_context(index, !matches!(spec.wait, Wait::Spin))?,
        };
        stage("context");
        if let Some(bytes) = spec.cuda_stack_bytes {
            set_stack_limit(&ctx, bytes)?;
            stage("stack_limit");
        }
        // SAFETY: the backend uses a single stream for every buffer, so
        // cudarc's cross-stream event tracking (an event per buffer access,
        // i.e. per-run allocations) is unnecessary.
        unsafe { ctx.disable_event_tracking() };
        let stream = match spec.timing {
            Timing::Legacy => ctx.default_stream(),
            _ => ck!("cuStreamCreate", ctx.new_stream())?,
        };
        let name = ctx.name().ok();
        let uuid = ctx
            .uuid()
            .map(|u| format_uuid(&u.bytes.map(|b| b as u8)))
            .unwrap_or_else(|_| format!("GPU-index-{index}"));

        let fft_ref = FftReference::new(&spec.fft);
        let fft_plan = match spec.fft.dims {
            FftDims::D1 { n, batch } => ck!(
                "cufftPlan1d",
                fft_result::plan_1d(n as i32, fft_sys::cufftType::CUFFT_C2C, batch as i32)
            )?,
            FftDims::D2 { nx, ny } => ck!(
                "cufftPlan2d",
                fft_result::plan_2d(nx as i32, ny as i32, fft_sys::cufftType::CUFFT_C2C)
            )?,
        };
        // SAFETY: plan and stream are valid and belong to this context.
        ck!("cufftSetStream", unsafe {
            fft_result::set_stream(fft_plan, stream.cu_stream() as _)
        })?;
        stage("cufft_plan");
        let flat = |v: &[Complex32]| -> Vec<f32> { v.iter().flat_map(|c| [c.re, c.im]).collect() };
        let fft_in = ck!("upload fft input", stream.clone_htod(&flat(&fft_ref.input)))?;
        let fft_w = ck!(
            "upload fft projection",
            stream.clone_htod(&flat(&fft_ref.w))
        )?;
        let fft_out = ck!(
            "alloc fft output",
            stream.alloc_zeros::<f32>(2 * spec.fft.total_len())
        )?;

        let gemm_ref = GemmReference::new(&spec.gemm);
        let p = spec.gemm.precision;
        let n = spec.gemm.n;
        let elem = if p == Precision::Fp32 { 4 } else { 2 };
        let a = Matrix {
            buf: ck!("upload A", stream.clone_htod(&to_bytes(p, &gemm_ref.a)))?,
        };
        let b = Matrix {
            buf: ck!("upload B", stream.clone_htod(&to_bytes(p, &gemm_ref.b)))?,
        };
        let v = Matrix {
            buf: ck!("upload v", stream.clone_htod(&to_bytes(p, &gemm_ref.v)))?,
        };
        let c = Matrix {
            buf: ck!("alloc C", stream.alloc_zeros::<u8>(n * n * elem))?,
        };
        let y = ck!("alloc y", stream.alloc_zeros::<f32>(n))?;
        let chk = ck!("alloc check", stream.alloc_zeros::<f32>(4))?;
        let fence = ck!("alloc fence", stream.clone_htod(&[1.0f32]))?;
        let blas = ck!("cublasCreate", CudaBlas::new(stream.clone()))?;
        let fp32_math = effective_fp32_math(spec.fp32_math);
        let math = match spec.fp32_math {
            Fp32Math::Strict => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            Fp32Math::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: the handle is valid; the mode is a plain enum value.
        ck!("cublasSetMathMode", unsafe {
            blas_sys::cublasSetMathMode(*blas.handle(), math).result()
        })?;
        let blas_workspace = match spec.cublas_workspace_kib {
            None => None,
            Some(kib) => {
                let bytes = kib as usize * 1024;
                let ws = ck!(
                    "alloc cublas workspace",
                    stream.alloc_zeros::<u8>(bytes.max(1))
                )?;
                let (p, _g) = ws.device_ptr(&stream);
                // SAFETY: ws is a device buffer of at least `bytes` bytes that
                // lives as long as the handle (both are fields of the backend,
                // and the handle is dropped first: field order).
                ck!("cublasSetWorkspace", unsafe {
                    blas_sys::cublasSetWorkspace_v2(*blas.handle(), p as *mut c_void, bytes)
                        .result()
                })?;
                drop(_g);
                Some(ws)
            }
        };
        stage("cublas_handle");

        let ev_start = ck!(
            "cuEventCreate",
            ctx.new_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT))
        )?;
        // The end event is what the host waits on: blocking-sync, so that
        // waiting on it sleeps instead of spinning (timing stays enabled).
        let end_flags = match spec.wait {
            Wait::SpinThenBlock { .. } => drv_sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC,
            Wait::Spin | Wait::SpinThenPoll { .. } => drv_sys::CUevent_flags::CU_EVENT_DEFAULT,
        };
        let ev_end = ck!(
            "cuEventCreate",
            ctx.new_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT))
        )?;
        let ev_done = ck!("cuEventCreate", ctx.new_event(Some(end_flags)))?;
        let ev_cal = ck!("cuEventCreate", ctx.new_event(Some(end_flags)))?;
        let stamp_buf = ck!("alloc stamps", stream.alloc_zeros::<u64>(stamp::SLOTS))?;
        let stamps = if spec.gpu_stamps {
            ck!("cuCtxSetCurrent", ctx.bind_to_thread())?;
            match stamp::StampKernels::load() {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e, "could not load the GPU stamp kernels; wall_ms falls back to the host clock");
                    None
                }
            }
        } else {
            None
        };
        ck!("cuStreamSynchronize", stream.synchronize())?;
        stage("buffers");

        let mut gemm_ref = gemm_ref;
        gemm_ref.tolerance = spec.gemm.precision.gemm_tolerance_under(fp32_math);
        let mut me = CudaBackend {
            info: DeviceInfo {
                index,
                uuid,
                name,
                backend: slicetrace_schema::Backend::Cuda,
            },
            spec: *spec,
            _ctx: ctx,
            stream,
            fft_plan,
            fft_in,
            fft_out,
            fft_w,
            fft_ref,
            blas,
            a,
            b,
            c,
            v,
            y,
            y_host: vec![0.0; n],
            chk,
            chk_host: vec![0.0; 4],
            fence,
            gemm_ref,
            ev_start,
            ev_end,
            ev_done,
            ev_cal,
            stamp_buf,
            stamp_host: vec![0; stamp::SLOTS],
            last_end_stamp: i64::MIN,
            clock: crate::clock::GpuClock::new(),
            last_calibration: None,
            exchanges: stamp::ExchangeStats::default(),
            graphs: [None, None],
            fault_next: [None; 2],
            _blas_workspace: blas_workspace,
            fp32_math,
            stamps,
        };
        // Warm up on plain stream calls first: module loading, algorithm
        // selection and workspace allocation must not happen in a capture.
        for _ in 0..2 {
            for k in [Kernel::Fft, Kernel::Gemm] {
                me.run(k)?;
            }
        }
        stage("warmup");
        if spec.timing == Timing::Graph {
            me.capture_graphs();
        }
        for _ in 0..2 {
            for k in [Kernel::Fft, Kernel::Gemm] {
                me.run(k)?;
            }
        }
        stage("graphs");
        me.calibrate(CALIBRATE_AT_START, true)?;
        stage("calibration");
        Ok(me)
    }

    /// The fp32 math mode the check's tolerance was derived from.
    pub fn fp32_math(&self) -> Fp32Math {
        self.fp32_math
    }

    fn submit_mode(&self) -> &'static str {
        match self.spec.timing {
            Timing::Graph if self.graphs.iter().all(Option::is_some) => "graph",
            Timing::Graph => "fenced",
            t => t.as_str(),
        }
    }
}

fn kidx(k: Kernel) -> usize {
    match k {
        Kernel::Fft => 0,
        Kernel::Gemm => 1,
    }
}

impl ProbeBackend for CudaBackend {
    fn device(&self) -> &DeviceInfo {
        &self.info
    }

    fn shape(&self, kernel: Kernel) -> KernelShape {
        self.spec.kernel_shape(kernel, Some(self.submit_mode()))
    }

    fn run(&mut self, kernel: Kernel) -> Result<RunSample, ProbeError> {
        // The raw driver, cuFFT and cuBLAS calls below act on the thread's
        // current context; the backend may have been opened on another
        // thread (beside other GPUs' contexts) and moved here.
        ck!("cuCtxSetCurrent", self._ctx.bind_to_thread())?;
        let fault = self.fault_next[kidx(kernel)].take();
        let ts_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        // A planted fault goes through the graph only where it has fault nodes.
        let graph_ok = matches!(
            (&self.graphs[kidx(kernel)], fault),
            (Some(_), None) | (Some((_, Some(_))), Some(_))
        );
        if graph_ok {
            if let (Some((g, Some(nodes))), Some(f)) = (&self.graphs[kidx(kernel)], fault) {
                set_fault_nodes(g, nodes, f, true)?;
            }
        }
        // ---- measured path: no allocation, no event creation ----
        let t0 = Instant::now();
        if graph_ok {
            if let Some((g, _)) = &self.graphs[kidx(kernel)] {
                ck!("cuGraphLaunch", g.launch())?;
            }
        } else {
            self.enqueue_stamp(stamp::SLOT_START)?;
            self.enqueue_poison(kernel)?;
            if self.spec.timing == Timing::Graph {
                self.enqueue_fence()?;
            }
            if fault == Some(Fault::Hang) && !self.enqueue_spin()? {
                tracing::warn!(gpu = %self.info.uuid, "cannot plant a hang without the stamp kernels");
            }
            ck!("cuEventRecord", self.ev_start.record(&self.stream))?;
            if fault != Some(Fault::Skip) {
                self.enqueue(kernel)?;
            }
            ck!("cuEventRecord", self.ev_end.record(&self.stream))?;
            self.enqueue_stamp(stamp::SLOT_END)?;
            ck!("cuEventRecord", self.ev_done.record(&self.stream))?;
        }
        let wait = self.wait_end(t0)?;
        let t_done = Instant::now();
        let host_wall_ms = (t_done - t0).as_secs_f64() * 1e3;
        // ---- end of measured path ----
        if graph_ok {
            if let (Some((g, Some(nodes))), Some(f)) = (&self.graphs[kidx(kernel)], fault) {
                // Changes apply to later launches only: this one keeps the fault.
                set_fault_nodes(g, nodes, f, false)?;
            }
        }
        let gpu_ms = ck!("cuEventElapsedTime", self.ev_start.elapsed_ms(&self.ev_end))? as f64;
        if !graph_ok {
            if fault == Some(Fault::Corrupt) {
                self.plant(kernel)?;
            }
            self.enqueue_checks(kernel)?;
        }
        let (correct, rel_error) = self.read_checks(kernel)?;
        let (stamped, clock_error_us) = match self.read_stamps()? {
            Some(st) => self.stamped(t0, t_done, st),
            None => (None, None),
        };
        self.calibrate_if_due(clock_error_us)?;
        let (wall_ms, queue_ms, wall_clock) = match stamped {
            Some(s) => (
                s.wall_ms,
                Some(s.queue_ms),
                slicetrace_schema::WallClock::Gpu,
            ),
            None => (host_wall_ms, None, slicetrace_schema::WallClock::Host),
        };
        Ok(RunSample {
            ts_ns,
            gpu_ms: Some(gpu_ms),
            wall_ms,
            host_wall_ms,
            queue_ms,
            wall_clock,
            clock_error_us,
            correct: Some(correct),
            rel_error: Some(rel_error),
            wait: Some(wait),
        })
    }

    fn plant_fault(&mut self, kernel: Kernel, fault: Fault) {
        self.fault_next[kidx(kernel)] = Some(fault);
    }

    fn clock_report(&mut self) -> Option<crate::ClockReport> {
        self.stamps.as_ref()?;
        let now = host_ns(Instant::now());
        let e = self.clock.estimate(now)?;
        let f = self.clock.fit()?;
        Some(crate::ClockReport {
            drift_ppm: f.drift * 1e6,
            err_us: e.err_ns / 1e3,
            resets: self.clock.resets(),
            exchanges_answered: self.exchanges.answered,
            exchanges_missed: self.exchanges.missed,
            exchange_spin_ms: self.exchanges.spin.as_secs_f64() * 1e3,
        })
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The plan, the cuBLAS handle and the stamp module are released in
        // the current context: make it this backend's.
        let _ = self._ctx.bind_to_thread();
        // SAFETY: the plan was created in `new` and is destroyed once.
        let _ = unsafe { fft_result::destroy(self.fft_plan) };
    }
}
