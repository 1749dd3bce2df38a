//! Opening what the probe threads run on: one backend per GPU (or CPU
//! pseudo-device), each with its own probe spec and its own way to reopen,
//! and the telemetry source that matches them.
//!
//! One GPU is one [`open_gpu`] call that returns a `Result`, so a GPU whose
//! backend does not open is that GPU's state, not the whole node's: it
//! still gets its probe thread, which registers it down (`open_failed`) and
//! keeps trying to open it with backoff ([`crate::probe::lifecycle`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use slicetrace_probe::cuda::ContextKind;
use slicetrace_probe::{BackendKind, ProbeBackend, ProbeError, ProbeSpec};
use slicetrace_schema::Backend;

use crate::config::Config;
use crate::internal_events::error_chain;
use crate::probe::telemetry::nvml::NvmlTelemetry;
use crate::probe::telemetry::{NoTelemetry, TelemetrySource};
use crate::probe::Reopen;
use crate::serve::live::{GpuEntry, LiveState};

/// One probed device: its identity, its backend if it opened, the spec it
/// runs (computed once per backend kind), and how to open it (again).
pub struct Gpu {
    /// Device index.
    pub index: u32,
    /// Its UUID (a placeholder such as `GPU-index-1` for a GPU that did
    /// not open and whose UUID NVML did not give).
    pub uuid: String,
    /// Product name, when known.
    pub name: Option<String>,
    /// The backend kind probing it (or that failed to open).
    pub kind: Backend,
    /// The open backend; `None` when it failed to open at start.
    pub backend: Option<Box<dyn ProbeBackend>>,
    /// Why it failed to open at start.
    pub open_error: Option<String>,
    /// The probe spec this backend runs (kernel sizes, wait, burst runs).
    pub spec: ProbeSpec,
    /// Opens the backend (again): after repeated failures, a hang, or a
    /// failed open at start; `None` never reopens.
    pub reopen: Option<Reopen>,
}

impl Gpu {
    /// A backend that was opened elsewhere (tests, tools): its spec is the
    /// config's spec for the backend's kind, and it never reopens.
    pub fn opened(backend: Box<dyn ProbeBackend>, config: &Config) -> Self {
        let d = backend.device().clone();
        let spec = config.probe_spec(d.backend.as_str());
        Self {
            index: d.index,
            uuid: d.uuid,
            name: d.name,
            kind: d.backend,
            backend: Some(backend),
            open_error: None,
            spec,
            reopen: None,
        }
    }

    /// A device whose backend did not open (yet): its thread registers it
    /// down (`open_failed`) and opens it through `reopen` with backoff.
    pub fn unopened(
        index: u32,
        uuid: &str,
        kind: Backend,
        spec: ProbeSpec,
        error: String,
        reopen: Option<Reopen>,
    ) -> Self {
        Self {
            index,
            uuid: uuid.to_string(),
            name: None,
            kind,
            backend: None,
            open_error: Some(error),
            spec,
            reopen,
        }
    }
}

/// How to open device `index` of `kind` with `spec` (on the probe thread's
/// runner, with the watchdog's open deadline).
///
/// A CUDA backend gets a context of its own (`cuCtxCreate`,
/// [`ContextKind::Own`]), never the device's primary context: a backend
/// abandoned with a hung run keeps its context until the run ends, and a
/// replacement opened in that same context would wait for it (opening
/// loads modules and kernels, which waits for the context to go idle), so
/// the GPU could not probe again before the hang ended. Only if a context
/// of its own cannot be created (an old driver, or a GPU in
/// exclusive-process mode) does it fall back to the primary context.
pub fn opener(kind: Backend, index: u32, spec: &ProbeSpec) -> Reopen {
    let spec = *spec;
    std::sync::Arc::new(move || -> Result<Box<dyn ProbeBackend>, ProbeError> {
        Ok(match kind {
            Backend::Cuda => Box::new(open_cuda(index, &spec)?),
            _ => Box::new(slicetrace_probe::cpu::CpuBackend::new(index, &spec)?),
        })
    })
}

/// A CUDA backend in a context of its own, else in the primary context.
fn open_cuda(
    index: u32,
    spec: &ProbeSpec,
) -> Result<slicetrace_probe::cuda::CudaBackend, ProbeError> {
    use slicetrace_probe::cuda::CudaBackend;
    match CudaBackend::new_in(index, spec, ContextKind::Own) {
        Ok(b) => Ok(b),
        Err(e @ (ProbeError::LibraryMissing { .. } | ProbeError::BadIndex { .. })) => Err(e),
        Err(e) => {
            tracing::warn!(device = index, error = %error_chain(&e), "could not open the GPU in a context of its own; using the device's primary context (a hung run then blocks its replacement until the run ends)");
            CudaBackend::new_in(index, spec, ContextKind::Primary)
        }
    }
}

/// Opens one device's backend of `kind` (`Cuda` or `Cpu`) with `spec`. A
/// CUDA backend gets a reopen function with the same spec.
pub fn open_gpu(kind: Backend, index: u32, spec: &ProbeSpec) -> Result<Gpu, ProbeError> {
    let open = opener(kind, index, spec);
    let backend = open()?;
    let d = backend.device().clone();
    Ok(Gpu {
        index,
        uuid: d.uuid,
        name: d.name,
        kind,
        backend: Some(backend),
        open_error: None,
        spec: *spec,
        reopen: Some(open),
    })
}

/// Opens every configured device: CUDA GPUs (`auto` falls back to the CPU
/// backend when CUDA does not start), or CPU pseudo-devices. With
/// `backend = "cuda"` a GPU that does not open is registered down in `live`
/// (`slicetrace_backend_up 0`, failing `/readyz`) and the others run.
pub fn open_gpus(config: &Config, live: &LiveState) -> Result<Vec<Gpu>> {
    let wanted = |i: &u32| config.devices.is_empty() || config.devices.contains(i);
    let open_cpu = || -> Result<Vec<Gpu>> {
        let spec = config.probe_spec(Backend::Cpu.as_str());
        (0..config.cpu_devices.max(1))
            .filter(wanted)
            .map(|i| open_gpu(Backend::Cpu, i, &spec).map_err(|e| anyhow::anyhow!(error_chain(&e))))
            .collect::<Result<_>>()
            .context("no probe backend could be opened")
    };
    let gpus = match config.backend {
        BackendKind::Cpu => open_cpu()?,
        kind => {
            let spec = config.probe_spec(Backend::Cuda.as_str());
            let opened = slicetrace_probe::cuda_device_count().and_then(|n| {
                if n == 0 {
                    return Err(ProbeError::NoDevice);
                }
                Ok((0..n)
                    .filter(wanted)
                    .map(|i| (i, open_gpu(Backend::Cuda, i, &spec)))
                    .collect::<Vec<_>>())
            });
            match (kind, opened) {
                (BackendKind::Auto, Err(e)) => fall_back(&e, live, open_cpu)?,
                (BackendKind::Auto, Ok(tries)) if tries.iter().all(|(_, r)| r.is_err()) => {
                    match tries.into_iter().find_map(|(_, r)| r.err()) {
                        Some(e) => fall_back(&e, live, open_cpu)?,
                        None => Vec::new(),
                    }
                }
                (_, Ok(tries)) => {
                    // A GPU that did not open keeps its thread, which
                    // retries it; NVML names it meanwhile where it can.
                    let uuids = if tries.iter().any(|(_, r)| r.is_err()) {
                        NvmlTelemetry::new(config.occupancy.proc_root.clone())
                            .map(|t| t.device_uuids())
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let mut gpus = Vec::new();
                    for (i, r) in tries {
                        match r {
                            Ok(g) => gpus.push(g),
                            Err(e) => {
                                let uuid = uuids
                                    .get(i as usize)
                                    .cloned()
                                    .unwrap_or_else(|| format!("GPU-index-{i}"));
                                gpus.push(Gpu::unopened(
                                    i,
                                    &uuid,
                                    Backend::Cuda,
                                    spec,
                                    error_chain(&e),
                                    Some(opener(Backend::Cuda, i, &spec)),
                                ));
                            }
                        }
                    }
                    gpus
                }
                // `backend = "cuda"` (the DaemonSet): a GPU node whose CUDA
                // does not start keeps serving /metrics with
                // slicetrace_backend_up 0 and a failing /readyz, instead of
                // probing the CPU or crash-looping without saying why.
                (_, Err(e)) => {
                    let uuids = NvmlTelemetry::new(config.occupancy.proc_root.clone())
                        .map(|t| t.device_uuids())
                        .unwrap_or_default();
                    let uuids: Vec<(u32, String)> = if uuids.is_empty() {
                        vec![(0, "GPU-unknown".to_string())]
                    } else {
                        (0u32..).zip(uuids).collect()
                    };
                    register_down(live, &uuids, &e);
                    return Ok(Vec::new());
                }
            }
        }
    };
    anyhow::ensure!(
        !gpus.is_empty() || config.backend == BackendKind::Cuda,
        "no device left to probe (devices = {:?})",
        config.devices
    );
    for g in &gpus {
        match &g.open_error {
            None => {
                tracing::info!(index = g.index, uuid = %g.uuid, name = g.name.as_deref().unwrap_or(""), backend = %g.kind, "probing device")
            }
            Some(e) => {
                tracing::error!(index = g.index, uuid = %g.uuid, backend = %g.kind, reason = %e, "GPU backend failed to open: this GPU is unhealthy (open_failed) and retried with backoff; the others probe on")
            }
        }
    }
    Ok(gpus)
}

/// `backend = "auto"` without CUDA: the CPU backend, and the reason kept
/// for `/metrics`.
fn fall_back(
    reason: &ProbeError,
    live: &LiveState,
    open_cpu: impl FnOnce() -> Result<Vec<Gpu>>,
) -> Result<Vec<Gpu>> {
    let why = error_chain(reason);
    tracing::warn!(reason = %why, "CUDA unavailable: falling back to the CPU backend (backend = \"auto\"; set backend = \"cuda\" on GPU nodes)");
    if let Ok(mut f) = live.backend_fallback.write() {
        *f = Some(why);
    }
    open_cpu()
}

/// Registers GPUs whose CUDA backend did not open as down.
fn register_down(live: &LiveState, gpus: &[(u32, String)], reason: &ProbeError) {
    let why = error_chain(reason);
    for (index, uuid) in gpus {
        tracing::error!(gpu = %uuid, backend = "cuda", reason = %why, "CUDA backend failed to open: CUDA does not start on this node, no GPU probed; /readyz fails until the agent restarts with working CUDA");
        let mut e = GpuEntry::new(*index, None, "cuda");
        e.down = Some(why.clone());
        live.register_gpu(uuid, e);
    }
}

/// NVML on CUDA devices; none on the CPU backend (its columns are null).
pub fn telemetry_for(config: &Config, gpus: &[Gpu]) -> Arc<dyn TelemetrySource> {
    let on_cuda = gpus.iter().all(|g| g.kind == Backend::Cuda);
    if !on_cuda {
        tracing::info!("CPU backend: no NVML, so NVML columns are null");
        return Arc::new(NoTelemetry);
    }
    match NvmlTelemetry::new(config.occupancy.proc_root.clone()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "NVML unavailable: NVML columns will be null");
            Arc::new(NoTelemetry)
        }
    }
}
