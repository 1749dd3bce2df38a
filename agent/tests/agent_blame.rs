//! Issue #24, blame rows: a whole agent on the CPU backend, its occupancy
//! driven by both test servers (the kubelet pod-resources gRPC server and
//! `tests/k8s_api_server.py`) and a /proc of our own, with NVML replaced at
//! the telemetry seam by a source with scripted per-process activity. Each
//! arrival's row must name the tenants that were *busy* (SM share > 0), by
//! pod where the PID maps to one, never a tenant that only holds a context,
//! and say "unknown" (null) on a GPU whose source cannot tell. Needs python3
//! (skipped with a note otherwise, unless `SLICETRACE_REQUIRE_TOOLS=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;
use metrics_support::occupancy_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics_support::{cpu_backends, read_probes, small_config, wait_for, RunningAgent};
use occupancy_support::{
    cid, pod_resources_fixture_renamed, proc_entry, python, FakeApi, KubeletServer, GPU_SHARED,
};
use slicetrace_agent::probe::occupancy::{GpuProcess, KubeApiMode};
use slicetrace_agent::probe::telemetry::{
    DeviceSample, ProcessActivity, TelemetryError, TelemetrySource,
};
use slicetrace_schema::ProbeRecord;

/// ml/train-a: busy on every NVML answer (SM 80 %).
const BUSY_POD_PID: u32 = 2001;
/// research/notebook-c: holds a context, never busy.
const RESIDENT_PID: u32 = 2003;
/// No /proc entry, so no pod: busy on 20 answers, idle on the next 20, …
/// (SM 40 %).
const NO_POD_PID: u32 = 4242;

/// NVML stand-in for the time-sliced CPU-0: three resident processes, two
/// of them busy as scripted. CPU-1 cannot tell (`Ok(None)`).
#[derive(Default)]
struct Scripted {
    calls: AtomicU64,
    busy_no_pod: AtomicU64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

impl TelemetrySource for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn sample(&self, gpu_uuid: &str) -> Result<DeviceSample, TelemetryError> {
        let procs = if gpu_uuid == "CPU-0" {
            [BUSY_POD_PID, RESIDENT_PID, NO_POD_PID]
                .into_iter()
                .map(|pid| GpuProcess {
                    pid,
                    used_mib: Some(100),
                    name: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(DeviceSample {
            processes: Some(procs),
            ..Default::default()
        })
    }
    fn process_activity(
        &self,
        gpu_uuid: &str,
        _since_us: u64,
    ) -> Result<Option<Vec<ProcessActivity>>, TelemetryError> {
        if gpu_uuid != "CPU-0" {
            return Ok(None);
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let ts_us = now_us();
        let mut v = vec![
            ProcessActivity {
                pid: BUSY_POD_PID,
                ts_us,
                sm_pct: 80,
            },
            ProcessActivity {
                pid: RESIDENT_PID,
                ts_us,
                sm_pct: 0,
            },
        ];
        if (n / 20).is_multiple_of(2) {
            self.busy_no_pod.fetch_add(1, Ordering::SeqCst);
            v.push(ProcessActivity {
                pid: NO_POD_PID,
                ts_us,
                sm_pct: 40,
            });
        }
        Ok(Some(v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_name_the_busy_tenants_by_pod_and_never_an_idle_context() {
    let Some(py) = python("this test") else {
        return;
    };
    let api = FakeApi::start(&py);
    let dir = tempfile::tempdir().unwrap();
    let reply = pod_resources_fixture_renamed(&[(GPU_SHARED, "CPU-0")]);
    let socket = dir.path().join("kubelet.sock");
    let _kubelet = KubeletServer::start(&socket, reply);
    let proc_root = dir.path().join("proc");
    // train-a (containerd v2) and notebook-c (CRI-O v1), as in the fixture.
    proc_entry(
        &proc_root,
        BUSY_POD_PID,
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_1111_4111_8111_111111111111.slice/cri-containerd-{}.scope\n",
            cid(1)
        ),
        "python3",
    );
    proc_entry(
        &proc_root,
        RESIDENT_PID,
        &format!(
            "11:memory:/kubepods/burstable/pod33333333-3333-4333-8333-333333333333/crio-{}\n",
            cid(3)
        ),
        "python3",
    );

    let data = dir.path().join("data");
    let mut cfg = small_config(&data);
    cfg.probe.arrivals = Some(slicetrace_agent::probe::config::Arrivals::Poisson);
    cfg.probe.rate_hz = Some(40.0);
    // Every arrival reads NVML's per-process utilisation (the default reads
    // it at most every 2 s: see the config test).
    cfg.probe.busy_tenants_interval_ms = Some(0);
    // "Busy" looks back 100 ms (four arrivals at 40/s), so the idle blocks
    // of pid 4242 leave rows without it.
    cfg.probe.busy_window_ms = Some(100);
    cfg.occupancy.pod_resources_socket = socket;
    cfg.occupancy.kube_api = KubeApiMode::Server;
    cfg.occupancy.kube_server_url = Some(api.url());
    cfg.occupancy.proc_root = proc_root;
    let backends = cpu_backends(&cfg, &[0, 1]);
    let source = Arc::new(Scripted::default());
    let telemetry: Arc<dyn TelemetrySource> = source.clone();

    tokio::task::spawn_blocking(move || {
        let agent = RunningAgent::start_with_telemetry(cfg, backends, None, None, telemetry);
        wait_for("the pod watch synced", || {
            agent
                .get("/metrics")
                .body
                .contains("slicetrace_occupancy_source_up{node=\"n1\",source=\"kube_api\"} 1\n")
                .then_some(())
        });
        let at = source.calls.load(Ordering::SeqCst);
        wait_for("40 more arrivals on CPU-0", || {
            (source.calls.load(Ordering::SeqCst) >= at + 40).then_some(())
        });
        // Live: the attributed wait shares over the health window, by
        // tenant, on /metrics; the context that runs nothing has no series.
        let share = |body: &str, who: &str| {
            let key = format!(
                "slicetrace_tenant_wait_share{{node=\"n1\",gpu_uuid=\"CPU-0\",tenant=\"{who}\"}} "
            );
            body.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let (a, p) = wait_for("both busy tenants' wait shares on /metrics", || {
            let m = agent.get("/metrics").body;
            Some((share(&m, "ml/train-a")?, share(&m, "pid:4242")?))
        });
        let m = agent.get("/metrics").body;
        assert!(
            !m.contains("notebook-c"),
            "an idle context is never blamed:\n{m}"
        );
        assert!(
            !m.contains("tenant_wait_share{node=\"n1\",gpu_uuid=\"CPU-1\""),
            "{m}"
        );
        // train-a is busy on every arrival, pid 4242 on about half, and
        // shares them when both are: about 3/4 and 1/4 of the blamed wait.
        assert!(
            a > p && p > 0.0 && a + p <= 1.0 + 1e-9,
            "train-a {a}, pid:4242 {p}"
        );
        assert!(agent.shutdown().clean_shutdown);
    })
    .await
    .unwrap();

    let rows = read_probes(&data);
    let shared: Vec<&ProbeRecord> = rows.iter().filter(|r| r.gpu_uuid == "CPU-0").collect();
    let other: Vec<&ProbeRecord> = rows.iter().filter(|r| r.gpu_uuid == "CPU-1").collect();
    assert!(
        shared.len() >= 40 && !other.is_empty(),
        "{} / {}",
        shared.len(),
        other.len()
    );
    // A GPU whose source cannot tell: unknown, never "nobody busy".
    for r in &other {
        assert_eq!((&r.busy_tenants, r.busy_count), (&None, None), "{r:#?}");
    }
    // Once the pod watch is up, every CPU-0 row names train-a by pod.
    let named: Vec<&&ProbeRecord> = shared
        .iter()
        .filter(|r| {
            r.busy_tenants
                .as_ref()
                .is_some_and(|b| b.iter().any(|t| t == "ml/train-a=80"))
        })
        .collect();
    assert!(named.len() >= 40, "{} rows name ml/train-a", named.len());
    let (mut with_no_pod, mut without) = (0, 0);
    for r in &shared {
        let b = r
            .busy_tenants
            .as_ref()
            .expect("CPU-0 rows know who was busy");
        assert_eq!(r.busy_count, Some(b.len() as u32), "{r:#?}");
        assert!(
            !b.iter()
                .any(|t| t.contains("notebook-c") || t.starts_with("pid:2003")),
            "a context that runs nothing is not busy: {b:?}"
        );
        for t in b {
            assert!(
                t == "ml/train-a=80" || t == "pid:2001=80" || t == "pid:4242=40",
                "unexpected tenant {t}"
            );
        }
        if b.iter().any(|t| t == "pid:4242=40") {
            with_no_pod += 1;
        } else {
            without += 1;
        }
    }
    // Busy in blocks of 20 answers: rows with it and rows 100 ms into an
    // idle block without it.
    assert!(
        with_no_pod > 0 && without > 0,
        "pid 4242 busy in alternate blocks: {with_no_pod} with, {without} without"
    );
}
