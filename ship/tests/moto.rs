//! Shipping against a real `moto_server` with its faults: S3 down at start,
//! down then back, slow (a proxy that delays), a full backlog, SIGKILL
//! between upload and delete (a real child process), and a restart with
//! files waiting. Each ends with the same check: every file written is in
//! the bucket with its bytes, or counted as dropped; the bucket holds
//! nothing else (`support::assert_accounted`).
//!
//! Harness: `support/mod.rs`. Missing moto skips with a visible SKIP line
//! unless `SLICETRACE_REQUIRE_TOOLS=1` (set by `tests/run.sh`).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slicetrace_e2e::Proc;
use slicetrace_ship::{DropReason, ShipConfig, ShipSnapshot, ShipStats, Shipper, Stage};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_at_start_files_wait_then_ship() {
    let Some(mut b) = Bench::start("down-at-start") else {
        return;
    };
    let proxy = b.proxy(true).await;
    for n in 0..3 {
        b.write("probes", n, 30 - u64::from(n));
    }
    b.write("health", 3, 5);
    let tmp = Files::write_tmp(b.data(), "probes");

    let run = Running::start(b.shipper(b.config(&proxy.endpoint())));
    eventually("failed attempts while S3 is down", DEADLINE, || async {
        let s = run.stats.snapshot();
        s.failed_attempts >= 3 && s.scans >= 2
    })
    .await;
    let s = run.stats.snapshot();
    assert_eq!(s.files_uploaded, 0);
    assert_eq!(s.files_waiting, 4);
    assert!(
        s.oldest_waiting_age_secs.is_some_and(|a| a >= 29.0),
        "{s:?}"
    );
    b.assert_accounted(&run.stats, false).await;

    proxy.set_down(false);
    let stats = run
        .ship_then_stop("all files shipped once S3 is up", 4)
        .await;
    b.assert_accounted(&stats, true).await;
    let s = stats.snapshot();
    assert_eq!((s.files_waiting, s.bytes_waiting), (0, 0));
    assert_eq!(s.oldest_waiting_age_secs, None);
    assert_eq!(
        s.bytes_uploaded,
        b.files.0.values().map(|f| f.len() as u64).sum::<u64>()
    );
    assert!(tmp.exists(), "a file being written was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_then_back_ships_what_waited() {
    let Some(mut b) = Bench::start("down-then-back") else {
        return;
    };
    let proxy = b.proxy(false).await;
    for n in 0..3 {
        b.write("probes", n, 60);
    }
    let run = Running::start(b.shipper(b.config(&proxy.endpoint())));
    run.until_uploaded("the first files shipped", 3).await;

    proxy.set_down(true);
    let failed_before = run.stats.snapshot().failed_attempts;
    for n in 3..6 {
        b.write("health", n, 10);
    }
    eventually("failures while S3 is down", DEADLINE, || async {
        run.stats.snapshot().failed_attempts >= failed_before + 2
    })
    .await;
    assert_eq!(run.stats.snapshot().files_uploaded, 3);
    assert_eq!(run.stats.snapshot().files_waiting, 3);
    b.assert_accounted(&run.stats, false).await;

    proxy.set_down(false);
    let stats = run.ship_then_stop("the waiting files shipped", 6).await;
    b.assert_accounted(&stats, true).await;
}

/// A store slower than the request timeout: attempts time out (though
/// moto may have stored the object), are counted and retried over the same
/// key; then merely slow, everything ships once. Finally a stop while a
/// request hangs ends `run` at once, and the next shipper finishes the
/// abandoned file without a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_s3_times_out_retries_then_ships_without_duplicates() {
    let Some(mut b) = Bench::start("slow") else {
        return;
    };
    let proxy = b.proxy(false).await;
    proxy.set_delay_ms(3_000);
    for n in 0..3 {
        b.write("probes", n, 60 - u64::from(n));
    }
    let cfg = ShipConfig {
        request_timeout_ms: 1_000,
        ..b.config(&proxy.endpoint())
    };
    let run = Running::start(b.shipper(cfg.clone()));
    eventually("timeouts counted as failed attempts", DEADLINE, || async {
        run.stats.snapshot().failed_attempts >= 2
    })
    .await;
    b.assert_accounted(&run.stats, false).await;

    // Slow, but within the timeout.
    proxy.set_delay_ms(100);
    let stats = run
        .ship_then_stop("everything shipped through the slow store", 3)
        .await;
    b.assert_accounted(&stats, true).await;

    // A request that hangs (the object is stored, the answer never comes):
    // stop must not wait for it.
    proxy.set_delay_ms(600_000);
    let rel = b.write("probes", 9, 1);
    let run = Running::start(b.shipper(ShipConfig {
        request_timeout_ms: 600_000,
        ..cfg.clone()
    }));
    eventually("the hanging upload reached the store", DEADLINE, || async {
        bucket_objects(b.store.as_ref()).await.contains_key(&rel)
    })
    .await;
    let stats2 = run.stop().await;
    assert!(
        b.data().join(&rel).exists(),
        "deleted before it was verified"
    );

    proxy.set_delay_ms(0);
    let stats3 = Running::start(b.shipper(cfg))
        .ship_then_stop("the abandoned file shipped on restart", 1)
        .await;
    assert_eq!(stats2.snapshot().files_uploaded, 0);
    b.assert_accounted(&stats3, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backlog_drops_the_oldest_and_counts_them() {
    let Some(mut b) = Bench::start("full") else {
        return;
    };
    let proxy = b.proxy(true).await;
    // Eight files, oldest first (n = 0 is 80 s old), plus one past max_age.
    let mut by_age = Vec::new();
    for n in 0..8 {
        by_age.push(b.write("probes", n, 80 - 10 * u64::from(n)));
    }
    let too_old = b.write("health", 8, 3 * 24 * 3600);
    let cfg = ShipConfig {
        max_backlog_files: 5,
        max_age_ms: 24 * 3600 * 1000,
        ..b.config(&proxy.endpoint())
    };
    let seen: Arc<Mutex<Vec<(Stage, String)>>> = Arc::default();
    let seen2 = seen.clone();
    let run = Running::start(b.shipper(cfg).with_stage_hook(Arc::new(move |stage, key| {
        seen2.lock().unwrap().push((stage, key.to_string()));
    })));
    eventually("the backlog trimmed to its limit", DEADLINE, || async {
        let s = run.stats.snapshot();
        s.scans >= 2 && s.failed_attempts >= 1
    })
    .await;
    let s = run.stats.snapshot();
    assert_eq!(s.dropped.get(DropReason::BacklogFull), 3, "{s:?}");
    assert_eq!(s.dropped.get(DropReason::MaxAge), 1, "{s:?}");
    assert_eq!(s.files_waiting, 5);
    let dropped: BTreeSet<String> = by_age[..3]
        .iter()
        .cloned()
        .chain(std::iter::once(too_old.clone()))
        .collect();
    let kept: BTreeSet<String> = by_age[3..].iter().cloned().collect();
    assert_eq!(local_files(b.data()), kept, "the newest five stay");
    let hooked: BTreeSet<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(st, _)| matches!(st, Stage::Dropped(_)))
        .map(|(_, k)| k.strip_prefix(&format!("{PREFIX}/")).unwrap().to_string())
        .collect();
    assert_eq!(hooked, dropped);

    proxy.set_down(false);
    let stats = run.ship_then_stop("the kept files shipped", 5).await;
    b.assert_accounted_dropped(&dropped, &stats, true).await;
}

/// Environment of the child shipper process (see [`child_shipper_process`]).
const CHILD_DATA: &str = "SLICETRACE_SHIP_TEST_CHILD_DATA_DIR";
const CHILD_CONFIG: &str = "SLICETRACE_SHIP_TEST_CHILD_CONFIG";
const CHILD_STALL_MARKER: &str = "SLICETRACE_SHIP_TEST_CHILD_STALL_MARKER";

/// Not a test on its own: the body of the child process that the crash
/// tests start (this test binary, re-run with `--exact`). It ships with
/// credentials from the environment, as the agent does, until it is
/// killed; with a stall marker it writes the key of the first verified
/// file there and then hangs before deleting it, so the parent can SIGKILL
/// it between upload and delete.
#[test]
fn child_shipper_process() {
    let Ok(data) = std::env::var(CHILD_DATA) else {
        return;
    };
    let config: ShipConfig = toml::from_str(&std::env::var(CHILD_CONFIG).unwrap()).unwrap();
    let marker = std::env::var_os(CHILD_STALL_MARKER);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut s = Shipper::new(config, data).unwrap();
        if let Some(m) = marker {
            s = s.with_stage_hook(Arc::new(move |stage, key| {
                if stage == Stage::Verified {
                    std::fs::write(&m, key).unwrap();
                    // Hang here, between verify and delete, until killed.
                    loop {
                        std::thread::park();
                    }
                }
            }));
        }
        s.run(std::future::pending()).await;
    });
}

/// Starts this test binary as a child shipper of `data` to `endpoint`.
fn start_child(data: &Path, cfg: &ShipConfig, stall_marker: Option<&Path>, log: &Path) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_shipper_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DATA, data)
    .env(CHILD_CONFIG, toml::to_string(cfg).unwrap())
    .env("AWS_ACCESS_KEY_ID", KEY_ID)
    .env("AWS_SECRET_ACCESS_KEY", SECRET)
    .env("AWS_REGION", REGION)
    .env_remove("AWS_SESSION_TOKEN")
    .env_remove("AWS_PROFILE");
    if let Some(m) = stall_marker {
        cmd.env(CHILD_STALL_MARKER, m);
    }
    Proc::spawn(cmd, log.to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_upload_and_delete_leaves_no_duplicate_and_no_loss() {
    let Some(mut b) = Bench::start("killed") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    for n in 0..3 {
        b.write("probes", n, 30 - u64::from(n));
    }
    let cfg = b.config(&b.moto.endpoint());
    let marker = work.path().join("verified");
    let mut child = start_child(
        b.data(),
        &cfg,
        Some(&marker),
        &work.path().join("child.log"),
    );
    eventually("the child verified its first upload", DEADLINE, || {
        let done = marker.exists() || child.child.try_wait().ok().flatten().is_some();
        async move { done }
    })
    .await;
    assert!(marker.exists(), "child exited early: {}", child.log_text());
    child.signal(libc::SIGKILL);
    let _ = child.wait_timeout(Duration::from_secs(10));
    let key = std::fs::read_to_string(&marker).unwrap();
    let first = b.files.0.keys().next().unwrap().clone();
    assert_eq!(key, format!("{PREFIX}/{first}"));
    // The crash window: in the bucket and still here.
    assert!(bucket_objects(b.store.as_ref()).await.contains_key(&first));
    assert!(b.data().join(&first).exists());

    // Restart: the same key is uploaded again (same bytes), then deleted.
    let stats = Running::start(b.shipper(cfg))
        .ship_then_stop("all files shipped after the restart", 3)
        .await;
    b.assert_accounted(&stats, true).await;
    assert_eq!(bucket_objects(b.store.as_ref()).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_files_waiting_ships_them() {
    let Some(mut b) = Bench::start("restart") else {
        return;
    };
    let proxy = b.proxy(true).await;
    let work = tempfile::tempdir().unwrap();
    for n in 0..4 {
        b.write(if n % 2 == 0 { "probes" } else { "health" }, n, 20);
    }
    let cfg = b.config(&proxy.endpoint());
    let mut child = start_child(b.data(), &cfg, None, &work.path().join("child.log"));
    eventually("the child tried the store", DEADLINE, || async {
        proxy.accepted() >= 3
    })
    .await;
    child.signal(libc::SIGKILL);
    let _ = child.wait_timeout(Duration::from_secs(10));
    assert!(bucket_objects(b.store.as_ref()).await.is_empty());
    assert_eq!(local_files(b.data()).len(), 4);

    proxy.set_down(false);
    let stats = Running::start(b.shipper(cfg))
        .ship_then_stop("the waiting files shipped after the restart", 4)
        .await;
    b.assert_accounted(&stats, true).await;
}

/// Runs `s` until the deadline sent on the returned channel, then its last
/// pass (the agent's stop): its counters, the deadline's sender, and the
/// task that returns the final snapshot.
fn run_then_flush(
    s: Shipper,
) -> (
    ShipStats,
    tokio::sync::oneshot::Sender<tokio::time::Instant>,
    tokio::task::JoinHandle<ShipSnapshot>,
) {
    let stats = s.stats();
    let (tx, by) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    let h = tokio::spawn(s.run_then_flush(async move { by.await.ok() }));
    (stats, tx, h)
}

/// The agent's stop: files closed after the last scan (the Parquet writer
/// closes its open files at shutdown) ship in the last pass, with no wait
/// for the next scan, and the shipper returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_closed_at_shutdown_ship_in_the_last_pass() {
    let Some(mut b) = Bench::start("lastpass") else {
        return;
    };
    b.write("probes", 0, 30);
    let cfg = ShipConfig {
        // No second scan within the test: only the last pass can ship the
        // files written below.
        scan_interval_ms: 3_600_000,
        ..b.config(&b.moto.endpoint())
    };
    let (stats, tx, h) = run_then_flush(b.shipper(cfg));
    eventually("the first file shipped", DEADLINE, || async {
        stats.snapshot().files_uploaded >= 1
    })
    .await;
    b.write("probes", 1, 0);
    b.write("health", 2, 0);
    tx.send(tokio::time::Instant::now() + Duration::from_secs(30))
        .unwrap();
    let snap = tokio::time::timeout(DEADLINE, h).await.unwrap().unwrap();
    assert_eq!(snap.files_uploaded, 3, "{snap:?}");
    assert_eq!(snap.files_waiting, 0, "{snap:?}");
    b.assert_accounted(&stats, true).await;
}

/// A last pass that cannot finish by its deadline (S3 hangs) returns at the
/// deadline and leaves the files waiting, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_pass_against_a_hung_store_ends_at_its_deadline() {
    let Some(mut b) = Bench::start("lasthung") else {
        return;
    };
    let proxy = b.proxy(false).await;
    proxy.set_delay_ms(60_000);
    b.write("probes", 0, 30);
    let cfg = ShipConfig {
        scan_interval_ms: 3_600_000,
        request_timeout_ms: 120_000,
        ..b.config(&proxy.endpoint())
    };
    let (stats, tx, h) = run_then_flush(b.shipper(cfg));
    tx.send(tokio::time::Instant::now() + Duration::from_millis(500))
        .unwrap();
    // Generous bound: the deadline is 0.5 s; the request would hang 60 s.
    let snap = tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .expect("the last pass outlived its deadline")
        .unwrap();
    assert_eq!(snap.files_uploaded, 0, "{snap:?}");
    assert_eq!(local_files(b.data()).len(), 1, "the file still waits");
    proxy.set_delay_ms(0);
    b.assert_accounted(&stats, false).await;
}

/// A config without a destination fails at construction, in one line.
#[test]
fn shipper_new_validates_before_anything_runs() {
    let e = Shipper::new(ShipConfig::default(), "/nonexistent").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid ship config: destination: is required (s3://BUCKET/PREFIX/)"
    );
}
