//! The numbers a verdict is judged by: the one set of [`Thresholds`] and the
//! per-SKU references a GPU without a learned baseline is held to.

use serde::{Deserialize, Serialize};

/// The one set of thresholds (agent `[health]` keys and `fleet` flags default
/// to these).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Health: event p50 per SM cycle ÷ baseline at which a GPU is
    /// `degraded`. Contention: wall p99 ÷ quiet baseline at which it is
    /// `contended`, and wall p99 ÷ predicted at which it is `over-shared`.
    pub degraded_factor: f64,
    /// Health: event ratio at which a GPU is `unhealthy`. Contention: wall
    /// p99 ÷ SLO at which it is `over-shared`.
    pub unhealthy_factor: f64,
    /// Arrival runs needed in the window before latency is judged.
    pub min_samples: u64,
    /// Quiet arrival runs needed before a learned baseline is used.
    pub baseline_min_samples: u64,
    /// Time slice per tenant, ms (about 2 ms on an H100 with the default
    /// time-slicing of the NVIDIA device plugin). A wall p99 less than half
    /// a slice above the quiet baseline is never contention.
    pub slice_ms: f64,
    /// Throttle-reason bits that make a GPU `degraded`: SW power cap 0x4,
    /// SW thermal 0x20.
    pub throttle_degraded_mask: u64,
    /// Throttle-reason bits that make a GPU `unhealthy`: HW slowdown 0x8, HW
    /// thermal 0x40, HW power brake 0x80.
    pub throttle_unhealthy_mask: u64,
    /// Share of the window's arrival runs that must see one of those bits
    /// before the GPU is `unhealthy`: a hardware slowdown sustained over a
    /// quarter of the window, not one sample. Below it, hardware throttling
    /// makes the GPU `degraded`.
    pub throttle_unhealthy_share: f64,
}

impl Thresholds {
    /// The defaults, documented in `docs/operations.md`.
    pub const DEFAULT: Thresholds = Thresholds {
        degraded_factor: 1.5,
        unhealthy_factor: 3.0,
        min_samples: 30,
        baseline_min_samples: 100,
        slice_ms: 2.0,
        throttle_degraded_mask: 0x4 | 0x20,
        throttle_unhealthy_mask: 0x8 | 0x40 | 0x80,
        throttle_unhealthy_share: 0.25,
    };
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The per-SKU reference of one probe kernel: quiet arrival runs on a known
/// good GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkuReference {
    /// `gpu_name` as NVML reports it.
    pub gpu_name: &'static str,
    /// `fft` or `gemm`.
    pub kernel: &'static str,
    /// `shape` column.
    pub shape: &'static str,
    /// `precision` column.
    pub precision: &'static str,
    /// p50 of `gpu_ms × sm_clock_mhz / 1000` (millions of SM cycles).
    pub event_mcycles_p50: f64,
    /// p50 of `wall_ms`, ms.
    pub wall_p50_ms: f64,
    /// p99 of `wall_ms`, ms.
    pub wall_p99_ms: f64,
}

/// Shipped references. Source: `docs/gpu-results/h100-run/agent-{light,article}`
/// (NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 13.0, graph submission,
/// SM clock 1980 MHz), runs with `burst_seq = 0` (the first run after an idle
/// gap, which is what a Poisson arrival sees) and no tenant; the event p50 is
/// the larger of those and the quiet back-to-back runs, so neither reads as
/// slow. The light GEMM's event p50 is from a later run with Poisson arrivals
/// (2026-11-26, same H100 model, 20 arrivals/s, idle): 1.2x the burst data,
/// because every arrival there follows an idle gap. Extend the table from
/// `slicetrace sql` over quiet arrival runs of a known good GPU.
pub const SKU_REFERENCES: &[SkuReference] = &[
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "fft",
        shape: "c2c 1d n=4096 batch=16",
        precision: "fp32",
        event_mcycles_p50: 0.0195,
        wall_p50_ms: 0.0768,
        wall_p99_ms: 0.1495,
    },
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "gemm",
        shape: "n=1024",
        precision: "fp16",
        event_mcycles_p50: 0.0204,
        wall_p50_ms: 0.0197,
        wall_p99_ms: 0.0585,
    },
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "fft",
        shape: "c2c 2d 4096x4096",
        precision: "fp32",
        event_mcycles_p50: 0.4825,
        wall_p50_ms: 0.304,
        wall_p99_ms: 0.3751,
    },
    SkuReference {
        gpu_name: "NVIDIA H100 80GB HBM3",
        kernel: "gemm",
        shape: "n=4096",
        precision: "fp32",
        event_mcycles_p50: 5.2771,
        wall_p50_ms: 2.6787,
        wall_p99_ms: 2.7044,
    },
];

/// The shipped reference for a GPU model and probe kernel, if any.
pub fn sku_reference(
    gpu_name: Option<&str>,
    kernel: &str,
    shape: &str,
    precision: &str,
) -> Option<&'static SkuReference> {
    let name = gpu_name?;
    SKU_REFERENCES.iter().find(|r| {
        r.gpu_name == name && r.kernel == kernel && r.shape == shape && r.precision == precision
    })
}
