//! The probe loop's NVML readings: the sample before a run (fresh clocks on
//! top of a full sample of bounded age), the reading after it, and the busy
//! tenants around it (NVML's per-process utilisation, [`super::busy`]).

use std::time::Instant;

use slicetrace_schema::ProbeRecord;

use super::telemetry::DeviceSample;
use super::{busy, LoopState, ProbeLoop, FULL_SAMPLE_MAX_AGE};
use crate::internal_events::{InternalEvent, TelemetrySampleFailed};

/// What one NVML reading covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
    /// SM clock and throttle reasons only.
    Clocks,
    /// Every device field, not the process list.
    Device,
    /// Every device field and the process list.
    Full,
}

impl ProbeLoop {
    /// The reading just before a run: a fresh SM clock and throttle mask on
    /// top of the last full sample (refreshed when older than
    /// [`FULL_SAMPLE_MAX_AGE`], its process list when older than
    /// `process_list_max_age`).
    pub(super) fn sample_before(&self, st: &mut LoopState) -> Option<DeviceSample> {
        let stale = st
            .full
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= FULL_SAMPLE_MAX_AGE);
        if stale {
            let processes_stale = st
                .processes_at
                .is_none_or(|t| t.elapsed() >= self.process_list_max_age);
            let s = if processes_stale {
                let s = self.sample(st, Reading::Full);
                st.processes_at = s.as_ref().map(|_| Instant::now());
                s
            } else {
                let kept = st.full.as_ref().and_then(|(_, f)| f.processes.clone());
                self.sample(st, Reading::Device).map(|s| DeviceSample {
                    processes: kept,
                    ..s
                })
            };
            st.full = s.clone().map(|s| (Instant::now(), s));
            if let Some(p) = s.as_ref().and_then(|s| s.processes.as_ref()) {
                st.tenants = p.len() as u32;
            }
            return s;
        }
        let clocks = self.sample(st, Reading::Clocks);
        st.full.as_ref().map(|(_, full)| {
            let mut s = full.clone();
            s.fields.sm_clock_mhz = clocks.as_ref().and_then(|c| c.fields.sm_clock_mhz);
            s.fields.throttle_reasons = clocks.as_ref().and_then(|c| c.fields.throttle_reasons);
            s
        })
    }

    pub(super) fn sample(&self, st: &LoopState, what: Reading) -> Option<DeviceSample> {
        let r = match what {
            Reading::Clocks => self.telemetry.sample_after(&st.uuid),
            Reading::Device => self.telemetry.sample_device(&st.uuid),
            Reading::Full => self.telemetry.sample(&st.uuid),
        };
        match r {
            Ok(s) => Some(s),
            Err(e) => {
                TelemetrySampleFailed {
                    gpu_uuid: &st.uuid,
                    error: &e,
                }
                .emit(&self.counters);
                None
            }
        }
    }

    /// The tenant processes NVML saw busy around the runs in `rows`, as
    /// `<tenant>=<sm_pct>` ([`busy`]); `None` when NVML cannot tell.
    pub(super) fn busy_tenants(
        &self,
        st: &mut LoopState,
        rows: &[ProbeRecord],
    ) -> Option<Vec<String>> {
        if st.busy.unsupported || rows.is_empty() {
            return None;
        }
        if st
            .busy_read_at
            .is_some_and(|t| t.elapsed() < self.busy_tenants_interval)
        {
            return None;
        }
        st.busy_read_at = Some(Instant::now());
        let launch_ns = rows.iter().map(|r| r.ts_ns).min()?;
        let samples = match self
            .telemetry
            .process_activity(&st.uuid, st.busy.ask_since())
        {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::info!(gpu = %st.uuid, source = self.telemetry.name(), "per-process utilisation is not available: busy_tenants stays null on this GPU");
                st.busy.unsupported = true;
                return None;
            }
            Err(e) => {
                TelemetrySampleFailed {
                    gpu_uuid: &st.uuid,
                    error: &e,
                }
                .emit(&self.counters);
                return None;
            }
        };
        let busy = st.busy.observe(
            &samples,
            u64::try_from(launch_ns / 1000).unwrap_or(0),
            busy::unix_us(),
            busy::monotonic_us(),
        );
        Some(
            busy.into_iter()
                .map(|(pid, sm)| {
                    let who = self
                        .occupancy
                        .pod_of(pid)
                        .unwrap_or_else(|| format!("pid:{pid}"));
                    format!("{who}={sm}")
                })
                .collect(),
        )
    }
}
