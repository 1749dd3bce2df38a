//! One GPU at a time (issue 21): four CPU pseudo-GPUs behind the test kit's
//! fault-injecting backend, the whole agent running, and one GPU that
//! fails to open at start, fails mid-run and comes back, or hangs. Each
//! test asserts that GPU's verdict and reason, the other GPUs' verdicts,
//! `/readyz` (which GPUs probe), `/healthz` (the agent is not stuck), and
//! that every run the other GPUs completed is a row in the Parquet files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics_support::occupancy_support::{kubectl, python, AgentTask, FakeApi};
use metrics_support::{http_get, samples, HttpResponse};
use slicetrace_agent::agent::{Agent, BackendFactory, Gpu, RunReport};
use slicetrace_agent::config::Config;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::{KubeApiMode, NoOccupancy};
use slicetrace_agent::probe::telemetry::{
    DeviceSample, GpuFault, NoTelemetry, TelemetryError, TelemetrySource,
};
use slicetrace_agent::serve::live::LiveState;
use slicetrace_e2e::testkit::{Faults, FaultyBackend};
use slicetrace_probe::cpu::CpuBackend;
use slicetrace_probe::{Kernel, ProbeBackend};
use slicetrace_schema::{Backend, Reason, Verdict};

const GPUS: u32 = 4;

/// A fast, small CPU probe; Parquet files every 300 ms; verdicts every
/// 100 ms; /metrics on a free port.
fn config(data: &Path, extra: &str) -> Config {
    metrics_support::occupancy_support::fast_agent_config(data, "lifecycle", "127.0.0.1:0", extra)
}

fn cpu(index: u32, cfg: &Config) -> Box<dyn ProbeBackend> {
    Box::new(CpuBackend::new(index, &cfg.probe_spec("cpu")).expect("cpu backend"))
}

/// A running agent over four faulted CPU GPUs.
struct Running {
    agent: AgentTask,
    counters: Arc<Counters>,
    live: Arc<LiveState>,
    data: PathBuf,
    addr: SocketAddr,
    faults: Vec<Arc<Faults>>,
}

/// Starts the agent; GPUs in `unopened` fail to open at start (and keep
/// failing while their `fail_open` is set).
async fn start(cfg: Config, unopened: &[u32]) -> Running {
    start_with(cfg, unopened, Arc::new(NoTelemetry), true).await
}

/// [`start`] with `telemetry`; `no_occupancy` injects none, else the agent
/// starts the configured sources (the Kubernetes API).
async fn start_with(
    cfg: Config,
    unopened: &[u32],
    telemetry: Arc<dyn TelemetrySource>,
    no_occupancy: bool,
) -> Running {
    let data = cfg.data_dir.clone();
    let faults: Vec<Arc<Faults>> = (0..GPUS).map(|_| Arc::new(Faults::default())).collect();
    let spec = cfg.probe_spec("cpu");
    let gpus: Vec<Gpu> = (0..GPUS)
        .map(|i| {
            let f = faults[i as usize].clone();
            if unopened.contains(&i) {
                f.fail_open.store(true, Ordering::SeqCst);
                Gpu::unopened(
                    i,
                    &format!("CPU-{i}"),
                    Backend::Cpu,
                    spec,
                    "injected fault: device does not open".into(),
                    None,
                )
            } else {
                Gpu::opened(FaultyBackend::wrap(cpu(i, &cfg), f), &cfg)
            }
        })
        .collect();
    let fs = faults.clone();
    let factory: BackendFactory = Arc::new(move |i| {
        Faults::open(&fs[i as usize], || {
            Ok(Box::new(CpuBackend::new(i, &spec)?) as Box<dyn ProbeBackend>)
        })
    });
    let mut agent = Agent::with_gpus(cfg, gpus, telemetry).reopen_with(factory);
    if no_occupancy {
        agent.occupancy = Some(Arc::new(NoOccupancy));
    }
    let (counters, live) = (agent.counters.clone(), agent.live.clone());
    let (atx, arx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let task = AgentTask::spawn(agent, move |a| {
        let _ = atx.send(a);
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), arx)
        .await
        .expect("metrics address within 30 s")
        .expect("metrics served");
    Running {
        agent: task,
        counters,
        live,
        data,
        addr,
        faults,
    }
}

impl Running {
    async fn get(&self, path: &'static str) -> HttpResponse {
        let addr = self.addr;
        tokio::task::spawn_blocking(move || http_get(addr, path, "*/*"))
            .await
            .expect("http get")
    }

    fn ok_runs(&self, i: u32) -> u64 {
        self.faults[i as usize].ok_runs.load(Ordering::SeqCst)
    }

    /// Waits until every GPU in `gpus` completed `n` more runs.
    async fn runs_go_on(&self, gpus: &[u32], n: u64) {
        let from: Vec<u64> = gpus.iter().map(|&i| self.ok_runs(i)).collect();
        let me = self;
        wait_until(&format!("GPUs {gpus:?} completing {n} more runs"), || {
            gpus.iter()
                .zip(&from)
                .all(|(&i, &f)| me.ok_runs(i) >= f + n)
        })
        .await;
    }

    /// `/healthz` answers 200 (the agent is not stuck).
    async fn assert_alive(&self) {
        let h = self.get("/healthz").await;
        assert_eq!(h.status, 200, "healthz: {}", h.body);
    }

    async fn stop(self) -> (RunReport, Vec<Arc<Faults>>, PathBuf) {
        (self.agent.stop().await, self.faults, self.data)
    }
}

/// Waits until `f` holds, up to a minute (the test kit's one wait).
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    slicetrace_e2e::testkit::wait_until_async(what, Duration::from_secs(60), || f().then_some(()))
        .await
}

/// The health verdict and bounded reason of a GPU's kernel.
fn health(live: &LiveState, uuid: &str, k: Kernel) -> Option<(Verdict, Reason)> {
    live.read_kernel(uuid, k, |h| (h.verdict, h.health_reason))
}

/// Both kernels of `uuid` unhealthy for `reason`.
fn down_for(live: &LiveState, uuid: &str, reason: Reason) -> bool {
    Kernel::ALL
        .iter()
        .all(|&k| health(live, uuid, k) == Some((Verdict::Unhealthy, reason)))
}

/// No kernel of `uuid` unhealthy (CPU GPUs have no speed reference:
/// `unknown` is their normal verdict).
fn not_unhealthy(live: &LiveState, uuid: &str) -> bool {
    Kernel::ALL
        .iter()
        .all(|&k| health(live, uuid, k).is_some_and(|(v, _)| v != Verdict::Unhealthy))
}

/// Waits until every GPU's backend was released and both its kernels read
/// `unknown (driver_upgrade)`.
async fn wait_all_released_for_upgrade(faults: &[Arc<Faults>], live: &LiveState) {
    wait_until("every GPU released and unknown (driver_upgrade)", || {
        faults.iter().enumerate().all(|(i, f)| {
            f.released.load(Ordering::SeqCst) >= 1
                && Kernel::ALL.iter().all(|&k| {
                    health(live, &format!("CPU-{i}"), k)
                        == Some((Verdict::Unknown, Reason::DriverUpgrade))
                })
        })
    })
    .await;
}

/// GPUs whose `slicetrace_gpu_probing` reads 0 for `driver_upgrade` in a
/// `/metrics` body.
fn paused_for_upgrade(body: &str) -> usize {
    samples(body)
        .into_iter()
        .filter(|s| {
            s.name == "slicetrace_gpu_probing"
                && s.label("reason") == Some("driver_upgrade")
                && s.value == 0.0
        })
        .count()
}

/// Every run a GPU completed is a row: rows on disk = runs the backend
/// completed, for each GPU in `gpus`, and no queue dropped any.
fn assert_no_row_lost(data: &Path, faults: &[Arc<Faults>], counters: &Counters, gpus: &[u32]) {
    let rows = slicetrace_e2e::probe_rows(data);
    for &i in gpus {
        let on_disk = rows
            .iter()
            .filter(|r| r.gpu_uuid == format!("CPU-{i}"))
            .count() as u64;
        let ran = faults[i as usize].ok_runs.load(Ordering::SeqCst);
        assert!(ran >= 20, "GPU {i} ran only {ran} times");
        assert_eq!(
            on_disk, ran,
            "GPU {i}: {ran} runs completed, {on_disk} rows"
        );
    }
    assert_eq!(Counters::get(&counters.sink_queue_drops_parquet), 0);
    assert_eq!(Counters::get(&counters.sink_queue_drops_health), 0);
}

fn probing_line(body: &str, uuid: &str) -> Option<String> {
    body.lines()
        .find(|l| l.starts_with("gpu ") && l.contains(&format!(" {uuid}:")))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_fails_to_open_at_start_is_open_failed_alone_and_picked_up_when_it_opens() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start(config(dir.path(), ""), &[1]).await;
    let others = [0, 2, 3];
    a.runs_go_on(&others, 20).await;
    let live = a.live.clone();
    wait_until("GPU 1 unhealthy (open_failed)", || {
        down_for(&live, "CPU-1", Reason::OpenFailed)
    })
    .await;
    wait_until("the others judged", || {
        others
            .iter()
            .all(|i| not_unhealthy(&live, &format!("CPU-{i}")))
    })
    .await;
    let r = a.get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let line = probing_line(&r.body, "CPU-1").expect("GPU 1 in /readyz");
    assert!(line.contains("not probing (open_failed)"), "{}", r.body);
    for i in others {
        let l = probing_line(&r.body, &format!("CPU-{i}")).expect("GPU in /readyz");
        assert!(l.ends_with(": probing"), "{}", r.body);
    }
    a.assert_alive().await;
    let m = a.get("/metrics").await;
    let probing = samples(&m.body)
        .into_iter()
        .find(|s| s.name == "slicetrace_gpu_probing" && s.label("gpu_uuid") == Some("CPU-1"))
        .expect("slicetrace_gpu_probing of GPU 1");
    assert_eq!(
        (probing.value, probing.label("reason")),
        (0.0, Some("open_failed"))
    );
    // Retried with backoff, on its own.
    wait_until("a second open attempt", || {
        a.faults[1].reopened.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(Counters::get(&a.counters.gpu("CPU-1").open_failures) >= 2);

    // The GPU opens: picked up without a restart.
    a.faults[1].fail_open.store(false, Ordering::SeqCst);
    a.runs_go_on(&[1], 20).await;
    wait_until("GPU 1 no longer unhealthy", || {
        not_unhealthy(&live, "CPU-1")
    })
    .await;
    wait_until("/readyz 200 with every GPU probing", || {
        live.not_ready().is_empty()
    })
    .await;
    let r = a.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(probing_line(&r.body, "CPU-1").is_some_and(|l| l.ends_with(": probing")));
    a.assert_alive().await;
    let counters = a.counters.clone();
    let (_, faults, data) = a.stop().await;
    assert_no_row_lost(&data, &faults, &counters, &[0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_lost_mid_run_is_lost_alone_and_comes_back_while_the_others_probe_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start(config(dir.path(), ""), &[]).await;
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    let live = a.live.clone();
    // GPU 2 is lost: its runs fail and it does not open again.
    a.faults[2].fail_open.store(true, Ordering::SeqCst);
    a.faults[2].fail.store(true, Ordering::SeqCst);
    wait_until("GPU 2 unhealthy (lost)", || {
        down_for(&live, "CPU-2", Reason::Lost)
    })
    .await;
    let others = [0, 1, 3];
    a.runs_go_on(&others, 20).await;
    for i in others {
        assert!(
            not_unhealthy(&live, &format!("CPU-{i}")),
            "GPU {i} was marked too: {:?}",
            health(&live, &format!("CPU-{i}"), Kernel::Fft)
        );
    }
    let r = a.get("/readyz").await;
    assert_eq!(r.status, 503);
    assert!(
        probing_line(&r.body, "CPU-2").is_some_and(|l| l.contains("not probing (lost)")),
        "{}",
        r.body
    );
    a.assert_alive().await;

    // It comes back.
    a.faults[2].fail.store(false, Ordering::SeqCst);
    a.faults[2].fail_open.store(false, Ordering::SeqCst);
    a.runs_go_on(&[2], 20).await;
    wait_until("GPU 2 no longer unhealthy", || {
        not_unhealthy(&live, "CPU-2")
    })
    .await;
    wait_until("every GPU ready", || live.not_ready().is_empty()).await;
    a.assert_alive().await;
    let counters = a.counters.clone();
    let (_, faults, data) = a.stop().await;
    assert_no_row_lost(&data, &faults, &counters, &[0, 1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_on_one_of_four_gpus_fires_the_watchdog_within_an_evaluation_and_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start(
        config(dir.path(), "[watchdog]\nrun_deadline_ms = 1500\n"),
        &[],
    )
    .await;
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    let live = a.live.clone();
    let hangs = a.counters.gpu("CPU-3");
    a.faults[3].hang.store(true, Ordering::SeqCst);
    wait_until("the watchdog firing on GPU 3", || {
        Counters::get(&hangs.probe_hangs) >= 1
    })
    .await;
    let fired = Instant::now();
    wait_until("GPU 3 unhealthy (hung)", || {
        down_for(&live, "CPU-3", Reason::Hung)
    })
    .await;
    let marked = Instant::now();
    // One evaluation interval is 100 ms; the polls add up to 20 ms each,
    // and the loaded test box gets a wide margin.
    assert!(
        marked - fired < Duration::from_secs(2),
        "hung verdict {:?} after the watchdog fired",
        marked - fired
    );
    let r = a.get("/readyz").await;
    assert!(
        probing_line(&r.body, "CPU-3").is_some_and(|l| l.contains("not probing (hung)")),
        "{}",
        r.body
    );
    a.assert_alive().await;
    // The other GPUs never stopped, and recovery follows without a reset:
    // a new backend on GPU 3 while the old run still hangs.
    a.runs_go_on(&[0, 1, 2], 20).await;
    a.runs_go_on(&[3], 20).await;
    // The abandoned backend is parked (its run still hangs), not released.
    // This is also the proof that neither the watchdog nor the recovery
    // waited for the hang to end (PLANTED_HANG, 30 s): a backend is
    // released only once its run returns, so a released one here would
    // mean the hang had ended. (Causal, where a clock bound on both was.)
    assert_eq!(Counters::get(&hangs.backends_parked), 1);
    assert_eq!(
        Counters::get(&hangs.backends_released),
        0,
        "the hung run returned before the watchdog fired and GPU 3 recovered"
    );
    let m = a.get("/metrics").await;
    assert_eq!(
        metric(
            &m.body,
            "slicetrace_probe_backends_parked",
            Some(("gpu_uuid", "CPU-3"))
        ),
        Some(1.0),
        "{}",
        m.body
    );
    wait_until("GPU 3 no longer unhealthy", || {
        not_unhealthy(&live, "CPU-3")
    })
    .await;
    for i in 0..3 {
        assert!(not_unhealthy(&live, &format!("CPU-{i}")), "GPU {i}");
        assert_eq!(
            Counters::get(&a.counters.gpu(&format!("CPU-{i}")).probe_hangs),
            0
        );
    }
    a.assert_alive().await;
    let counters = a.counters.clone();
    let (_, faults, data) = a.stop().await;
    assert_no_row_lost(&data, &faults, &counters, &[0, 1, 2]);
}

/// NVML events scripted by the test: what `send` queues comes out of
/// `watch_faults` as the GPU's own reports; samples are empty.
struct ScriptedFaults(std::sync::Mutex<std::sync::mpsc::Receiver<GpuFault>>);

impl TelemetrySource for ScriptedFaults {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn sample(&self, _: &str) -> Result<DeviceSample, TelemetryError> {
        Ok(DeviceSample::default())
    }
    fn watch_faults(
        &self,
        stopped: &dyn Fn() -> bool,
        on_fault: &mut dyn FnMut(GpuFault),
    ) -> Result<(), TelemetryError> {
        let rx = self.0.lock().unwrap();
        while !stopped() {
            if let Ok(f) = rx.recv_timeout(Duration::from_millis(50)) {
                on_fault(f);
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_xid_makes_only_its_gpu_unhealthy_and_every_xid_is_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let (tx, rx) = std::sync::mpsc::channel();
    let a = start_with(
        config(dir.path(), ""),
        &[],
        Arc::new(ScriptedFaults(std::sync::Mutex::new(rx))),
        true,
    )
    .await;
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    let live = a.live.clone();
    wait_until("every GPU judged", || {
        (0..GPUS).all(|i| not_unhealthy(&live, &format!("CPU-{i}")))
    })
    .await;
    // Xid 13 (a graphics engine exception, an application's fault) is
    // counted only; Xid 79 (fallen off the bus) and a double-bit ECC
    // error (Xid 48) make their GPU unhealthy.
    for f in [
        GpuFault::Xid {
            gpu_uuid: "CPU-0".into(),
            code: 13,
        },
        GpuFault::Xid {
            gpu_uuid: "CPU-2".into(),
            code: 79,
        },
        GpuFault::DoubleBitEcc {
            gpu_uuid: "CPU-3".into(),
        },
        GpuFault::Xid {
            gpu_uuid: "CPU-0".into(),
            code: 13,
        },
    ] {
        tx.send(f).unwrap();
    }
    wait_until("GPU 2 unhealthy (xid_79)", || {
        down_for(&live, "CPU-2", Reason::Xid79)
    })
    .await;
    wait_until("GPU 3 unhealthy (xid_48)", || {
        down_for(&live, "CPU-3", Reason::Xid48)
    })
    .await;
    let reason = live
        .read_kernel("CPU-2", Kernel::Fft, |h| h.reason.clone())
        .unwrap();
    assert!(reason.contains("Xid 79"), "{reason}");
    a.runs_go_on(&[0, 1], 20).await;
    assert!(not_unhealthy(&live, "CPU-0") && not_unhealthy(&live, "CPU-1"));
    let m = a.get("/metrics").await;
    let xid = |gpu: &str, code: &str| {
        samples(&m.body)
            .into_iter()
            .find(|s| {
                s.name == "slicetrace_xid_errors_total"
                    && s.label("gpu_uuid") == Some(gpu)
                    && s.label("xid") == Some(code)
            })
            .map(|s| s.value)
    };
    assert_eq!(xid("CPU-0", "13"), Some(2.0), "{}", m.body);
    assert_eq!(xid("CPU-2", "79"), Some(1.0));
    assert_eq!(xid("CPU-3", "48"), Some(1.0));
    assert_eq!(xid("CPU-1", "13"), None);
    a.assert_alive().await;
    let counters = a.counters.clone();
    let (_, faults, data) = a.stop().await;
    assert_no_row_lost(&data, &faults, &counters, &[0, 1, 2, 3]);
}

/// `kubectl label node n1 KEY=VALUE --overwrite` against the fake API.
async fn label_node(kubectl: &str, api: &FakeApi, kv: &str) {
    let (kubectl, url, kv) = (kubectl.to_string(), api.url(), kv.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(kubectl)
            .env("KUBECONFIG", "/dev/null")
            .args([
                &format!("--server={url}"),
                "label",
                "node",
                "n1",
                &kv,
                "--overwrite",
            ])
            .output()
            .expect("run kubectl")
    })
    .await
    .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl label: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node's driver seen through NVML, scripted by the test: `gone` makes
/// it say the driver is gone, `refuse` keeps `reacquire` failing; every
/// release and every reacquire attempt is recorded, and whether an NVML
/// session is open now.
struct ScriptedDriver {
    gone: AtomicBool,
    refuse: AtomicBool,
    open: AtomicBool,
    releases: AtomicU32,
    tries: Mutex<Vec<Instant>>,
    version: Mutex<String>,
}

impl ScriptedDriver {
    fn new(version: &str) -> Arc<Self> {
        Arc::new(Self {
            gone: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            open: AtomicBool::new(true),
            releases: AtomicU32::new(0),
            tries: Mutex::new(Vec::new()),
            version: Mutex::new(version.into()),
        })
    }
}

impl TelemetrySource for ScriptedDriver {
    fn name(&self) -> &'static str {
        "scripted-driver"
    }
    fn sample(&self, uuid: &str) -> Result<DeviceSample, TelemetryError> {
        if !self.open.load(Ordering::SeqCst) {
            // Another GPU's thread let go of NVML while this one was between
            // its check and its reading.
            return Err(TelemetryError::Released);
        }
        if self.gone.load(Ordering::SeqCst) {
            return Err(TelemetryError::Device {
                uuid: uuid.into(),
                source: "Driver Not Loaded".into(),
            });
        }
        Ok(DeviceSample {
            fields: slicetrace_schema::DeviceFields {
                sm_clock_mhz: Some(1000),
                ..Default::default()
            },
            ..DeviceSample::default()
        })
    }
    fn driver_gone(&self) -> Option<String> {
        self.gone
            .load(Ordering::SeqCst)
            .then(|| "NVML: Driver Not Loaded".to_string())
    }
    fn release(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
    fn reacquire(&self) -> Result<Option<String>, TelemetryError> {
        self.tries.lock().unwrap().push(Instant::now());
        if self.refuse.load(Ordering::SeqCst) {
            return Err(TelemetryError::Unavailable("Driver Not Loaded".into()));
        }
        self.open.store(true, Ordering::SeqCst);
        self.gone.store(false, Ordering::SeqCst);
        Ok(Some(self.version.lock().unwrap().clone()))
    }
}

fn metric(body: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    samples(body)
        .into_iter()
        .find(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

/// Without the Kubernetes API: NVML says the driver is gone. Every GPU's
/// context and the NVML session are released, every GPU is `unknown`
/// (`driver_upgrade`, no page), NVML is retried with a growing back-off,
/// and when it answers (with a new version) every GPU probes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_gone_under_nvml_releases_everything_pages_nobody_and_probing_resumes_when_it_answers(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let driver = ScriptedDriver::new("580.1");
    let a = start_with(config(dir.path(), ""), &[], driver.clone(), true).await;
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    let live = a.live.clone();
    let m = a.get("/metrics").await;
    assert_eq!(
        metric(
            &m.body,
            "slicetrace_driver_info",
            Some(("version", "580.1"))
        ),
        Some(1.0),
        "{}",
        m.body
    );

    // The driver goes away: NVML's readings say so.
    driver.tries.lock().unwrap().clear();
    driver.refuse.store(true, Ordering::SeqCst);
    driver.gone.store(true, Ordering::SeqCst);
    wait_all_released_for_upgrade(&a.faults, &live).await;
    assert!(!driver.open.load(Ordering::SeqCst), "NVML still open");
    assert_eq!(driver.releases.load(Ordering::SeqCst), 1);
    let runs: Vec<u64> = (0..GPUS).map(|i| a.ok_runs(i)).collect();
    // NVML is retried with a growing back-off (1 s, then 2 s).
    wait_until("two attempts to reopen NVML", || {
        driver.tries.lock().unwrap().len() >= 2
    })
    .await;
    let tries = driver.tries.lock().unwrap().clone();
    assert!(
        tries[1] - tries[0] >= Duration::from_millis(1900),
        "{:?}",
        tries[1] - tries[0]
    );
    assert_eq!(runs, (0..GPUS).map(|i| a.ok_runs(i)).collect::<Vec<_>>());
    let m = a.get("/metrics").await;
    assert_eq!(paused_for_upgrade(&m.body), GPUS as usize, "{}", m.body);
    assert_eq!(
        metric(&m.body, "slicetrace_driver_releases_total", None),
        Some(1.0)
    );
    a.assert_alive().await;

    // A new driver answers.
    *driver.version.lock().unwrap() = "999.1".into();
    driver.refuse.store(false, Ordering::SeqCst);
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    for f in &a.faults {
        assert!(f.reopened.load(Ordering::SeqCst) >= 1);
    }
    wait_until("every GPU judged again", || {
        (0..GPUS).all(|i| {
            health(&live, &format!("CPU-{i}"), Kernel::Fft)
                .is_some_and(|(v, r)| v != Verdict::Unhealthy && r != Reason::DriverUpgrade)
        })
    })
    .await;
    let m = a.get("/metrics").await;
    assert_eq!(
        metric(
            &m.body,
            "slicetrace_driver_info",
            Some(("version", "999.1"))
        ),
        Some(1.0),
        "{}",
        m.body
    );
    assert_eq!(
        metric(&m.body, "slicetrace_driver_changes_total", None),
        Some(1.0)
    );
    wait_until("every GPU ready", || live.not_ready().is_empty()).await;
    let counters = a.counters.clone();
    let (_, faults, data) = a.stop().await;
    assert_no_row_lost(&data, &faults, &counters, &[0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_upgrade_releases_every_gpu_pages_nobody_and_probing_resumes_after_upgrade_done() {
    let (Some(py), Some(kubectl)) = (python("this test"), kubectl("this test")) else {
        return;
    };
    let api = FakeApi::start(&py);
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(dir.path(), "");
    cfg.node_name = "n1".into();
    cfg.occupancy.kube_api = KubeApiMode::Server;
    cfg.occupancy.kube_server_url = Some(api.url());
    cfg.occupancy.node_labels_interval_ms = 200;
    cfg.validate().expect("valid config");
    let driver = ScriptedDriver::new("580.1");
    let a = start_with(cfg, &[], driver.clone(), false).await;
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    let live = a.live.clone();

    // The GPU Operator starts upgrading this node's driver.
    label_node(
        &kubectl,
        &api,
        "nvidia.com/gpu-driver-upgrade-state=upgrade-required",
    )
    .await;
    wait_all_released_for_upgrade(&a.faults, &live).await;
    // NVML is shut down too.
    assert!(!driver.open.load(Ordering::SeqCst), "NVML still open");
    assert_eq!(driver.releases.load(Ordering::SeqCst), 1);
    // Nothing probes while it lasts, and nothing looks broken. "While it
    // lasts" is counted in the agent's own reads of the node's labels (one
    // every 200 ms), not in wall time: three more reads that still find
    // the upgrade under way, and not one run meanwhile.
    let runs: Vec<u64> = (0..GPUS).map(|i| a.ok_runs(i)).collect();
    let reads = || api.stats()["get"].as_u64().unwrap_or(0);
    let reads0 = reads();
    wait_until("three more reads of the node's labels", || {
        reads() >= reads0 + 3
    })
    .await;
    assert_eq!(runs, (0..GPUS).map(|i| a.ok_runs(i)).collect::<Vec<_>>());
    let m = a.get("/metrics").await;
    assert_eq!(paused_for_upgrade(&m.body), GPUS as usize, "{}", m.body);
    a.assert_alive().await;
    let r = a.get("/readyz").await;
    assert!(
        probing_line(&r.body, "CPU-2").is_some_and(|l| l.contains("(driver_upgrade)")),
        "{}",
        r.body
    );

    // The upgrade is done: every GPU is opened again and probes.
    label_node(
        &kubectl,
        &api,
        "nvidia.com/gpu-driver-upgrade-state=upgrade-done",
    )
    .await;
    a.runs_go_on(&[0, 1, 2, 3], 20).await;
    wait_until("every GPU judged again", || {
        (0..GPUS).all(|i| not_unhealthy(&live, &format!("CPU-{i}")))
            && (0..GPUS).all(|i| {
                health(&live, &format!("CPU-{i}"), Kernel::Fft)
                    .is_some_and(|(_, r)| r != Reason::DriverUpgrade)
            })
    })
    .await;
    for f in &a.faults {
        assert!(f.reopened.load(Ordering::SeqCst) >= 1);
    }
    assert!(driver.open.load(Ordering::SeqCst), "NVML not reopened");
    wait_until("every GPU ready", || live.not_ready().is_empty()).await;
    let counters = a.counters.clone();
    let (_, faults, data) = a.stop().await;
    assert_no_row_lost(&data, &faults, &counters, &[0, 1, 2, 3]);
}
