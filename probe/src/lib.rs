//! `slicetrace-probe`: the probe kernels and the backends that time them.
//!
//! This crate sits at the start of the agent's flow: the agent's per-GPU probe
//! thread owns one [`ProbeBackend`] and calls [`ProbeBackend::run`] for each run
//! of an FFT burst and a GEMM burst. Every run is timed by two clocks: the
//! device's (CUDA events around the kernel, or the worker thread's compute time
//! on the CPU backend) and the host's (launch to completion). On a time-sliced
//! GPU only the host clock sees the wait for the slice, so both are recorded.
//!
//! Every run's output is checked ([`check`]) against a reference computed once
//! at start, so a GPU that computes wrong answers is caught, not just a slow one.
//!
//! The same backends drive `slicetrace-load`, the tenant workload that creates
//! contention in experiments. It is its own crate (`load/`), so that its CLI,
//! logging and Parquet dependencies stay out of this library.

pub mod check;
pub mod clock;
pub mod cpu;
pub mod cuda;
mod spec;

pub use spec::{
    FftDims, FftSpec, Fp32Math, GemmSpec, Kernel, Precision, Preset, ProbeSpec, Timing, Wait,
    LIGHT_CUBLAS_WORKSPACE_KIB, LIGHT_CUDA_STACK_BYTES,
};

pub use slicetrace_schema::Backend;
use slicetrace_schema::ProbeRecord;

/// Errors from backend selection and probe runs.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A CUDA library could not be found at run time.
    #[error("{library} not found: {hint}")]
    LibraryMissing {
        /// The library that is missing (libcuda, libcufft, libcublas).
        library: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// The driver is present but reports no device.
    #[error("no CUDA device found")]
    NoDevice,
    /// A device index beyond the device count.
    #[error("device index {index} out of range ({count} devices)")]
    BadIndex {
        /// Requested index.
        index: u32,
        /// Devices present.
        count: u32,
    },
    /// A CUDA driver, cuFFT or cuBLAS call failed.
    #[error("cuda call failed: {what}: {detail}")]
    Cuda {
        /// Which call.
        what: &'static str,
        /// The error as the library reported it.
        detail: String,
    },
    /// The CPU worker thread went away.
    #[error("cpu probe worker stopped")]
    WorkerGone,
    /// An invalid probe spec.
    #[error("invalid probe spec: {0}")]
    BadSpec(String),
    /// A fault injected through the seam (tests and self-test only).
    #[error("injected fault: {0}")]
    Injected(String),
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CUDA when libcuda, cuFFT, cuBLAS and a device are present, else CPU.
    #[default]
    Auto,
    /// CUDA or fail.
    Cuda,
    /// The CPU backend (rustfft + matrixmultiply).
    Cpu,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda),
            "cpu" => Ok(Self::Cpu),
            o => Err(format!(
                "unknown backend {o:?} (expected auto, cuda or cpu)"
            )),
        }
    }
}

/// The device a backend probes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Index on the node (CUDA ordinal, or CPU pseudo-device number).
    pub index: u32,
    /// `GPU-xxxxxxxx-...` (same spelling as NVML), or `CPU-<index>`.
    pub uuid: String,
    /// Product name.
    pub name: Option<String>,
    /// `cuda` or `cpu`.
    pub backend: Backend,
}

/// Describes a kernel as it runs on a backend (goes into every row).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelShape {
    /// `fft` or `gemm`.
    pub kernel: Kernel,
    /// Human-readable shape.
    pub shape: String,
    /// Precision.
    pub precision: Precision,
    /// FLOP per run.
    pub flops: f64,
    /// CUDA submission mode (`graph` or `stream`); `None` on the CPU.
    pub submit: Option<&'static str>,
}

impl ProbeSpec {
    /// The shape of `kernel` under this spec, as recorded in every row.
    pub fn kernel_shape(&self, kernel: Kernel, submit: Option<&'static str>) -> KernelShape {
        match kernel {
            Kernel::Fft => KernelShape {
                kernel,
                shape: self.fft.shape(),
                precision: Precision::Fp32,
                flops: self.fft.flops(),
                submit,
            },
            Kernel::Gemm => KernelShape {
                kernel,
                shape: self.gemm.shape(),
                precision: self.gemm.precision,
                flops: self.gemm.flops(),
                submit,
            },
        }
    }
}

/// The timings and check of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSample {
    /// Launch time, ns since the Unix epoch.
    pub ts_ns: i64,
    /// Device-clock execution time, ms.
    pub gpu_ms: Option<f64>,
    /// Launch to completion, ms, on the clock [`Self::wall_clock`] names:
    /// launch → the GPU's end stamp (calibrated to host time), or the host's
    /// clock until the wait returned.
    pub wall_ms: f64,
    /// Host clock from launch until the wait returned, ms (what a caller
    /// that sleeps on completion sees).
    pub host_wall_ms: f64,
    /// Launch → the GPU's start stamp, ms; `None` without GPU stamps (the
    /// record then derives `wall_ms − gpu_ms`).
    pub queue_ms: Option<f64>,
    /// Which clock `wall_ms` and `queue_ms` came from.
    pub wall_clock: slicetrace_schema::WallClock,
    /// The calibration's error bound at this run, µs; `None` without stamps.
    pub clock_error_us: Option<f64>,
    /// Output passed its check.
    pub correct: Option<bool>,
    /// Relative error of the check.
    pub rel_error: Option<f64>,
    /// How the host waited for completion: `spin` (the run completed inside
    /// the polling budget) or `block` (the thread slept on the driver's
    /// blocking sync); `None` on the CPU backend.
    pub wait: Option<&'static str>,
}

/// Where a backend's GPU clock calibration stands (logged when a probe
/// thread stops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockReport {
    /// Drift of the GPU timer against the host clock, ppm.
    pub drift_ppm: f64,
    /// The error bound now, µs.
    pub err_us: f64,
    /// Times the calibration restarted after a stepped timer.
    pub resets: u64,
    /// Two-way calibration exchanges the host answered.
    pub exchanges_answered: u64,
    /// Exchanges that got no answer (the kernel did not start within the
    /// host's spin budget).
    pub exchanges_missed: u64,
    /// Host CPU spent spinning for exchange kernels to start, ms in total.
    pub exchange_spin_ms: f64,
}

/// A fault planted into the next run of a kernel, to prove the correctness
/// check catches it (start-up self-test, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// One output element is overwritten after the kernel and before the
    /// check (a wrong answer).
    Corrupt,
    /// The kernel does not run at all (a launch that silently did nothing);
    /// the output keeps the poison written before the run.
    Skip,
    /// The run hangs for [`PLANTED_HANG`] before the kernel (a wedged
    /// context, bounded so that a test or a demo ends by itself): on CUDA a
    /// one-thread kernel node that spins on the GPU timer, disabled in every
    /// other launch of the captured graph; on the CPU the worker sleeps. The
    /// host waits as for any run (blocking sync), so a hang costs no CPU.
    /// The agent's watchdog must give up on the run long before it ends.
    Hang,
}

/// How long a planted [`Fault::Hang`] holds its run: far beyond any run
/// deadline the agent's watchdog derives, and short enough that a test or
/// demo ends by itself.
pub const PLANTED_HANG: std::time::Duration = std::time::Duration::from_secs(30);

/// The probe-backend seam.
///
/// Contract: a backend is owned by one thread (in the agent, its GPU's runner
/// thread, which the probe thread waits on with a deadline); `run` blocks
/// that thread until the run has completed (CUDA: until `synchronize`
/// returns), however long that takes (a hung GPU), and must never be called
/// on an async runtime worker. Dropping the backend releases its device. Buffers, plans, handles and
/// events are created in the constructor and warmed up; `run` allocates
/// nothing on the device. A failed run returns an error and leaves the backend
/// usable if the device still is.
pub trait ProbeBackend: Send {
    /// The device this backend probes.
    fn device(&self) -> &DeviceInfo;
    /// The shape of `kernel` on this backend.
    fn shape(&self, kernel: Kernel) -> KernelShape;
    /// Executes one timed, checked run of `kernel`.
    fn run(&mut self, kernel: Kernel) -> Result<RunSample, ProbeError>;
    /// Plants `fault` into the next run of `kernel`, through the same
    /// submission path as every other run (on CUDA: the captured graph, with
    /// a disabled plant node enabled or the kernel's nodes disabled for one
    /// launch). Used by the start-up self-test and by tests to prove that the
    /// checker catches a wrong answer and a kernel that never ran.
    fn plant_fault(&mut self, kernel: Kernel, fault: Fault);
    /// The GPU clock's calibration (drift, error bound, resets), where the
    /// backend stamps runs on the GPU; `None` otherwise.
    fn clock_report(&mut self) -> Option<ClockReport> {
        None
    }

    /// Shorthand for [`Fault::Corrupt`].
    fn corrupt_next_output(&mut self, kernel: Kernel) {
        self.plant_fault(kernel, Fault::Corrupt);
    }
}

/// Builds a [`ProbeRecord`] for one run: identity, shape, timings and check.
/// NVML readings, occupancy, arrival marks and trace ids are joined later by
/// the agent.
pub fn record_for(
    node: &str,
    dev: &DeviceInfo,
    shape: &KernelShape,
    sample: &RunSample,
    cycle: u64,
    burst_seq: u32,
) -> ProbeRecord {
    let queue_ms = sample
        .queue_ms
        .or_else(|| sample.gpu_ms.map(|g| (sample.wall_ms - g).max(0.0)));
    let tflops = sample
        .gpu_ms
        .filter(|g| *g > 0.0)
        .map(|g| shape.flops / (g * 1e-3) / 1e12);
    ProbeRecord {
        ts_ns: sample.ts_ns,
        node: node.to_string(),
        gpu_uuid: dev.uuid.clone(),
        gpu_index: dev.index,
        gpu_name: dev.name.clone(),
        backend: dev.backend,
        kernel: shape.kernel,
        shape: shape.shape.clone(),
        precision: shape.precision.as_str().to_string(),
        flops: shape.flops,
        cycle,
        burst_seq,
        gpu_ms: sample.gpu_ms,
        wall_ms: sample.wall_ms,
        queue_ms,
        host_wall_ms: Some(sample.host_wall_ms),
        wall_clock: Some(sample.wall_clock),
        clock_error_us: sample.clock_error_us,
        tflops,
        correct: sample.correct,
        rel_error: sample.rel_error,
        submit: match (shape.submit, sample.wait) {
            (Some(s), Some(w)) => Some(format!("{s}+{w}")),
            (s, _) => s.map(str::to_string),
        },
        ..Default::default()
    }
}

/// Backends opened by [`open_backends`], and the reason CUDA was not used
/// when `auto` fell back to the CPU.
pub type OpenedBackends = (Vec<Box<dyn ProbeBackend>>, Option<ProbeError>);

/// Finds the CUDA devices, checking every library first so that a missing one
/// is a clear error naming it (cudarc would panic otherwise).
pub fn cuda_device_count() -> Result<u32, ProbeError> {
    cuda::device_count()
}

/// Opens one backend per device for `kind`. With [`BackendKind::Auto`] a
/// missing CUDA falls back to the CPU backend and the reason is returned so
/// the caller can warn once. `cpu_devices` is how many CPU pseudo-devices to
/// simulate on the CPU backend (1 normally; more in multi-GPU tests).
/// `spec_for` gives the spec for a backend name (`cuda` or `cpu`), so that a
/// preset can be scaled to the hardware (see [`ProbeSpec::preset_for`]).
pub fn open_backends(
    kind: BackendKind,
    spec_for: &dyn Fn(&'static str) -> ProbeSpec,
    cpu_devices: u32,
) -> Result<OpenedBackends, ProbeError> {
    open(kind, spec_for, 0..cpu_devices.max(1), |n| 0..n)
}

/// Opens the backend of device `index` only, like [`open_backends`] but
/// without touching the other GPUs: a CUDA context on a GPU makes the process
/// one of that GPU's compute processes (NVML lists it, and it holds GPU
/// memory there), which a tenant of another GPU must not be.
pub fn open_backend(
    kind: BackendKind,
    spec_for: &dyn Fn(&'static str) -> ProbeSpec,
    index: u32,
) -> Result<(Box<dyn ProbeBackend>, Option<ProbeError>), ProbeError> {
    let (mut backends, fallback) = open(kind, spec_for, index..index + 1, |_| index..index + 1)?;
    match backends.pop() {
        Some(b) => Ok((b, fallback)),
        None => Err(ProbeError::NoDevice),
    }
}

/// Opens the CPU pseudo-devices `cpu_devices`, or the CUDA devices
/// `cuda_devices(count)` picks of the `count` present.
fn open(
    kind: BackendKind,
    spec_for: &dyn Fn(&'static str) -> ProbeSpec,
    cpu_devices: std::ops::Range<u32>,
    cuda_devices: impl Fn(u32) -> std::ops::Range<u32>,
) -> Result<OpenedBackends, ProbeError> {
    let open_cpu = || -> Result<Vec<Box<dyn ProbeBackend>>, ProbeError> {
        let spec = spec_for("cpu");
        cpu_devices
            .clone()
            .map(|i| cpu::CpuBackend::new(i, &spec).map(|b| Box::new(b) as Box<dyn ProbeBackend>))
            .collect()
    };
    let open_cuda = || -> Result<Vec<Box<dyn ProbeBackend>>, ProbeError> {
        let n = cuda_device_count()?;
        let spec = spec_for("cuda");
        if n == 0 {
            return Err(ProbeError::NoDevice);
        }
        // An index past the last device is refused by `CudaBackend::new`
        // (`BadIndex`, naming the count).
        cuda_devices(n)
            .map(|i| cuda::CudaBackend::new(i, &spec).map(|b| Box::new(b) as Box<dyn ProbeBackend>))
            .collect()
    };
    match kind {
        BackendKind::Cpu => Ok((open_cpu()?, None)),
        BackendKind::Cuda => Ok((open_cuda()?, None)),
        BackendKind::Auto => match open_cuda() {
            Ok(b) => Ok((b, None)),
            Err(e) => Ok((open_cpu()?, Some(e))),
        },
    }
}
