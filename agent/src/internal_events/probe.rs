//! Events of the probe loop: runs and cycles completed, failed runs, wrong
//! answers and failed NVML samples.

use super::{error_chain, Counters, InternalEvent};

/// Probe runs completed on one GPU (rows produced).
#[derive(Debug)]
pub struct ProbeRunsCompleted<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
    /// Runs (rows) completed.
    pub runs: u64,
}

impl InternalEvent for ProbeRunsCompleted<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_runs"];
    fn emit(self, c: &Counters) {
        Counters::add(&c.probe_runs, self.runs);
        Counters::add(&c.gpu(self.gpu_uuid).probe_runs, self.runs);
    }
}

/// A probe cycle (or arrival) completed without a backend error.
#[derive(Debug)]
pub struct ProbeCycleCompleted;

impl InternalEvent for ProbeCycleCompleted {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_cycles"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.probe_cycles);
    }
}

/// A probe burst failed with a backend error. Logged on the first failure
/// of a streak and then at most once a minute per GPU.
#[derive(Debug)]
pub struct ProbeRunFailed<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
    /// Consecutive failures, this one included.
    pub failures: u32,
    /// The error, as [`error_chain`] formats it.
    pub error: &'a str,
}

impl InternalEvent for ProbeRunFailed<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_errors"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        Counters::inc(&c.probe_errors);
        Counters::inc(&gpu.probe_errors);
        if gpu.probe_error_log.allow() || self.failures == 1 {
            tracing::error!(gpu = %self.gpu_uuid, failures = self.failures, error = %self.error, "probe run failed; GPU marked unhealthy, retrying with backoff");
        }
    }
}

/// The watchdog gave up on a run past its deadline: the GPU is `hung`, its
/// backend and context are abandoned and a new one is opened. Always
/// logged (an operator must look at the GPU).
#[derive(Debug)]
pub struct ProbeRunHung<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
    /// The deadline the run missed.
    pub deadline: std::time::Duration,
}

impl InternalEvent for ProbeRunHung<'_> {
    // Also moves the slicetrace_probe_backends_parked gauge.
    const METRICS: &'static [&'static str] = &["slicetrace_probe_hangs"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        Counters::inc(&gpu.probe_hangs);
        // Parked until its run returns ([`ParkedBackendReleased`]).
        Counters::inc(&gpu.backends_parked);
        tracing::error!(gpu = %self.gpu_uuid, deadline_ms = self.deadline.as_millis() as u64, "probe run past its deadline: GPU marked unhealthy (hung), its context abandoned; reopening without a reset");
    }
}

/// A backend abandoned with a hung run was released with its context,
/// once the run returned. Always logged.
#[derive(Debug)]
pub struct ParkedBackendReleased<'a> {
    /// The GPU.
    pub gpu_uuid: &'a str,
    /// How long it was parked.
    pub parked: std::time::Duration,
}

impl InternalEvent for ParkedBackendReleased<'_> {
    // Also moves the slicetrace_probe_backends_parked gauge.
    const METRICS: &'static [&'static str] = &["slicetrace_probe_backends_released"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        let _ = gpu.backends_parked.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        Counters::inc(&gpu.backends_released);
        tracing::info!(gpu = %self.gpu_uuid, parked_ms = self.parked.as_millis() as u64, "the abandoned backend's hung run returned: its context is released");
    }
}

/// The agent let go of the driver: every CUDA context it could release and
/// every NVML handle, for a driver upgrade (the node label) or because NVML
/// said the driver is gone. Logged once per release.
#[derive(Debug)]
pub struct DriverReleased<'a> {
    /// Why (the label's state, or NVML's error).
    pub why: &'a str,
}

impl InternalEvent for DriverReleased<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_driver_releases"];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.driver_releases);
        tracing::warn!(why = %self.why, "letting go of the driver: NVML shut down and every GPU's CUDA context released; GPUs are unknown (driver_upgrade) until the driver answers again");
    }
}

/// NVML answers again after the agent let go of the driver (or for the
/// first time). A version unlike the last one is counted and logged.
#[derive(Debug)]
pub struct DriverAnswered<'a> {
    /// The version NVML reports, if it says.
    pub version: Option<&'a str>,
    /// Whether this follows a release (else it is the first answer).
    pub after_release: bool,
}

impl InternalEvent for DriverAnswered<'_> {
    // Also sets the version slicetrace_driver_info shows.
    const METRICS: &'static [&'static str] = &["slicetrace_driver_changes"];
    fn emit(self, c: &Counters) {
        let Some(v) = self.version else {
            if self.after_release {
                tracing::info!("the driver answers again: reopening every GPU");
            }
            return;
        };
        let before = c
            .driver_version
            .lock()
            .ok()
            .and_then(|mut d| d.replace(v.to_string()));
        match before.as_deref() {
            Some(b) if b != v => {
                Counters::inc(&c.driver_changes);
                tracing::warn!(from = %b, to = %v, "the driver answers again with a new version: reopening every GPU");
            }
            _ if self.after_release => {
                tracing::info!(version = %v, "the driver answers again: reopening every GPU")
            }
            _ => {}
        }
    }
}

/// Opening a GPU's backend failed (at start or on a retry). Logged on the
/// first failure of a streak and then at most once a minute per GPU.
#[derive(Debug)]
pub struct GpuOpenFailed<'a> {
    /// The GPU (as registered).
    pub gpu_uuid: &'a str,
    /// Consecutive failed attempts, this one included.
    pub attempts: u32,
    /// Why.
    pub error: &'a str,
    /// When the next attempt is.
    pub retry_in: std::time::Duration,
}

impl InternalEvent for GpuOpenFailed<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_gpu_open_failures"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        Counters::inc(&gpu.open_failures);
        if gpu.open_error_log.allow() || self.attempts == 1 {
            tracing::error!(gpu = %self.gpu_uuid, attempts = self.attempts, retry_in_ms = self.retry_in.as_millis() as u64, error = %self.error, "GPU backend failed to open: this GPU is not probed (the others are), retrying with backoff");
        }
    }
}

/// NVML reported an Xid error for a GPU; every one is counted and logged.
#[derive(Debug)]
pub struct XidReported<'a> {
    /// The GPU.
    pub gpu_uuid: &'a str,
    /// The Xid code.
    pub code: u64,
    /// Whether it means a lost or wedged GPU (48, 79, 94, 95).
    pub critical: bool,
}

impl InternalEvent for XidReported<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_xid_errors"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        if let Ok(mut m) = gpu.xids.lock() {
            *m.entry(self.code).or_default() += 1;
        }
        if self.critical {
            tracing::error!(gpu = %self.gpu_uuid, xid = self.code, "critical Xid: GPU marked unhealthy");
        } else {
            tracing::warn!(gpu = %self.gpu_uuid, xid = self.code, "Xid reported by NVML");
        }
    }
}

/// A probe run's output failed its correctness check. Not logged here: the
/// health evaluator reports it in the verdict.
#[derive(Debug)]
pub struct CorrectnessCheckFailed<'a> {
    /// The GPU probed.
    pub gpu_uuid: &'a str,
}

impl InternalEvent for CorrectnessCheckFailed<'_> {
    // `slicetrace_correctness_failures` is rendered from the health window
    // (per kernel), not from these counters.
    const METRICS: &'static [&'static str] = &[];
    fn emit(self, c: &Counters) {
        Counters::inc(&c.correctness_failures);
        Counters::inc(&c.gpu(self.gpu_uuid).correctness_failures);
    }
}

/// An NVML sample failed; logged at most once a minute per GPU.
#[derive(Debug)]
pub struct TelemetrySampleFailed<'a> {
    /// The GPU sampled.
    pub gpu_uuid: &'a str,
    /// Why.
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for TelemetrySampleFailed<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_telemetry_errors"];
    fn emit(self, c: &Counters) {
        let gpu = c.gpu(self.gpu_uuid);
        Counters::inc(&c.telemetry_errors);
        Counters::inc(&gpu.telemetry_errors);
        if gpu.telemetry_log.allow() {
            tracing::warn!(gpu = %self.gpu_uuid, error = %error_chain(self.error), "telemetry sample failed; NVML columns are null for this run");
        }
    }
}

/// CPU time a GPU's probe thread spent in one stage of an arrival (its own
/// thread clock, read between stages): counted, never logged (the thread
/// logs its totals when it stops).
#[derive(Debug)]
pub struct ProbeThreadCpuUsed<'a> {
    /// The GPU whose probe thread it is.
    pub gpu_uuid: &'a str,
    /// The stage the time is charged to.
    pub stage: Stage,
    /// CPU time used.
    pub cpu: std::time::Duration,
}

impl InternalEvent for ProbeThreadCpuUsed<'_> {
    const METRICS: &'static [&'static str] = &["slicetrace_probe_thread_cpu_seconds"];
    fn emit(self, c: &Counters) {
        let ns = u64::try_from(self.cpu.as_nanos()).unwrap_or(u64::MAX);
        Counters::add(
            &c.gpu(self.gpu_uuid).probe_thread_cpu_ns[self.stage.index()],
            ns,
        );
    }
}

/// The stages of one arrival, in the order they run (and of
/// [`Stage::ALL`], whose index is the discriminant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Sleeping for the gap and the loop's own bookkeeping.
    Wait,
    /// NVML readings before and after the run.
    Telemetry,
    /// The run: graph launch, waiting for completion, the check.
    Run,
    /// Occupancy snapshot, the join into a row, ids, the fan-out.
    Publish,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 4] = [Stage::Wait, Stage::Telemetry, Stage::Run, Stage::Publish];

    /// Position in [`Stage::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Wait => "wait",
            Stage::Telemetry => "telemetry",
            Stage::Run => "run",
            Stage::Publish => "publish",
        }
    }
}
