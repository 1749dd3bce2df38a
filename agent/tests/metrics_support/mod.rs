//! Shared harness of the `metrics_*`, `node_condition` and `agent_occupancy`
//! integration tests: the whole agent (`agent::run`) on the CPU backend on its
//! own runtime thread, a gate that holds the first probe run back, a minimal
//! HTTP/1.0 client for `/metrics`, `/healthz` and `/readyz`. Real tools
//! (`promtool`, `prometheus`) come from `slicetrace_e2e::runnable`, the
//! workspace's one tool-or-skip rule.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use slicetrace_agent::agent::{Agent, RunReport};
use slicetrace_agent::config::Config;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::occupancy::{KubeApiMode, OccupancySource};
use slicetrace_agent::probe::telemetry::NoTelemetry;
use slicetrace_agent::serve::live::LiveState;
pub use slicetrace_e2e::testkit::Gate;
use slicetrace_e2e::testkit::{Faults, FaultyBackend};
use slicetrace_probe::cpu::CpuBackend;
use slicetrace_probe::{BackendKind, ProbeBackend};

/// Generous: the test box has 2 shared, loaded cores.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` every 50 ms until it returns `Some` or `WAIT` passes.
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    slicetrace_e2e::testkit::wait_until(what, WAIT, f)
}

// ---------------------------------------------------------------- tools ----

// The occupancy harness (fake API, log capture), for the tests of the whole
// agent with occupancy; tools come from `slicetrace_e2e::runnable`.
#[path = "../occupancy_support/mod.rs"]
pub mod occupancy_support;

// ----------------------------------------------------------------- rows -----

/// Every `probes` row under `data_dir/probes` (all Parquet files, any
/// depth); panics when there is none.
pub fn read_probes(data_dir: &Path) -> Vec<slicetrace_schema::ProbeRecord> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&data_dir.join("probes"), &mut files);
    assert!(
        !files.is_empty(),
        "no probe Parquet files under {}",
        data_dir.display()
    );
    let mut rows = Vec::new();
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            rows.extend(slicetrace_schema::probes_from_batch(&batch.unwrap()).unwrap());
        }
    }
    rows
}

// ---------------------------------------------------------------- config ----

/// A config for a fast, small agent on the CPU backend: 100 ms cycles of 5
/// runs per kernel, small kernels, `/metrics` on a free loopback port, a 2 s
/// health window evaluated every 100 ms, no OTLP, no Kubernetes API and no
/// pod-resources socket.
pub fn small_config(data_dir: &Path) -> Config {
    let mut c = Config {
        node_name: "n1".into(),
        data_dir: data_dir.to_path_buf(),
        backend: BackendKind::Cpu,
        shutdown_deadline_ms: 5000,
        ..Config::default()
    };
    c.probe.interval_ms = 100;
    c.probe.jitter_pct = 10;
    c.probe.self_test = false;
    c.probe.fft_n = Some(1024);
    c.probe.fft_batch = Some(1);
    c.probe.gemm_n = Some(64);
    c.probe.burst_runs = Some(5);
    // Rows at the old steady rate (these tests are about metrics/occupancy).
    c.probe.arrivals = Some(slicetrace_agent::probe::config::Arrivals::Burst);
    c.metrics.listen = "127.0.0.1:0".into();
    c.otlp.endpoint = None;
    c.health.window_ms = 2000;
    c.health.evaluate_interval_ms = 100;
    c.health.min_samples = 5;
    c.health.baseline_min_samples = 10;
    c.parquet.flush_interval_ms = 200;
    c.parquet.rotate_interval_ms = 60_000;
    c.occupancy.kube_api = KubeApiMode::Off;
    c.occupancy.pod_resources_socket = data_dir.join("no-kubelet.sock");
    c.occupancy.pod_resources_interval_ms = 200;
    c.occupancy.node_labels_interval_ms = 300;
    c.occupancy.kube_backoff_max_ms = 1000;
    c.occupancy.proc_root = data_dir.join("no-proc");
    c
}

/// One CPU pseudo-device per index, with the config's CPU probe spec.
pub fn cpu_backends(cfg: &Config, indices: &[u32]) -> Vec<Box<dyn ProbeBackend>> {
    let spec = cfg.probe_spec("cpu");
    indices
        .iter()
        .map(|&i| {
            Box::new(CpuBackend::new(i, &spec).expect("cpu backend")) as Box<dyn ProbeBackend>
        })
        .collect()
}

// ------------------------------------------------------------------ gate ----

/// Wraps every backend in `backends` behind one new gate (closed).
pub fn gated(backends: Vec<Box<dyn ProbeBackend>>) -> (Vec<Box<dyn ProbeBackend>>, Gate) {
    let gate = Gate::closed();
    let b = backends
        .into_iter()
        .map(|inner| FaultyBackend::wrap(inner, Faults::gated(gate.clone())))
        .collect();
    (b, gate)
}

// ----------------------------------------------------------------- agent ----

/// `agent::run` on its own runtime thread; stopped (and joined) on drop.
pub struct RunningAgent {
    /// Where `/metrics` is served.
    pub addr: SocketAddr,
    /// The agent's counters.
    pub counters: Arc<Counters>,
    /// The agent's live state.
    pub live: Arc<LiveState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<RunReport>>>,
    gate: Option<Gate>,
}

impl RunningAgent {
    /// Starts the agent with `backends` and (when `Some`) an injected
    /// occupancy source; `None` makes the agent start its configured sources.
    pub fn start(
        config: Config,
        backends: Vec<Box<dyn ProbeBackend>>,
        occupancy: Option<Arc<dyn OccupancySource>>,
        gate: Option<Gate>,
    ) -> Self {
        Self::start_with_telemetry(config, backends, occupancy, gate, Arc::new(NoTelemetry))
    }

    /// [`RunningAgent::start`] with an injected telemetry source (the NVML
    /// seam: throttle reasons, tenants).
    pub fn start_with_telemetry(
        config: Config,
        backends: Vec<Box<dyn ProbeBackend>>,
        occupancy: Option<Arc<dyn OccupancySource>>,
        gate: Option<Gate>,
        telemetry: Arc<dyn slicetrace_agent::probe::telemetry::TelemetrySource>,
    ) -> Self {
        config.validate().expect("test config is valid");
        let mut agent = Agent::new(config, backends, telemetry);
        agent.occupancy = occupancy;
        let (counters, live) = (agent.counters.clone(), agent.live.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("agent-under-test".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("agent runtime");
                let r = rt.block_on(agent.run(
                    async move {
                        let _ = stop_rx.await;
                    },
                    move |a| {
                        let _ = addr_tx.send(a);
                    },
                ));
                rt.shutdown_timeout(Duration::from_secs(2));
                r
            })
            .expect("spawn agent thread");
        let addr = match addr_rx.recv_timeout(WAIT) {
            Ok(a) => a,
            Err(_) => {
                let r = thread.join();
                panic!("the agent never reported its metrics address: {r:?}");
            }
        };
        Self {
            addr,
            counters,
            live,
            stop: Some(stop_tx),
            thread: Some(thread),
            gate,
        }
    }

    /// GET `path` on the agent's metrics server.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, "*/*")
    }

    /// GET `path` with an `Accept` header.
    pub fn get_accept(&self, path: &str, accept: &str) -> HttpResponse {
        http_get(self.addr, path, accept)
    }

    /// Stops the agent (opening its gate, if any) and returns its report.
    pub fn shutdown(mut self) -> RunReport {
        self.stop_and_join()
            .expect("agent thread")
            .expect("agent thread panicked")
            .expect("agent::run")
    }

    fn stop_and_join(&mut self) -> Option<std::thread::Result<anyhow::Result<RunReport>>> {
        if let Some(g) = &self.gate {
            g.open();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().map(std::thread::JoinHandle::join)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

// ------------------------------------------------------------------ http ----

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, lowercase names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl HttpResponse {
    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One blocking HTTP/1.0 GET (the server closes the connection after the
/// response, so there is no chunked body to decode).
pub fn http_get(addr: SocketAddr, path_and_query: &str, accept: &str) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )
    .expect("write request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------- exposition ----

/// One sample line of a text exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the sample lines of a Prometheus/OpenMetrics text exposition
/// (enough for the agent's output: no escaped quotes in label values).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (l, v) = r.split_once('}').unwrap_or((r, ""));
            let labels = l
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
                .collect();
            (labels, v)
        } else {
            (Vec::new(), rest)
        };
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}
