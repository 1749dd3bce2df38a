//! The `slicetrace-load` binary on the CPU backend: its summary line, its
//! `--out` file in the probes schema, planted faults caught through the real
//! run path, and its exit codes.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use slicetrace_schema::{probes_from_batch, ProbeRecord};

const BIN: &str = env!("CARGO_BIN_EXE_slicetrace-load");

fn load(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NODE_NAME", "load-test-node")
        .output()
        .expect("run slicetrace-load")
}

/// The value of `"key":` in the one-line JSON summary.
fn field<'a>(summary: &'a str, key: &str) -> &'a str {
    let start = summary
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {summary}"))
        + key.len()
        + 3;
    let rest = &summary[start..];
    rest[..rest.find([',', '}']).unwrap()].trim_matches('"')
}

fn read_rows(path: &std::path::Path) -> Vec<ProbeRecord> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    reader
        .flat_map(|b| probes_from_batch(&b.unwrap()).unwrap())
        .collect()
}

#[test]
fn cpu_run_writes_every_run_and_catches_every_planted_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("load.parquet");
    let o = load(&[
        "gemm",
        "--backend",
        "cpu",
        "--preset",
        "light",
        "--duration",
        "0",
        "--max-runs",
        "40",
        "--plant-every",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    let summary = stdout.lines().last().unwrap();
    assert_eq!(field(summary, "kernel"), "gemm", "{summary}");
    assert_eq!(field(summary, "backend"), "cpu", "{summary}");
    assert_eq!(field(summary, "runs"), "40", "{summary}");
    assert_eq!(field(summary, "planted"), "4", "{summary}");
    assert_eq!(field(summary, "caught"), "4", "{summary}");
    assert_eq!(field(summary, "incorrect"), "0", "{summary}");
    assert!(field(summary, "wall_p50_ms").parse::<f64>().unwrap() > 0.0);

    // The file is complete (renamed from its .tmp) and holds every run.
    assert!(!out.with_extension("parquet.tmp").exists());
    let rows = read_rows(&out);
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|r| r.node == "load-test-node"), "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.kernel == slicetrace_schema::Kernel::Gemm && r.wall_ms > 0.0));
    // The planted runs are the failed checks, and only they.
    let failed = rows.iter().filter(|r| r.correct == Some(false)).count();
    assert_eq!(failed, 4);
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let o = load(&["gemm", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let o = load(&["nonsense-kernel"]);
    assert_eq!(o.status.code(), Some(2));
    let o = load(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: slicetrace-load"));
}
