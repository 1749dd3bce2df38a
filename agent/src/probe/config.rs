//! The `[probe]` table: when runs start, the start-up self-test, the wait,
//! and per-kernel overrides of the preset; and the [`ProbeSpec`] it makes
//! of a preset for one backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use slicetrace_probe::{FftDims, Precision, Preset, ProbeSpec};

/// How the probe runs (the `[probe]` table): when runs start, the start-up
/// self-test, and per-kernel overrides of the preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Mean time between probe cycles per GPU, ms (`arrivals = "burst"`
    /// only; Poisson arrivals use `rate_hz`). Formerly the top-level
    /// `interval_ms`, still read with a deprecation warning.
    pub interval_ms: u64,
    /// Random jitter of each burst interval, ± percent (0–90). Formerly the
    /// top-level `jitter_pct`, still read with a deprecation warning.
    pub jitter_pct: u32,
    /// At start, plant one corrupted output per kernel and require the
    /// checker to catch it. Formerly the top-level `self_test`, still read
    /// with a deprecation warning.
    pub self_test: bool,
    /// FFT length (1-D) or side (2-D), a power of two.
    pub fft_n: Option<usize>,
    /// FFT batch (1-D only).
    pub fft_batch: Option<usize>,
    /// Use a 2-D `fft_n × fft_n` transform instead of a 1-D batch.
    pub fft_2d: Option<bool>,
    /// GEMM matrix size n.
    pub gemm_n: Option<usize>,
    /// GEMM precision: `fp32`, `fp16` or `bf16`.
    pub gemm_precision: Option<Precision>,
    /// Runs per burst (`arrivals = "burst"` only).
    pub burst_runs: Option<u32>,
    /// CUDA submission of a timed run: `graph` (default), `stream` or
    /// `legacy`; only `graph` keeps slice waits out of `gpu_ms`.
    pub timing: Option<slicetrace_probe::Timing>,
    /// When runs start: `poisson` (default: one run per arrival, exponential
    /// gaps, FFT and GEMM alternating, so the latencies are what a caller
    /// arriving at random sees) or `burst` (the first version's FFT burst
    /// then GEMM burst every `interval_ms`; only the first run of a burst
    /// counts as an arrival).
    pub arrivals: Option<Arrivals>,
    /// Mean arrivals per second per GPU, both kernels together (`poisson`);
    /// default 5 (about 750 runs per kernel in a 5-minute health window).
    pub rate_hz: Option<f64>,
    /// CUDA: how the host waits for a run: `spin-then-block` (default: poll
    /// the end event for `spin_us`, then sleep in the driver) or `spin` (the
    /// CUDA default: a core spins while a run waits for its time slice).
    pub wait: Option<WaitMode>,
    /// Polling budget of `spin-then-block`, µs (default 200: a light run on
    /// an idle GPU completes inside it, so the timing floor is unchanged).
    pub spin_us: Option<u32>,
    /// CUDA: math mode of an fp32 GEMM, `strict` (default) or `tf32`; the
    /// check's tolerance follows it (and `NVIDIA_TF32_OVERRIDE`).
    pub fp32_math: Option<slicetrace_probe::Fp32Math>,
    /// CUDA: cuBLAS workspace, KiB (default 1024 for `light`, cuBLAS's own
    /// 32 MiB for `article`).
    pub cublas_workspace_kib: Option<u32>,
    /// CUDA: per-thread stack limit of the probe context, bytes (default 0
    /// for `light`, the driver's 1024 for `article`). The driver reserves it
    /// for every thread the GPU can hold (about 264 MiB of GPU memory per KiB
    /// on an H100) and raises it for a kernel that needs more.
    pub cuda_stack_bytes: Option<u32>,
    /// CUDA: stamp each run's start and end with the GPU's own timer and
    /// take `wall_ms` (launch → end stamp) and `queue_ms` (launch → start
    /// stamp) from them, calibrated to the host clock per GPU (default
    /// true). `false` takes `wall_ms` from the host clock until the wait
    /// returned, which includes how late the probe thread woke up; that
    /// time is in `host_wall_ms` either way.
    pub gpu_stamps: Option<bool>,
    /// Oldest the GPU's process list (a row's `gpu_processes`, `processes`
    /// and tenant count) may be, ms (default 5000, 1000–300000). NVML's
    /// process query is its dearest call on a busy GPU; the other device
    /// fields are refreshed every second regardless.
    pub process_list_max_age_ms: Option<u64>,
    /// Least time between two reads of NVML's per-process utilisation (the
    /// `busy_tenants` join), ms (default 2000; 0 reads it after every
    /// arrival; at most 3600000). It costs 1.5–2.7 ms of CPU per read on a
    /// busy H100 (docs/gpu-results/ §B), so by default one arrival in every
    /// 2 s carries `busy_tenants`; the others leave it null (unknown).
    pub busy_tenants_interval_ms: Option<u64>,
    /// Look-back window of `busy_tenants`, ms (default 3000, 100–60000): a
    /// tenant is busy around an arrival when NVML gave it a non-zero SM
    /// sample within this long before launch. Under time-slicing NVML marks
    /// a busy process non-zero only in some of its ~200 ms samples (every
    /// 0.75 s for one of three tenants, 1.7 s for one of six, on an H100).
    pub busy_window_ms: Option<u64>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            jitter_pct: 20,
            self_test: true,
            fft_n: None,
            fft_batch: None,
            fft_2d: None,
            gemm_n: None,
            gemm_precision: None,
            burst_runs: None,
            timing: None,
            arrivals: None,
            rate_hz: None,
            wait: None,
            spin_us: None,
            fp32_math: None,
            cublas_workspace_kib: None,
            cuda_stack_bytes: None,
            gpu_stamps: None,
            process_list_max_age_ms: None,
            busy_tenants_interval_ms: None,
            busy_window_ms: None,
        }
    }
}

/// When probe runs start (`probe.arrivals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// A Poisson process per GPU: one run per arrival.
    #[default]
    Poisson,
    /// Bursts of each kernel per jittered interval.
    Burst,
}

/// How the host waits for a CUDA run (`probe.wait`): the mode of
/// [`slicetrace_probe::Wait`] that the config offers. Its budget
/// (`probe.spin_us`) and both defaults are the probe's own
/// (`Wait::default()`), so they are written once, in the probe crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// Poll for `spin_us`, then block.
    #[default]
    SpinThenBlock,
    /// Spin until done.
    Spin,
}

impl WaitMode {
    /// The probe's wait for `probe.wait` and `probe.spin_us`: what is not
    /// set keeps `preset` (the preset's wait, `Wait::default()`); a budget
    /// without a mode, or a mode without a budget, takes the other half
    /// from the probe's default.
    pub fn wait(
        mode: Option<WaitMode>,
        spin_us: Option<u32>,
        preset: slicetrace_probe::Wait,
    ) -> slicetrace_probe::Wait {
        use slicetrace_probe::Wait;
        let default_spin = |w: Wait| match w {
            Wait::SpinThenBlock { spin_us } | Wait::SpinThenPoll { spin_us, .. } => Some(spin_us),
            Wait::Spin => None,
        };
        match (mode, spin_us) {
            (None, None) => preset,
            (Some(WaitMode::Spin), _) => Wait::Spin,
            (_, Some(spin_us)) => Wait::SpinThenBlock { spin_us },
            (Some(WaitMode::SpinThenBlock), None) => match preset {
                Wait::SpinThenBlock { .. } => preset,
                other => Wait::SpinThenBlock {
                    spin_us: default_spin(other)
                        .or_else(|| default_spin(Wait::default()))
                        .unwrap_or_default(),
                },
            },
        }
    }
}

/// Default mean arrival rate per GPU, Hz: a 5-minute health window then holds
/// about 750 arrivals per kernel (at least 600 with overwhelming probability).
pub const DEFAULT_RATE_HZ: f64 = 5.0;

impl ProbeConfig {
    /// The probe spec for a backend (`cuda` or `cpu`): `preset`'s, then
    /// what this table overrides.
    pub fn spec(&self, preset: Preset, backend: &str) -> ProbeSpec {
        let mut s = ProbeSpec::preset_for(preset, backend);
        let p = self;
        if p.fft_n.is_some() || p.fft_batch.is_some() || p.fft_2d.is_some() {
            let (n0, b0) = match s.fft.dims {
                FftDims::D1 { n, batch } => (n, batch),
                FftDims::D2 { nx, .. } => (nx, 1),
            };
            let n = p.fft_n.unwrap_or(n0);
            s.fft.dims = if p.fft_2d.unwrap_or(matches!(s.fft.dims, FftDims::D2 { .. })) {
                FftDims::D2 { nx: n, ny: n }
            } else {
                FftDims::D1 {
                    n,
                    batch: p.fft_batch.unwrap_or(b0),
                }
            };
        }
        if let Some(n) = p.gemm_n {
            s.gemm.n = n;
        }
        if let Some(pr) = p.gemm_precision {
            s.gemm.precision = pr;
        }
        if let Some(b) = p.burst_runs {
            s.burst_runs = b;
        }
        if let Some(t) = p.timing {
            s.timing = t;
        }
        s.wait = WaitMode::wait(p.wait, p.spin_us, s.wait);
        if let Some(m) = p.fp32_math {
            s.fp32_math = m;
        }
        if let Some(k) = p.cublas_workspace_kib {
            s.cublas_workspace_kib = Some(k);
        }
        if let Some(b) = p.cuda_stack_bytes {
            s.cuda_stack_bytes = Some(b);
        }
        if let Some(g) = p.gpu_stamps {
            s.gpu_stamps = g;
        }
        s
    }

    /// Look-back window of `busy_tenants`.
    pub fn busy_window(&self) -> Duration {
        self.busy_window_ms.map_or(
            Duration::from_micros(super::busy::DEFAULT_WINDOW_US),
            Duration::from_millis,
        )
    }

    /// Least time between two reads of per-process utilisation.
    pub fn busy_tenants_interval(&self) -> Duration {
        Duration::from_millis(
            self.busy_tenants_interval_ms
                .unwrap_or(super::BUSY_TENANTS_INTERVAL_MS),
        )
    }

    /// Oldest a probe thread's GPU process list may be.
    pub fn process_list_max_age(&self) -> Duration {
        self.process_list_max_age_ms
            .map_or(super::PROCESS_LIST_MAX_AGE, Duration::from_millis)
    }
}
