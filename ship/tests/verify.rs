//! Verification before delete, against object_store's in-memory store
//! (no tools needed): its ETags are counters, not MD5s, so it stands for a
//! bucket whose ETags do not match (SSE-KMS) and the file must stay.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::ObjectStoreExt;
use slicetrace_ship::{ShipConfig, Shipper};

fn config() -> ShipConfig {
    ShipConfig {
        enabled: true,
        destination: Some("s3://bkt/pre/".into()),
        scan_interval_ms: 20,
        retry_initial_ms: 20,
        retry_max_ms: 100,
        ..ShipConfig::default()
    }
}

const REL: &str = "probes/date=2026-01-01/node=n1/part-20260101T000000Z-a.parquet";

fn data_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(REL);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, b"PAR1 some rows PAR1").unwrap();
    d
}

/// Waits until `cond` holds, up to 30 s (the test kit's one wait).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    slicetrace_e2e::testkit::wait_until_async(what, Duration::from_secs(30), || {
        cond().then_some(())
    })
    .await
}

#[tokio::test]
async fn etag_that_is_not_the_md5_keeps_the_local_file_and_counts_a_mismatch() {
    let data = data_dir();
    let store = Arc::new(InMemory::new());
    let s = Shipper::with_store(config(), data.path(), store.clone()).unwrap();
    let stats = s.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(s.run(async move {
        let _ = rx.await;
    }));
    wait_until("two verify mismatches", || {
        stats.snapshot().verify_mismatches >= 2
    })
    .await;
    let _ = tx.send(());
    let end = h.await.unwrap();
    assert_eq!(end.files_uploaded, 0);
    assert_eq!(end.files_waiting, 1);
    assert!(end.failed_attempts >= end.verify_mismatches);
    assert!(
        data.path().join(REL).exists(),
        "deleted without verification"
    );
}

#[tokio::test]
async fn without_the_etag_check_the_size_verifies_and_the_file_ships() {
    let data = data_dir();
    let store = Arc::new(InMemory::new());
    let cfg = ShipConfig {
        verify_etag_md5: false,
        ..config()
    };
    let s = Shipper::with_store(cfg, data.path(), store.clone()).unwrap();
    let stats = s.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(s.run(async move {
        let _ = rx.await;
    }));
    wait_until("one file uploaded", || stats.snapshot().files_uploaded >= 1).await;
    let _ = tx.send(());
    h.await.unwrap();
    let got = store
        .get(&ObjPath::from(format!("pre/{REL}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"PAR1 some rows PAR1");
    assert!(!data.path().join(REL).exists());
    assert_eq!(stats.snapshot().verify_mismatches, 0);
}
