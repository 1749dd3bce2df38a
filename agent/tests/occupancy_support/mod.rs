//! Shared harness of the `occupancy_*` integration tests: a kubelet
//! pod-resources v1 server (tonic, unix socket), the Python fake Kubernetes
//! API server, fixtures, and a log capture.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use slicetrace_agent::probe::occupancy::pod_resources::proto::{
    pod_resources_lister_server::PodResourcesLister,
    pod_resources_lister_server::PodResourcesListerServer, AllocatableResourcesRequest,
    AllocatableResourcesResponse, ContainerDevices, ContainerMemory, ContainerResources,
    GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, NumaNode, PodResources, TopologyInfo,
};
use tokio_stream::wrappers::UnixListenerStream;

/// The time-sliced GPU of the fixtures (4 replicas).
pub const GPU_SHARED: &str = "GPU-6e1b5c3a-9f42-4d7e-b8a1-2c3d4e5f6a7b";
/// The GPU held whole by `batch/exclusive-e`.
pub const GPU_EXCLUSIVE: &str = "GPU-a1b2c3d4-e5f6-4a5b-9c8d-7e6f5a4b3c2d";

/// Container ID `n` of the k8s fixtures (`%064x` of `0xabc0000 + n`).
pub fn cid(n: u64) -> String {
    format!("{:064x}", 0xabc0000 + n)
}

/// Generous: the test box has 2 loaded cores.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// Waits until `f` holds, up to `WAIT` (the test kit's one wait).
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    slicetrace_e2e::testkit::wait_until_async(what, WAIT, || f().then_some(())).await
}

// ---------------------------------------------------------------- tools ----
// The workspace's one tool-or-skip rule (`slicetrace_e2e::runnable_for`): a
// missing tool fails the test under `SLICETRACE_REQUIRE_TOOLS=1`, else skips
// it with a `SKIP` line that tests/run.sh counts.

/// `$SLICETRACE_PYTHON` or `python3`, when it runs; `what` names what is
/// skipped without it.
pub fn python(what: &str) -> Option<String> {
    let py = std::env::var("SLICETRACE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    found(slicetrace_e2e::runnable_for(&py, &["--version"], what))
}

/// `kubectl` (`/usr/bin/kubectl` first), when it runs; `what` names what is
/// skipped without it.
pub fn kubectl(what: &str) -> Option<String> {
    let k = if Path::new("/usr/bin/kubectl").exists() {
        "/usr/bin/kubectl"
    } else {
        "kubectl"
    };
    found(slicetrace_e2e::runnable_for(
        k,
        &["version", "--client"],
        what,
    ))
}

fn found(tool: Option<PathBuf>) -> Option<String> {
    tool.map(|p| p.to_string_lossy().into_owned())
}

// ------------------------------------------------------- fake k8s API ------

/// `tests/k8s_api_server.py`, killed on drop.
pub struct FakeApi {
    child: Child,
    pub port: u16,
}

impl FakeApi {
    /// Starts the server with the `tests/fixtures/k8s` objects.
    pub fn start(python: &str) -> Self {
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/k8s_api_server.py"))
            .args(["--port", "0", "--bookmark-interval", "1", "--fixtures"])
            .arg(fixtures().join("k8s"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start k8s_api_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        let port = line.trim().parse().expect("port on the first stdout line");
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One blocking HTTP/1.1 request (`Connection: close`); (status, body).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect fake api");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read response");
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn control(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let (status, body) = self.request(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {body}");
        serde_json::from_str(&body).expect("control answer is json")
    }

    /// Adds or modifies a pod on `node` with one container `cid`.
    pub fn add_pod(&self, ns: &str, name: &str, uid: &str, node: &str, container_id: &str) {
        let pod = serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "qosClass": "BestEffort", "containerStatuses": [
                {"name": "c", "containerID": format!("containerd://{container_id}"), "image": "busybox",
                 "imageID": "", "ready": true, "restartCount": 0}
            ]}
        });
        self.control("POST", "/_test/pods", &pod.to_string());
    }

    pub fn stats(&self) -> serde_json::Value {
        self.control("GET", "/_test/stats", "")
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------- pod-resources server ----

/// The fixture `tests/fixtures/pod-resources/list.json` (protobuf JSON
/// mapping) as a `ListPodResourcesResponse`.
pub fn pod_resources_fixture() -> ListPodResourcesResponse {
    let raw = std::fs::read_to_string(fixtures().join("pod-resources/list.json")).expect("fixture");
    let v: serde_json::Value = serde_json::from_str(&raw).expect("fixture json");
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let arr = |v: &serde_json::Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    let topo = |v: &serde_json::Value| {
        v.get("topology").map(|t| TopologyInfo {
            nodes: arr(t, "nodes")
                .iter()
                .map(|n| NumaNode {
                    id: n["ID"].as_i64().unwrap_or_default(),
                })
                .collect(),
        })
    };
    ListPodResourcesResponse {
        pod_resources: arr(&v, "podResources")
            .iter()
            .map(|p| PodResources {
                name: s(p, "name"),
                namespace: s(p, "namespace"),
                containers: arr(p, "containers")
                    .iter()
                    .map(|c| ContainerResources {
                        name: s(c, "name"),
                        devices: arr(c, "devices")
                            .iter()
                            .map(|d| ContainerDevices {
                                resource_name: s(d, "resourceName"),
                                device_ids: arr(d, "deviceIds")
                                    .iter()
                                    .map(|i| i.as_str().unwrap_or_default().to_string())
                                    .collect(),
                                topology: topo(d),
                            })
                            .collect(),
                        cpu_ids: arr(c, "cpuIds").iter().filter_map(|i| i.as_i64()).collect(),
                        memory: arr(c, "memory")
                            .iter()
                            .map(|m| ContainerMemory {
                                memory_type: s(m, "memoryType"),
                                size: m["size"]
                                    .as_str()
                                    .and_then(|x| x.parse().ok())
                                    .unwrap_or_default(),
                                topology: topo(m),
                            })
                            .collect(),
                        dynamic_resources: vec![],
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A kubelet stand-in: serves `List` from a mutable reply.
#[derive(Clone, Default)]
pub struct Kubelet {
    pub reply: Arc<Mutex<ListPodResourcesResponse>>,
    pub calls: Arc<Mutex<u64>>,
}

#[tonic::async_trait]
impl PodResourcesLister for Kubelet {
    async fn list(
        &self,
        _req: tonic::Request<ListPodResourcesRequest>,
    ) -> Result<tonic::Response<ListPodResourcesResponse>, tonic::Status> {
        *self.calls.lock().unwrap() += 1;
        Ok(tonic::Response::new(self.reply.lock().unwrap().clone()))
    }

    async fn get_allocatable_resources(
        &self,
        _req: tonic::Request<AllocatableResourcesRequest>,
    ) -> Result<tonic::Response<AllocatableResourcesResponse>, tonic::Status> {
        Ok(tonic::Response::new(AllocatableResourcesResponse::default()))
    }

    async fn get(
        &self,
        req: tonic::Request<GetPodResourcesRequest>,
    ) -> Result<tonic::Response<GetPodResourcesResponse>, tonic::Status> {
        let r = req.into_inner();
        let reply = self.reply.lock().unwrap();
        let pod = reply
            .pod_resources
            .iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .cloned()
            .ok_or_else(|| tonic::Status::not_found("pod not found"))?;
        Ok(tonic::Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod),
        }))
    }
}

/// A running pod-resources server; stops (and removes its socket) on drop.
pub struct KubeletServer {
    pub kubelet: Kubelet,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KubeletServer {
    /// Serves `reply` on `socket` (which must not exist yet).
    pub fn start(socket: &Path, reply: ListPodResourcesResponse) -> Self {
        let kubelet = Kubelet {
            reply: Arc::new(Mutex::new(reply)),
            calls: Arc::default(),
        };
        let listener = tokio::net::UnixListener::bind(socket).expect("bind pod-resources socket");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = PodResourcesListerServer::new(kubelet.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .expect("pod-resources server");
        });
        Self {
            kubelet,
            socket: socket.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving and removes the socket, like a kubelet that went away.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for KubeletServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

// ---------------------------------------------------------- log capture ----

#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        std::io::stderr().write_all(b).ok();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) a global subscriber that captures every
/// log line; returns the buffer.
pub fn capture_logs() -> LogBuf {
    static BUF: OnceLock<LogBuf> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,slicetrace_agent=debug,h2=warn,tonic=warn,hyper=warn,tower=warn,kube=warn",
            ))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        buf
    })
    .clone()
}

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A fast, small CPU probe for the agent-level tests: bursts of one run
/// every 20 ms, Parquet files every 300 ms, verdicts every 100 ms, over
/// `data`; `listen` is the /metrics address ("" for none), `extra` more
/// TOML tables.
pub fn fast_agent_config(
    data: &Path,
    node: &str,
    listen: &str,
    extra: &str,
) -> slicetrace_agent::config::Config {
    let mut c = slicetrace_agent::config::Config::from_toml(&format!(
        "node_name = {node:?}\nshutdown_deadline_ms = 5000\n\
         [probe]\ninterval_ms = 20\njitter_pct = 0\nself_test = false\narrivals = \"burst\"\nburst_runs = 1\ngemm_n = 64\nfft_n = 256\nfft_batch = 1\n\
         [parquet]\nrotate_interval_ms = 300\nflush_interval_ms = 100\n\
         [health]\nwindow_ms = 1000\nevaluate_interval_ms = 100\nmin_samples = 5\n\
         [metrics]\nlisten = {listen:?}\n{extra}"
    ))
    .expect("config");
    c.data_dir = data.to_path_buf();
    c.validate().expect("valid config");
    c
}

/// An agent running on a tokio task, and the signal that stops it.
pub struct AgentTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<slicetrace_agent::agent::RunReport>>,
}

impl AgentTask {
    /// Runs `agent` until [`AgentTask::stop`]; `on_metrics` gets the
    /// /metrics address once it is served.
    pub fn spawn(
        agent: slicetrace_agent::agent::Agent,
        on_metrics: impl FnOnce(std::net::SocketAddr) + Send + 'static,
    ) -> AgentTask {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(
            async move {
                let _ = rx.await;
            },
            on_metrics,
        ));
        AgentTask {
            stop: Some(tx),
            task,
        }
    }

    /// Whether the agent's run has ended (on its own: nothing stopped it).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the agent and returns its report, after checking that it
    /// stopped within 30 s and closed every sink in time.
    pub async fn stop(mut self) -> slicetrace_agent::agent::RunReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let report = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("agent stopped within 30 s")
            .expect("agent task did not panic")
            .expect("agent run succeeded");
        assert!(
            report.clean_shutdown,
            "every sink closed within the deadline"
        );
        report
    }
}

/// [`pod_resources_fixture`] with its device IDs' GPU UUIDs renamed
/// (`(from, to)` pairs), e.g. onto the CPU pseudo-devices.
pub fn pod_resources_fixture_renamed(renames: &[(&str, &str)]) -> ListPodResourcesResponse {
    let mut reply = pod_resources_fixture();
    for p in &mut reply.pod_resources {
        for c in &mut p.containers {
            for d in &mut c.devices {
                for id in &mut d.device_ids {
                    for (from, to) in renames {
                        *id = id.replace(from, to);
                    }
                }
            }
        }
    }
    reply
}

/// A process of a fake /proc under `root`: its cgroup file and command name.
pub fn proc_entry(root: &Path, pid: u32, cgroup: &str, comm: &str) {
    let d = root.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("cgroup"), cgroup).unwrap();
    std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
}
