//! `slicetrace-agent`: the per-node DaemonSet that probes every GPU.
//!
//! The modules follow the road of a record ([`agent`] wires them, top to
//! bottom):
//!
//! * [`config`]: the file, the environment and the flags, validated. A leaf:
//!   it reads each component's own config type (`*/config.rs`) and runs no
//!   component.
//! * [`probe`]: one thread per GPU. An exponential gap ([`probe::arrivals`])
//!   → NVML sample ([`probe::telemetry`]) → one `ProbeBackend` run (CUDA
//!   events + host clock) → occupancy snapshot ([`probe::occupancy`], from a
//!   cache filled in the background) → one [`slicetrace_schema::ProbeRecord`]
//!   with its ids ([`probe::ids`]) and the verdict last published in
//!   [`serve::live`] (so a row's verdict lags by up to one evaluation).
//! * [`topology`]: how records travel. One message type, bounded queues,
//!   the fan-out that shares each record (`Arc<[ProbeRecord]>`) with every
//!   consumer's queue, and the handle that stops a consumer. A leaf: it
//!   knows no consumer.
//! * [`consumers`]: each owns one bounded queue and one loop: the Parquet
//!   writer thread and the OTLP export task (both [`consumers::Sink`]s), the
//!   health evaluator ([`consumers::health`], whose verdicts leave through a
//!   fan-out of their own to the two sinks, and which publishes to
//!   [`serve::live`]), and the exit summary. A consumer that is slow or down
//!   never blocks a probe: what does not fit its queue is dropped and
//!   counted ([`internal_events`]).
//! * [`serve`]: what the agent shows while it runs: the live state,
//!   `/metrics`, `/healthz`, `/readyz` and the node condition.
//!
//! [`internal_events`] (counters and their log lines), [`field_error`] and
//! [`memory`] are used by all of them and use none of them.

pub mod agent;
pub mod config;
pub mod consumers;
pub mod field_error;
pub mod internal_events;
pub mod memory;
pub mod probe;
pub mod serve;
pub mod topology;

#[cfg(test)]
mod layering;
