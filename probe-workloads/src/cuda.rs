//! The CUDA backend: cuFFT and cuBLAS through cudarc, loaded at run time.
//!
//! Nothing here is a build-time requirement: cudarc loads libcuda, libcufft
//! and libcublas with `dlopen` on first use, and panics if one is missing, so
//! [`device_count`] checks each library with `is_culib_present()` first and
//! turns absence into a [`ProbeError::LibraryMissing`] naming it.
//!
//! The measured path of a run (graph mode, the default) is one graph launch:
//! poison the outputs with NaN → fence kernel → start event → kernel → end
//! event → (disabled) plant node → correctness reductions. The host clock
//! spans launch → end event complete (`wall_ms`); the events give `gpu_ms`.
//! Plans, handles, events and buffers are created once in
//! [`CudaBackend::new`] and warmed up, so the measured path allocates nothing.
//!
//! * **No blind spots in the check.** The outputs and the check results are
//!   poisoned inside the same submission, so a kernel (or a check) that never
//!   ran leaves NaN behind and fails. Faults are planted through the real
//!   graph: the plant node (a one-element memset after the end event) is
//!   enabled for one launch, or the kernel's nodes are disabled for one launch
//!   (`cuGraphNodeSetEnabled`).
//! * **No busy-waiting.** The primary context is put in
//!   `CU_CTX_SCHED_BLOCKING_SYNC` and the end event is a blocking-sync event:
//!   the host polls it for a short budget ([`Wait`]) and then sleeps in the
//!   driver, so a run waiting for its time slice costs no CPU.
//! * **Small footprint.** cuBLAS gets a small workspace of our own (the
//!   default is 32 MiB on Hopper) and an explicit math mode, from which the
//!   fp32 check's tolerance follows.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::cufft::{result as fft_result, sys as fft_sys};
use cudarc::driver::{
    sys as drv_sys, CudaContext, CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtr,
};
use num_complex::{Complex32, Complex64};

use crate::check::{FftReference, GemmReference};
use crate::spec::{FftDims, Fp32Math, Kernel, Precision, ProbeSpec, Timing, Wait};
use crate::{DeviceInfo, Fault, KernelShape, ProbeBackend, ProbeError, RunSample};

fn cuda_err(what: &'static str) -> impl Fn(&dyn std::fmt::Debug) -> ProbeError {
    move |e| ProbeError::Cuda {
        what,
        detail: format!("{e:?}"),
    }
}

macro_rules! ck {
    ($what:expr, $e:expr) => {
        $e.map_err(|e| cuda_err($what)(&e))
    };
}

/// Checks libcuda, libcufft and libcublas, then asks the driver how many
/// devices there are. Never panics.
pub fn device_count() -> Result<u32, ProbeError> {
    // SAFETY: these only try to dlopen the library and report the outcome.
    if !unsafe { drv_sys::is_culib_present() } {
        return Err(ProbeError::LibraryMissing {
            library: "libcuda (NVIDIA driver)",
            hint: "no NVIDIA driver on this host; on Kubernetes use runtimeClassName: nvidia",
        });
    }
    if !unsafe { fft_sys::is_culib_present() } {
        return Err(ProbeError::LibraryMissing {
            library: "libcufft",
            hint: "cuFFT is not part of the driver: ship it in the image (CUDA runtime base) or add it to LD_LIBRARY_PATH",
        });
    }
    if !unsafe { blas_sys::is_culib_present() } {
        return Err(ProbeError::LibraryMissing {
            library: "libcublas",
            hint: "cuBLAS is not part of the driver: ship it in the image (CUDA runtime base) or add it to LD_LIBRARY_PATH",
        });
    }
    let n = ck!("cuDeviceGetCount", CudaContext::device_count())?;
    Ok(n.max(0) as u32)
}

/// GPU memory in use on the current context's device (all processes), MiB;
/// `None` without a current context.
pub fn device_used_mib() -> Option<u64> {
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some(((total - free) / (1024 * 1024)) as u64)
}

/// Formats a CUDA UUID the way NVML does: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Device-resident, type-erased matrix (fp32, fp16 or bf16 elements).
struct Matrix {
    buf: CudaSlice<u8>,
}

fn to_bytes(p: Precision, xs: &[f32]) -> Vec<u8> {
    match p {
        Precision::Fp32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Precision::Fp16 => xs
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        Precision::Bf16 => xs
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

fn data_type(p: Precision) -> blas_sys::cudaDataType {
    match p {
        Precision::Fp32 => blas_sys::cudaDataType::CUDA_R_32F,
        Precision::Fp16 => blas_sys::cudaDataType::CUDA_R_16F,
        Precision::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

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
    /// One captured graph per kernel in [`Timing::Graph`] mode, with the
    /// nodes used to plant faults through it.
    graphs: [Option<(CudaGraph, Option<FaultNodes>)>; 2],
    fault_next: [Option<Fault>; 2],
    /// Workspace handed to cuBLAS (kept alive as long as the handle).
    _blas_workspace: Option<CudaSlice<u8>>,
    /// Math mode the fp32 GEMM may run in (its check's tolerance follows).
    fp32_math: Fp32Math,
}

/// Nodes of a captured graph that the fault planting toggles.
struct FaultNodes {
    /// The kernel's own nodes (between the start and end events).
    probe: Vec<drv_sys::CUgraphNode>,
    /// The one-element memset after the end event, disabled normally.
    plant: drv_sys::CUgraphNode,
}

/// Stages of [`CudaBackend::new_traced`], reported as they complete (the
/// footprint breakdown measures memory after each).
pub const STAGES: [&str; 6] = [
    "context",
    "cufft_plan",
    "cublas_handle",
    "buffers",
    "warmup",
    "graphs",
];

/// NaN in fp32, fp16 and bf16 (quiet NaN bit patterns) for poisoning.
const NAN_F32: u32 = 0x7FC0_0000;
const NAN_F16: u16 = 0x7E00;
const NAN_BF16: u16 = 0x7FC0;

// SAFETY: the cuFFT plan handle is only used from the thread that owns the
// backend (the trait contract: one probe thread per backend).
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Creates the context, plans, handles, events and buffers on device
    /// `index`, uploads the fixed inputs, warms up both kernels and, in
    /// graph mode, captures one graph per kernel.
    pub fn new(index: u32, spec: &ProbeSpec) -> Result<Self, ProbeError> {
        Self::new_traced(index, spec, &mut |_| {})
    }

    /// [`Self::new`], calling `stage` after each of [`STAGES`] completes.
    pub fn new_traced(
        index: u32,
        spec: &ProbeSpec,
        stage: &mut dyn FnMut(&'static str),
    ) -> Result<Self, ProbeError> {
        spec.validate()?;
        let count = device_count()?;
        if index >= count {
            return Err(ProbeError::BadIndex { index, count });
        }
        if !matches!(spec.wait, Wait::Spin) {
            set_blocking_sync(index);
        }
        let ctx = ck!("cuCtxCreate", CudaContext::new(index as usize))?;
        stage("context");
        if let Some(bytes) = spec.cuda_stack_bytes {
            ck!("cuCtxSetCurrent", ctx.bind_to_thread())?;
            // SAFETY: the context is current on this thread; the call only
            // changes its per-thread stack limit (the driver raises it again
            // for any kernel that needs more).
            unsafe {
                drv_sys::cuCtxSetLimit(drv_sys::CUlimit::CU_LIMIT_STACK_SIZE, bytes as usize)
            }
            .result()
            .map_err(|e| ProbeError::Cuda {
                what: "cuCtxSetLimit(CU_LIMIT_STACK_SIZE)",
                detail: format!("{e:?}"),
            })?;
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
        let ev_end = ck!("cuEventCreate", ctx.new_event(Some(end_flags)))?;
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
            graphs: [None, None],
            fault_next: [None; 2],
            _blas_workspace: blas_workspace,
            fp32_math,
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
            for k in [Kernel::Fft, Kernel::Gemm] {
                let captured = me.capture(k, true).and_then(|g| match fault_nodes(&g) {
                    Some(nodes) => Ok((g, Some(nodes))),
                    None => {
                        // Without a disabled plant node the graph would
                        // corrupt every run: capture it again without one.
                        tracing::warn!(gpu = %me.info.uuid, kernel = k.as_str(), "could not find the plant and kernel nodes in the captured graph; faults are planted through separate stream calls");
                        drop(g);
                        me.capture(k, false).map(|g| (g, None))
                    }
                });
                match captured {
                    Ok(g) => me.graphs[kidx(k)] = Some(g),
                    Err(e) => {
                        // Leave the stream usable; this kernel is then timed
                        // with the same fenced sequence as separate calls.
                        let _ = me
                            .stream
                            .end_capture(drv_sys::CUgraphInstantiate_flags_enum(0));
                        tracing::warn!(gpu = %me.info.uuid, kernel = k.as_str(), error = %e, "CUDA graph capture failed; timing with separate stream calls");
                    }
                }
            }
        }
        for _ in 0..2 {
            for k in [Kernel::Fft, Kernel::Gemm] {
                me.run(k)?;
            }
        }
        stage("graphs");
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

    /// Records `ev` as an external event node (a timestamp) in a capture.
    fn record_external(&self, ev: &CudaEvent) -> Result<(), ProbeError> {
        // SAFETY: event and stream belong to this context.
        ck!("cuEventRecordWithFlags", unsafe {
            drv_sys::cuEventRecordWithFlags(
                ev.cu_event(),
                self.stream.cu_stream(),
                drv_sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as u32,
            )
            .result()
        })
    }

    /// A one-element `sscal` whose only purpose is to make the following
    /// start event wait until this context is running on the SMs.
    fn enqueue_fence(&mut self) -> Result<(), ProbeError> {
        let one = 1.0f32;
        let (x, _g) = self.fence.device_ptr(&self.stream);
        // SAFETY: x is a 1-element device buffer; alpha is a host f32 in the
        // handle's default host pointer mode.
        ck!("cublasSscal", unsafe {
            blas_sys::cublasSscal_v2(*self.blas.handle(), 1, &one, x as *mut f32, 1).result()
        })
    }

    /// Captures fence → start event → kernel → end event → checks.
    fn capture(&mut self, kernel: Kernel, with_plant: bool) -> Result<CudaGraph, ProbeError> {
        ck!(
            "cuStreamBeginCapture",
            self.stream
                .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        )?;
        self.enqueue_poison(kernel)?;
        self.enqueue_fence()?;
        self.record_external(&self.ev_start)?;
        self.enqueue(kernel)?;
        self.record_external(&self.ev_end)?;
        if with_plant {
            self.plant(kernel)?;
        }
        self.enqueue_checks(kernel)?;
        let g = ck!(
            "cuStreamEndCapture",
            self.stream
                .end_capture(drv_sys::CUgraphInstantiate_flags_enum(0))
        )?
        .ok_or(ProbeError::Cuda {
            what: "cuStreamEndCapture",
            detail: "empty graph".into(),
        })?;
        ck!("cuGraphUpload", g.upload())?;
        ck!("cuStreamSynchronize", self.stream.synchronize())?;
        Ok(g)
    }

    /// Fills the kernel's output and its check results with NaN, so that a
    /// kernel or check that never runs leaves a value the check rejects.
    fn enqueue_poison(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        let cs = self.stream.cu_stream();
        match kernel {
            Kernel::Fft => {
                let n_out = self.fft_out.len();
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                let (c, _gc) = self.chk.device_ptr(&self.stream);
                // SAFETY: o holds n_out f32 and c holds 4 f32 on this context.
                unsafe {
                    ck!(
                        "cuMemsetD32Async",
                        drv_sys::cuMemsetD32Async(o, NAN_F32, n_out, cs).result()
                    )?;
                    ck!(
                        "cuMemsetD32Async",
                        drv_sys::cuMemsetD32Async(c, NAN_F32, 4, cs).result()
                    )?;
                }
            }
            Kernel::Gemm => {
                let n = self.spec.gemm.n;
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                let (y, _gy) = self.y.device_ptr(&self.stream);
                // SAFETY: C holds n·n elements of the GEMM's precision and y
                // holds n f32, all on this context.
                unsafe {
                    match self.spec.gemm.precision {
                        Precision::Fp32 => ck!(
                            "cuMemsetD32Async",
                            drv_sys::cuMemsetD32Async(c, NAN_F32, n * n, cs).result()
                        )?,
                        Precision::Fp16 => ck!(
                            "cuMemsetD16Async",
                            drv_sys::cuMemsetD16Async(c, NAN_F16, n * n, cs).result()
                        )?,
                        Precision::Bf16 => ck!(
                            "cuMemsetD16Async",
                            drv_sys::cuMemsetD16Async(c, NAN_BF16, n * n, cs).result()
                        )?,
                    }
                    ck!(
                        "cuMemsetD32Async",
                        drv_sys::cuMemsetD32Async(y, NAN_F32, n, cs).result()
                    )?;
                }
            }
        }
        Ok(())
    }

    fn enqueue(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        match kernel {
            Kernel::Fft => {
                let (i, _gi) = self.fft_in.device_ptr(&self.stream);
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                // SAFETY: the plan was made for exactly these buffer sizes on
                // this stream; the input is not overwritten by an out-of-place
                // C2C transform.
                ck!("cufftExecC2C", unsafe {
                    fft_result::exec_c2c(
                        self.fft_plan,
                        i as *mut _,
                        o as *mut _,
                        -1, /* CUFFT_FORWARD */
                    )
                })
            }
            Kernel::Gemm => {
                let n = self.spec.gemm.n as i32;
                let t = data_type(self.spec.gemm.precision);
                let (alpha, beta) = (1.0f32, 0.0f32);
                let (a, _ga) = self.a.buf.device_ptr(&self.stream);
                let (b, _gb) = self.b.buf.device_ptr(&self.stream);
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                // SAFETY: A, B, C are n×n buffers of the declared type; the
                // handle is bound to this stream; alpha/beta are host f32 as
                // CUBLAS_COMPUTE_32F requires.
                ck!("cublasGemmEx", unsafe {
                    blas_sys::cublasGemmEx(
                        *self.blas.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        n,
                        n,
                        n,
                        &alpha as *const f32 as *const c_void,
                        a as *const c_void,
                        t,
                        n,
                        b as *const c_void,
                        t,
                        n,
                        &beta as *const f32 as *const c_void,
                        c as *mut c_void,
                        t,
                        n,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                    .result()
                })
            }
        }
    }

    /// Overwrites the first output element with the plant value (a
    /// one-element memset, so that it can live in the captured graph as a
    /// node that is disabled except when a fault is planted).
    fn plant(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        let cs = self.stream.cu_stream();
        match kernel {
            Kernel::Fft => {
                let bits = self.fft_ref.plant_value().to_bits();
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                // SAFETY: o holds at least one f32.
                ck!("plant fft", unsafe {
                    drv_sys::cuMemsetD32Async(o, bits, 1, cs).result()
                })
            }
            Kernel::Gemm => {
                let v = self.gemm_ref.plant_value();
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                // SAFETY: C holds at least one element of its precision.
                ck!("plant gemm", unsafe {
                    match self.spec.gemm.precision {
                        Precision::Fp32 => {
                            drv_sys::cuMemsetD32Async(c, v.to_bits(), 1, cs).result()
                        }
                        Precision::Fp16 => {
                            drv_sys::cuMemsetD16Async(c, half::f16::from_f32(v).to_bits(), 1, cs)
                                .result()
                        }
                        Precision::Bf16 => {
                            drv_sys::cuMemsetD16Async(c, half::bf16::from_f32(v).to_bits(), 1, cs)
                                .result()
                        }
                    }
                })
            }
        }
    }

    /// Waits for the end event: polls it for the spin budget, then sleeps on
    /// its blocking sync. Returns how it waited (`spin` or `block`).
    fn wait_end(&self, t0: Instant) -> Result<&'static str, ProbeError> {
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

    /// Enqueues the correctness reductions; results stay on the device
    /// (`chk` for the FFT, `y` for the GEMM) until [`Self::read_checks`].
    fn enqueue_checks(&mut self, kernel: Kernel) -> Result<(), ProbeError> {
        let h = *self.blas.handle();
        match kernel {
            Kernel::Fft => {
                let len = self.spec.fft.total_len() as i64;
                let (o, _go) = self.fft_out.device_ptr(&self.stream);
                let (w, _gw) = self.fft_w.device_ptr(&self.stream);
                let (r, _gr) = self.chk.device_ptr(&self.stream);
                // SAFETY: o and w hold `len` complex values; in device pointer
                // mode the results go to chk[0] (f32) and chk[2..4] (complex,
                // 8-byte aligned). The mode is restored right after.
                unsafe {
                    ck!(
                        "cublasSetPointerMode",
                        blas_sys::cublasSetPointerMode_v2(
                            h,
                            blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE
                        )
                        .result()
                    )?;
                    let r1 = blas_sys::cublasScnrm2_v2_64(h, len, o as *const _, 1, r as *mut f32)
                        .result();
                    let r2 = blas_sys::cublasCdotu_v2_64(
                        h,
                        len,
                        o as *const _,
                        1,
                        w as *const _,
                        1,
                        (r as *mut f32).add(2) as *mut _,
                    )
                    .result();
                    ck!(
                        "cublasSetPointerMode",
                        blas_sys::cublasSetPointerMode_v2(
                            h,
                            blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST
                        )
                        .result()
                    )?;
                    ck!("cublasScnrm2", r1)?;
                    ck!("cublasCdotu", r2)?;
                }
                Ok(())
            }
            Kernel::Gemm => {
                let n = self.spec.gemm.n as i32;
                let t = data_type(self.spec.gemm.precision);
                let (alpha, beta) = (1.0f32, 0.0f32);
                let (c, _gc) = self.c.buf.device_ptr(&self.stream);
                let (v, _gv) = self.v.buf.device_ptr(&self.stream);
                let (y, _gy) = self.y.device_ptr(&self.stream);
                // SAFETY: y(n×1, f32) = C(n×n, t) · v(n×1, t).
                ck!("cublasGemmEx check", unsafe {
                    blas_sys::cublasGemmEx(
                        h,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        n,
                        1,
                        n,
                        &alpha as *const f32 as *const c_void,
                        c as *const c_void,
                        t,
                        n,
                        v as *const c_void,
                        t,
                        n,
                        &beta as *const f32 as *const c_void,
                        y as *mut c_void,
                        blas_sys::cudaDataType::CUDA_R_32F,
                        n,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                    .result()
                })
            }
        }
    }

    /// Copies the check results back (a few bytes, on the copy engine) and
    /// judges them.
    fn read_checks(&mut self, kernel: Kernel) -> Result<(bool, f64), ProbeError> {
        match kernel {
            Kernel::Fft => {
                ck!(
                    "copy check",
                    self.stream.memcpy_dtoh(&self.chk, &mut self.chk_host)
                )?;
                ck!("cuStreamSynchronize", self.stream.synchronize())?;
                let nrm = self.chk_host[0] as f64;
                let dot = Complex64::new(self.chk_host[2] as f64, self.chk_host[3] as f64);
                Ok(self.fft_ref.judge(dot, nrm * nrm))
            }
            Kernel::Gemm => {
                ck!("copy y", self.stream.memcpy_dtoh(&self.y, &mut self.y_host))?;
                ck!("cuStreamSynchronize", self.stream.synchronize())?;
                Ok(self.gemm_ref.judge(&self.y_host))
            }
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
            self.enqueue_poison(kernel)?;
            if self.spec.timing == Timing::Graph {
                self.enqueue_fence()?;
            }
            ck!("cuEventRecord", self.ev_start.record(&self.stream))?;
            if fault != Some(Fault::Skip) {
                self.enqueue(kernel)?;
            }
            ck!("cuEventRecord", self.ev_end.record(&self.stream))?;
        }
        let wait = self.wait_end(t0)?;
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
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
        Ok(RunSample {
            ts_ns,
            gpu_ms: Some(gpu_ms),
            wall_ms,
            correct: Some(correct),
            rel_error: Some(rel_error),
            wait: Some(wait),
        })
    }

    fn plant_fault(&mut self, kernel: Kernel, fault: Fault) {
        self.fault_next[kidx(kernel)] = Some(fault);
    }
}

/// Asks the kernel to wake this thread's sleeps within 1 µs of their end
/// (the default timer slack of 50 µs would make every poll that much later).
/// Set once per thread; harmless where refused.
fn set_fine_timer_slack() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    DONE.with(|d| {
        if !d.get() {
            // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only
            // changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            d.set(true);
        }
    });
}

/// Puts the device's primary context in blocking-sync scheduling before it is
/// retained, so that every synchronisation sleeps instead of spinning. A
/// context already active with other flags keeps them (logged).
fn set_blocking_sync(index: u32) {
    let r = (|| -> Result<(), String> {
        cudarc::driver::result::init().map_err(|e| format!("{e:?}"))?;
        let dev =
            cudarc::driver::result::device::get(index as i32).map_err(|e| format!("{e:?}"))?;
        // SAFETY: dev is a valid device handle; the flag is a plain value.
        unsafe {
            drv_sys::cuDevicePrimaryCtxSetFlags_v2(
                dev,
                drv_sys::CUctx_flags::CU_CTX_SCHED_BLOCKING_SYNC as u32,
            )
            .result()
            .map_err(|e| format!("{e:?}"))
        }
    })();
    if let Err(e) = r {
        tracing::warn!(device = index, error = %e, "could not set blocking-sync scheduling; waits poll, then block on the end event only");
    }
}

/// The fp32 math mode in effect: the configured one, unless the node forces
/// TF32 through `NVIDIA_TF32_OVERRIDE` (any value but `0`), in which case the
/// check assumes TF32 so that it never raises a false alarm.
pub fn effective_fp32_math(configured: Fp32Math) -> Fp32Math {
    effective_fp32_math_with(
        configured,
        std::env::var("NVIDIA_TF32_OVERRIDE").ok().as_deref(),
    )
}

fn effective_fp32_math_with(configured: Fp32Math, tf32_override: Option<&str>) -> Fp32Math {
    match tf32_override.map(str::trim) {
        Some(v) if !v.is_empty() && v != "0" => Fp32Math::Tf32,
        _ => configured,
    }
}

/// Finds the nodes fault planting toggles in a captured graph. Stream
/// capture on one stream yields a chain in submission order: poison memsets,
/// fence kernel, start event, the kernel's nodes, end event, plant memset,
/// check kernels. Returns `None` (and the caller plants through stream
/// calls) when the graph does not have that shape.
fn fault_nodes(g: &CudaGraph) -> Option<FaultNodes> {
    use drv_sys::CUgraphNodeType as T;
    let graph = g.cu_graph();
    let mut n: usize = 0;
    // SAFETY: querying the node count of a valid graph.
    unsafe { drv_sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut n) }
        .result()
        .ok()?;
    let mut nodes: Vec<drv_sys::CUgraphNode> = vec![std::ptr::null_mut(); n];
    // SAFETY: `nodes` has room for `n` handles.
    unsafe { drv_sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut n) }
        .result()
        .ok()?;
    nodes.truncate(n);
    let types: Vec<T> = nodes
        .iter()
        .map(|&node| {
            let mut t = T::CU_GRAPH_NODE_TYPE_EMPTY;
            // SAFETY: node is a valid node of this graph.
            let _ = unsafe { drv_sys::cuGraphNodeGetType(node, &mut t) };
            t
        })
        .collect();
    let records: Vec<usize> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == T::CU_GRAPH_NODE_TYPE_EVENT_RECORD)
        .map(|(i, _)| i)
        .collect();
    let [start, end] = records[..] else {
        return None;
    };
    let probe: Vec<_> = (start + 1..end)
        .filter(|&i| {
            matches!(
                types[i],
                T::CU_GRAPH_NODE_TYPE_KERNEL
                    | T::CU_GRAPH_NODE_TYPE_MEMSET
                    | T::CU_GRAPH_NODE_TYPE_MEMCPY
            )
        })
        .map(|i| nodes[i])
        .collect();
    let plant_i = end + 1;
    if probe.is_empty() || types.get(plant_i) != Some(&T::CU_GRAPH_NODE_TYPE_MEMSET) {
        return None;
    }
    let plant = nodes[plant_i];
    // SAFETY: plant is a memset node of the graph this exec was made from.
    unsafe { drv_sys::cuGraphNodeSetEnabled(g.cu_graph_exec(), plant, 0) }
        .result()
        .ok()?;
    Some(FaultNodes { probe, plant })
}

/// Arms (`on`) or disarms a fault in the graph exec for later launches.
fn set_fault_nodes(
    g: &CudaGraph,
    nodes: &FaultNodes,
    fault: Fault,
    on: bool,
) -> Result<(), ProbeError> {
    let exec = g.cu_graph_exec();
    // SAFETY: the nodes belong to the graph this exec was instantiated from.
    unsafe {
        match fault {
            Fault::Corrupt => ck!(
                "cuGraphNodeSetEnabled",
                drv_sys::cuGraphNodeSetEnabled(exec, nodes.plant, u32::from(on)).result()
            ),
            Fault::Skip => {
                for &n in &nodes.probe {
                    ck!(
                        "cuGraphNodeSetEnabled",
                        drv_sys::cuGraphNodeSetEnabled(exec, n, u32::from(!on)).result()
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // SAFETY: the plan was created in `new` and is destroyed once.
        let _ = unsafe { fft_result::destroy(self.fft_plan) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_wide_tf32_override_loosens_the_fp32_check() {
        assert_eq!(
            effective_fp32_math_with(Fp32Math::Strict, None),
            Fp32Math::Strict
        );
        assert_eq!(
            effective_fp32_math_with(Fp32Math::Strict, Some("0")),
            Fp32Math::Strict
        );
        assert_eq!(
            effective_fp32_math_with(Fp32Math::Strict, Some("1")),
            Fp32Math::Tf32
        );
        assert_eq!(
            effective_fp32_math_with(Fp32Math::Tf32, None),
            Fp32Math::Tf32
        );
    }

    #[test]
    fn uuid_is_formatted_like_nvml() {
        let b: [u8; 16] = [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        assert_eq!(format_uuid(&b), "GPU-deadbeef-0001-0203-0405-060708090a0b");
    }

    /// The failure to find CUDA: on a machine without the driver (CI) this
    /// must be a clean error naming libcuda, never a panic; with a GPU it must
    /// count at least one device.
    #[test]
    fn missing_cuda_is_a_clear_error_not_a_panic() {
        match device_count() {
            Err(ProbeError::LibraryMissing { library, .. }) => {
                assert!(library.starts_with("lib"), "{library}");
                let e = CudaBackend::new(0, &ProbeSpec::preset(crate::Preset::Light))
                    .err()
                    .expect("backend must fail without CUDA");
                assert!(e.to_string().contains("not found"), "{e}");
            }
            Err(other) => panic!("unexpected error kind: {other}"),
            Ok(n) => assert!(
                n >= 1
                    || matches!(
                        CudaBackend::new(0, &ProbeSpec::preset(crate::Preset::Light)),
                        Err(ProbeError::BadIndex { .. })
                    )
            ),
        }
    }

    #[test]
    fn auto_falls_back_to_cpu_with_a_reason_when_cuda_is_missing() {
        let spec = ProbeSpec {
            fft: crate::FftSpec {
                dims: FftDims::D1 { n: 256, batch: 2 },
            },
            gemm: crate::GemmSpec {
                n: 32,
                precision: Precision::Fp32,
            },
            burst_runs: 2,
            timing: crate::Timing::Graph,
            ..ProbeSpec::preset(crate::Preset::Light)
        };
        if device_count().is_ok_and(|n| n > 0) {
            return; // a GPU is present: the fallback path does not apply here.
        }
        let (backends, reason) =
            crate::open_backends(crate::BackendKind::Auto, &|_| spec, 1).expect("fallback");
        assert_eq!(backends.len(), 1);
        assert_eq!(
            backends[0].device().backend,
            slicetrace_schema::Backend::Cpu
        );
        assert!(reason.expect("reason").to_string().contains("not found"));
        assert!(crate::open_backends(crate::BackendKind::Cuda, &|_| spec, 1).is_err());
    }
}
