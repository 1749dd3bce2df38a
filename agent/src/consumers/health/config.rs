//! The `[health]` table: how long the window is, how often it is judged and
//! the thresholds of the judge. [`crate::config`] reads it with the rest of
//! the agent's config and calls [`HealthConfig::validate`] at start-up; the
//! [`super::Evaluator`] takes it by value and hands [`HealthConfig::thresholds`]
//! to [`slicetrace_schema::judge`], the same judge `slicetrace fleet` uses, so
//! the live and offline verdicts read one set of numbers.

use serde::{Deserialize, Serialize};
use slicetrace_schema::Thresholds;

use crate::field_error::FieldError;

/// Health configuration (the `[health]` table). Thresholds default to
/// [`Thresholds::DEFAULT`], the same set `slicetrace fleet` uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Length of the rolling window, ms.
    pub window_ms: u64,
    /// How often verdicts are evaluated and published, ms.
    pub evaluate_interval_ms: u64,
    /// Health: event time per SM cycle over its baseline at which a GPU is
    /// `degraded`. Contention: wall p99 over the quiet baseline at which it
    /// is `contended`, and over what the tenant count predicts at which it is
    /// `over-shared`.
    pub degraded_factor: f64,
    /// Health: event ratio at which a GPU is `unhealthy`. Contention: wall
    /// p99 over `slo_p99_ms` at which it is `over-shared`.
    pub unhealthy_factor: f64,
    /// A p99 `wall_ms` target, ms: the wait is judged against it instead of
    /// the quiet baseline (contention only; it never makes a GPU unhealthy).
    pub slo_p99_ms: Option<f64>,
    /// Arrival runs needed in the window before latency is judged (fewer:
    /// `unknown` unless something else is found).
    pub min_samples: u64,
    /// Quiet arrival runs needed before a learned baseline is used (until
    /// then the per-SKU reference is, where one is shipped).
    pub baseline_min_samples: u64,
    /// Time slice per tenant, ms (about 2 ms on an H100): what one tenant
    /// adds to a random arrival's wait.
    pub slice_ms: f64,
    /// NVML throttle-reason bits that make a GPU `degraded` (default: SW
    /// power cap 0x4, SW thermal 0x20).
    pub throttle_mask: u64,
    /// NVML throttle-reason bits that make a GPU `unhealthy` (default: HW
    /// slowdown 0x8, HW thermal 0x40, HW power brake 0x80).
    pub throttle_unhealthy_mask: u64,
    /// Share of the window's arrival runs (0–1) that must see a bit of
    /// `throttle_unhealthy_mask` before the GPU is `unhealthy`; below it the
    /// GPU is `degraded`. Default 0.25.
    pub throttle_unhealthy_share: f64,
    /// Judge the event clock against the shipped per-SKU reference while the
    /// GPU has no learned quiet baseline (a GPU that is never idle).
    pub sku_reference: bool,
    /// Patch this node's status with a `GPUTailLatencyDegraded` condition.
    pub node_condition: bool,
    /// Minimum time between two changes of the node condition's status
    /// (against flapping), ms. Its heartbeat (`lastHeartbeatTime`) is
    /// written on every evaluation regardless, and a clean stop sets it to
    /// `Unknown`.
    pub node_condition_min_interval_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        let t = Thresholds::DEFAULT;
        Self {
            window_ms: 300_000,
            evaluate_interval_ms: 10_000,
            degraded_factor: t.degraded_factor,
            unhealthy_factor: t.unhealthy_factor,
            slo_p99_ms: None,
            min_samples: t.min_samples,
            baseline_min_samples: t.baseline_min_samples,
            slice_ms: t.slice_ms,
            throttle_mask: t.throttle_degraded_mask,
            throttle_unhealthy_mask: t.throttle_unhealthy_mask,
            throttle_unhealthy_share: t.throttle_unhealthy_share,
            sku_reference: true,
            node_condition: false,
            node_condition_min_interval_ms: 60_000,
        }
    }
}

impl HealthConfig {
    /// Names the first unusable value and why.
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field, message: String| Err(FieldError::new(field, message));
        if self.window_ms < 1000 {
            return bad("window_ms", format!("{} is below 1000", self.window_ms));
        }
        if !(0.0..=1.0).contains(&self.throttle_unhealthy_share) {
            return bad(
                "throttle_unhealthy_share",
                format!("{} is not between 0 and 1", self.throttle_unhealthy_share),
            );
        }
        if self.evaluate_interval_ms == 0 || self.evaluate_interval_ms > self.window_ms {
            return bad(
                "evaluate_interval_ms",
                "must be positive and at most window_ms".into(),
            );
        }
        if self.degraded_factor.is_nan() || self.degraded_factor <= 1.0 {
            return bad(
                "degraded_factor",
                format!("{} must be above 1", self.degraded_factor),
            );
        }
        if self.unhealthy_factor.is_nan() || self.unhealthy_factor < self.degraded_factor {
            return bad(
                "unhealthy_factor",
                "must be at least degraded_factor".into(),
            );
        }
        if let Some(s) = self.slo_p99_ms {
            if s.is_nan() || s <= 0.0 {
                return bad("slo_p99_ms", format!("{s} must be positive"));
            }
        }
        if self.slice_ms.is_nan() || self.slice_ms <= 0.0 {
            return bad("slice_ms", format!("{} must be positive", self.slice_ms));
        }
        Ok(())
    }

    /// The thresholds in the schema's terms.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            degraded_factor: self.degraded_factor,
            unhealthy_factor: self.unhealthy_factor,
            min_samples: self.min_samples,
            baseline_min_samples: self.baseline_min_samples,
            slice_ms: self.slice_ms,
            throttle_degraded_mask: self.throttle_mask,
            throttle_unhealthy_mask: self.throttle_unhealthy_mask,
            throttle_unhealthy_share: self.throttle_unhealthy_share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_match_the_schema_thresholds() {
        let c = HealthConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.thresholds(), Thresholds::DEFAULT);
    }

    #[test]
    fn unusable_values_name_their_field() {
        let bad = |f: fn(&mut HealthConfig)| {
            let mut c = HealthConfig::default();
            f(&mut c);
            c.validate().map_err(|e| e.field)
        };
        assert_eq!(bad(|c| c.window_ms = 999), Err("window_ms"));
        assert_eq!(
            bad(|c| c.evaluate_interval_ms = 0),
            Err("evaluate_interval_ms")
        );
        assert_eq!(bad(|c| c.degraded_factor = 1.0), Err("degraded_factor"));
        assert_eq!(bad(|c| c.unhealthy_factor = 1.2), Err("unhealthy_factor"));
        assert_eq!(bad(|c| c.slo_p99_ms = Some(0.0)), Err("slo_p99_ms"));
        assert_eq!(bad(|c| c.slice_ms = f64::NAN), Err("slice_ms"));
    }
}
