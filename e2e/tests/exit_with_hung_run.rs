//! The agent's exit while an abandoned backend is still inside a hung run,
//! against the real binary on the CPU backend. On an H100 the CUDA driver's
//! exit handlers tore the hung run's context down under its runner thread
//! and the agent died with SIGSEGV at exit (`docs/gpu-results/README.md`
//! §B); the agent now skips the C library's exit handlers while a backend
//! is parked. This checks the CPU side of that road: the exit code, the
//! summary, and every Parquet file closed before the early exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use slicetrace_e2e::{bin, parquet_files};

#[test]
fn the_agent_exits_cleanly_while_a_hung_run_is_parked() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.toml");
    // A hang planted 1.5 s in; the CPU backend's hang outlasts the run.
    std::fs::write(
        &cfg,
        "[watchdog]\nrun_deadline_ms = 800\nplant_hang_after_ms = 1500\nplant_hang_device = 0\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let summary = tmp.path().join("summary.json");
    let out = Command::new(bin("slicetrace-agent"))
        .args(["run", "--backend", "cpu", "--duration", "6s"])
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .arg("--summary-json")
        .arg(&summary)
        .env("NODE_NAME", "exit-node")
        .env("NO_COLOR", "1")
        .env("SLICETRACE_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("SLICETRACE_CONFIG")
        .output()
        .expect("agent runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("probe run past its deadline"),
        "no hang fired:\n{err}"
    );
    assert!(
        err.contains("exiting with abandoned backends still inside a hung run"),
        "the exit did not see the parked backend:\n{err}"
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary written")).unwrap();
    assert!(s.as_array().is_some_and(|a| !a.is_empty()), "{s}");
    // Every Parquet file is finished (no temporary left behind).
    let (done, tmp) = parquet_files(&data);
    assert!(!done.is_empty(), "no Parquet file in {}", data.display());
    assert!(tmp.is_empty(), "half-written files left: {tmp:?}");
}
