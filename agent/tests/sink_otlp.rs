//! OTLP sink against a real collector: rotel (an OTLP collector) receives
//! the agent's spans over gRPC and over HTTP/protobuf, and the test finds the
//! trace ids of the records in rotel's debug log. Also: no collector, a
//! collector that never answers, and a collector that comes back.
//!
//! rotel comes from the project venv (`pip install rotel`): `$SLICETRACE_ROTEL`,
//! else the `rotel-agent` shipped inside the `rotel` Python package of
//! `$SLICETRACE_PYTHON` / `.venv/bin/python`, else `rotel-agent` on `PATH`.
//! Without it the collector tests are skipped with a note, unless
//! `SLICETRACE_REQUIRE_TOOLS=1`, which turns a missing tool into a failure.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use slicetrace_agent::config::Config;
use slicetrace_agent::consumers::otlp::{OtlpConfig, OtlpProtocol, OtlpSink, TraceShape};
use slicetrace_agent::consumers::Sink;
use slicetrace_agent::internal_events::Counters;
use slicetrace_agent::probe::ids::{new_span_id, new_trace_id};
use slicetrace_schema::{Backend, DeviceFields, Kernel, ProbeRecord};

/// rotel from the project venv or `$SLICETRACE_ROTEL` (the shared rule of
/// the test support crate: a missing tool skips, visibly, unless
/// `SLICETRACE_REQUIRE_TOOLS=1`).
fn rotel_binary() -> Option<PathBuf> {
    slicetrace_e2e::rotel()
}

/// A running rotel; killed on drop.
struct Rotel {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rotel {
    fn start(bin: &Path, grpc_port: u16, http_port: u16) -> Rotel {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("rotel.log");
        let out = fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let child = Command::new(bin)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start rotel");
        let r = Rotel {
            child,
            log,
            _dir: dir,
        };
        for port in [grpc_port, http_port] {
            let up = slicetrace_e2e::testkit::poll_until(Duration::from_secs(15), || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            });
            assert!(
                up.is_some(),
                "rotel did not listen on {port}: {}",
                r.log_text()
            );
        }
        r
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 20 s until every needle is in the log (the test kit's
    /// one wait); on a timeout, says which are missing and shows the log.
    async fn wait_for(&self, needles: &[String]) -> String {
        let found = slicetrace_e2e::testkit::poll_until_async(Duration::from_secs(20), || {
            let text = self.log_text();
            std::future::ready(
                needles
                    .iter()
                    .all(|n| text.contains(n.as_str()))
                    .then_some(text),
            )
        })
        .await;
        found.unwrap_or_else(|| {
            let text = self.log_text();
            let missing: Vec<&String> = needles
                .iter()
                .filter(|n| !text.contains(n.as_str()))
                .collect();
            panic!(
                "not in rotel's log after 20 s: {missing:?}\n--- log tail ---\n{}",
                tail(&text)
            )
        })
    }
}

fn tail(s: &str) -> &str {
    let n = s.len().saturating_sub(4000);
    let mut i = n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of one probe cycle (FFT burst then GEMM burst), with the ids
/// the pipeline would have filled in.
fn cycle(cycle: u64, t0_ns: i64) -> (slicetrace_schema::TraceId, Vec<ProbeRecord>) {
    let trace = new_trace_id();
    let mut v = Vec::new();
    for (k, kernel) in Kernel::ALL.into_iter().enumerate() {
        for seq in 0..3u32 {
            let i = k as i64 * 3 + i64::from(seq);
            v.push(ProbeRecord {
                ts_ns: t0_ns + i * 2_000_000,
                node: "node-a".into(),
                gpu_uuid: "GPU-0000".into(),
                gpu_index: 0,
                gpu_name: Some("NVIDIA H100".into()),
                backend: Backend::Cuda,
                kernel,
                shape: "n=1024".into(),
                precision: "fp32".into(),
                flops: 2.0e9,
                cycle,
                burst_seq: seq,
                gpu_ms: Some(0.4),
                wall_ms: 1.5,
                queue_ms: Some(1.1),
                device: DeviceFields {
                    sm_clock_mhz: Some(1980),
                    power_w: Some(312.5),
                    ..Default::default()
                },
                pods: Some(vec!["team-a/trainer-0".into()]),
                pod_count: Some(1),
                trace_id: Some(trace),
                span_id: Some(new_span_id()),
                ..Default::default()
            });
        }
    }
    (trace, v)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// Messages the sink's input queue holds (more than any test sends at once,
/// so `export` never waits for room).
const QUEUE_MSGS: usize = 1024;

/// A sink with no `k8s.node.name`, one trace per probe cycle.
fn start(cfg: OtlpConfig, counters: &Arc<Counters>) -> OtlpSink {
    OtlpSink::new(
        cfg,
        "host-a",
        None,
        counters.clone(),
        QUEUE_MSGS,
        TraceShape::PerCycle,
    )
    .expect("sink")
}

fn config(endpoint: String, protocol: OtlpProtocol) -> OtlpConfig {
    OtlpConfig {
        endpoint: Some(endpoint),
        protocol,
        timeout_ms: 3000,
        export_interval_ms: 200,
        ..Default::default()
    }
}

async fn spans_reach_rotel(protocol: OtlpProtocol) {
    let Some(bin) = rotel_binary() else { return };
    let (grpc, http) = (slicetrace_e2e::free_port(), slicetrace_e2e::free_port());
    let rotel = Rotel::start(&bin, grpc, http);
    let endpoint = match protocol {
        OtlpProtocol::Grpc => format!("http://127.0.0.1:{grpc}"),
        OtlpProtocol::HttpProtobuf => format!("http://127.0.0.1:{http}"),
    };
    let counters = Arc::new(Counters::default());
    let mut sink = OtlpSink::new(
        config(endpoint, protocol),
        "host-a",
        Some("node-a"),
        counters.clone(),
        QUEUE_MSGS,
        TraceShape::PerCycle,
    )
    .expect("sink");
    let (t1, c1) = cycle(0, now_ns());
    let (t2, c2) = cycle(1, now_ns() + 50_000_000);
    let run_span = c1[0].span_id.expect("span id");
    // A cycle split over two export calls.
    sink.export(c1[..3].to_vec()).await.expect("export");
    sink.export(c1[3..].to_vec()).await.expect("export");
    sink.export(c2).await.expect("export");
    sink.force_flush().await.expect("flush");
    let mut needles = vec![
        "host.name: Str(host-a)".to_string(),
        "k8s.node.name: Str(node-a)".into(),
    ];
    let env_names_service = ["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if !env_names_service {
        needles.push("service.name: Str(slicetrace-agent)".into());
    }
    needles.extend([
        format!("Trace ID       : {t1}"),
        format!("Trace ID       : {t2}"),
        format!("ID             : {run_span}"),
        "Name           : probe_cycle".into(),
        "Name           : probe gemm".into(),
        "Name           : queued".into(),
        "Name           : executing".into(),
        "slicetrace.queue_ms".into(),
        "nvml.sm_clock_mhz".into(),
        "k8s.gpu.pods".into(),
        "slicetrace-agent".into(),
        "node-a".into(),
    ]);
    let log = rotel.wait_for(&needles).await;
    if std::env::var_os("SLICETRACE_TEST_VERBOSE").is_some() {
        eprintln!("{}\n...\n{}", &log[..log.len().min(3000)], tail(&log));
    }
    // Absent readings are omitted, never sent as 0.
    assert!(
        !log.contains("nvml.temp_c"),
        "temp_c was None and must not be exported"
    );
    // Two cycles: 2 roots + 12 runs + 24 children.
    sink.shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert_eq!(Counters::get(&counters.otlp_spans_exported), 38);
    assert_eq!(Counters::get(&counters.otlp_spans_dropped), 0);
    assert_eq!(Counters::get(&counters.otlp_export_errors), 0);
}

#[tokio::test]
async fn grpc_spans_reach_rotel_with_trace_ids() {
    spans_reach_rotel(OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn http_protobuf_spans_reach_rotel_with_trace_ids() {
    spans_reach_rotel(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn collector_down_drops_are_counted_and_export_returns_promptly() {
    // Nothing listens on this port.
    let port = slicetrace_e2e::free_port();
    let counters = Arc::new(Counters::default());
    let mut cfg = config(format!("http://127.0.0.1:{port}"), OtlpProtocol::Grpc);
    cfg.timeout_ms = 500;
    cfg.queue_capacity = 64;
    let mut sink = start(cfg, &counters);
    // Export only hands records to the task's queue, never waits for the
    // collector; the deadline guards against a hang, not a latency.
    tokio::time::timeout(Duration::from_secs(60), async {
        for c in 0..20 {
            let (_, recs) = cycle(c, now_ns());
            sink.export(recs).await.expect("export never fails");
        }
    })
    .await
    .expect("export waited for the collector");
    let _ = sink.force_flush().await;
    // 20 cycles × 18 spans do not fit a span queue of 64: the export task
    // counted the overflow as it queued (export only hands records to the
    // task's input queue, so the count is there once the flush answered).
    assert!(Counters::get(&counters.otlp_spans_dropped) > 0);
    let _ = sink.shutdown(Duration::from_secs(1)).await;
    assert!(Counters::get(&counters.otlp_export_errors) >= 1);
    assert_eq!(Counters::get(&counters.otlp_spans_exported), 0);
    // Every span is either dropped or still counted as dropped at shutdown.
    assert_eq!(Counters::get(&counters.otlp_spans_dropped), 20 * 18 + 20);
}

#[tokio::test]
async fn slow_collector_is_bounded_by_the_export_timeout() {
    // Accepts connections and never answers.
    let listener = slicetrace_e2e::testkit::Listener::bind();
    let port = listener.port();
    let listener = listener.into_std();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let counters = Arc::new(Counters::default());
    let mut cfg = config(
        format!("http://127.0.0.1:{port}"),
        OtlpProtocol::HttpProtobuf,
    );
    cfg.timeout_ms = 400;
    let mut sink = start(cfg, &counters);
    let (_, recs) = cycle(0, now_ns());
    sink.export(recs).await.expect("export");
    // The collector never answers: only the export timeout ends the flush
    // (the deadline here guards against a hang).
    let _ = tokio::time::timeout(Duration::from_secs(60), sink.force_flush())
        .await
        .expect("flush waited for the collector, not its timeout");
    assert!(Counters::get(&counters.otlp_export_errors) >= 1);
    assert_eq!(Counters::get(&counters.otlp_spans_dropped), 19);
    let _ = sink.shutdown(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn export_resumes_when_the_collector_comes_back() {
    let Some(bin) = rotel_binary() else { return };
    let (grpc, http) = (slicetrace_e2e::free_port(), slicetrace_e2e::free_port());
    let counters = Arc::new(Counters::default());
    let mut cfg = config(format!("http://127.0.0.1:{grpc}"), OtlpProtocol::Grpc);
    cfg.timeout_ms = 1000;
    let mut sink = start(cfg, &counters);
    let (_, lost) = cycle(0, now_ns());
    sink.export(lost).await.expect("export");
    let _ = sink.force_flush().await;
    let dropped = Counters::get(&counters.otlp_spans_dropped);
    assert_eq!(dropped, 19);

    let rotel = Rotel::start(&bin, grpc, http);
    let (t, recs) = cycle(1, now_ns());
    sink.export(recs).await.expect("export");
    sink.force_flush().await.expect("flush");
    rotel.wait_for(&[format!("Trace ID       : {t}")]).await;
    assert_eq!(
        Counters::get(&counters.otlp_spans_dropped),
        dropped,
        "drops stopped"
    );
    assert_eq!(Counters::get(&counters.otlp_spans_exported), 19);
    sink.shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
}

/// A config file with only an `[otlp]` table, validated as the agent does.
fn agent_config(otlp: &str, env: &[(&str, &str)], data_dir: &Path) -> Result<Config, String> {
    let mut c = Config::from_toml(&format!("[otlp]\n{otlp}")).map_err(|e| e.to_string())?;
    c.data_dir = data_dir.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c.apply_env(&|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        .map_err(|e| e.to_string())?;
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

/// The agent's config check and the sink apply one endpoint rule: an
/// `http://` or `https://` URL, or a bare `host:port` whose scheme
/// `insecure` decides. (The config check used to require a scheme, so
/// `insecure` could never take effect through the agent.)
#[test]
fn config_check_applies_the_otlp_endpoint_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = |otlp: &str| {
        agent_config(otlp, &[], dir.path()).unwrap_or_else(|e| panic!("{otlp:?}: {e}"))
    };
    let err =
        |otlp: &str, env: &[(&str, &str)]| agent_config(otlp, env, dir.path()).expect_err(otlp);
    ok("endpoint = \"http://c:4317\"\n");
    ok("endpoint = \"https://c:4317\"\n");
    ok("endpoint = \"c:4317\"\n");
    ok("endpoint = \"c:4318\"\nprotocol = \"http/protobuf\"\ninsecure = true\n");
    for bad in [
        "ftp://c:4317",
        "unix:///run/otel.sock",
        "not a url",
        "http://",
        "",
    ] {
        let e = err(&format!("endpoint = {bad:?}\n"), &[]);
        assert!(e.starts_with("otlp.endpoint: "), "{bad:?}: {e}");
    }
    // http/protobuf is plain text only in this build: a bare endpoint needs
    // `insecure`, from the file or from the environment.
    let bare_http = "endpoint = \"c:4318\"\nprotocol = \"http/protobuf\"\n";
    let e = err(bare_http, &[]);
    assert!(e.starts_with("otlp.endpoint: https"), "{e}");
    let c = agent_config(
        bare_http,
        &[("OTEL_EXPORTER_OTLP_INSECURE", "true")],
        dir.path(),
    )
    .expect("insecure from the environment");
    assert!(c.otlp.insecure);
}

/// `insecure` end to end: a config file with a bare `host:port`,
/// `OTEL_EXPORTER_OTLP_INSECURE=true`, `Config::validate`, then
/// `OtlpSink::new`: the spans reach a plain-text gRPC collector. Without
/// `insecure` the same endpoint means TLS, which that collector does not
/// speak: nothing reaches it, and the failure is counted.
#[tokio::test]
async fn insecure_flag_reaches_a_plain_text_collector_through_config() {
    let Some(bin) = rotel_binary() else { return };
    let (grpc, http) = (slicetrace_e2e::free_port(), slicetrace_e2e::free_port());
    let rotel = Rotel::start(&bin, grpc, http);
    let dir = tempfile::tempdir().expect("tempdir");
    let otlp =
        format!("endpoint = \"127.0.0.1:{grpc}\"\ntimeout_ms = 1000\nexport_interval_ms = 200\n");

    let c = agent_config(
        &otlp,
        &[("OTEL_EXPORTER_OTLP_INSECURE", "true")],
        dir.path(),
    )
    .expect("valid config");
    assert!(c.otlp.insecure);
    let counters = Arc::new(Counters::default());
    let mut sink = start(c.otlp, &counters);
    let (t, recs) = cycle(0, now_ns());
    sink.export(recs).await.expect("export");
    sink.force_flush().await.expect("flush");
    rotel.wait_for(&[format!("Trace ID       : {t}")]).await;
    sink.shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert_eq!(Counters::get(&counters.otlp_spans_exported), 19);
    assert_eq!(Counters::get(&counters.otlp_export_errors), 0);

    let c = agent_config(&otlp, &[], dir.path()).expect("valid config");
    assert!(!c.otlp.insecure);
    let counters = Arc::new(Counters::default());
    let mut sink = start(c.otlp, &counters);
    let (t, recs) = cycle(1, now_ns());
    sink.export(recs).await.expect("export");
    let _ = sink.force_flush().await;
    let _ = sink.shutdown(Duration::from_secs(2)).await;
    assert_eq!(Counters::get(&counters.otlp_spans_exported), 0);
    assert!(Counters::get(&counters.otlp_export_errors) >= 1);
    assert_eq!(Counters::get(&counters.otlp_spans_dropped), 19);
    // A (wrongly) plain-text request was sent before that sink shut down.
    // Rather than give it time to show up, send a marker after it through
    // an insecure sink and wait for the marker: once rotel has logged that,
    // it has logged whatever reached it before.
    let c = agent_config(
        &otlp,
        &[("OTEL_EXPORTER_OTLP_INSECURE", "true")],
        dir.path(),
    )
    .expect("valid config");
    let mut marker_sink = start(c.otlp, &Arc::new(Counters::default()));
    let (marker, recs) = cycle(2, now_ns());
    marker_sink.export(recs).await.expect("export");
    marker_sink.force_flush().await.expect("flush");
    rotel
        .wait_for(&[format!("Trace ID       : {marker}")])
        .await;
    marker_sink
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert!(
        !rotel.log_text().contains(&t.to_string()),
        "spans reached the plain-text collector without insecure"
    );
}
