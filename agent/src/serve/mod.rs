//! What the agent shows while it runs: the live state the health evaluator
//! writes and the probe threads read (`live.rs`), `/metrics`, `/healthz`
//! and `/readyz` (`metrics/`), and the optional Node condition
//! (`node_condition.rs`).

pub mod live;
pub mod metrics;
pub mod node_condition;
