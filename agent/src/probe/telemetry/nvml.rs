//! NVML telemetry through nvml-wrapper (loaded at run time; a host without
//! the driver gets a clean error from `Nvml::init`, and the agent falls back
//! to [`super::NoTelemetry`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use slicetrace_schema::DeviceFields;

use super::{DeviceSample, TelemetryError, TelemetrySource};
use crate::probe::occupancy::GpuProcess;

/// NVML-backed telemetry.
///
/// The NVML session can be let go of and opened again
/// ([`TelemetrySource::release`], [`TelemetrySource::reacquire`]): while a
/// driver is upgraded the agent must hold no handle into it (an open NVML
/// session keeps the kernel module's device files open). Readings meanwhile
/// fail with [`TelemetryError::Released`].
pub struct NvmlTelemetry {
    session: RwLock<Option<Session>>,
    /// Asks [`TelemetrySource::watch_faults`] to let go of its event sets
    /// (and its read lock on the session), so that release can shut down.
    releasing: AtomicBool,
    /// An NVML error since the last reacquire that means the driver is
    /// gone ([`driver_gone_error`]).
    gone: Mutex<Option<String>>,
    own_pid: u32,
    proc_root: PathBuf,
}

/// One NVML session: `nvmlInit` to `nvmlShutdown` (when dropped).
struct Session {
    nvml: Nvml,
    /// Device handles by UUID, looked up once: a lookup by UUID walks the
    /// devices, and it ran several times per arrival per GPU.
    handles: RwLock<HashMap<String, usize>>,
}

impl std::fmt::Debug for NvmlTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlTelemetry")
            .field("own_pid", &self.own_pid)
            .finish()
    }
}

/// `Ok(v)` → `Some(v)`; `NotSupported` (and any per-field error) → `None`.
fn opt<T>(r: Result<T, NvmlError>) -> Option<T> {
    r.ok()
}

/// Whether an NVML error means the driver itself is gone or being replaced,
/// not one GPU or one field: the kernel module is not loaded
/// (`DriverNotLoaded`), the loaded module is not the library's version (a
/// driver replaced under a running process: `LibRmVersionMismatch`), NVML
/// was shut down under us (`Uninitialized`), or its library does not load
/// (`LibloadingError`, the driver's files gone). `GpuLost` is one GPU's
/// (Xid 79) and is judged by health, not here.
pub fn driver_gone_error(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::DriverNotLoaded
            | NvmlError::LibRmVersionMismatch
            | NvmlError::Uninitialized
            | NvmlError::LibloadingError(_)
    )
}

impl NvmlTelemetry {
    /// Initialises NVML.
    pub fn new(proc_root: PathBuf) -> Result<Self, TelemetryError> {
        let nvml = Nvml::init().map_err(|e| TelemetryError::Unavailable(Box::new(e)))?;
        Ok(Self {
            session: RwLock::new(Some(Session {
                nvml,
                handles: RwLock::new(HashMap::new()),
            })),
            releasing: AtomicBool::new(false),
            gone: Mutex::new(None),
            own_pid: std::process::id(),
            proc_root,
        })
    }

    /// Notes `e` if it means the driver is gone; returns it unchanged.
    fn note(&self, e: NvmlError) -> NvmlError {
        if driver_gone_error(&e) {
            if let Ok(mut g) = self.gone.lock() {
                g.get_or_insert_with(|| e.to_string());
            }
        }
        e
    }

    /// [`opt`], noting an error that means the driver is gone.
    fn opt<T>(&self, r: Result<T, NvmlError>) -> Option<T> {
        r.map_err(|e| self.note(e)).ok()
    }

    /// Runs `f` on the device with this UUID in the open session.
    #[allow(unsafe_code)] // a cached raw device handle, see the SAFETY notes
    fn with_device<R>(
        &self,
        gpu_uuid: &str,
        f: impl FnOnce(&nvml_wrapper::Device<'_>) -> R,
    ) -> Result<R, TelemetryError> {
        let guard = self.session.read().map_err(|_| TelemetryError::Released)?;
        let Some(s) = guard.as_ref() else {
            return Err(TelemetryError::Released);
        };
        let cached = s.handles.read().ok().and_then(|m| m.get(gpu_uuid).copied());
        if let Some(h) = cached {
            // SAFETY: `h` came from `device_by_uuid` on this same session's
            // `Nvml`, whose handles stay valid until it shuts down, which is
            // when the session (and its handle cache) is dropped; the read
            // guard keeps it alive while `f` runs.
            let dev = unsafe { nvml_wrapper::Device::new(h as *mut _, &s.nvml) };
            return Ok(f(&dev));
        }
        let dev = s
            .nvml
            .device_by_uuid(gpu_uuid)
            .map_err(|e| TelemetryError::Device {
                uuid: gpu_uuid.to_string(),
                source: Box::new(self.note(e)),
            })?;
        if let Ok(mut m) = s.handles.write() {
            // SAFETY: only the handle's address is kept, see above.
            m.insert(gpu_uuid.to_string(), unsafe { dev.handle() } as usize);
        }
        Ok(f(&dev))
    }

    /// Every device field but the process list, from one device handle.
    fn device_fields(&self, dev: &nvml_wrapper::Device<'_>) -> DeviceSample {
        let util = opt(dev.utilization_rates());
        DeviceSample {
            fields: DeviceFields {
                // The one field every GPU supports: its error says whether
                // the driver is still there.
                sm_clock_mhz: self.opt(dev.clock_info(Clock::SM)),
                mem_clock_mhz: opt(dev.clock_info(Clock::Memory)),
                gpu_util_pct: util.as_ref().map(|u| u.gpu),
                mem_util_pct: util.as_ref().map(|u| u.memory),
                power_w: opt(dev.power_usage()).map(|mw| mw as f64 / 1000.0),
                temp_c: opt(dev.temperature(TemperatureSensor::Gpu)),
                throttle_reasons: opt(dev.current_throttle_reasons()).map(|r| r.bits()),
                fb_used_mib: opt(dev.memory_info()).map(|m| m.used / (1024 * 1024)),
                ..Default::default()
            },
            processes: None,
        }
    }

    /// `s`, unless nothing at all could be read.
    fn read_something(s: DeviceSample, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        if s == DeviceSample::default() {
            return Err(TelemetryError::Device {
                uuid: gpu_uuid.to_string(),
                source: "every NVML query failed".into(),
            });
        }
        Ok(s)
    }

    /// UUIDs of every device NVML sees, by index.
    pub fn device_uuids(&self) -> Vec<String> {
        let Ok(guard) = self.session.read() else {
            return Vec::new();
        };
        let Some(s) = guard.as_ref() else {
            return Vec::new();
        };
        let n = s.nvml.device_count().unwrap_or(0);
        (0..n)
            .filter_map(|i| s.nvml.device_by_index(i).ok().and_then(|d| d.uuid().ok()))
            .collect()
    }

    /// The fault watch over one session, until `stopped()` or a release is
    /// asked for (`Ok(true)`: it let go, wait for the next session).
    fn watch_session(
        &self,
        s: &Session,
        stopped: &dyn Fn() -> bool,
        on_fault: &mut dyn FnMut(super::GpuFault),
    ) -> Result<bool, TelemetryError> {
        use nvml_wrapper::bitmasks::event::EventTypes;
        use nvml_wrapper::enums::event::XidError;
        let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
        let n = s
            .nvml
            .device_count()
            .map_err(|e| TelemetryError::Unavailable(Box::new(self.note(e))))?;
        // One event set per GPU: a registration that fails frees its set,
        // so one GPU that cannot report leaves the others' sets alone.
        let mut sets = Vec::new();
        for i in 0..n {
            let Ok(d) = s.nvml.device_by_index(i) else {
                continue;
            };
            let Ok(uuid) = d.uuid() else { continue };
            let types = d.supported_event_types().map_or(wanted, |t| t & wanted);
            if types.is_empty() {
                tracing::info!(gpu = %uuid, "this GPU reports no Xid or ECC events");
                continue;
            }
            let set = match s.nvml.create_event_set() {
                Ok(s) => s,
                Err(e) => return Err(TelemetryError::Unavailable(Box::new(e))),
            };
            match d.register_events(types, set) {
                Ok(set) => sets.push((uuid, set)),
                Err(e) => {
                    tracing::warn!(gpu = %uuid, error = %e.error, "could not register for this GPU's Xid and ECC events")
                }
            }
        }
        if sets.is_empty() {
            // Nothing to wait for; still give the session back on release.
            while !stopped() {
                if self.releasing.load(Ordering::SeqCst) {
                    return Ok(true);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            return Ok(false);
        }
        let slice_ms = (1000 / sets.len() as u32).max(50);
        while !stopped() {
            for (uuid, set) in &sets {
                if self.releasing.load(Ordering::SeqCst) {
                    return Ok(true);
                }
                match set.wait(slice_ms) {
                    Ok(ev) => {
                        let gpu_uuid = ev.device.uuid().unwrap_or_else(|_| uuid.clone());
                        if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                            if let Some(XidError::Value(code)) = ev.event_data {
                                on_fault(super::GpuFault::Xid { gpu_uuid, code });
                            }
                        } else if ev.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                            on_fault(super::GpuFault::DoubleBitEcc { gpu_uuid });
                        }
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(e) => {
                        let e = self.note(e);
                        tracing::debug!(gpu = %uuid, error = %e, "waiting for NVML events failed");
                        std::thread::sleep(std::time::Duration::from_millis(slice_ms.into()));
                    }
                }
            }
        }
        Ok(false)
    }
}

impl TelemetrySource for NvmlTelemetry {
    fn watch_faults(
        &self,
        stopped: &dyn Fn() -> bool,
        on_fault: &mut dyn FnMut(super::GpuFault),
    ) -> Result<(), TelemetryError> {
        // One event set registration per NVML session: on a release the
        // sets are freed and the read lock given back, and the watch starts
        // again on the next session.
        let mut first = true;
        while !stopped() {
            let let_go = {
                let guard = self.session.read().map_err(|_| TelemetryError::Released)?;
                match guard.as_ref() {
                    Some(s) if !self.releasing.load(Ordering::SeqCst) => {
                        match self.watch_session(s, stopped, on_fault) {
                            Ok(let_go) => let_go,
                            // No events at all on the first session: say so.
                            Err(e) if first => return Err(e),
                            Err(e) => {
                                tracing::debug!(error = %e, "NVML events unavailable on this session");
                                true
                            }
                        }
                    }
                    _ => true,
                }
            };
            first = false;
            if !let_go {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(())
    }

    fn driver_gone(&self) -> Option<String> {
        self.gone.lock().ok().and_then(|g| g.clone())
    }

    fn release(&self) {
        self.releasing.store(true, Ordering::SeqCst);
        // Waits for the fault watch to give back its read lock (it checks
        // `releasing` at least once a second).
        let taken = self.session.write().ok().and_then(|mut s| s.take());
        if let Some(s) = taken {
            // Handles first, then nvmlShutdown (the session's `Nvml` drop).
            drop(s);
            tracing::info!("NVML shut down: no handle into the driver is held");
        }
    }

    fn reacquire(&self) -> Result<Option<String>, TelemetryError> {
        let mut guard = self.session.write().map_err(|_| TelemetryError::Released)?;
        if guard.is_none() {
            let nvml = Nvml::init().map_err(|e| TelemetryError::Unavailable(Box::new(e)))?;
            // A session that opens but cannot see a device is not back yet.
            if let Err(e) = nvml.device_count() {
                return Err(TelemetryError::Unavailable(Box::new(e)));
            }
            *guard = Some(Session {
                nvml,
                handles: RwLock::new(HashMap::new()),
            });
            if let Ok(mut g) = self.gone.lock() {
                *g = None;
            }
            self.releasing.store(false, Ordering::SeqCst);
        }
        let version = guard
            .as_ref()
            .and_then(|s| s.nvml.sys_driver_version().ok());
        Ok(version)
    }

    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample_after(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        self.with_device(gpu_uuid, |dev| DeviceSample {
            fields: DeviceFields {
                sm_clock_mhz: self.opt(dev.clock_info(Clock::SM)),
                throttle_reasons: opt(dev.current_throttle_reasons()).map(|r| r.bits()),
                ..Default::default()
            },
            processes: None,
        })
    }

    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        let (device, processes) = self.with_device(gpu_uuid, |dev| {
            (
                self.device_fields(dev),
                opt(dev.running_compute_processes()),
            )
        })?;
        let processes = processes.map(|ps| {
            ps.into_iter()
                .filter(|p| p.pid != self.own_pid)
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_mib: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b / (1024 * 1024)),
                        UsedGpuMemory::Unavailable => None,
                    },
                    name: std::fs::read_to_string(
                        self.proc_root.join(p.pid.to_string()).join("comm"),
                    )
                    .ok()
                    .map(|s| s.trim().to_string()),
                })
                .collect::<Vec<_>>()
        });
        Self::read_something(
            DeviceSample {
                processes,
                ..device
            },
            gpu_uuid,
        )
    }

    fn sample_device(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        let device = self.with_device(gpu_uuid, |dev| self.device_fields(dev))?;
        Self::read_something(device, gpu_uuid)
    }

    fn process_activity(
        &self,
        gpu_uuid: &str,
        since_us: u64,
    ) -> Result<Option<Vec<super::ProcessActivity>>, TelemetryError> {
        match self.with_device(gpu_uuid, |dev| dev.process_utilization_stats(since_us))? {
            Ok(samples) => Ok(Some(
                samples
                    .into_iter()
                    .filter(|s| s.pid != self.own_pid)
                    .map(|s| super::ProcessActivity {
                        pid: s.pid,
                        ts_us: s.timestamp,
                        sm_pct: s.sm_util.min(100),
                    })
                    .collect(),
            )),
            // NVML's answer when it holds no sample newer than `since_us`.
            Err(NvmlError::NotFound) => Ok(Some(Vec::new())),
            Err(NvmlError::NotSupported) | Err(NvmlError::FailedToLoadSymbol(_)) => Ok(None),
            Err(e) => Err(TelemetryError::Device {
                uuid: gpu_uuid.to_string(),
                source: Box::new(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only errors about the driver itself make the node's driver away; a
    /// lost GPU (Xid 79) or an unsupported field is that GPU's.
    #[test]
    fn only_driver_errors_mean_the_driver_is_gone() {
        for e in [
            NvmlError::DriverNotLoaded,
            NvmlError::LibRmVersionMismatch,
            NvmlError::Uninitialized,
        ] {
            assert!(driver_gone_error(&e), "{e:?}");
        }
        for e in [
            NvmlError::GpuLost,
            NvmlError::NotSupported,
            NvmlError::NotFound,
            NvmlError::Timeout,
            NvmlError::NoPermission,
        ] {
            assert!(!driver_gone_error(&e), "{e:?}");
        }
    }
}
