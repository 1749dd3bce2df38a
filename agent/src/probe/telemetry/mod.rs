//! Device telemetry, sampled on the probe thread just before and just after
//! each arrival (or burst) and joined into its rows: a row's NVML columns are
//! at most a few milliseconds older than its run, except utilisation, which
//! NVML itself averages over its own sample period (1/6 s to 1 s).
//!
//! A reading the driver does not support is `None` (a null column), never 0.
//! With no NVML (no driver, or the CPU backend) every reading is `None` and
//! the agent says so once, at start.

pub mod nvml;

use slicetrace_schema::DeviceFields;

use crate::probe::occupancy::GpuProcess;

/// Throttle ("clocks event") reason bit meaning only "the GPU is idle";
/// removed from the recorded mask because it is not a slowdown.
pub const THROTTLE_GPU_IDLE: u64 = 0x1;

/// One NVML sample of one GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSample {
    /// The readings, in the row's own struct (one definition of each NVML
    /// column). The fields that describe a whole run (`gpu_processes`,
    /// `processes`, `sm_clock_mhz_after`) stay `None` in one sample:
    /// [`BurstTelemetry::merge`] fills them from the samples around the run.
    pub fields: DeviceFields,
    /// Compute processes, the agent's own removed. `None` when unknown.
    pub processes: Option<Vec<GpuProcess>>,
}

/// One NVML per-process utilisation sample (`nvmlDeviceGetProcessUtilization`):
/// how busy one process kept the SMs over NVML's last sample period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessActivity {
    /// Process ID.
    pub pid: u32,
    /// The sample's time stamp, µs, on NVML's clock (see
    /// [`crate::probe::busy::BusyTracker`] for how it is placed).
    pub ts_us: u64,
    /// SM share the process had over the sample period, % (0–100).
    pub sm_pct: u32,
}

/// A fault the GPU reported itself (NVML events), for health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuFault {
    /// An Xid error and its code.
    Xid {
        /// GPU UUID.
        gpu_uuid: String,
        /// The Xid code (NVML's `eventData`).
        code: u64,
    },
    /// A double-bit ECC error: counted and judged as Xid 48, the Xid the
    /// driver logs for one.
    DoubleBitEcc {
        /// GPU UUID.
        gpu_uuid: String,
    },
}

impl GpuFault {
    /// The GPU and the Xid code this fault counts as.
    pub fn xid(&self) -> (&str, u64) {
        match self {
            GpuFault::Xid { gpu_uuid, code } => (gpu_uuid, *code),
            GpuFault::DoubleBitEcc { gpu_uuid } => (gpu_uuid, 48),
        }
    }
}

/// Telemetry errors.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// NVML could not be initialised.
    #[error("nvml unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The source let go of the driver ([`TelemetrySource::release`]) and
    /// has not reacquired it.
    #[error("released while the driver is away")]
    Released,
    /// The device could not be found or read at all (fallen off the bus?).
    #[error("device {uuid} unreadable")]
    Device {
        /// GPU UUID.
        uuid: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The telemetry seam.
///
/// Contract: `sample` is called on a probe thread, blocking, about twice per
/// probe cycle; it should return within a few milliseconds. A field the
/// device does not support is `None`. An `Err` means nothing could be read;
/// the caller counts it, logs it (rate-limited) and writes nulls.
pub trait TelemetrySource: Send + Sync {
    /// Name for logs (`nvml`, `none`).
    fn name(&self) -> &'static str;
    /// Samples the GPU with this UUID.
    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError>;
    /// The reading right after a run: the SM clock and throttle reasons are
    /// what matter there, so sources may read only those (cheaper than a
    /// full sample on every arrival). Defaults to a full sample.
    fn sample_after(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        self.sample(gpu_uuid)
    }
    /// A full sample without the process list, which is by far the dearest
    /// reading on a busy GPU (NVML's process query: about 230 µs of CPU on
    /// a busy H200 against 1–7 µs for each other field), so the probe loop
    /// refreshes it less often. `processes` is then `None` (not read).
    /// Defaults to a full sample.
    fn sample_device(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        self.sample(gpu_uuid)
    }
    /// NVML's per-process utilisation samples of this GPU newer than
    /// `since_us` (on NVML's clock), the agent's own process removed.
    /// `Ok(None)`: this source or GPU cannot tell (not supported); an empty
    /// list: no sample that new. Called once per arrival, after the run.
    /// Defaults to `Ok(None)`.
    fn process_activity(
        &self,
        _gpu_uuid: &str,
        _since_us: u64,
    ) -> Result<Option<Vec<ProcessActivity>>, TelemetryError> {
        Ok(None)
    }
    /// Why the driver looks gone, when a reading since the last
    /// [`Self::reacquire`] failed in a way that means the kernel module is
    /// unloaded or being replaced (NVML: `DriverNotLoaded`,
    /// `LibRmVersionMismatch`, `Uninitialized`, or its library no longer
    /// loads); `None` while it answers. A lost GPU (`GpuLost`) is that
    /// GPU's fault, not the driver's, and does not count. Defaults to
    /// `None`.
    fn driver_gone(&self) -> Option<String> {
        None
    }
    /// Lets go of every handle this source holds into the driver (NVML:
    /// the event sets and `nvmlShutdown`), so that the kernel module can be
    /// unloaded; readings fail until [`Self::reacquire`]. Idempotent; may
    /// wait up to about a second for [`Self::watch_faults`] to let go.
    /// Defaults to nothing.
    fn release(&self) {}
    /// Opens the driver again (after [`Self::release`] or a driver that went
    /// away): `Ok` with the driver's version (if the source knows it) once
    /// it answers, `Err` while it does not. While open, only reports the
    /// version. Defaults to `Ok(None)`.
    fn reacquire(&self) -> Result<Option<String>, TelemetryError> {
        Ok(None)
    }
    /// Blocks on a thread of its own (never a probe thread or the async
    /// runtime), handing the GPUs' own fault reports (NVML events: critical
    /// Xid errors, double-bit ECC errors) to `on_fault` as they come, until
    /// `stopped()` is true; it checks `stopped` at least once a second. An
    /// `Err` means no events can be had (logged once by the caller).
    /// Defaults to no events: returns at once.
    fn watch_faults(
        &self,
        _stopped: &dyn Fn() -> bool,
        _on_fault: &mut dyn FnMut(GpuFault),
    ) -> Result<(), TelemetryError> {
        Ok(())
    }
}

/// Watches the GPUs' fault reports on a thread of its own until `stop`:
/// every Xid is counted per GPU (`slicetrace_xid_errors_total`), and a
/// critical one (48, 79, 94, 95; a double-bit ECC error counts as 48)
/// makes that GPU `unhealthy` with reason `xid_<code>` for one health
/// window.
pub fn spawn_fault_watch(
    telemetry: std::sync::Arc<dyn TelemetrySource>,
    live: std::sync::Arc<crate::serve::live::LiveState>,
    counters: std::sync::Arc<crate::internal_events::Counters>,
    stop: std::sync::Arc<super::StopSignal>,
) -> Option<std::thread::JoinHandle<()>> {
    use crate::internal_events::{InternalEvent, XidReported};
    std::thread::Builder::new()
        .name("gpu-faults".into())
        .spawn(move || {
            let stopped = || stop.is_stopped();
            let mut on_fault = |f: GpuFault| {
                let (uuid, code) = f.xid();
                let critical = slicetrace_schema::Reason::for_xid(code).is_some();
                XidReported {
                    gpu_uuid: uuid,
                    code,
                    critical,
                }
                .emit(&counters);
                if critical {
                    live.record_critical_xid(uuid, code);
                }
            };
            if let Err(e) = telemetry.watch_faults(&stopped, &mut on_fault) {
                tracing::warn!(source = telemetry.name(), error = %crate::internal_events::error_chain(&e), "GPU fault events (Xid, ECC) unavailable: health learns of a lost GPU from its probes only");
            }
        })
        .ok()
}

/// No telemetry: every reading is `None`.
#[derive(Debug, Default)]
pub struct NoTelemetry;

impl TelemetrySource for NoTelemetry {
    fn name(&self) -> &'static str {
        "none"
    }
    fn sample(&self, _gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        Ok(DeviceSample::default())
    }
}

/// Drops the command names of the GPU's processes (other tenants' command
/// lines are theirs): what the agent keeps unless `process_names = true`.
/// The `processes` column then reads `pid::used_mib`, the same three fields.
pub struct WithoutProcessNames(pub std::sync::Arc<dyn TelemetrySource>);

impl TelemetrySource for WithoutProcessNames {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        Ok(Self::strip(self.0.sample(gpu_uuid)?))
    }
    fn sample_after(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        Ok(Self::strip(self.0.sample_after(gpu_uuid)?))
    }
    fn sample_device(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        Ok(Self::strip(self.0.sample_device(gpu_uuid)?))
    }
    fn watch_faults(
        &self,
        stopped: &dyn Fn() -> bool,
        on_fault: &mut dyn FnMut(GpuFault),
    ) -> Result<(), TelemetryError> {
        self.0.watch_faults(stopped, on_fault)
    }
    fn driver_gone(&self) -> Option<String> {
        self.0.driver_gone()
    }
    fn release(&self) {
        self.0.release()
    }
    fn reacquire(&self) -> Result<Option<String>, TelemetryError> {
        self.0.reacquire()
    }
    fn process_activity(
        &self,
        gpu_uuid: &str,
        since_us: u64,
    ) -> Result<Option<Vec<ProcessActivity>>, TelemetryError> {
        self.0.process_activity(gpu_uuid, since_us)
    }
}

impl WithoutProcessNames {
    fn strip(mut s: DeviceSample) -> DeviceSample {
        for p in s.processes.iter_mut().flatten() {
            p.name = None;
        }
        s
    }
}

/// The telemetry the agent runs with: names dropped unless `process_names`.
pub fn with_process_names(
    t: std::sync::Arc<dyn TelemetrySource>,
    process_names: bool,
) -> std::sync::Arc<dyn TelemetrySource> {
    if process_names {
        t
    } else {
        std::sync::Arc::new(WithoutProcessNames(t))
    }
}

/// Before/after samples of a burst merged into the values a row carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BurstTelemetry {
    /// The NVML columns of every row of the burst: the sample before it,
    /// with the SM clock after it, the OR of both samples' throttle reasons
    /// (idle bit removed) and the union of both samples' processes.
    pub fields: DeviceFields,
    /// That union of processes (by PID), for the occupancy join; `None` if
    /// neither sample knew.
    pub processes: Option<Vec<GpuProcess>>,
}

impl BurstTelemetry {
    /// Merges the two samples (either may be missing after an error).
    pub fn merge(before: Option<DeviceSample>, after: Option<DeviceSample>) -> Self {
        let throttle = match (
            before.as_ref().and_then(|s| s.fields.throttle_reasons),
            after.as_ref().and_then(|s| s.fields.throttle_reasons),
        ) {
            (None, None) => None,
            (a, b) => Some((a.unwrap_or(0) | b.unwrap_or(0)) & !THROTTLE_GPU_IDLE),
        };
        let sm_clock_mhz_after = after.as_ref().and_then(|s| s.fields.sm_clock_mhz);
        let (before_fields, before_procs) = before.map(|s| (s.fields, s.processes)).unzip();
        let processes = match (before_procs.flatten(), after.and_then(|s| s.processes)) {
            (None, None) => None,
            (a, b) => {
                let mut all = a.unwrap_or_default();
                for p in b.unwrap_or_default() {
                    if !all.iter().any(|q| q.pid == p.pid) {
                        all.push(p);
                    }
                }
                all.sort_by_key(|p| p.pid);
                Some(all)
            }
        };
        let fields = DeviceFields {
            throttle_reasons: throttle,
            sm_clock_mhz_after,
            gpu_processes: processes.as_ref().map(|p| p.len() as u32),
            processes: process_strings(processes.as_deref()),
            ..before_fields.unwrap_or_default()
        };
        BurstTelemetry { fields, processes }
    }
}

/// `pid:name:used_mib` strings for the `processes` column (name empty when
/// unknown or not kept, see [`with_process_names`]).
fn process_strings(ps: Option<&[GpuProcess]>) -> Option<Vec<String>> {
    ps.map(|ps| {
        ps.iter()
            .map(|p| {
                format!(
                    "{}:{}:{}",
                    p.pid,
                    p.name.as_deref().unwrap_or(""),
                    p.used_mib.map(|m| m.to_string()).unwrap_or_default()
                )
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(pid: u32) -> GpuProcess {
        GpuProcess {
            pid,
            used_mib: Some(10),
            name: Some("x".into()),
        }
    }

    #[test]
    fn merge_ors_throttle_without_idle_and_unions_processes() {
        let b = DeviceSample {
            fields: DeviceFields {
                throttle_reasons: Some(0x1 | 0x4),
                sm_clock_mhz: Some(1000),
                power_w: Some(300.0),
                ..Default::default()
            },
            processes: Some(vec![proc_(2)]),
        };
        let a = DeviceSample {
            fields: DeviceFields {
                throttle_reasons: Some(0x20),
                sm_clock_mhz: Some(1980),
                power_w: Some(350.0),
                ..Default::default()
            },
            processes: Some(vec![proc_(2), proc_(1)]),
        };
        let m = BurstTelemetry::merge(Some(b), Some(a));
        assert_eq!(m.fields.throttle_reasons, Some(0x24));
        assert_eq!(m.processes.as_ref().map(Vec::len), Some(2));
        assert_eq!(m.fields.gpu_processes, Some(2));
        assert_eq!(m.fields.sm_clock_mhz, Some(1000));
        // The row's readings are the sample before the run.
        assert_eq!(m.fields.power_w, Some(300.0));
        assert_eq!(m.fields.sm_clock_mhz_after, Some(1980));
        assert_eq!(m.fields.processes.expect("some")[0], "1:x:10");
    }

    #[test]
    fn process_names_are_dropped_unless_asked_for() {
        struct One;
        impl TelemetrySource for One {
            fn name(&self) -> &'static str {
                "one"
            }
            fn sample(&self, _: &str) -> Result<DeviceSample, TelemetryError> {
                Ok(DeviceSample {
                    processes: Some(vec![proc_(7)]),
                    ..Default::default()
                })
            }
        }
        let strings = |names: bool| {
            let t = with_process_names(std::sync::Arc::new(One), names);
            BurstTelemetry::merge(t.sample("GPU-a").ok(), None)
                .fields
                .processes
                .expect("some")
        };
        assert_eq!(strings(false), ["7::10"]);
        assert_eq!(strings(true), ["7:x:10"]);
    }

    #[test]
    fn absent_stays_absent() {
        let m = BurstTelemetry::merge(Some(DeviceSample::default()), None);
        assert_eq!(m.fields, DeviceFields::default());
        assert_eq!(m.processes, None);
    }
}
