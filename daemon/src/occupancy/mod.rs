//! Pod occupancy: who shares each physical GPU.
//!
//! Sources (kubelet pod-resources, the Kubernetes API, `/proc/<pid>/cgroup`)
//! refresh caches in the background; [`OccupancySource::snapshot`] answers
//! from those caches and never blocks the probe thread.

/// A compute process NVML reports on a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    /// Host PID (as NVML reports it).
    pub pid: u32,
    /// GPU memory used, MiB, when NVML knows.
    pub used_mib: Option<u64>,
    /// Command name from `/proc/<pid>/comm`, when readable.
    pub name: Option<String>,
}

/// What is known about who occupies one physical GPU. Every field is `None`
/// when no configured source can answer it: absent is never empty-as-zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Occupancy {
    /// `namespace/name` of every pod holding a replica of this GPU.
    pub pods: Option<Vec<String>>,
    /// `pods.len()`.
    pub pod_count: Option<u32>,
    /// Pods with a process actually running on this GPU.
    pub active_pods: Option<Vec<String>>,
    /// Replicas per GPU, from the node label `nvidia.com/gpu.replicas`.
    pub replicas: Option<u32>,
    /// Node label `nvidia.com/gpu.sharing-strategy`.
    pub sharing_strategy: Option<String>,
    /// The answer came from a cache older than the staleness age.
    pub stale: Option<bool>,
}

/// The occupancy seam.
///
/// Contract: `snapshot` is called on a probe thread once per burst; it must
/// return in microseconds, never block on I/O, and never fail (a source that
/// cannot answer leaves its fields `None`). `processes` are the GPU's compute
/// processes from NVML, with the agent's own PID already removed.
pub trait OccupancySource: Send + Sync {
    /// Occupancy of the physical GPU `gpu_uuid` now.
    fn snapshot(&self, gpu_uuid: &str, processes: &[GpuProcess]) -> Occupancy;
}

/// No occupancy source configured: every field stays `None`.
#[derive(Debug, Default)]
pub struct NoOccupancy;

impl OccupancySource for NoOccupancy {
    fn snapshot(&self, _gpu_uuid: &str, _processes: &[GpuProcess]) -> Occupancy {
        Occupancy::default()
    }
}
