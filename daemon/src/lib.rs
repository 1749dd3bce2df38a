//! `slicetrace-agent`: the per-node DaemonSet that probes every GPU.
//!
//! One arrival, per GPU, on that GPU's own probe thread ([`pipeline`]):
//! exponential gap → NVML sample ([`telemetry`]) → one `ProbeBackend` run
//! (CUDA events + host clock) → NVML clock sample → occupancy snapshot
//! ([`occupancy`], from a cache filled in the background) → one
//! [`slicetrace_schema::ProbeRecord`] stamped with its ids ([`ids`]) and the
//! live verdict ([`live`]).
//!
//! Then one road for every record: the [`fanout`] shares the rows (one
//! `Arc<[ProbeRecord]>`) with every consumer's outlet. Each consumer owns
//! exactly one bounded queue and one loop: the Parquet writer thread and
//! the OTLP export task ([`sinks`]), the [`health`] evaluator (which
//! publishes to [`live`], read by [`metrics`] and the optional
//! [`node_condition`], and sends its verdicts to the sinks through a fan-out
//! of its own), and the exit [`summary`]. A consumer that is slow or down
//! never blocks a probe: what does not fit its queue is dropped and counted
//! under its outlet's name ([`internal_events::Counters`]). [`agent`] starts
//! the consumers and stops them in order ([`shutdown`]): probe threads
//! first, then each consumer drains its queue and closes within the
//! deadline.

pub mod agent;
pub mod config;
pub mod cpu_time;
pub mod fanout;
pub mod health;
pub mod ids;
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
