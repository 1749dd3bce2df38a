//! Harness of the shipping tests: a real `moto_server` on loopback (started
//! here, killed when the test ends), a TCP proxy in front of it that can be
//! down or slow, a data directory of closed and half-written files, and the
//! checks every test ends with: nothing lost, nothing duplicated.
//!
//! Missing tools skip with a visible SKIP line unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use slicetrace_e2e::{free_port, python_with, run_python, wait_for};
use slicetrace_ship::{ShipConfig, ShipSnapshot, ShipStats, Shipper};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream as TokioStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// moto's test credentials.
pub const KEY_ID: &str = "test";
/// moto's test credentials.
pub const SECRET: &str = "test";
/// moto's region.
pub const REGION: &str = "us-east-1";
/// The prefix every test ships under.
pub const PREFIX: &str = "fleet/a";
/// Generous: these bound a wait for an event, never a duration asserted.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A `moto_server` this test started; killed (only it) when dropped.
pub struct Moto {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    py: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto on a free loopback port, or `None` (SKIP) without it. A
    /// port taken between picking and binding makes moto exit: then another
    /// port is tried.
    pub fn start() -> Option<Moto> {
        let py = python_with(&["moto.server", "boto3"])?;
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&py)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let up = wait_for(Duration::from_secs(30), || {
                if child.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
            });
            // Still ours: it did not exit for want of the port.
            if up == Some(true) && child.try_wait().ok().flatten().is_none() {
                return Some(Moto { child, port, py });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start on any of 5 free ports");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (with boto3, as an operator would).
    pub fn create_bucket(&self, bucket: &str) {
        run_python(
            &self.py,
            "import boto3, sys\n\
             boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
             aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket=sys.argv[2])",
            &[&self.endpoint(), bucket],
        );
    }

    /// A client straight to moto (not through the proxy), to read back.
    pub fn client(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_region(REGION)
                .with_access_key_id(KEY_ID)
                .with_secret_access_key(SECRET)
                .build()
                .unwrap(),
        )
    }
}

/// What every shipping test starts from: moto with an empty bucket, a
/// client to read the bucket back, and an empty data directory with the
/// files written into it so far.
pub struct Bench {
    /// The store, reached straight or through a [`Proxy`].
    pub moto: Moto,
    /// The bucket this test ships to.
    pub bucket: String,
    /// A client straight to moto (see [`Moto::client`]).
    pub store: Arc<dyn ObjectStore>,
    /// The shipper's data directory.
    pub data: TempDir,
    /// Every closed file written under `data`.
    pub files: Files,
}

impl Bench {
    /// Starts moto and creates `bucket`, or `None` (SKIP) without moto.
    pub fn start(bucket: &str) -> Option<Bench> {
        let moto = Moto::start()?;
        moto.create_bucket(bucket);
        Some(Bench {
            store: moto.client(bucket),
            moto,
            bucket: bucket.into(),
            data: tempfile::tempdir().unwrap(),
            files: Files::default(),
        })
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        self.data.path()
    }

    /// A proxy in front of moto, starting up or down.
    pub async fn proxy(&self, down: bool) -> Proxy {
        Proxy::start(self.moto.port, down).await
    }

    /// [`config`] for this bench's bucket, shipping to `endpoint`.
    pub fn config(&self, endpoint: &str) -> ShipConfig {
        config(&self.bucket, endpoint)
    }

    /// [`shipper`] of this bench's data directory.
    pub fn shipper(&self, config: ShipConfig) -> Shipper {
        shipper(config, self.data())
    }

    /// Writes a closed file of `table` on node `n1` (see [`Files::write`]).
    pub fn write(&mut self, table: &str, n: u32, age_secs: u64) -> String {
        self.files.write(self.data.path(), table, "n1", n, age_secs)
    }

    /// [`assert_accounted`] for a test that expects nothing dropped.
    pub async fn assert_accounted(&self, stats: &ShipStats, settled: bool) {
        self.assert_accounted_dropped(&BTreeSet::new(), stats, settled)
            .await;
    }

    /// [`assert_accounted`] with the files expected to be `dropped`.
    pub async fn assert_accounted_dropped(
        &self,
        dropped: &BTreeSet<String>,
        stats: &ShipStats,
        settled: bool,
    ) {
        assert_accounted(
            self.store.as_ref(),
            self.data(),
            &self.files,
            dropped,
            stats,
            settled,
        )
        .await;
    }
}

/// A shipper running on the test's runtime until [`Running::stop`].
pub struct Running {
    /// Its counters, readable while it runs and after it stopped.
    pub stats: ShipStats,
    tx: oneshot::Sender<()>,
    handle: JoinHandle<ShipSnapshot>,
}

impl Running {
    /// Spawns `shipper.run` on the test's runtime.
    pub fn start(shipper: Shipper) -> Running {
        let stats = shipper.stats();
        let (tx, stop) = stop_signal();
        Running {
            stats,
            tx,
            handle: tokio::spawn(shipper.run(stop)),
        }
    }

    /// Waits (up to [`DEADLINE`]) until at least `n` files are uploaded.
    pub async fn until_uploaded(&self, what: &str, n: u64) {
        let stats = &self.stats;
        eventually(what, DEADLINE, || async move {
            stats.snapshot().files_uploaded >= n
        })
        .await;
    }

    /// Stops it and waits (10 s at most) for `run` to return; returns its
    /// counters.
    pub async fn stop(self) -> ShipStats {
        let _ = self.tx.send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("run did not end within 10 s of the stop signal")
            .unwrap();
        self.stats
    }

    /// [`Running::until_uploaded`], then [`Running::stop`].
    pub async fn ship_then_stop(self, what: &str, n: u64) -> ShipStats {
        self.until_uploaded(what, n).await;
        self.stop().await
    }
}

/// A TCP proxy in front of moto: `down` refuses service (accepts and closes
/// at once, and cuts open connections), `delay_ms` holds every chunk of the
/// store's answers back that long.
#[derive(Clone)]
pub struct Proxy {
    /// Its loopback port.
    pub port: u16,
    down: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port (bound here and kept) and forwards
    /// to `upstream`, starting up or down.
    pub async fn start(upstream: u16, down: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            down: Arc::new(AtomicBool::new(down)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
        };
        let me = p.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                me.accepted.fetch_add(1, Ordering::SeqCst);
                if me.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let me = me.clone();
                tokio::spawn(async move { me.forward(client, upstream).await });
            }
        });
        p
    }

    async fn forward(&self, mut client: TokioStream, upstream: u16) {
        let Ok(mut server) = TokioStream::connect(("127.0.0.1", upstream)).await else {
            return;
        };
        let (mut a, mut b) = ([0u8; 16384], [0u8; 16384]);
        loop {
            tokio::select! {
                n = client.read(&mut a) => {
                    let Ok(n @ 1..) = n else { return };
                    if self.is_down() || server.write_all(&a[..n]).await.is_err() { return; }
                }
                n = server.read(&mut b) => {
                    let Ok(n @ 1..) = n else { return };
                    let d = self.delay_ms.load(Ordering::SeqCst);
                    if d > 0 {
                        tokio::time::sleep(Duration::from_millis(d)).await;
                    }
                    if self.is_down() || client.write_all(&b[..n]).await.is_err() { return; }
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Takes the store down (or brings it back).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (refused ones too).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Delays every chunk of every answer by `ms`.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// A config for tests: fast scans and retries, plain http to `endpoint`.
pub fn config(bucket: &str, endpoint: &str) -> ShipConfig {
    ShipConfig {
        enabled: true,
        destination: Some(format!("s3://{bucket}/{PREFIX}/")),
        region: Some(REGION.into()),
        endpoint: Some(endpoint.into()),
        allow_http: true,
        scan_interval_ms: 50,
        request_timeout_ms: 10_000,
        connect_timeout_ms: 2_000,
        retry_initial_ms: 50,
        retry_max_ms: 400,
        ..ShipConfig::default()
    }
}

/// A shipper with moto's credentials given explicitly (the child-process
/// test goes through the environment instead).
pub fn shipper(config: ShipConfig, data_dir: &Path) -> Shipper {
    let dest = config.validate().unwrap().unwrap();
    let store = config
        .s3_builder(&dest)
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap();
    Shipper::with_store(config, data_dir, Arc::new(store)).unwrap()
}

/// The files a test writes: relative path → bytes.
#[derive(Debug, Default, Clone)]
pub struct Files(pub BTreeMap<String, Vec<u8>>);

impl Files {
    /// Writes a closed file of `table` on `node`, `n`-th of the test, with
    /// distinct bytes and a modification time `age_secs` ago.
    pub fn write(&mut self, data: &Path, table: &str, node: &str, n: u32, age_secs: u64) -> String {
        let rel = format!(
            "{table}/date=2026-01-01/node={node}/part-20260101T00{:02}00Z-{n:08}.parquet",
            n % 60
        );
        let path = data.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Different sizes and contents, so a mix-up shows.
        let bytes: Vec<u8> = (0..(2048 + 97 * n))
            .map(|i| (i.wrapping_mul(31).wrapping_add(n)) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let mtime = SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        self.0.insert(rel.clone(), bytes);
        rel
    }

    /// A half-written file as the Parquet sink leaves it: must never ship.
    pub fn write_tmp(data: &Path, table: &str) -> PathBuf {
        let dir = data.join(format!("{table}/date=2026-01-01/node=n1"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(".part-20260101T000000Z-open.parquet.tmp");
        std::fs::write(&p, b"PAR1 no footer yet").unwrap();
        p
    }
}

/// Every object under the test prefix: key (relative to the prefix) → size.
pub async fn bucket_objects(store: &dyn ObjectStore) -> BTreeMap<String, u64> {
    let prefix = ObjPath::from(PREFIX);
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in listed {
        let rel = m
            .location
            .as_ref()
            .strip_prefix(&format!("{PREFIX}/"))
            .unwrap()
            .to_string();
        // A key listed twice would be a duplicate object.
        assert!(
            out.insert(rel.clone(), m.size).is_none(),
            "{rel} listed twice"
        );
    }
    out
}

/// Closed files still under `data` (relative paths).
pub fn local_files(data: &Path) -> BTreeSet<String> {
    let (done, _) = slicetrace_e2e::parquet_files(data);
    done.iter()
        .map(|p| {
            p.strip_prefix(data)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

/// Nothing lost, nothing duplicated: every file written is either in the
/// bucket with its exact bytes and gone locally, or in `dropped` (gone
/// everywhere), or still waiting locally (when `settled` is false); the
/// bucket holds no other object; `dropped` agrees with the counters.
pub async fn assert_accounted(
    store: &dyn ObjectStore,
    data: &Path,
    files: &Files,
    dropped: &BTreeSet<String>,
    stats: &ShipStats,
    settled: bool,
) {
    let objects = bucket_objects(store).await;
    let local = local_files(data);
    for (rel, bytes) in &files.0 {
        if dropped.contains(rel) {
            assert!(
                !objects.contains_key(rel),
                "{rel} was dropped but is in the bucket"
            );
            assert!(!local.contains(rel), "{rel} was dropped but is still local");
            continue;
        }
        if let Some(size) = objects.get(rel) {
            assert_eq!(*size, bytes.len() as u64, "{rel}: size in the bucket");
            let got = store
                .get(&ObjPath::from(format!("{PREFIX}/{rel}")))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&got[..], &bytes[..], "{rel}: bytes in the bucket");
        } else {
            assert!(!settled, "{rel} is not in the bucket (lost?)");
            assert!(
                local.contains(rel),
                "{rel} is neither in the bucket nor local: lost"
            );
        }
        if settled {
            assert!(!local.contains(rel), "{rel} was shipped but is still local");
        }
    }
    let extra: Vec<_> = objects
        .keys()
        .filter(|k| !files.0.contains_key(*k))
        .collect();
    assert!(extra.is_empty(), "objects nobody wrote: {extra:?}");
    assert_eq!(stats.snapshot().dropped.total(), dropped.len() as u64);
}

/// Waits until `cond` holds, up to `deadline`; panics with `what`
/// otherwise (the test kit's one wait). For events only: never a timing
/// assertion.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    slicetrace_e2e::testkit::eventually(what, deadline, || {
        let c = cond();
        async move { c.await.then_some(()) }
    })
    .await
}

/// A stop signal for [`Shipper::run`] and the sender that fires it.
pub fn stop_signal() -> (oneshot::Sender<()>, impl Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}
