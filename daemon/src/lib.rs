//! `slicetrace-agent`: the per-node DaemonSet that probes every GPU.
//!
//! One tick of the flow, per GPU, on that GPU's own probe thread
//! ([`pipeline`]): scheduler (jittered interval) → NVML sample ([`telemetry`])
//! → `ProbeBackend` burst (CUDA events + host clock) → NVML sample →
//! occupancy snapshot ([`occupancy`], from a cache filled in the background)
//! → one [`slicetrace_schema::ProbeRecord`] per run → one bounded channel per
//! sink ([`sinks`]: Parquet, OTLP) and one to the live [`health`] evaluator,
//! which feeds [`metrics`] and the optional [`node_condition`]. A sink that is
//! slow or down never blocks a probe: its channel is bounded and what does
//! not fit is dropped and counted in [`internal_events::Counters`].

pub mod agent;
pub mod config;
pub mod fanout;
pub mod health;
pub mod internal_events;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod node_condition;
pub mod occupancy;
pub mod pipeline;
pub mod shutdown;
pub mod sinks;
pub mod summary;
pub mod telemetry;
