//! A real Prometheus (Debian package `prometheus`; `tests/run.sh` installs
//! it) scrapes a whole agent on loopback every second, and one gauge and one
//! counter are queried back through its HTTP API. Without the binary the test
//! is skipped with a note, unless `SLICETRACE_REQUIRE_TOOLS=1`, which turns a
//! missing tool into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod metrics_support;

use std::process::{Child, Command, Stdio};

use metrics_support::*;

/// A Prometheus server, killed (and reaped) on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &std::path::Path, target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: slicetrace\n    scrape_interval: 1s\n    \
                 static_configs:\n      - targets: ['{target}']\n        labels:\n          node: n1\n"
            ),
        )
        .unwrap();
        let port = slicetrace_e2e::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self { child, port, dir }
    }

    fn api(&self, path_and_query: &str) -> serde_json::Value {
        let r = http_get(
            ([127, 0, 0, 1], self.port).into(),
            path_and_query,
            "application/json",
        );
        assert_eq!(r.status, 200, "{path_and_query}: {r:?}");
        serde_json::from_str(&r.body).expect("prometheus answers json")
    }

    fn up(&mut self) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited: {status}\n{}", self.log());
        }
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && http_get(([127, 0, 0, 1], self.port).into(), "/-/ready", "*/*").status == 200
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_agent_and_answers_a_gauge_query() {
    let Some(binary) = slicetrace_e2e::runnable("prometheus", &["--version"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    // Poisson arrivals: both kernels have arrival runs (a burst's GEMM has none).
    cfg.probe.arrivals = Some(slicetrace_agent::probe::config::Arrivals::Poisson);
    cfg.probe.rate_hz = Some(40.0);
    let backends = cpu_backends(&cfg, &[0]);
    let agent = RunningAgent::start(cfg, backends, None, None);
    wait_for("/readyz 200", || {
        (agent.get("/readyz").status == 200).then_some(())
    });

    let mut prom = Prometheus::start(&binary, agent.addr);
    wait_for("prometheus ready", || prom.up().then_some(()));
    // The target is up once a scrape parsed (a parse error reads as down,
    // with the parser's message in lastError).
    let target = wait_for("the agent's target to be up", || {
        let v = prom.api("/api/v1/targets?state=active");
        let t = v["data"]["activeTargets"]
            .as_array()
            .and_then(|a| a.first())
            .cloned()?;
        if t["health"] == "down" && !t["lastError"].as_str().unwrap_or_default().is_empty() {
            panic!(
                "scraping the agent failed: {t}\nprometheus log:\n{}",
                prom.log()
            );
        }
        (t["health"] == "up").then_some(t)
    });
    assert_eq!(target["labels"]["job"], "slicetrace", "{target}");

    // The wall-clock p99 gauge of CPU-0, with the agent's labels.
    let q = r#"slicetrace_probe_latency_seconds{clock="wall",quantile="0.99"}"#;
    let result = wait_for("a wall p99 sample in prometheus", || {
        let r = prom.query(q);
        (r.len() == 2).then_some(r)
    });
    for s in &result {
        let m = &s["metric"];
        assert_eq!(m["__name__"], "slicetrace_probe_latency_seconds", "{s}");
        assert_eq!(m["gpu_uuid"], "CPU-0", "{s}");
        assert_eq!(m["gpu_index"], "0", "{s}");
        assert_eq!(m["clock"], "wall", "{s}");
        assert_eq!(m["quantile"], "0.99", "{s}");
        assert_eq!(m["job"], "slicetrace", "{s}");
        assert_eq!(m["node"], "n1", "{s}");
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v > 0.0 && v < 10.0, "p99 {v} s: {s}");
    }
    let mut kernels: Vec<_> = result
        .iter()
        .map(|s| s["metric"]["kernel"].as_str().unwrap().to_string())
        .collect();
    kernels.sort();
    assert_eq!(kernels, ["fft", "gemm"]);

    // A counter (OpenMetrics `_total`), and the verdict gauge.
    let runs = wait_for("probe runs counted", || {
        let r = prom.query("slicetrace_probe_runs_total");
        let v: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        (v > 0.0).then_some(v)
    });
    assert!(runs >= 10.0, "{runs}");
    let verdicts = prom.query(r#"sum by (kernel) (slicetrace_gpu_verdict{gpu_uuid="CPU-0"})"#);
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    for v in &verdicts {
        assert_eq!(v["value"][1], "1", "exactly one verdict is current: {v}");
    }
    drop(prom);
    let report = agent.shutdown();
    assert!(report.clean_shutdown);
}
