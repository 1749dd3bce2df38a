//! Faults of the OTLP collector, against the real agent binary on the CPU
//! backend: down at start, down then back (rotel), and slow (a listener that
//! accepts and never answers). Probing and Parquet must never notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;

use std::net::TcpListener;
use std::time::Duration;

use faults_support::*;
use slicetrace_e2e::{free_port, python_with, start_rotel, wait_for, Proc};

/// Largest RSS the agent (debug build) may reach after 10k cycles with the
/// collector down, KiB. Measured ~60 MiB; the bound leaves room for
/// allocator noise, not for a leak.
const RSS_LIMIT_KIB: u64 = 128 * 1024;
/// Largest RSS growth between 2k and 10k cycles, KiB. The OTLP queue is full
/// long before 2k cycles. Measured on the 2-core build machine
/// (2026-12-07): 6.5–10.9 MiB, slowing (≈0.8 MiB per 1k cycles up to 8k,
/// ≈0.4 after), with the health window at 2 s, and 9.5 MiB with the build
/// before this stop's lifecycle and sampling changes; its cause is not found
/// yet. What
/// this bound must catch is the dropped spans being kept: ~60,000 span
/// trees are dropped between 2k and 10k cycles, so keeping them would add
/// tens of MiB.
const RSS_GROWTH_LIMIT_KIB: u64 = 14 * 1024;

#[test]
fn collector_down_at_start_keeps_probing_and_parquet_counts_drops_and_bounds_memory() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let closed = free_port(); // nothing listens here
                              // Parquet buffers up to a full row group in memory; small row groups and
                              // a short flush interval bring it to its steady state well before 2k
                              // cycles, so the 2k -> 10k comparison sees the OTLP side alone. (With
                              // the defaults, 8192-row groups at 400 rows/s, RSS climbs by ~10 MiB
                              // until ~12k cycles and then stays flat, OTLP or not.) The health
                              // window holds every run of its last `window_ms` (5 min by default:
                              // ~0.8 MiB per 1k cycles here, all through the test), so it is 2 s.
    let cfg = write_config(
        dir.path(),
        "",
        "interval_ms = 5\njitter_pct = 0",
        "[parquet]\nrow_group_rows = 1024\nflush_interval_ms = 1000\n\
         [health]\nwindow_ms = 2000\nevaluate_interval_ms = 500\n",
    );
    let mut cmd = agent(&cfg, &data);
    cmd.args(["--otlp-endpoint", &format!("http://127.0.0.1:{closed}")]);
    let mut p = Proc::spawn(cmd, dir.path().join("agent.log"));
    let pid = p.child.id();
    let mport = metrics_port(&p);

    let c2k = wait_metric(mport, "slicetrace_probe_cycles_total", "2000 cycles", |v| {
        v >= 2000.0
    });
    let rss_2k = rss_kib(pid);
    let dropped_2k = metric(mport, "slicetrace_otlp_spans_dropped_total").expect("dropped");
    assert!(
        dropped_2k > 0.0,
        "spans dropped with the collector down must be counted"
    );
    let c10k = wait_for(Duration::from_secs(100), || {
        metric(mport, "slicetrace_probe_cycles_total").filter(|v| *v >= 10_000.0)
    })
    .unwrap_or_else(|| {
        panic!(
            "10k cycles not reached: {:?}\n{}",
            metric(mport, "slicetrace_probe_cycles_total"),
            p.log_text()
        )
    });
    let rss_10k = rss_kib(pid);
    let m = http_get(mport, "/metrics").expect("metrics");
    let dropped_10k = sample(&m, "slicetrace_otlp_spans_dropped_total").expect("dropped");
    let exported = sample(&m, "slicetrace_otlp_spans_exported_total").expect("exported");
    let parquet_drops = sample(&m, "slicetrace_parquet_rows_dropped_total").expect("parquet drops");
    eprintln!("cycles {c2k}->{c10k}, rss {rss_2k} KiB -> {rss_10k} KiB, dropped {dropped_2k} -> {dropped_10k}");
    assert!(
        dropped_10k > dropped_2k,
        "the drop counter keeps rising while the collector is down"
    );
    assert_eq!(exported, 0.0);
    assert_eq!(
        parquet_drops, 0.0,
        "Parquet must not lose rows because OTLP is down"
    );
    assert!(
        rss_10k < RSS_LIMIT_KIB,
        "RSS after 10k cycles {rss_10k} KiB is over {RSS_LIMIT_KIB} KiB"
    );
    assert!(
        rss_10k <= rss_2k + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_2k} KiB (2k cycles) to {rss_10k} KiB (10k cycles)"
    );
    // One WARN line a minute, not one per failed export.
    assert!(
        count_lines(&p.log_text(), "otlp export failed") <= 2,
        "{}",
        p.log_text()
    );

    p.signal(libc::SIGTERM);
    let code = p.wait_timeout(Duration::from_secs(20));
    assert!(
        code.is_some(),
        "agent did not exit after SIGTERM: {}",
        p.log_text()
    );
    let rows = rows(&py, &data);
    assert!(
        rows.len() as f64 >= 2.0 * c10k,
        "{} rows for {c10k} cycles",
        rows.len()
    );
}

#[test]
fn collector_down_then_back_resumes_export_without_restart() {
    let Some(py) = python_with(&["pyarrow"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    // The collector's ports: free now, bound by rotel once the agent has
    // seen it down (the one port a test picks here and binds later).
    let (grpc, http) = (free_port(), free_port());
    let cfg = write_config(
        dir.path(),
        "",
        "interval_ms = 100",
        "[otlp]\ntimeout_ms = 1000\nexport_interval_ms = 500\n",
    );
    let mut cmd = agent(&cfg, &data);
    cmd.args(["--otlp-endpoint", &format!("http://127.0.0.1:{grpc}")]);
    let mut p = Proc::spawn(cmd, dir.path().join("agent.log"));
    let mport = metrics_port(&p);
    wait_metric(
        mport,
        "slicetrace_otlp_spans_dropped_total",
        "drops while down",
        |v| v > 0.0,
    );

    let Some(rotel) = start_rotel(dir.path(), grpc, http) else {
        return;
    };
    let e0 = wait_metric(
        mport,
        "slicetrace_otlp_spans_exported_total",
        "export after the collector came back",
        |v| v > 0.0,
    );
    let resumed_ns = now_ns();
    let resumed_cycles = metric(mport, "slicetrace_probe_cycles_total").expect("cycles");
    // Whatever was in flight when rotel came up has been counted once two
    // more exports (one every 500 ms) went through; then two more must go
    // through without a drop. Waiting on the exports themselves, not on
    // the clock: on a loaded machine they just come later.
    let exports_after = |from: f64, n: usize| {
        let mut seen = from;
        for i in 0..n {
            seen = wait_metric(
                mport,
                "slicetrace_otlp_spans_exported_total",
                &format!("export {} after {from} spans", i + 1),
                |v| v > seen,
            );
        }
        seen
    };
    let e1 = exports_after(e0, 2);
    let d1 = metric(mport, "slicetrace_otlp_spans_dropped_total").expect("dropped");
    let e2 = exports_after(e1, 2);
    let d2 = metric(mport, "slicetrace_otlp_spans_dropped_total").expect("dropped");
    assert_eq!(
        d1, d2,
        "the drop counter must stop rising once the collector is back"
    );
    assert!(e2 > e1, "export goes on: {e1} -> {e2}");
    // Enough cycles after the collector came back to look them up in
    // rotel below (waited for: the exports above may come faster).
    wait_metric(
        mport,
        "slicetrace_probe_cycles_total",
        "30 cycles after the collector came back",
        |v| v >= resumed_cycles + 30.0,
    );

    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_timeout(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.log_text()
    );
    let mut ids: Vec<String> = rows(&py, &data)
        .into_iter()
        .filter(|(ts, _)| *ts > resumed_ns)
        .map(|(_, id)| id)
        .collect();
    ids.sort();
    ids.dedup();
    assert!(
        ids.len() >= 20,
        "too few cycles after the collector came back: {}",
        ids.len()
    );
    let found = wait_for(Duration::from_secs(20), || {
        let log = rotel.log_text();
        ids.iter().all(|t| log.contains(t.as_str())).then_some(())
    });
    let log = rotel.log_text();
    let missing: Vec<_> = ids
        .iter()
        .filter(|t| !log.contains(t.as_str()))
        .take(3)
        .collect();
    assert!(
        found.is_some(),
        "trace ids written after the collector came back are missing from rotel: {missing:?}"
    );
}

/// A collector that accepts connections and never answers. The accepted
/// sockets are kept open until the test process ends.
fn hung_collector() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Probe cycles of both agents over the same window, which ends once the
/// unhindered one did `cycles` more and `until` holds (an event, not a
/// clock: a loaded machine makes the window longer, not the counts
/// smaller).
fn cycles_over(ports: [u16; 2], cycles: f64, mut until: impl FnMut() -> bool) -> Vec<f64> {
    let read = || -> Vec<f64> {
        ports
            .iter()
            .map(|p| metric(*p, "slicetrace_probe_cycles_total").expect("cycles"))
            .collect()
    };
    let a = read();
    let b = wait_for(Duration::from_secs(120), || {
        let b = read();
        (b[0] - a[0] >= cycles && until()).then_some(b)
    })
    .unwrap_or_else(|| panic!("the window did not end: cycles from {a:?} to {:?}", read()));
    a.iter().zip(b).map(|(a, b)| b - a).collect()
}

/// The hindered and the unhindered agent run side by side, so both see the
/// same load on a shared CI box: comparing them is robust where comparing
/// two runs taken one after the other is not.
#[test]
fn slow_collector_is_bounded_by_the_export_timeout_and_never_slows_probing() {
    let dir = tempfile::tempdir().expect("tmp");
    let slow = hung_collector();
    let free_dir = dir.path().join("free");
    let slow_dir = dir.path().join("slow");
    std::fs::create_dir_all(&free_dir).expect("mkdir");
    std::fs::create_dir_all(&slow_dir).expect("mkdir");
    let probe = "interval_ms = 20\njitter_pct = 0";
    let cfg_free = write_config(&free_dir, "", probe, "");
    let cfg_slow = write_config(&slow_dir, "", probe, "[otlp]\ntimeout_ms = 500\n");
    let free = Proc::spawn(
        agent(&cfg_free, &free_dir.join("data")),
        free_dir.join("agent.log"),
    );
    let mut cmd = agent(&cfg_slow, &slow_dir.join("data"));
    cmd.args(["--otlp-endpoint", &format!("http://127.0.0.1:{slow}")]);
    let hindered = Proc::spawn(cmd, slow_dir.join("agent.log"));
    let (m_free, m_slow) = (metrics_port(&free), metrics_port(&hindered));
    for (port, p) in [(m_free, &free), (m_slow, &hindered)] {
        let up = wait_for(WAIT, || {
            metric(port, "slicetrace_probe_cycles_total").filter(|v| *v >= 50.0)
        });
        assert!(up.is_some(), "agent did not start: {}", p.log_text());
    }
    // The window: 500 cycles of the unhindered agent (10 s on schedule)
    // and at least 5 failed export attempts of the hindered one. Each
    // export ends at its 500 ms timeout and the next follows an export
    // interval (1 s) later; an exporter stuck on the hung connection never
    // gets there (the wait's deadline fails the test).
    let errors = || metric(m_slow, "slicetrace_otlp_export_errors_total").expect("errors");
    let errors0 = errors();
    let c = cycles_over([m_free, m_slow], 500.0, || errors() >= errors0 + 5.0);
    let errors1 = errors();
    eprintln!(
        "cycles in the window: unhindered {}, slow collector {}; export errors {errors0} -> {errors1}",
        c[0], c[1]
    );
    // Both agents share the machine's load, so their counts compare where
    // a count against the schedule would measure the machine instead.
    let rel = (c[1] - c[0]).abs() / c[0];
    assert!(
        rel <= 0.05,
        "cycle rate with a slow collector differs by {:.1}% from the unhindered run: {c:?}",
        rel * 100.0
    );
    let log = plain(&hindered.log_text());
    let line = log
        .lines()
        .find(|l| l.contains("otlp export failed"))
        .unwrap_or_else(|| panic!("no export failure logged: {log}"));
    let elapsed: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed_ms in {line}"));
    // The configured timeout is the one applied: an export ends well
    // before the default timeout (5 s) would end it. The bound is five
    // times the 500 ms, half the default: room for a loaded machine on one
    // side, for the bug on the other (with the timeout ignored, this
    // failed with elapsed_ms=5002).
    assert!(
        elapsed < 2500,
        "an export took {elapsed} ms with timeout_ms = 500 (the default is 5000): {line}"
    );
    assert!(metric(m_slow, "slicetrace_otlp_spans_dropped_total").expect("dropped") > 0.0);
}
