//! Faults injected through the agent's seams, with the whole agent running
//! (`agent::run` with [`AgentParts`]): NVML failing (`TelemetrySource`), a
//! GPU failing mid-run (`ProbeBackend`), and the Kubernetes API down or
//! answering 410 (the real occupancy sources against
//! `tests/k8s_api_server.py`). Rows are read back from the Parquet sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod occupancy_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use occupancy_support::{capture_logs, python, wait_until, AgentTask, FakeApi, LogBuf};
use slicetrace_agent::agent::{Agent, BackendFactory, RunReport};
use slicetrace_agent::config::Config;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::{NoOccupancy, OccupancySource};
use slicetrace_agent::probe::telemetry::{DeviceSample, TelemetryError, TelemetrySource};
use slicetrace_agent::serve::live::LiveState;
use slicetrace_e2e::testkit::{Faults, FaultyBackend};
use slicetrace_probe::cpu::CpuBackend;
use slicetrace_probe::{Kernel, ProbeBackend};
use slicetrace_schema::Verdict;
use slicetrace_schema::{DeviceFields, ProbeRecord};

// The tests share one log capture (the process's tracing subscriber) and
// run side by side: a test reads only the lines that name its own fault
// (the telemetry cases tag their injected error), never a count of lines
// any test could write.

/// A fast, small CPU probe; Parquet files every 300 ms; verdicts every 100 ms.
fn config(data: &Path, node: &str, extra: &str) -> Config {
    occupancy_support::fast_agent_config(data, node, "", extra)
}

fn cpu(index: u32, cfg: &Config) -> CpuBackend {
    CpuBackend::new(index, &cfg.probe_spec("cpu")).expect("cpu backend")
}

/// A running agent and what the test inspects.
struct Running {
    agent: AgentTask,
    counters: Arc<Counters>,
    live: Arc<LiveState>,
    data: PathBuf,
}

fn start(
    cfg: Config,
    backends: Vec<Box<dyn ProbeBackend>>,
    factory: Option<BackendFactory>,
    telemetry: Arc<dyn TelemetrySource>,
    occupancy: Option<Arc<dyn OccupancySource>>,
) -> Running {
    let data = cfg.data_dir.clone();
    let mut agent = Agent::new(cfg, backends, telemetry);
    if let Some(f) = factory {
        agent = agent.reopen_with(f);
    }
    agent.occupancy = occupancy;
    let (counters, live) = (agent.counters.clone(), agent.live.clone());
    Running {
        agent: AgentTask::spawn(agent, |_| {}),
        counters,
        live,
        data,
    }
}

impl Running {
    async fn stop(self) -> RunReport {
        self.agent.stop().await
    }
}

/// Every probe row in the visible Parquet files under `data`, by time.
fn read_rows(data: &Path) -> Vec<ProbeRecord> {
    slicetrace_e2e::probe_rows(data)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The log written since `from` (a byte offset of the capture).
fn log_since(logs: &LogBuf, from: usize) -> String {
    logs.text().get(from..).unwrap_or_default().to_string()
}

// ------------------------------------------------------------ telemetry ----

/// NVML that answers for the first `ok_for` samples and then fails every
/// call, as a GPU fallen off the bus does. Its error names `tag`, so a test
/// finds its own log lines among those of the tests beside it.
struct FaultyTelemetry {
    calls: AtomicU64,
    ok_for: u64,
    tag: String,
}

impl TelemetrySource for FaultyTelemetry {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.ok_for {
            return Ok(DeviceSample {
                fields: DeviceFields {
                    sm_clock_mhz: Some(1980),
                    temp_c: Some(41),
                    power_w: Some(123.0),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        Err(TelemetryError::Device {
            uuid: gpu_uuid.to_string(),
            source: format!("injected ({}): GPU has fallen off the bus", self.tag).into(),
        })
    }
}

async fn telemetry_case(ok_for: u64) {
    let tag = format!("telemetry case ok_for={ok_for}");
    let logs = capture_logs();
    let from = logs.text().len();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), "telemetry", "");
    let backends: Vec<Box<dyn ProbeBackend>> = vec![Box::new(cpu(0, &cfg))];
    let tel = Arc::new(FaultyTelemetry {
        calls: AtomicU64::new(0),
        ok_for,
        tag: tag.clone(),
    });
    let a = start(cfg, backends, None, tel, Some(Arc::new(NoOccupancy)));
    let counters = a.counters.clone();
    wait_until("failing samples", || {
        Counters::get(&counters.telemetry_errors) >= 100
    })
    .await;
    let data = a.data.clone();
    a.stop().await;

    let rows = read_rows(&data);
    let with: Vec<&ProbeRecord> = rows
        .iter()
        .filter(|r| r.device.sm_clock_mhz.is_some())
        .collect();
    let without: Vec<&ProbeRecord> = rows
        .iter()
        .filter(|r| r.device.sm_clock_mhz.is_none())
        .collect();
    assert!(
        without.len() >= 50,
        "rows keep coming while NVML fails: {} rows without NVML",
        without.len()
    );
    // Absent is null, never 0, and nothing from an earlier sample leaks in.
    assert!(without.iter().all(|r| r.device.temp_c.is_none()
        && r.device.power_w.is_none()
        && r.device.throttle_reasons.is_none()));
    if ok_for == 0 {
        assert!(
            with.is_empty(),
            "NVML never answered, yet {} rows have a clock",
            with.len()
        );
    } else {
        assert!(with
            .iter()
            .all(|r| r.device.sm_clock_mhz == Some(1980) && r.device.temp_c == Some(41)));
        assert!(!with.is_empty());
        // Once NVML fails for good, every later row is null.
        let first_null = without.first().expect("null rows").ts_ns;
        assert!(
            with.iter().all(|r| r.ts_ns < first_null),
            "a row after the failure has NVML values"
        );
    }
    let errors = Counters::get(&counters.telemetry_errors);
    assert!(
        errors >= without.len() as u64,
        "{errors} telemetry errors for {} null rows",
        without.len()
    );
    let log = log_since(&logs, from);
    let warned = log
        .lines()
        .filter(|l| l.contains("telemetry sample failed; NVML columns are null"))
        .filter(|l| l.contains(&tag))
        .count();
    assert_eq!(
        warned, 1,
        "the reason is logged once a minute, not per sample:\n{log}"
    );
    assert!(
        log.contains(&format!("injected ({tag}): GPU has fallen off the bus")),
        "the log line carries the cause:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_failing_from_the_start_gives_null_columns_and_one_logged_reason() {
    telemetry_case(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_failing_mid_run_turns_later_rows_null_and_probing_goes_on() {
    telemetry_case(40).await;
}

// -------------------------------------------------------------- backend ----

fn verdict(live: &LiveState, uuid: &str) -> Option<(Verdict, String)> {
    live.read_kernel(uuid, Kernel::Fft, |h| (h.verdict, h.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_gpu_is_unhealthy_retried_with_backoff_reopened_and_recovers_while_the_other_probes_on(
) {
    let logs = capture_logs();
    let from = logs.text().len();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), "backend", "");
    let interval = Duration::from_millis(cfg.probe.interval_ms);
    let faults: Vec<Arc<Faults>> = (0..2).map(|_| Arc::new(Faults::default())).collect();
    let backends: Vec<Box<dyn ProbeBackend>> = (0..2)
        .map(|i| FaultyBackend::wrap(Box::new(cpu(i, &cfg)), faults[i as usize].clone()))
        .collect();
    let spec = cfg.probe_spec("cpu");
    let fs = faults.clone();
    let factory: BackendFactory = Arc::new(move |i| {
        let fault = fs[i as usize].clone();
        fault.reopened.fetch_add(1, Ordering::SeqCst);
        CpuBackend::new(i, &spec).map(|b| FaultyBackend::wrap(Box::new(b), fault))
    });
    let a = start(
        cfg,
        backends,
        Some(factory),
        Arc::new(slicetrace_agent::probe::telemetry::NoTelemetry),
        Some(Arc::new(NoOccupancy)),
    );
    let (good, bad) = (faults[0].clone(), faults[1].clone());
    wait_until("both GPUs probing", || {
        good.ok_runs.load(Ordering::SeqCst) >= 20 && bad.ok_runs.load(Ordering::SeqCst) >= 20
    })
    .await;
    let live = a.live.clone();
    // CPU pseudo-GPUs have no SM clock and no SKU reference: their speed is
    // `unknown`, but nothing is wrong with them yet.
    wait_until("verdicts without a fault", || {
        verdict(&live, "CPU-1").is_some_and(|v| v.0 == Verdict::Unknown)
    })
    .await;

    // GPU 1 is lost.
    let good_before = good.ok_runs.load(Ordering::SeqCst);
    let fail_ns = now_ns();
    bad.fail.store(true, Ordering::SeqCst);
    wait_until("six failed attempts", || {
        bad.failed_at.lock().unwrap().len() >= 6
    })
    .await;
    wait_until("GPU 1 unhealthy", || {
        verdict(&live, "CPU-1")
            .is_some_and(|(v, r)| v == Verdict::Unhealthy && r.contains("probe failing"))
    })
    .await;
    let (v0, r0) = verdict(&live, "CPU-0").expect("verdict of GPU 0");
    assert_ne!(
        v0,
        Verdict::Unhealthy,
        "the healthy GPU was marked too: {r0}"
    );
    assert!(!a.agent.is_finished(), "the agent stopped");
    let good_during = good.ok_runs.load(Ordering::SeqCst) - good_before;
    assert!(
        good_during >= 30,
        "GPU 0 stopped probing while GPU 1 failed: {good_during} runs"
    );

    // Backoff: the k-th retry waits interval * 2^k (jitter is off), so the
    // gaps between attempts grow; sleeps can only overshoot.
    let at = bad.failed_at.lock().unwrap().clone();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, g) in gaps.iter().take(5).enumerate() {
        let min = interval * (1 << (k + 1));
        assert!(
            *g >= min,
            "retry {} came after {g:?}, before its backoff {min:?}: {gaps:?}",
            k + 1
        );
    }
    assert!(gaps[4] > gaps[0] * 2, "spacing does not grow: {gaps:?}");
    assert!(
        bad.reopened.load(Ordering::SeqCst) >= 1,
        "the backend was never re-created after repeated failures"
    );
    assert_eq!(good.reopened.load(Ordering::SeqCst), 0);
    assert!(Counters::get(&a.counters.probe_errors) >= 6);

    // The GPU comes back.
    let back_ns = now_ns();
    bad.fail.store(false, Ordering::SeqCst);
    let ok_then = bad.ok_runs.load(Ordering::SeqCst);
    wait_until("GPU 1 probing again", || {
        bad.ok_runs.load(Ordering::SeqCst) >= ok_then + 20
    })
    .await;
    let recovered_ns = now_ns();
    wait_until("GPU 1 no longer unhealthy", || {
        verdict(&live, "CPU-1").is_some_and(|(v, _)| v != Verdict::Unhealthy)
    })
    .await;
    let data = a.data.clone();
    let report = a.stop().await;
    assert!(
        report.summary.iter().any(|r| r.gpu_uuid == "CPU-0")
            && report.summary.iter().any(|r| r.gpu_uuid == "CPU-1")
    );

    let log = log_since(&logs, from);
    for line in [
        "probe run failed; GPU marked unhealthy",
        "re-created the probe backend after repeated failures",
        "probing recovered",
    ] {
        assert!(log.contains(line), "{line:?} not logged:\n{log}");
    }
    assert!(log.contains("GPU lost"));
    let rows = read_rows(&data);
    let during = |uuid: &str| {
        rows.iter()
            .filter(|r| r.gpu_uuid == uuid && r.ts_ns > fail_ns && r.ts_ns < recovered_ns)
            .count()
    };
    assert!(
        during("CPU-0") >= 30,
        "GPU 0 rows while GPU 1 failed: {}",
        during("CPU-0")
    );
    let after = rows
        .iter()
        .filter(|r| r.gpu_uuid == "CPU-1" && r.ts_ns > back_ns)
        .count();
    assert!(
        after >= 20,
        "only {after} GPU 1 rows after it came back ({} runs)",
        bad.ok_runs.load(Ordering::SeqCst) - ok_then
    );
}

// ----------------------------------------------------------- kube API -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_down_then_410_marks_rows_stale_and_they_recover_after_relist() {
    let Some(py) = python("kube_api_down_then_410_marks_rows_stale_and_they_recover_after_relist")
    else {
        return;
    };
    let api = FakeApi::start(&py);
    let dir = tempfile::tempdir().expect("tmp");
    let occ = format!(
        "[occupancy]\nkube_api = \"server\"\nkube_server_url = \"{}\"\nstale_after_ms = 1500\nkube_backoff_max_ms = 1000\n\
         node_labels_interval_ms = 300\npod_resources_socket = {:?}\n",
        api.url(),
        dir.path().join("no-kubelet.sock").display().to_string()
    );
    let cfg = config(&dir.path().join("data"), "n1", &occ);
    let backends: Vec<Box<dyn ProbeBackend>> = vec![Box::new(cpu(0, &cfg))];
    let a = start(
        cfg,
        backends,
        None,
        Arc::new(slicetrace_agent::probe::telemetry::NoTelemetry),
        None,
    );
    let data = a.data.clone();
    let counters = a.counters.clone();
    let newest_after = |t: i64| read_rows(&data).into_iter().rfind(|r| r.ts_ns > t);

    // Fresh: the node's labels reach the rows.
    wait_until("fresh rows with node labels", || {
        newest_after(0).is_some_and(|r| r.occupancy_stale == Some(false) && r.replicas == Some(4))
    })
    .await;

    // The API goes away: rows keep coming, marked stale, with the last known state.
    api.control("POST", "/_test/down?mode=503", "");
    let down_ns = now_ns();
    wait_until("stale rows while the API is down", || {
        newest_after(down_ns).is_some_and(|r| r.occupancy_stale == Some(true))
    })
    .await;
    let stale: Vec<ProbeRecord> = read_rows(&data)
        .into_iter()
        .filter(|r| r.occupancy_stale == Some(true))
        .collect();
    assert!(stale.iter().all(|r| r.replicas == Some(4) && r.sharing_strategy.as_deref() == Some("time-slicing")), "last known node state kept");
    assert!(Counters::get(&counters.occupancy_errors) >= 1);

    // It comes back: fresh again.
    api.control("POST", "/_test/up", "");
    let up_ns = now_ns();
    wait_until("fresh rows after the API returned", || {
        newest_after(up_ns).is_some_and(|r| r.occupancy_stale == Some(false))
    })
    .await;

    // History compacted: the watch gets 410 and the next list too; the
    // agent relists and rows stay (or become again) fresh.
    let relists = Counters::get(&counters.occupancy_relists);
    api.control("POST", "/_test/gone?http=1", "");
    let gone_ns = now_ns();
    wait_until("relist after 410", || {
        Counters::get(&counters.occupancy_relists) > relists
    })
    .await;
    let relisted_ns = now_ns();
    wait_until("fresh rows after the relist", || {
        newest_after(relisted_ns)
            .is_some_and(|r| r.occupancy_stale == Some(false) && r.replicas == Some(4))
    })
    .await;
    assert!(api.stats()["gone_sent"].as_u64().unwrap_or(0) >= 1);
    a.stop().await;
    // Probing never paused for the API: rows cover the whole outage.
    let rows = read_rows(&data);
    let in_outage = rows
        .iter()
        .filter(|r| r.ts_ns > down_ns && r.ts_ns < up_ns)
        .count();
    let secs = (up_ns - down_ns) as f64 / 1e9;
    assert!(
        in_outage as f64 >= secs * 50.0 * 2.0 * 0.5,
        "{in_outage} rows in a {secs:.1} s outage"
    );
    assert!(rows.iter().any(|r| r.ts_ns > gone_ns));
}
