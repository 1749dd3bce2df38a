//! Device and context set-up: the library checks that keep cudarc from
//! panicking, the primary context's scheduling flags, the per-thread stack
//! limit and timer slack, and the fp32 math mode in effect.
//!
//! These run before (or beside) [`super::CudaBackend::new`]; none of them is
//! on the measured path except the once-per-thread timer slack.
#![allow(unsafe_code)]

use cudarc::cublas::sys as blas_sys;
use cudarc::cufft::sys as fft_sys;
use cudarc::driver::{sys as drv_sys, CudaContext};

use crate::spec::Fp32Math;
use crate::ProbeError;

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

/// Which context a backend runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextKind {
    /// The device's primary context (`cuDevicePrimaryCtxRetain`), shared
    /// with every other user of it in the process (the CUDA runtime's).
    #[default]
    Primary,
    /// A context of its own (`cuCtxCreate`), destroyed with the backend:
    /// nothing another backend does in its context (a hung run) waits on
    /// it or makes it wait. Costs a context's memory like the primary one.
    Own,
}

/// The oldest driver API that has `cuCtxCreate_v4`, the entry point
/// cudarc calls with CUDA 13 bindings (a missing symbol would panic).
const CTX_CREATE_V4_DRIVER: i32 = 12050;

/// Creates a context of its own on device `index` (current on this thread
/// from now on), in blocking-sync scheduling when `blocking`.
pub(super) fn own_context(
    index: u32,
    blocking: bool,
) -> Result<std::sync::Arc<CudaContext>, ProbeError> {
    ck!("cuInit", cudarc::driver::result::init())?;
    let mut version: i32 = 0;
    // SAFETY: writes one int.
    ck!("cuDriverGetVersion", unsafe {
        drv_sys::cuDriverGetVersion(&mut version).result()
    })?;
    if version < CTX_CREATE_V4_DRIVER {
        return Err(ProbeError::Cuda {
            what: "cuCtxCreate_v4",
            detail: format!(
                "driver API {version} is older than {CTX_CREATE_V4_DRIVER}: no context of its own"
            ),
        });
    }
    // MAP_HOST: the calibration mailbox is mapped host memory (every
    // context behaves so since CUDA 11; said here for older drivers' sake).
    let map = drv_sys::CUctx_flags::CU_CTX_MAP_HOST as u32;
    let flags = if blocking {
        drv_sys::CUctx_flags::CU_CTX_SCHED_BLOCKING_SYNC as u32 | map
    } else {
        map
    };
    ck!(
        "cuCtxCreate",
        CudaContext::new_non_primary(index as usize, flags)
    )
}

/// Puts the device's primary context in blocking-sync scheduling before it is
/// retained, so that every synchronisation sleeps instead of spinning. A
/// context already active with other flags keeps them (logged).
pub(super) fn set_blocking_sync(index: u32) {
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

/// Makes `ctx` current on this thread and sets its per-thread stack limit to
/// `bytes`.
pub(super) fn set_stack_limit(ctx: &CudaContext, bytes: u32) -> Result<(), ProbeError> {
    ck!("cuCtxSetCurrent", ctx.bind_to_thread())?;
    // SAFETY: the context is current on this thread; the call only
    // changes its per-thread stack limit (the driver raises it again
    // for any kernel that needs more).
    let set =
        unsafe { drv_sys::cuCtxSetLimit(drv_sys::CUlimit::CU_LIMIT_STACK_SIZE, bytes as usize) };
    ck!("cuCtxSetLimit(CU_LIMIT_STACK_SIZE)", set.result())
}

/// Asks the kernel to wake this thread's sleeps within 1 µs of their end
/// (the default timer slack of 50 µs would make every poll that much later).
/// Set once per thread; harmless where refused.
pub(super) fn set_fine_timer_slack() {
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

/// The fp32 math mode in effect: the configured one, unless the node forces
/// TF32 through `NVIDIA_TF32_OVERRIDE` (any value but `0`), in which case the
/// check assumes TF32 so that it never raises a false alarm.
pub fn effective_fp32_math(configured: Fp32Math) -> Fp32Math {
    effective_fp32_math_with(
        configured,
        std::env::var("NVIDIA_TF32_OVERRIDE").ok().as_deref(),
    )
}

pub(super) fn effective_fp32_math_with(
    configured: Fp32Math,
    tf32_override: Option<&str>,
) -> Fp32Math {
    match tf32_override.map(str::trim) {
        Some(v) if !v.is_empty() && v != "0" => Fp32Math::Tf32,
        _ => configured,
    }
}
