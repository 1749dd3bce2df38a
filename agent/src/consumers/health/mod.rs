//! Live health: a rolling window of arrival runs per GPU and kernel, judged
//! by [`slicetrace_schema::judge`] (the one definition `slicetrace fleet`
//! uses too) into two dimensions:
//!
//! * **health** (`healthy`, `unknown`, `degraded`, `unhealthy`) of the GPU
//!   itself: event time per SM cycle against the GPU's learned quiet
//!   baseline or the shipped per-SKU reference, throttling, correctness,
//!   probe failures, a backend that is not up and the start-up self-test;
//! * **contention** (`ok`, `contended`, `over-shared`): the wall-clock wait
//!   of arrival runs against an SLO, or the quiet baseline and what the
//!   tenant count predicts.
//!
//! Only arrival runs ([`ProbeRecord::is_arrival`]) enter windows and
//! baselines: a run right after the probe's own previous run measures the
//! probe's rhythm, not what a caller sees. The first run after an idle gap is
//! an arrival like any other (a sparse caller gets exactly that). Quiet means
//! `tenants() == Some(0)`; correctness failures and throttle reasons count
//! from every run.
//!
//! The evaluator is a consumer of the fan-out like any sink: one bounded
//! queue, one loop (`task.rs`), so a slow evaluation never delays a probe.
//! Verdicts are published to [`LiveState`] ([`crate::serve::live`]), which the
//! probe threads read to stamp rows and spans, and which `/metrics`,
//! `/readyz` and the node condition render; each evaluation's verdicts also
//! leave through a fan-out of their own, to the small `health` Parquet table
//! and as OTLP `health_evaluation` spans.
//!
//! The pieces, in the order a row meets them:
//!
//! * `config.rs`: [`HealthConfig`], the `[health]` table and its validation;
//! * `task.rs`: the consumer's loop ([`spawn`]): queue in, verdicts out;
//! * `evaluator.rs`: [`Evaluator`], which takes rows and [`ProbeEvent`]s,
//!   judges and publishes;
//! * `window.rs`: the rolling window's histograms;
//! * `baseline.rs`: learned quiet [`Baseline`]s and their file,
//!   `DIR/state/health-baseline.json`.
//!
//! [`ProbeRecord::is_arrival`]: slicetrace_schema::ProbeRecord::is_arrival

mod baseline;
mod config;
mod evaluator;
mod task;
mod window;

pub use baseline::Baseline;
pub use config::HealthConfig;
pub use evaluator::Evaluator;
pub use task::{spawn, NAME};
pub(crate) use window::us;
