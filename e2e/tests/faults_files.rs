//! Faults around the agent's files and its process, against the real binary
//! on the CPU backend: a full disk, SIGKILL in the middle of writing, and
//! SIGTERM (with a working and with a hung collector).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use faults_support::*;
use slicetrace_e2e::{
    free_port, missing, parquet_files, python_with, run_python, run_with_timeout, start_rotel,
    wait_for, Proc,
};

/// Unmounts the test tmpfs even when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("ballast");
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
    let _ = f.sync_all();
}

/// Opens every visible Parquet file with pyarrow and DuckDB; prints the rows.
const READ_ALL: &str = r#"
import sys, glob, duckdb, pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
con = duckdb.connect()
n = 0
for f in files:
    a = pq.read_table(f).num_rows
    d = con.execute("select count(*) from read_parquet(?)", [f]).fetchone()[0]
    assert a == d, (f, a, d)
    n += a
print(len(files), n)
"#;

/// Rotation small enough that a test sees several files a second.
const FAST_ROTATION: &str = "[parquet]\nrotate_interval_ms = 1000\nflush_interval_ms = 200\n";

#[test]
fn disk_full_keeps_probing_logs_once_hides_partial_files_and_resumes() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        missing::<()>("a tmpfs mount (needs root)");
        return;
    }
    let _guard = Mount(mnt.clone());
    let data = mnt.join("data");
    let cfg = write_config(
        dir.path(),
        "",
        "interval_ms = 20\njitter_pct = 0",
        FAST_ROTATION,
    );
    let mut p = Proc::spawn(agent(&cfg, &data), dir.path().join("agent.log"));
    let mport = metrics_port(&p);
    let first = wait_for(WAIT, || (!parquet_files(&data).0.is_empty()).then_some(()));
    assert!(
        first.is_some(),
        "no file written before the disk filled: {}",
        p.log_text()
    );

    let ballast = mnt.join("ballast");
    fill(&ballast);
    wait_metric(
        mport,
        "slicetrace_parquet_write_errors_total",
        "a write error",
        |v| v > 0.0,
    );
    let full: BTreeSet<PathBuf> = parquet_files(&data).0.into_iter().collect();
    let c0 = metric(mport, "slicetrace_probe_cycles_total").expect("cycles");
    // With the disk full, probing goes on (100 more cycles, two rotation
    // intervals' worth) and every failed file is counted (a second write
    // error, from another rotation). Both are waited for, not slept on: a
    // loaded machine makes them later, a stuck probe or a writer that
    // stopped counting never gets there.
    wait_metric(
        mport,
        "slicetrace_probe_cycles_total",
        "probing to go on with the disk full",
        |v| v - c0 >= 100.0,
    );
    wait_metric(
        mport,
        "slicetrace_parquet_write_errors_total",
        "every failed file counted",
        |v| v >= 2.0,
    );
    let log = p.log_text();
    assert_eq!(
        count_lines(&log, "parquet write failed"),
        1,
        "the write error is logged once a minute, not per cycle:\n{log}"
    );
    // Nothing half-written is visible: every *.parquet opens. (A file may
    // still complete while the disk is full, in the slack of its last page.)
    rows(&py, &data);

    std::fs::remove_file(&ballast).expect("free space");
    let freed_ns = now_ns();
    let freed = std::time::SystemTime::now();
    let resumed = wait_for(WAIT, || {
        let new = parquet_files(&data)
            .0
            .iter()
            .filter(|f| !full.contains(*f))
            .filter(|f| {
                std::fs::metadata(f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > freed)
            })
            .count();
        (new >= 2).then_some(())
    });
    assert!(
        resumed.is_some(),
        "writing did not resume after space returned: {}",
        p.log_text()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_timeout(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.log_text()
    );
    let (_, tmp) = parquet_files(&data);
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    let after = rows(&py, &data)
        .into_iter()
        .filter(|(ts, _)| *ts > freed_ns)
        .count();
    assert!(
        after >= 20,
        "only {after} rows written after space returned"
    );
}

/// `recovered=N removed=M` of the agent's "parquet recovery finished" line.
fn recovery_counts(log: &str) -> (usize, usize) {
    let log = plain(log);
    let Some(line) = log
        .lines()
        .find(|l| l.contains("parquet recovery finished"))
    else {
        return (0, 0);
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("recovered="), field("removed="))
}

#[test]
fn sigkill_mid_write_loses_at_most_one_rotation_and_leaves_only_readable_files() {
    let Some(py) = python_with(&["pyarrow", "duckdb"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let rotate_ms: i64 = 1000;
    let cfg = write_config(
        dir.path(),
        "",
        "interval_ms = 20\njitter_pct = 0",
        FAST_ROTATION,
    );
    let mut cmd = agent(&cfg, &data);
    cmd.args(["--node-name", "before-kill"]);
    let mut p = Proc::spawn(cmd, dir.path().join("agent.log"));
    let mport = metrics_port(&p);
    wait_metric(mport, "slicetrace_probe_cycles_total", "150 cycles", |v| {
        v >= 150.0
    });
    // Kill while a file is being written (one always is while rows flow,
    // except for the instant between a rotation and the next rows).
    let open = wait_for(WAIT, || (!parquet_files(&data).1.is_empty()).then_some(()));
    assert!(open.is_some(), "no temporary file open: {}", p.log_text());
    let cycles = metric(mport, "slicetrace_probe_cycles_total").expect("cycles");
    p.signal(libc::SIGKILL);
    let kill_ns = now_ns();
    let _ = p.wait_timeout(Duration::from_secs(10));
    let (_, tmps) = parquet_files(&data);
    assert!(
        !tmps.is_empty(),
        "SIGKILL left no temporary file to recover"
    );

    // Restart on the same data dir.
    let mut cmd = agent(&cfg, &data);
    cmd.args(["--node-name", "after-kill", "--duration", "2s"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let (recovered, removed) = recovery_counts(&log);
    assert_eq!(
        recovered + removed,
        tmps.len(),
        "every leftover temporary file is recovered or removed: {tmps:?}\n{log}"
    );
    let (files, left) = parquet_files(&data);
    assert!(
        left.is_empty(),
        "temporary files left after restart: {left:?}"
    );
    assert!(files
        .iter()
        .any(|f| f.to_string_lossy().contains("node=after-kill")));

    // Every visible file opens in pyarrow and DuckDB, with the same rows.
    let out = run_python(
        &py,
        READ_ALL,
        &[data.join("probes").to_str().expect("utf8")],
    );
    assert!(
        out.split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > 0),
        "{out}"
    );
    // At most one rotation interval of rows is lost.
    let before: Vec<(i64, String)> = {
        let d = dir.path().join("before");
        std::fs::create_dir_all(d.join("probes")).expect("mkdir");
        for f in files
            .iter()
            .filter(|f| f.to_string_lossy().contains("node=before-kill"))
        {
            std::fs::copy(f, d.join("probes").join(f.file_name().expect("name"))).expect("copy");
        }
        rows(&py, &d)
    };
    let last = before
        .iter()
        .map(|r| r.0)
        .max()
        .expect("rows before the kill");
    let slack_ns = 500_000_000;
    assert!(
        last >= kill_ns - rotate_ms * 1_000_000 - slack_ns,
        "the newest row before the kill is {} ms older than the kill (rotation {rotate_ms} ms)",
        (kill_ns - last) / 1_000_000
    );
    let lost_cycles = cycles - before.len() as f64 / 2.0;
    let per_rotation = rotate_ms as f64 / 20.0;
    assert!(
        lost_cycles <= per_rotation * 1.5,
        "{lost_cycles} cycles lost, one rotation is {per_rotation}"
    );
}

/// Starts an agent in `dir` (data under `dir/data`) exporting to the OTLP
/// port `otlp_port` with `shutdown_deadline_ms = deadline` and `extra`
/// config, waits for 40 probe cycles on its `/metrics`, sends SIGTERM and
/// waits up to `wait`: the agent, its exit code (`None`: still running) and
/// how long it took after the signal.
fn sigterm_after_40_cycles(
    dir: &Path,
    otlp_port: u16,
    deadline: Duration,
    extra: &str,
    wait: Duration,
) -> (Proc, Option<i32>, Duration) {
    let cfg = write_config(
        dir,
        &format!("shutdown_deadline_ms = {}", deadline.as_millis()),
        "interval_ms = 50",
        extra,
    );
    let mut cmd = agent(&cfg, &dir.join("data"));
    cmd.args(["--otlp-endpoint", &format!("http://127.0.0.1:{otlp_port}")]);
    let mut p = Proc::spawn(cmd, dir.join("agent.log"));
    let mport = metrics_port(&p);
    wait_metric(mport, "slicetrace_probe_cycles_total", "40 cycles", |v| {
        v >= 40.0
    });
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let code = p.wait_timeout(wait);
    (p, code, t.elapsed())
}

#[test]
fn sigterm_exits_within_the_deadline_with_files_closed_and_spans_flushed() {
    let Some(py) = python_with(&["pyarrow", "duckdb"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let (grpc, http) = (free_port(), free_port());
    let Some(rotel) = start_rotel(dir.path(), grpc, http) else {
        return;
    };
    let deadline = Duration::from_millis(3000);
    let (p, code, took) = sigterm_after_40_cycles(
        dir.path(),
        grpc,
        deadline,
        "",
        deadline + Duration::from_secs(1),
    );
    assert_eq!(
        code,
        Some(0),
        "no clean exit within the deadline ({took:?}): {}",
        p.log_text()
    );
    assert!(p.log_text().contains("SIGTERM received"));
    let (files, tmp) = parquet_files(&data);
    assert!(
        tmp.is_empty() && !files.is_empty(),
        "files {files:?}, temporary {tmp:?}"
    );
    run_python(
        &py,
        READ_ALL,
        &[data.join("probes").to_str().expect("utf8")],
    );
    let mut ids: Vec<String> = rows(&py, &data).into_iter().map(|r| r.1).collect();
    ids.sort();
    ids.dedup();
    assert!(ids.len() >= 40);
    let found = wait_for(Duration::from_secs(20), || {
        let log = rotel.log_text();
        ids.iter().all(|t| log.contains(t.as_str())).then_some(())
    });
    let log = rotel.log_text();
    let lost: Vec<_> = ids.iter().filter(|t| !log.contains(t.as_str())).collect();
    assert!(
        found.is_some(),
        "{} of {} trace ids never reached rotel: {:?}",
        lost.len(),
        ids.len(),
        lost.iter().take(3).collect::<Vec<_>>()
    );
}

#[test]
fn sigterm_with_a_hung_collector_still_exits_within_the_deadline() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let deadline = Duration::from_millis(2000);
    // The export timeout (5 s) is longer than the shutdown deadline.
    let (p, code, took) = sigterm_after_40_cycles(
        dir.path(),
        hung,
        deadline,
        "[otlp]\ntimeout_ms = 5000\n",
        deadline + Duration::from_millis(1500),
    );
    assert!(
        code.is_some(),
        "still running {took:?} after SIGTERM (deadline {deadline:?}): {}",
        p.log_text()
    );
    let (files, tmp) = parquet_files(&data);
    assert!(
        tmp.is_empty() && !files.is_empty(),
        "files {files:?}, temporary {tmp:?}"
    );
    assert!(rows(&py, &data).len() >= 80);
    assert_eq!(
        code,
        Some(0),
        "spans the hung collector never took are dropped and counted, not a failed shutdown: {}",
        p.log_text()
    );
}
