//! The closed sets a [`crate::ProbeRecord`] names by word: the probe
//! [`Kernel`] and the [`Backend`] that ran it. They are written as their
//! lowercase names in Parquet columns, labels and span attributes; the probe
//! library uses these same enums, so there is one definition of each.

use serde::{Deserialize, Serialize};

/// A probe kernel. Ordered as in [`Kernel::ALL`] (which is also the order
/// of their names), so it can key sorted maps.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// Complex-to-complex FFT (cuFFT / rustfft). The default only so that
    /// records can be built with `..Default::default()`.
    #[default]
    Fft,
    /// Square matrix product (cuBLAS / matrixmultiply).
    Gemm,
}

impl Kernel {
    /// Both kernels, in probe order.
    pub const ALL: [Kernel; 2] = [Kernel::Fft, Kernel::Gemm];

    /// `fft` or `gemm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Fft => "fft",
            Kernel::Gemm => "gemm",
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kernel {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name(&Kernel::ALL, Kernel::as_str, s)
    }
}

/// The probe backend that ran a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// CUDA on an NVIDIA GPU.
    Cuda,
    /// The CPU stand-in (tests, machines without a GPU). The default only so
    /// that records can be built with `..Default::default()`.
    #[default]
    Cpu,
}

impl Backend {
    /// Both backends.
    pub const ALL: [Backend; 2] = [Backend::Cuda, Backend::Cpu];

    /// `cuda` or `cpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cuda => "cuda",
            Backend::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name(&Backend::ALL, Backend::as_str, s)
    }
}

/// Which clock a row's `wall_ms` was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WallClock {
    /// The GPU's own stamps of the run's start and end (`%globaltimer`),
    /// mapped to the host's time line by the per-GPU calibration: launch →
    /// GPU end, what a caller that spins on completion sees, independent of
    /// how late the probe thread woke up.
    Gpu,
    /// The host's monotonic clock from launch until the wait returned (the
    /// CPU backend, stamps disabled or unavailable, or a calibration whose
    /// error bound was too wide). The default only so that records can be
    /// built with `..Default::default()`.
    #[default]
    Host,
}

impl WallClock {
    /// Both clocks.
    pub const ALL: [WallClock; 2] = [WallClock::Gpu, WallClock::Host];

    /// `gpu` or `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            WallClock::Gpu => "gpu",
            WallClock::Host => "host",
        }
    }
}

impl std::fmt::Display for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WallClock {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name(&WallClock::ALL, WallClock::as_str, s)
    }
}

/// A word that names none of the values of a closed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {0:?}")]
pub struct UnknownName(pub String);

/// The value of `all` whose `name` is `s`: the one parse of every closed set
/// written by name (kernels, backends, verdicts, contention states).
pub(crate) fn parse_name<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
) -> Result<T, UnknownName> {
    all.iter()
        .copied()
        .find(|v| name(*v) == s)
        .ok_or_else(|| UnknownName(s.to_string()))
}
