//! `slicetrace-agent`: the per-node DaemonSet that probes every GPU.
//!
//! One tick of the flow, per GPU, on that GPU's own probe thread:
//! scheduler (jittered interval) → NVML sample → `ProbeBackend` burst (CUDA
//! events + host clock) → NVML sample → occupancy snapshot (from a cache filled
//! in the background) → one [`slicetrace_schema::ProbeRecord`] per run → one
//! bounded channel per sink (Parquet, OTLP, live health / Prometheus). A sink
//! that is slow or down never blocks a probe: its channel is bounded and what
//! does not fit is dropped and counted in [`internal_events::Counters`].

pub mod config;
pub mod internal_events;
pub mod occupancy;
pub mod sinks;
pub mod telemetry;
