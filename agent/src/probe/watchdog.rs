//! The watchdog's config (`[watchdog]`) and the deadlines it derives.
//!
//! Every run of a probe thread waits for its answer with a deadline
//! ([`super::driver::Driver::run`]); a run past it makes its GPU `unhealthy`
//! (`hung`) at once, and the thread abandons the backend and its context and
//! opens a new one with backoff. The deadline is generous: a probe run takes
//! well under a millisecond of GPU time with the `light` preset and tens of
//! milliseconds with `article`, and on a time-sliced GPU it waits at most
//! about one slice (~2 ms on an H100) per tenant; the default base is
//! hundreds of times that, so only a run that will not finish trips it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use slicetrace_probe::Preset;

use crate::field_error::FieldError;

/// The watchdog for hung runs and hung opens (the `[watchdog]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// Give up on runs past their deadline. Default `true`; with `false`
    /// a run may wait forever (as before the watchdog).
    pub enabled: bool,
    /// The deadline of a run on an otherwise idle GPU, ms. Default: from
    /// the preset, 2000 for `light`, 10000 for `article`.
    pub run_deadline_ms: Option<u64>,
    /// Added to the deadline for every other process on the GPU (each may
    /// hold the GPU for a time slice before the probe's run gets it), ms.
    /// Default 250.
    pub per_tenant_ms: u64,
    /// The deadline of opening a GPU's backend (context, plans, warm-up,
    /// calibration), ms. Default 120000.
    pub open_deadline_ms: u64,
    /// Test and demo only: plant one hang ([`slicetrace_probe::Fault::Hang`],
    /// a run that holds its context for 30 s) on device
    /// `plant_hang_device` this long after its thread started, ms. Unset by
    /// default.
    pub plant_hang_after_ms: Option<u64>,
    /// The device index `plant_hang_after_ms` plants the hang on. Default 0.
    pub plant_hang_device: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            run_deadline_ms: None,
            per_tenant_ms: 250,
            open_deadline_ms: 120_000,
            plant_hang_after_ms: None,
            plant_hang_device: 0,
        }
    }
}

impl WatchdogConfig {
    /// Checks values that parsed but are not usable.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.run_deadline_ms == Some(0) {
            return Err(FieldError::new("run_deadline_ms", "must be positive"));
        }
        if self.open_deadline_ms == 0 {
            return Err(FieldError::new("open_deadline_ms", "must be positive"));
        }
        Ok(())
    }

    /// The deadlines of one GPU's thread under `preset`.
    pub fn resolve(&self, preset: Preset, device: u32) -> Watchdog {
        let base = self.run_deadline_ms.unwrap_or(match preset {
            Preset::Light => 2_000,
            Preset::Article => 10_000,
        });
        Watchdog {
            enabled: self.enabled,
            base: Duration::from_millis(base),
            per_tenant: Duration::from_millis(self.per_tenant_ms),
            open: Duration::from_millis(self.open_deadline_ms),
            plant_hang_after: self
                .plant_hang_after_ms
                .filter(|_| device == self.plant_hang_device)
                .map(Duration::from_millis),
        }
    }
}

/// One probe thread's deadlines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watchdog {
    /// Whether runs have a deadline at all.
    pub enabled: bool,
    /// A run's deadline on an idle GPU.
    pub base: Duration,
    /// Added per tenant.
    pub per_tenant: Duration,
    /// An open's deadline.
    pub open: Duration,
    /// Plant one hang this long after the thread started.
    pub plant_hang_after: Option<Duration>,
}

/// No deadline: a day (a `recv_timeout` needs a finite one).
const NEVER: Duration = Duration::from_secs(86_400);

impl Watchdog {
    /// The deadline of a run beside `tenants` other processes.
    pub fn run_deadline(&self, tenants: u32) -> Duration {
        if !self.enabled {
            return NEVER;
        }
        self.base + self.per_tenant.saturating_mul(tenants)
    }

    /// How long a probe thread may go without progress before the agent
    /// counts as stuck (`/healthz`): the longest a run, an open or a
    /// back-off may take, with room to spare.
    pub fn stall_after(&self, max_tenants: u32) -> Duration {
        let run = if self.enabled {
            self.run_deadline(max_tenants)
        } else {
            NEVER
        };
        run.max(self.open).max(super::MAX_BACKOFF) + Duration::from_secs(30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_tenants_and_follows_the_preset() {
        let c = WatchdogConfig::default();
        let light = c.resolve(Preset::Light, 0);
        let article = c.resolve(Preset::Article, 0);
        assert!(article.run_deadline(0) > light.run_deadline(0));
        assert_eq!(
            light.run_deadline(4) - light.run_deadline(0),
            Duration::from_millis(1000)
        );
        let fixed = WatchdogConfig {
            run_deadline_ms: Some(300),
            ..c.clone()
        };
        assert_eq!(
            fixed.resolve(Preset::Article, 0).run_deadline(0),
            Duration::from_millis(300)
        );
        let off = WatchdogConfig {
            enabled: false,
            ..c.clone()
        };
        assert!(off.resolve(Preset::Light, 0).run_deadline(0) >= Duration::from_secs(3600));
    }

    #[test]
    fn a_planted_hang_goes_to_its_device_only() {
        let c = WatchdogConfig {
            plant_hang_after_ms: Some(500),
            plant_hang_device: 2,
            ..WatchdogConfig::default()
        };
        assert_eq!(c.resolve(Preset::Light, 1).plant_hang_after, None);
        assert_eq!(
            c.resolve(Preset::Light, 2).plant_hang_after,
            Some(Duration::from_millis(500))
        );
        assert!(WatchdogConfig {
            open_deadline_ms: 0,
            ..WatchdogConfig::default()
        }
        .validate()
        .is_err());
    }
}
