//! The agent binary end to end on the CPU backend, against real components:
//! rotel (gRPC and HTTP/protobuf OTLP), pyarrow, DuckDB and polars reading
//! its Parquet files, and SIGTERM handling.

mod faults_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use slicetrace_e2e::{
    bin, free_port, parquet_files, python_with, run_python, run_with_timeout, start_rotel,
    wait_for, Proc,
};

fn agent(data: &Path) -> Command {
    agent_with_metrics(data, "")
}

/// [`agent`] serving `/metrics` on `listen` (empty: not at all).
fn agent_with_metrics(data: &Path, listen: &str) -> Command {
    let mut c = Command::new(bin("slicetrace-agent"));
    c.arg("run")
        .args([
            "--backend",
            "cpu",
            "--rate-hz",
            "20",
            "--metrics-listen",
            listen,
        ])
        .arg("--data-dir")
        .arg(data)
        .env("NODE_NAME", "e2e-node")
        .env("SLICETRACE_LOG", "info")
        // Transport tests: every span tree goes (sampling_e2e.rs samples).
        .env("OTEL_TRACES_SAMPLER", "always_on")
        .env_remove("OTEL_TRACES_SAMPLER_ARG");
    c
}

const READ_TRACE_IDS: &str = r#"
import sys, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1] + "/probes", format="parquet", partitioning="hive").to_table(columns=["trace_id", "span_id"])
ids = sorted(set(t.column("trace_id").to_pylist()))
print(len(t)); print(len(set(t.column("span_id").to_pylist())))
print("\n".join(ids))
"#;

fn spans_reach_rotel(protocol: &str) {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, http) = (free_port(), free_port());
    let Some(rotel) = start_rotel(dir.path(), grpc, http) else {
        return;
    };
    let data = dir.path().join("data");
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{grpc}"),
        _ => format!("http://127.0.0.1:{http}"),
    };
    let mut cmd = agent(&data);
    cmd.args(["--duration", "3s", "--otlp-endpoint", &endpoint])
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "agent failed: {stderr}");
    let text = run_python(&py, READ_TRACE_IDS, &[data.to_str().expect("utf8")]);
    let mut lines = text.lines();
    let rows: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .expect("row count");
    let spans: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .expect("span count");
    let trace_ids: Vec<String> = lines.map(str::to_string).collect();
    assert!(rows >= 16, "too few rows: {rows}");
    assert_eq!(spans, rows, "every row has its own span id");
    // Poisson arrivals: one run per arrival, one trace per arrival.
    assert_eq!(trace_ids.len(), rows, "one trace per arrival");
    assert!(trace_ids
        .iter()
        .all(|t| t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit())));
    // Every cycle's trace id the Parquet rows carry is in rotel's debug log.
    let found = wait_for(Duration::from_secs(20), || {
        let log = rotel.log_text();
        trace_ids
            .iter()
            .all(|t| log.contains(t.as_str()))
            .then_some(())
    });
    let log = rotel.log_text();
    let missing: Vec<_> = trace_ids
        .iter()
        .filter(|t| !log.contains(t.as_str()))
        .collect();
    assert!(
        found.is_some(),
        "{} of {} trace ids not in rotel's log: {:?}",
        missing.len(),
        trace_ids.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    // The live verdict travels too, as a span with its inputs.
    let health = wait_for(Duration::from_secs(20), || {
        rotel.log_text().contains("health_evaluation").then_some(())
    });
    assert!(health.is_some(), "no health_evaluation span in rotel's log");
    let log = rotel.log_text();
    assert!(
        log.contains("slicetrace.health.reason") && log.contains("slicetrace.health.wall_p99_ms"),
        "health span lacks its inputs"
    );
    for name in ["probe fft", "probe gemm", "queued", "executing"] {
        assert!(log.contains(name), "span {name} not in rotel's log");
    }
}

#[test]
fn agent_spans_reach_rotel_over_grpc_with_the_parquet_trace_ids() {
    spans_reach_rotel("grpc");
}

#[test]
fn agent_spans_reach_rotel_over_http_protobuf_with_the_parquet_trace_ids() {
    spans_reach_rotel("http/protobuf");
}

const THREE_READERS: &str = r#"
import sys, glob, duckdb, polars as pl, pyarrow.dataset as ds, pyarrow.compute as pc
d = sys.argv[1] + "/probes"
files = sorted(glob.glob(d + "/**/*.parquet", recursive=True))
t = ds.dataset(d, format="parquet", partitioning="hive").to_table()
pa_n = t.num_rows
pa_p99 = pc.quantile(t.column("wall_ms"), q=0.99, interpolation="linear")[0].as_py()
con = duckdb.connect()
dd_n, dd_p99 = con.execute(f"select count(*), quantile_cont(wall_ms, 0.99) from read_parquet({files!r}, hive_partitioning=true)").fetchone()
meta = con.execute(f"select distinct decode(value) from parquet_kv_metadata({files!r}) where decode(key) = 'slicetrace.schema_version'").fetchall()
df = pl.read_parquet(files)
pl_n = df.height
pl_p99 = df.select(pl.col("wall_ms").quantile(0.99, interpolation="linear")).item()
print(pa_n, dd_n, pl_n); print(repr(pa_p99), repr(dd_p99), repr(pl_p99)); print(meta)
nulls = t.column("sm_clock_mhz").null_count
print(nulls, t.column("backend").unique().to_pylist(), t.column("node").unique().to_pylist())
"#;

#[test]
fn pyarrow_duckdb_and_polars_agree_on_the_agents_parquet() {
    let Some(py) = python_with(&["pyarrow", "duckdb", "polars"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut cmd = agent(&data);
    cmd.args(["--duration", "3s"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The exit tail table is printed on stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("wall_ms p99") && stdout.contains("CPU-0") && stdout.contains("gemm"),
        "{stdout}"
    );
    let text = run_python(&py, THREE_READERS, &[data.to_str().expect("utf8")]);
    let lines: Vec<&str> = text.lines().collect();
    let counts: Vec<u64> = lines[0]
        .split_whitespace()
        .map(|x| x.parse().expect("n"))
        .collect();
    assert!(
        counts[0] >= 16 && counts.iter().all(|c| *c == counts[0]),
        "row counts differ: {counts:?}"
    );
    let p99: Vec<f64> = lines[1]
        .split_whitespace()
        .map(|x| x.parse().expect("p99"))
        .collect();
    assert!(
        p99.iter()
            .all(|p| (p - p99[0]).abs() <= 1e-9 * p99[0].abs().max(1.0)),
        "p99 differ: {p99:?}"
    );
    // The version the agent writes is the schema crate's, not a copy of it.
    let version = format!("('{}',)", slicetrace_schema::SCHEMA_VERSION);
    assert!(
        lines[2].contains(&version),
        "schema version metadata: {} (want {version})",
        lines[2]
    );
    // CPU backend: NVML columns are null (never 0) in every row.
    let last: Vec<&str> = lines[3].splitn(2, ' ').collect();
    assert_eq!(
        last[0].parse::<u64>().expect("nulls"),
        counts[0],
        "sm_clock_mhz must be null on the CPU backend"
    );
    assert!(
        lines[3].contains("'cpu'") && lines[3].contains("e2e-node"),
        "{}",
        lines[3]
    );
}

#[test]
fn sigterm_exits_within_the_deadline_with_every_file_closed() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut p = Proc::spawn(
        agent_with_metrics(&data, "127.0.0.1:0"),
        dir.path().join("agent.log"),
    );
    let started = wait_for(Duration::from_secs(30), || {
        p.log_text()
            .contains("self-test passed: planted corruption and skipped kernel caught")
            .then_some(())
    });
    assert!(started.is_some(), "agent did not start: {}", p.log_text());
    // Stop it once it has made the rows checked below: at least 16 cycles
    // (one run, one row, per arrival at 20/s), waited for rather than
    // slept on.
    faults_support::wait_metric(
        faults_support::metrics_port(&p),
        "slicetrace_probe_cycles_total",
        "16 cycles before SIGTERM",
        |v| v >= 16.0,
    );
    p.signal(libc::SIGTERM);
    // The default shutdown deadline is 10 s; the agent must be well inside it.
    let code = p.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "agent did not exit cleanly on SIGTERM: {}",
        p.log_text()
    );
    assert!(p.log_text().contains("SIGTERM received"));
    let (files, tmp) = parquet_files(&data);
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    assert!(!files.is_empty(), "no parquet file written");
    let paths: Vec<&str> = files.iter().filter_map(|f| f.to_str()).collect();
    let out = run_python(&py, "import sys, pyarrow.parquet as pq\nprint(sum(pq.read_metadata(f).num_rows for f in sys.argv[1:]))", &paths);
    let rows: u64 = out.trim().parse().expect("rows");
    assert!(rows >= 16, "rows: {rows}");
}

/// Multi-GPU behaviour without GPUs: four CPU pseudo-devices, each probed on
/// its own thread, each with its own rows and its own line in the tail table.
#[test]
fn every_simulated_device_is_probed_on_its_own_thread() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut p = Proc::spawn(
        {
            let mut c = agent(&data);
            c.args(["--cpu-devices", "4", "--duration", "4s"]);
            c
        },
        dir.path().join("agent.log"),
    );
    // While it runs, /proc shows one probe thread per device.
    let threads = wait_for(Duration::from_secs(20), || {
        let task = format!("/proc/{}/task", p.child.id());
        let names: Vec<String> = std::fs::read_dir(task)
            .ok()?
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .filter(|n| n.starts_with("probe-gpu"))
            .collect();
        (names.len() == 4).then_some(names)
    });
    let mut threads =
        threads.unwrap_or_else(|| panic!("expected 4 probe threads: {}", p.log_text()));
    threads.sort();
    assert_eq!(
        threads,
        ["probe-gpu0", "probe-gpu1", "probe-gpu2", "probe-gpu3"]
    );
    assert_eq!(
        p.wait_timeout(Duration::from_secs(30)),
        Some(0),
        "{}",
        p.log_text()
    );
    let out = run_python(
        &py,
        "import sys, pyarrow.dataset as ds, collections\nt = ds.dataset(sys.argv[1] + '/probes', format='parquet', partitioning='hive').to_table(columns=['gpu_uuid','gpu_index'])\nc = collections.Counter(zip(t.column('gpu_uuid').to_pylist(), t.column('gpu_index').to_pylist()))\nfor (u, i), n in sorted(c.items()): print(u, i, n)",
        &[data.to_str().expect("utf8")],
    );
    let rows: Vec<(String, u32, u64)> = out
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (
                v[0].to_string(),
                v[1].parse().expect("idx"),
                v[2].parse().expect("n"),
            )
        })
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    for (i, (uuid, idx, n)) in rows.iter().enumerate() {
        assert_eq!(
            (uuid.as_str(), *idx),
            (format!("CPU-{i}").as_str(), i as u32)
        );
        assert!(*n >= 16, "device {uuid} has only {n} rows");
    }
    let log = p.log_text();
    for i in 0..4 {
        assert!(
            log.contains(&format!("CPU-{i}")),
            "tail table lacks CPU-{i}"
        );
    }
}
