//! NVML telemetry through nvml-wrapper (loaded at run time; a host without
//! the driver gets a clean error from `Nvml::init`, and the agent falls back
//! to [`super::NoTelemetry`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{DeviceSample, TelemetryError, TelemetrySource};
use crate::probe::occupancy::GpuProcess;

/// NVML-backed telemetry.
pub struct NvmlTelemetry {
    nvml: Nvml,
    own_pid: u32,
    proc_root: PathBuf,
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

impl NvmlTelemetry {
    /// Initialises NVML.
    pub fn new(proc_root: PathBuf) -> Result<Self, TelemetryError> {
        let nvml = Nvml::init().map_err(|e| TelemetryError::Unavailable(Box::new(e)))?;
        Ok(Self {
            nvml,
            own_pid: std::process::id(),
            proc_root,
            handles: RwLock::new(HashMap::new()),
        })
    }

    #[allow(unsafe_code)] // a cached raw device handle, see the SAFETY notes
    fn device(&self, gpu_uuid: &str) -> Result<nvml_wrapper::Device<'_>, TelemetryError> {
        let cached = self
            .handles
            .read()
            .ok()
            .and_then(|m| m.get(gpu_uuid).copied());
        if let Some(h) = cached {
            // SAFETY: `h` came from `device_by_uuid` on this same `Nvml`,
            // whose handles stay valid until it shuts down, which is when
            // `self` (and every borrow of it) is dropped.
            return Ok(unsafe { nvml_wrapper::Device::new(h as *mut _, &self.nvml) });
        }
        let dev = self
            .nvml
            .device_by_uuid(gpu_uuid)
            .map_err(|e| TelemetryError::Device {
                uuid: gpu_uuid.to_string(),
                source: Box::new(e),
            })?;
        if let Ok(mut m) = self.handles.write() {
            // SAFETY: only the handle's address is kept, see above.
            m.insert(gpu_uuid.to_string(), unsafe { dev.handle() } as usize);
        }
        Ok(dev)
    }

    /// Every device field but the process list, from one device handle.
    fn device_fields(dev: &nvml_wrapper::Device<'_>) -> DeviceSample {
        let util = opt(dev.utilization_rates());
        DeviceSample {
            sm_clock_mhz: opt(dev.clock_info(Clock::SM)),
            mem_clock_mhz: opt(dev.clock_info(Clock::Memory)),
            gpu_util_pct: util.as_ref().map(|u| u.gpu),
            mem_util_pct: util.as_ref().map(|u| u.memory),
            power_w: opt(dev.power_usage()).map(|mw| mw as f64 / 1000.0),
            temp_c: opt(dev.temperature(TemperatureSensor::Gpu)),
            throttle_reasons: opt(dev.current_throttle_reasons()).map(|r| r.bits()),
            fb_used_mib: opt(dev.memory_info()).map(|m| m.used / (1024 * 1024)),
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
        let n = self.nvml.device_count().unwrap_or(0);
        (0..n)
            .filter_map(|i| {
                self.nvml
                    .device_by_index(i)
                    .ok()
                    .and_then(|d| d.uuid().ok())
            })
            .collect()
    }
}

impl TelemetrySource for NvmlTelemetry {
    fn watch_faults(
        &self,
        stopped: &dyn Fn() -> bool,
        on_fault: &mut dyn FnMut(super::GpuFault),
    ) -> Result<(), TelemetryError> {
        use nvml_wrapper::bitmasks::event::EventTypes;
        use nvml_wrapper::enums::event::XidError;
        use nvml_wrapper::error::NvmlError;
        let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
        let n = self
            .nvml
            .device_count()
            .map_err(|e| TelemetryError::Unavailable(Box::new(e)))?;
        // One event set per GPU: a registration that fails frees its set,
        // so one GPU that cannot report leaves the others' sets alone.
        let mut sets = Vec::new();
        for i in 0..n {
            let Ok(d) = self.nvml.device_by_index(i) else {
                continue;
            };
            let Ok(uuid) = d.uuid() else { continue };
            let types = d.supported_event_types().map_or(wanted, |t| t & wanted);
            if types.is_empty() {
                tracing::info!(gpu = %uuid, "this GPU reports no Xid or ECC events");
                continue;
            }
            let set = match self.nvml.create_event_set() {
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
            return Ok(());
        }
        let slice_ms = (1000 / sets.len() as u32).max(50);
        while !stopped() {
            for (uuid, set) in &sets {
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
                        tracing::debug!(gpu = %uuid, error = %e, "waiting for NVML events failed");
                        std::thread::sleep(std::time::Duration::from_millis(slice_ms.into()));
                    }
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample_after(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        let dev = self.device(gpu_uuid)?;
        Ok(DeviceSample {
            sm_clock_mhz: opt(dev.clock_info(Clock::SM)),
            throttle_reasons: opt(dev.current_throttle_reasons()).map(|r| r.bits()),
            ..Default::default()
        })
    }

    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        let dev = self.device(gpu_uuid)?;
        let device = Self::device_fields(&dev);
        let processes = opt(dev.running_compute_processes()).map(|ps| {
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
        let device = Self::device_fields(&self.device(gpu_uuid)?);
        Self::read_something(device, gpu_uuid)
    }

    fn process_activity(
        &self,
        gpu_uuid: &str,
        since_us: u64,
    ) -> Result<Option<Vec<super::ProcessActivity>>, TelemetryError> {
        let dev = self.device(gpu_uuid)?;
        match dev.process_utilization_stats(since_us) {
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
