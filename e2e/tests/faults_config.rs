//! Bad configuration, one field wrong at a time: both `check-config` and
//! `run --config` exit 2 with one line naming the field, and write nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use slicetrace_e2e::{bin, run_with_timeout};

/// (case, TOML after `data_dir`, text the message must contain).
/// `{file}` in the TOML is replaced by the path of a regular file.
const CASES: &[(&str, &str, &str)] = &[
    ("unknown top-level key", "bogus_key = 1\n", "bogus_key"),
    (
        "unknown key in [probe]",
        "[probe]\nbogus_key = 1\n",
        "probe.bogus_key",
    ),
    (
        "unknown key in [parquet]",
        "[parquet]\nbogus_key = 1\n",
        "parquet.bogus_key",
    ),
    (
        "unknown key in [otlp]",
        "[otlp]\nbogus_key = 1\n",
        "otlp.bogus_key",
    ),
    (
        "unknown key in [metrics]",
        "[metrics]\nbogus_key = 1\n",
        "metrics.bogus_key",
    ),
    (
        "unknown key in [health]",
        "[health]\nbogus_key = 1\n",
        "health.bogus_key",
    ),
    (
        "unknown key in [occupancy]",
        "[occupancy]\nbogus_key = 1\n",
        "occupancy.bogus_key",
    ),
    ("unknown table", "[bogus_table]\nx = 1\n", "bogus_table"),
    (
        "negative interval",
        "[probe]\ninterval_ms = -1\n",
        "probe.interval_ms",
    ),
    (
        "zero interval",
        "[probe]\ninterval_ms = 0\n",
        "probe.interval_ms",
    ),
    (
        "interval as text",
        "[probe]\ninterval_ms = \"fast\"\n",
        "probe.interval_ms",
    ),
    (
        "negative interval at its deprecated top-level place",
        "interval_ms = -1\n",
        "interval_ms",
    ),
    (
        "zero interval at its deprecated top-level place",
        "interval_ms = 0\n",
        "probe.interval_ms",
    ),
    (
        "probe key both at the top level and in [probe]",
        "jitter_pct = 5\n[probe]\njitter_pct = 6\n",
        "probe.jitter_pct",
    ),
    (
        "negative nested duration",
        "[parquet]\nrotate_interval_ms = -5\n",
        "parquet.rotate_interval_ms",
    ),
    (
        "negative health window",
        "[health]\nwindow_ms = -1\n",
        "health.window_ms",
    ),
    (
        "jitter above 90",
        "[probe]\njitter_pct = 91\n",
        "probe.jitter_pct",
    ),
    (
        "zero shutdown deadline",
        "shutdown_deadline_ms = 0\n",
        "shutdown_deadline_ms",
    ),
    ("zero cpu devices", "cpu_devices = 0\n", "cpu_devices"),
    ("bad backend", "backend = \"tpu\"\n", "backend"),
    ("bad preset", "preset = \"huge\"\n", "preset"),
    (
        "bad gemm precision",
        "[probe]\ngemm_precision = \"fp64\"\n",
        "probe.gemm_precision",
    ),
    (
        "unparsable endpoint",
        "[otlp]\nendpoint = \"not a url\"\n",
        "otlp.endpoint",
    ),
    (
        "endpoint without scheme host",
        "[otlp]\nendpoint = \"http://\"\n",
        "otlp.endpoint",
    ),
    (
        "bad otlp protocol",
        "[otlp]\nprotocol = \"carrier-pigeon\"\n",
        "otlp.protocol",
    ),
    (
        "zero otlp timeout",
        "[otlp]\ntimeout_ms = 0\n",
        "timeout_ms",
    ),
    (
        "bad metrics address",
        "[metrics]\nlisten = \"everywhere\"\n",
        "metrics.listen",
    ),
    (
        "zero row group",
        "[parquet]\nrow_group_rows = 0\n",
        "row_group_rows",
    ),
    (
        "health factor below 1",
        "[health]\ndegraded_factor = 0.5\n",
        "health.degraded_factor",
    ),
    (
        "zero occupancy staleness",
        "[occupancy]\nstale_after_ms = 0\n",
        "stale_after_ms",
    ),
    (
        "bad kube_api mode",
        "[occupancy]\nkube_api = \"sometimes\"\n",
        "occupancy.kube_api",
    ),
];

fn run(args: &[&str], config: &Path) -> std::process::Output {
    let mut c = Command::new(bin("slicetrace-agent"));
    c.args(args)
        .arg(config)
        .current_dir(config.parent().expect("dir"))
        .env_remove("SLICETRACE_CONFIG")
        .env_remove("SLICETRACE_DATA_DIR")
        .env_remove("SLICETRACE_BACKEND")
        .env_remove("SLICETRACE_INTERVAL")
        .env_remove("SLICETRACE_PRESET")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    run_with_timeout(c, Duration::from_secs(30))
}

/// Everything under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).expect("prefix").display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn check_case(name: &str, body: &str, needle: &str, data_dir: Option<&str>) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("a-regular-file");
    std::fs::write(&file, "x").expect("file");
    let data = data_dir
        .map(|d| d.replace("{file}", file.to_str().expect("utf8")))
        .unwrap_or_else(|| dir.path().join("data").display().to_string());
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("data_dir = {data:?}\n{body}")).expect("config");
    let before = tree(dir.path());
    for args in [
        &["check-config"][..],
        &["run", "--backend", "cpu", "--config"][..],
    ] {
        let out = run(args, &cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{name} ({}): stderr {stderr:?}", args[0]);
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(!stderr.contains("panicked"), "{what}");
        let line = stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "not one line: {what}");
        assert!(line.starts_with("error: config: "), "{what}");
        assert!(line.contains(needle), "{needle:?} not named: {what}");
        assert!(
            out.stdout.is_empty(),
            "{what}: stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(tree(dir.path()), before, "{what}: something was written");
    }
}

#[test]
fn every_bad_field_exits_2_with_one_line_naming_it_and_writes_nothing() {
    for (name, body, needle) in CASES {
        check_case(name, body, needle, None);
    }
}

#[test]
fn unwritable_data_dir_exits_2_and_writes_nothing() {
    // A path under a regular file: not creatable even by root.
    check_case("data dir under a file", "", "data_dir", Some("{file}/data"));
    check_case("data dir is a file", "", "data_dir", Some("{file}"));
}

#[test]
fn a_missing_config_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("nope.toml");
    let out = run(&["check-config"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nope.toml") && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
}

/// `check-config` of `data_dir = DIR/data` followed by `rest`, which must
/// pass (exit 0) without creating the data dir. Returns its stderr.
fn check_config_passes(rest: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    let data = dir.path().join("data");
    let text = format!("data_dir = {:?}\n{rest}", data.display().to_string());
    std::fs::write(&cfg, text).expect("config");
    let out = run(&["check-config"], &cfg);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!data.exists(), "check-config created the data dir");
    stderr
}

#[test]
fn a_valid_config_passes_check_config_and_writes_nothing() {
    check_config_passes(
        "[probe]\ninterval_ms = 250\nself_test = false\n[otlp]\nendpoint = \"http://127.0.0.1:4317\"\n",
    );
}

#[test]
fn deprecated_top_level_probe_keys_pass_with_a_warning_naming_the_new_key() {
    let stderr = check_config_passes("interval_ms = 250\njitter_pct = 5\nself_test = false\n");
    for (old, new) in [
        ("interval_ms", "probe.interval_ms"),
        ("jitter_pct", "probe.jitter_pct"),
        ("self_test", "probe.self_test"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("`{old}`")) && l.contains(new)),
            "no deprecation warning for {old}: {stderr:?}"
        );
    }
}
