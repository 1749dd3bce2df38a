//! Probe kernel specifications and presets.

use serde::{Deserialize, Serialize};

use crate::ProbeError;

/// A probe kernel: the schema's, so records and probes share one definition.
pub use slicetrace_schema::Kernel;

/// Numeric precision of the GEMM inputs and output (accumulation is fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single.
    #[default]
    Fp32,
    /// IEEE half.
    Fp16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// `fp32`, `fp16` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }
    /// Relative-error tolerance of the GEMM checksum check at this precision.
    /// Rounding C to fp16/bf16 (11/8 significant bits) gives an expected
    /// relative error of `C·v` of about 2.4e-4/2e-3; fp32 about 1e-6. Each
    /// tolerance is 15× or more above that.
    pub fn gemm_tolerance(self) -> f64 {
        match self {
            Precision::Fp32 => 1e-4,
            Precision::Fp16 => 4e-3,
            Precision::Bf16 => 3e-2,
        }
    }

    /// The tolerance under a cuBLAS math mode: an fp32 GEMM on TF32 tensor
    /// cores rounds its inputs to 10 mantissa bits (like fp16's 11), so it
    /// gets the fp16 tolerance; the other precisions are unaffected.
    pub fn gemm_tolerance_under(self, math: Fp32Math) -> f64 {
        match (self, math) {
            (Precision::Fp32, Fp32Math::Tf32) => Precision::Fp16.gemm_tolerance(),
            (p, _) => p.gemm_tolerance(),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            "bf16" => Ok(Self::Bf16),
            o => Err(format!(
                "unknown precision {o:?} (expected fp32, fp16 or bf16)"
            )),
        }
    }
}

/// FFT dimensionality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "dims")]
pub enum FftDims {
    /// `batch` independent transforms of length `n`.
    D1 {
        /// Transform length.
        n: usize,
        /// Number of transforms.
        batch: usize,
    },
    /// One `nx × ny` transform.
    D2 {
        /// Rows.
        nx: usize,
        /// Columns.
        ny: usize,
    },
}

/// FFT probe spec (complex-to-complex, single precision, forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FftSpec {
    /// Shape.
    #[serde(flatten)]
    pub dims: FftDims,
}

impl FftSpec {
    /// Points per transform.
    pub fn transform_len(&self) -> usize {
        match self.dims {
            FftDims::D1 { n, .. } => n,
            FftDims::D2 { nx, ny } => nx * ny,
        }
    }
    /// Total complex points.
    pub fn total_len(&self) -> usize {
        match self.dims {
            FftDims::D1 { n, batch } => n * batch,
            FftDims::D2 { nx, ny } => nx * ny,
        }
    }
    /// Number of transforms.
    pub fn batch(&self) -> usize {
        match self.dims {
            FftDims::D1 { batch, .. } => batch,
            FftDims::D2 { .. } => 1,
        }
    }
    /// Conventional FLOP count: 5·N·log2(N) per transform.
    pub fn flops(&self) -> f64 {
        let n = self.transform_len() as f64;
        5.0 * n * n.log2() * self.batch() as f64
    }
    /// Shape string for rows.
    pub fn shape(&self) -> String {
        match self.dims {
            FftDims::D1 { n, batch } => format!("c2c 1d n={n} batch={batch}"),
            FftDims::D2 { nx, ny } => format!("c2c 2d {nx}x{ny}"),
        }
    }
}

/// GEMM probe spec: `C = A·B`, all `n × n`, column-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmSpec {
    /// Matrix size.
    pub n: usize,
    /// Input/output precision.
    pub precision: Precision,
}

impl GemmSpec {
    /// 2·n³.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n as f64).powi(3)
    }
    /// Shape string for rows.
    pub fn shape(&self) -> String {
        format!("n={}", self.n)
    }
}

/// Named probe presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The agent's default: small kernels, ≤0.5 ms of GPU time per cycle on an H100.
    #[default]
    Light,
    /// The article experiment: a 4096×4096 complex FFT and a 4096² fp32 GEMM.
    Article,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "light" => Ok(Self::Light),
            "article" => Ok(Self::Article),
            o => Err(format!("unknown preset {o:?} (expected light or article)")),
        }
    }
}

/// Everything a backend needs to set up its kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// FFT kernel.
    pub fft: FftSpec,
    /// GEMM kernel.
    pub gemm: GemmSpec,
    /// Runs per burst.
    pub burst_runs: u32,
    /// CUDA only: how a timed run is submitted (see [`Timing`]).
    #[serde(default)]
    pub timing: Timing,
    /// CUDA only: how the host waits for a run to complete (see [`Wait`]).
    #[serde(default)]
    pub wait: Wait,
    /// CUDA only: the math mode of the fp32 GEMM (see [`Fp32Math`]).
    #[serde(default)]
    pub fp32_math: Fp32Math,
    /// CUDA only: cuBLAS workspace given to the handle, KiB; `None` keeps
    /// cuBLAS's own default (32 MiB on Hopper). The probe GEMMs are small and
    /// need little or none.
    #[serde(default)]
    pub cublas_workspace_kib: Option<u32>,
    /// CUDA only: the per-thread stack limit set on the context, bytes
    /// (`CU_LIMIT_STACK_SIZE`); `None` keeps the driver's 1 KiB. The driver
    /// reserves this much local memory for every thread the GPU can hold at
    /// once (about 264 MiB per KiB on an H100), and raises the limit itself
    /// for a kernel that needs more, so a small value only gives memory back.
    #[serde(default)]
    pub cuda_stack_bytes: Option<u32>,
    /// CUDA only: stamp each run's start and end with the GPU's own timer
    /// (`%globaltimer`, two one-thread kernel nodes in the run's graph) and
    /// take `wall_ms` from launch to the end stamp, calibrated to host time
    /// ([`crate::clock`]), so that it does not include how late the host
    /// thread woke up. `false`: `wall_ms` is the host clock until the wait
    /// returned.
    #[serde(default = "stamps_default")]
    pub gpu_stamps: bool,
}

fn stamps_default() -> bool {
    true
}

/// How the host thread waits for a timed run to complete.
///
/// A CUDA context in its default scheduling mode spins the waiting thread at
/// 100 % of a core; on a time-sliced GPU a run waits for its slice for up to
/// several milliseconds, so the busier the GPU the more CPU a spinning agent
/// takes from its tenants. [`Wait::SpinThenBlock`] polls the end event for a
/// short budget (an idle GPU completes a light run well inside it, so the
/// timing floor is unchanged) and then sleeps on the driver's blocking sync
/// (the context is created with `CU_CTX_SCHED_BLOCKING_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Wait {
    /// Poll for `spin_us` microseconds, then block.
    SpinThenBlock {
        /// Polling budget, µs.
        spin_us: u32,
    },
    /// Spin until the run completes (the CUDA default; costs a core while a
    /// run waits for its slice).
    Spin,
    /// Poll for `spin_us` microseconds, then sleep `poll_us` between polls
    /// (a timer wake-up instead of the driver's: the completion is seen at
    /// most `poll_us` plus the timer's lateness after it happens).
    SpinThenPoll {
        /// Polling budget, µs.
        spin_us: u32,
        /// Sleep between later polls, µs.
        poll_us: u32,
    },
}

impl Default for Wait {
    fn default() -> Self {
        Wait::SpinThenBlock { spin_us: 200 }
    }
}

/// Math mode of the fp32 probe GEMM.
///
/// cuBLAS may run fp32 GEMMs on TF32 tensor cores (10-bit mantissa) when the
/// handle's math mode allows it; a node can also impose a mode through the
/// environment. The agent sets the mode explicitly and derives the check's
/// tolerance from the mode actually in use, so neither case raises a false
/// alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fp32Math {
    /// IEEE fp32 arithmetic (`CUBLAS_DEFAULT_MATH`).
    #[default]
    Strict,
    /// TF32 tensor cores allowed (`CUBLAS_TF32_TENSOR_OP_MATH`).
    Tf32,
}

impl Fp32Math {
    /// `strict` or `tf32`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fp32Math::Strict => "strict",
            Fp32Math::Tf32 => "tf32",
        }
    }
}

impl std::str::FromStr for Fp32Math {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Self::Strict),
            "tf32" => Ok(Self::Tf32),
            o => Err(format!("unknown fp32 math {o:?} (expected strict or tf32)")),
        }
    }
}

/// cuBLAS workspace of the light preset, KiB: enough for a 1024² GEMM's
/// algorithms without split-K workspace, far below cuBLAS's 32 MiB default.
pub const LIGHT_CUBLAS_WORKSPACE_KIB: u32 = 1024;

/// Per-thread stack limit of the `light` preset, bytes: none reserved up
/// front. The light kernels (cuFFT, cuBLAS and the checks) need none; the
/// driver raises the limit for any kernel that does. It gives back about
/// 264 MiB of a bare context's 518 MiB on an H100 or H200
/// (docs/gpu-results/footprint.md).
pub const LIGHT_CUDA_STACK_BYTES: u32 = 0;

/// How the CUDA backend submits a timed run.
///
/// Measured on the H100 (docs/gpu-results): with three separate stream
/// calls (start event, kernel, end event) on an otherwise idle stream, the
/// start event's timestamp is written as soon as it is submitted, even while
/// a tenant holds the GPU; the kernel then waits for the next time slice and
/// the whole wait lands *inside* the event interval. [`Timing::Graph`] puts a
/// one-element cuBLAS "fence" kernel before the start event, so the start
/// timestamp is taken only once this context runs on the SMs, and submits
/// fence, events, kernel and the correctness reductions as one CUDA graph, so
/// the run costs the tenants one context switch instead of three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// One graph: fence kernel → start event → kernel → end event → checks.
    #[default]
    Graph,
    /// Separate calls on the backend's own stream; checks after.
    Stream,
    /// Separate calls on the legacy default (NULL) stream; checks after.
    Legacy,
}

impl Timing {
    /// `graph`, `stream` or `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Timing::Graph => "graph",
            Timing::Stream => "stream",
            Timing::Legacy => "legacy",
        }
    }
}

impl std::str::FromStr for Timing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "graph" => Ok(Self::Graph),
            "stream" => Ok(Self::Stream),
            "legacy" => Ok(Self::Legacy),
            o => Err(format!(
                "unknown timing {o:?} (expected graph, stream or legacy)"
            )),
        }
    }
}

impl ProbeSpec {
    /// The spec of a preset.
    pub fn preset(p: Preset) -> Self {
        match p {
            // Measured on the H100 (docs/gpu-results): FFT ≈ 6 µs, GEMM ≈ 10 µs
            // per run, so 2 × 8 runs stay far below 0.5 ms per cycle.
            Preset::Light => ProbeSpec {
                fft: FftSpec {
                    dims: FftDims::D1 { n: 4096, batch: 16 },
                },
                gemm: GemmSpec {
                    n: 1024,
                    precision: Precision::Fp16,
                },
                burst_runs: 8,
                timing: Timing::Graph,
                wait: Wait::default(),
                fp32_math: Fp32Math::Strict,
                cublas_workspace_kib: Some(LIGHT_CUBLAS_WORKSPACE_KIB),
                cuda_stack_bytes: Some(LIGHT_CUDA_STACK_BYTES),
                gpu_stamps: true,
            },
            Preset::Article => ProbeSpec {
                fft: FftSpec {
                    dims: FftDims::D2 { nx: 4096, ny: 4096 },
                },
                gemm: GemmSpec {
                    n: 4096,
                    precision: Precision::Fp32,
                },
                burst_runs: 8,
                timing: Timing::Graph,
                wait: Wait::default(),
                fp32_math: Fp32Math::Strict,
                cublas_workspace_kib: None,
                cuda_stack_bytes: None,
                gpu_stamps: true,
            },
        }
    }

    /// The spec of a preset on a backend. The CPU backend's `light` preset is
    /// scaled down (GEMM n=256, FFT batch 4) so that a probe cycle costs the
    /// node a few milliseconds of one core rather than hundreds.
    pub fn preset_for(p: Preset, backend: &str) -> Self {
        let mut s = Self::preset(p);
        if backend == "cpu" && p == Preset::Light {
            s.gemm.n = 256;
            s.fft.dims = FftDims::D1 { n: 4096, batch: 4 };
        }
        s
    }

    /// Rejects shapes the kernels cannot run.
    pub fn validate(&self) -> Result<(), ProbeError> {
        let pow2_ok = |n: usize| (2..=1 << 24).contains(&n);
        match self.fft.dims {
            FftDims::D1 { n, batch } if !pow2_ok(n) || batch == 0 || n * batch > 1 << 26 => {
                return Err(ProbeError::BadSpec(format!(
                    "fft n={n} batch={batch} out of range"
                )))
            }
            FftDims::D2 { nx, ny } if !pow2_ok(nx) || !pow2_ok(ny) || nx * ny > 1 << 26 => {
                return Err(ProbeError::BadSpec(format!("fft {nx}x{ny} out of range")))
            }
            _ => {}
        }
        if !(8..=16384).contains(&self.gemm.n) {
            return Err(ProbeError::BadSpec(format!(
                "gemm n={} out of range 8..=16384",
                self.gemm.n
            )));
        }
        if self.burst_runs == 0 || self.burst_runs > 1000 {
            return Err(ProbeError::BadSpec(format!(
                "burst_runs={} out of range 1..=1000",
                self.burst_runs
            )));
        }
        Ok(())
    }
}
