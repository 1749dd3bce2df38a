//! Shared support of the `faults_*` end-to-end tests: the agent with a small,
//! fast CPU probe serving `/metrics` on a port of its own, `/metrics`
//! scraping and `/proc` readings.
//!
//! The tests of one binary run side by side (two at a time under
//! `tests/run.sh`): each owns its temporary directory, its agents and their
//! ports (the agent binds `127.0.0.1:0` and the test reads the port back
//! from its log), and waits on the events it checks, not on the clock. (They
//! once ran one at a time behind a lock, because they measured rates over
//! fixed sleeps, which two agents on two loaded cores disturb.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use slicetrace_e2e::{bin, wait_for, Proc};

/// Generous waits: CI boxes have two loaded cores.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `[probe]` keys of a probe small enough that a cycle costs well under
/// a millisecond. These tests are about sinks and files, not sampling: they
/// keep the burst mode, whose row rate follows the `probe.interval_ms` they
/// set.
pub const SMALL_PROBE: &str = "self_test = false\narrivals = \"burst\"\nburst_runs = 1\ngemm_n = 64\nfft_n = 256\nfft_batch = 1\n";

/// Writes `agent.toml` in `dir`: `top` (top-level keys), the `[probe]` table
/// of the small probe with the keys `probe` adds (e.g. `interval_ms`), then
/// `tables` (more TOML tables).
pub fn write_config(dir: &Path, top: &str, probe: &str, tables: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    let text = format!("{top}\n[probe]\n{SMALL_PROBE}{probe}\n{tables}\n");
    std::fs::write(&p, text).expect("write config");
    p
}

/// `slicetrace-agent run` on the CPU backend with `config` and `data`,
/// serving `/metrics` on a free port that it binds itself (no port picked
/// here and bound there later, which another test could take in between):
/// [`metrics_port`] reads it back.
pub fn agent(config: &Path, data: &Path) -> Command {
    let mut c = Command::new(bin("slicetrace-agent"));
    c.arg("run")
        .args(["--backend", "cpu"])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("NODE_NAME", "faults-node")
        .env("SLICETRACE_LOG", "info")
        .env("NO_COLOR", "1")
        // These tests are about sinks, not sampling: every span tree goes.
        .env("OTEL_TRACES_SAMPLER", "always_on")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("SLICETRACE_CONFIG");
    c
}

/// The port of the `/metrics` server of an agent started with [`agent`]:
/// the `addr=` of its "serving /metrics" log line, once it is there.
pub fn metrics_port(p: &Proc) -> u16 {
    let port = wait_for(WAIT, || {
        plain(&p.log_text())
            .lines()
            .find(|l| l.contains("serving /metrics"))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))?
            .rsplit_once(':')?
            .1
            .parse()
            .ok()
    });
    port.unwrap_or_else(|| panic!("the agent did not serve /metrics: {}", p.log_text()))
}

/// One GET of `path` on loopback `port`; the body, or `None` if the server
/// does not answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of an unlabelled sample `name` in a Prometheus text body.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    // Every series carries labels (`node`, and `gpu_uuid` where it is about
    // one GPU): the value of a family is the sum over its series.
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let family = k.split_once('{').map_or(k, |(f, _)| f);
            (family == name).then(|| v.trim().parse().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Scrapes `/metrics` and reads one counter (`None` until it answers).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    sample(&http_get(port, "/metrics")?, name)
}

/// Waits until `metric(name)` satisfies `pred`; panics with `what` otherwise.
pub fn wait_metric(port: u16, name: &str, what: &str, pred: impl Fn(f64) -> bool) -> f64 {
    wait_for(WAIT, || metric(port, name).filter(|v| pred(*v))).unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what} ({name} = {:?})",
            metric(port, name)
        )
    })
}

/// Resident set size of `pid`, KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Now, ns since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Lines of `log` containing `needle`.
pub fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Reads `(ts_ns, trace_id)` of every row of the visible probes files, and
/// checks every visible file with pyarrow (panics on an unreadable one).
pub const READ_ROWS: &str = r#"
import sys, glob, pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1] + "/probes/**/*.parquet", recursive=True))
for f in files:
    t = pq.read_table(f, columns=["ts", "trace_id"])
    for ts, tid in zip(t.column("ts").cast("int64").to_pylist(), t.column("trace_id").to_pylist()):
        print(ts, tid)
"#;

/// `(ts_ns, trace_id)` of every Parquet row under `data`.
pub fn rows(py: &Path, data: &Path) -> Vec<(i64, String)> {
    slicetrace_e2e::run_python(py, READ_ROWS, &[data.to_str().expect("utf8")])
        .lines()
        .filter_map(|l| {
            let (ts, id) = l.split_once(' ')?;
            Some((ts.parse().ok()?, id.to_string()))
        })
        .collect()
}

/// `text` without ANSI colour escapes (in case the logs are coloured anyway).
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
