//! The shipper's one loop ([`Shipper::run`]) and one file's way through
//! it: read, upload to its stable key, verify with a HEAD, delete the local
//! copy. Everything that can fail is counted and retried after a backoff;
//! nothing here panics or returns an error to the agent.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::backlog::{self, Limits, Waiting};
use crate::backoff::Backoff;
use crate::config::{ConfigError, Destination, ShipConfig};
use crate::stats::{DropReason, ShipSnapshot, ShipStats};
use crate::ShipError;

/// A step of one file's way, reported to a [`StageHook`] right after it
/// happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The PUT succeeded.
    Uploaded,
    /// The HEAD matched the file: the local copy may go.
    Verified,
    /// The local copy is gone; the file counts as uploaded.
    Deleted,
    /// The file was deleted unshipped.
    Dropped(DropReason),
}

/// Called with each [`Stage`] and the file's object key, on the shipper's
/// task, between the steps. For tests (a crash between upload and delete)
/// and instrumentation; it must return quickly.
pub type StageHook = Arc<dyn Fn(Stage, &str) + Send + Sync>;

/// Why one attempt at one file failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the file disappeared before it was shipped")]
    Vanished,
    #[error("failed to upload {key}")]
    Put {
        key: ObjPath,
        #[source]
        source: object_store::Error,
    },
    #[error("failed to check uploaded {key}")]
    Head {
        key: ObjPath,
        #[source]
        source: object_store::Error,
    },
    #[error("uploaded {key} does not match the file: {what}")]
    Mismatch { key: ObjPath, what: String },
    #[error("failed to delete {} after it was shipped", path.display())]
    Delete {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl AttemptError {
    /// A failure of this node's disk, not of the store: skip the file this
    /// round and go on with the others, instead of backing off.
    fn is_local(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Delete { .. })
    }
}

/// An error and its causes on one line (`a: b: c`), for log fields.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How a pass over the backlog ended.
enum Pass {
    /// Every waiting file was tried: wait for the next scan.
    Done,
    /// The store failed: wait for the backoff.
    Failed,
}

/// Ships the closed files of one data directory to one destination (see the
/// crate doc for the states of a file). Build it, take [`Shipper::stats`]
/// for `/metrics`, then spawn [`Shipper::run`].
pub struct Shipper {
    config: ShipConfig,
    data_dir: PathBuf,
    dest: Destination,
    store: Arc<dyn ObjectStore>,
    stats: ShipStats,
    hook: Option<StageHook>,
    backoff: Backoff,
}

impl fmt::Debug for Shipper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shipper")
            .field("data_dir", &self.data_dir)
            .field("destination", &self.dest.to_string())
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

impl Shipper {
    /// A shipper of the closed files under `data_dir` (the agent's data
    /// directory) to `config.destination`, with credentials from the
    /// standard AWS sources ([`ShipConfig::s3_builder`]). Validates the
    /// config; does not touch the network or the disk. It does not look at
    /// `config.enabled`: whoever builds it has decided to ship.
    pub fn new(config: ShipConfig, data_dir: impl Into<PathBuf>) -> Result<Self, ShipError> {
        let dest = destination_of(&config)?;
        let store = config
            .s3_builder(&dest)
            .build()
            .map_err(|source| ShipError::Store {
                destination: dest.to_string(),
                source,
            })?;
        Self::with_store(config, data_dir, Arc::new(store))
    }

    /// [`Shipper::new`] with a store built by the caller (other credentials,
    /// another `ObjectStore`); `config.destination` still gives the prefix.
    pub fn with_store(
        config: ShipConfig,
        data_dir: impl Into<PathBuf>,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Self, ShipError> {
        let dest = destination_of(&config)?;
        let backoff = Backoff::new(
            Duration::from_millis(config.retry_initial_ms),
            Duration::from_millis(config.retry_max_ms),
            true,
        );
        Ok(Self {
            config,
            data_dir: data_dir.into(),
            dest,
            store,
            stats: ShipStats::default(),
            hook: None,
            backoff,
        })
    }

    /// Calls `hook` at every [`Stage`] of every file.
    pub fn with_stage_hook(mut self, hook: StageHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The live counters (a shared handle: take it before [`Shipper::run`]
    /// consumes the shipper).
    pub fn stats(&self) -> ShipStats {
        self.stats.clone()
    }

    /// Where files go.
    pub fn destination(&self) -> &Destination {
        &self.dest
    }

    /// Ships until `stop` completes, then returns the final counters. Scans
    /// every `scan_interval_ms`; after a failed attempt it waits for the
    /// backoff instead. Returns as soon as `stop` completes, abandoning an
    /// upload in flight (safe: see the crate doc), so the caller's deadline
    /// is never spent here.
    pub async fn run(self, stop: impl Future<Output = ()>) -> ShipSnapshot {
        self.run_then_flush(async move {
            stop.await;
            None
        })
        .await
    }

    /// [`Shipper::run`], with one last pass at the end: when `stop` yields
    /// `Some(by)`, the files waiting then (e.g. the ones the Parquet writer
    /// closed at shutdown) are tried once more, oldest first, until `by`;
    /// `None` stops at once. What the last pass does not ship stays waiting
    /// for the next start (an upload cut off by `by` is abandoned, which is
    /// safe for the same reasons as a stop). The agent calls this after its
    /// Parquet writer closed its files, with what is left of its shutdown
    /// deadline.
    pub async fn run_then_flush(
        mut self,
        stop: impl Future<Output = Option<tokio::time::Instant>>,
    ) -> ShipSnapshot {
        tokio::pin!(stop);
        tracing::info!(
            destination = %self.dest,
            data_dir = %self.data_dir.display(),
            scan_interval_ms = self.config.scan_interval_ms,
            "shipping closed files"
        );
        let last_pass_by = loop {
            let pass = tokio::select! {
                biased;
                by = &mut stop => break by,
                p = self.ship_waiting() => p,
            };
            let wait = match pass {
                Pass::Done => self.config.scan_interval(),
                Pass::Failed => self.backoff.next_delay(),
            };
            tokio::select! {
                biased;
                by = &mut stop => break by,
                () = tokio::time::sleep(wait) => {}
            }
        };
        if let Some(by) = last_pass_by {
            if tokio::time::timeout_at(by, self.ship_waiting())
                .await
                .is_err()
            {
                tracing::info!("last shipping pass cut off by the shutdown deadline: the rest waits for the next start");
            }
        }
        let s = self.stats.snapshot();
        tracing::info!(
            files_uploaded = s.files_uploaded,
            files_waiting = s.files_waiting,
            failed_attempts = s.failed_attempts,
            dropped = s.dropped.total(),
            "shipping stopped"
        );
        s
    }

    /// One pass: scan, drop what is over the limits, then ship the waiting
    /// files oldest first until the store fails.
    async fn ship_waiting(&mut self) -> Pass {
        let dir = self.data_dir.clone();
        let files = match blocking(move || backlog::scan(&dir)).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    data_dir = %self.data_dir.display(),
                    error = %chain(&e),
                    "failed to scan the data directory"
                );
                return Pass::Failed;
            }
        };
        self.stats.scanned();
        let limits = Limits {
            max_files: self.config.max_backlog_files,
            max_bytes: self.config.max_backlog_bytes,
            max_age: self.config.max_age(),
        };
        let (waiting, drops) = backlog::plan_drops(files, limits, SystemTime::now());
        self.drop_files(drops).await;

        let mut files_left = waiting.len() as u64;
        let mut bytes_left: u64 = waiting.iter().map(|f| f.size).sum();
        self.stats
            .set_waiting(files_left, bytes_left, waiting.first().map(|f| f.mtime));
        // The oldest file skipped after a local failure: it still waits.
        let mut skipped_oldest: Option<SystemTime> = None;
        for (i, f) in waiting.iter().enumerate() {
            let result = self.ship_one(f).await;
            let gone = match &result {
                Ok(()) => {
                    self.stats.uploaded(f.size);
                    self.backoff.reset();
                    tracing::debug!(key = %self.dest.key(&f.rel), bytes = f.size, "shipped file");
                    true
                }
                Err(AttemptError::Vanished) => {
                    self.stats.dropped(DropReason::Vanished);
                    self.call_hook(
                        Stage::Dropped(DropReason::Vanished),
                        self.dest.key(&f.rel).as_ref(),
                    );
                    tracing::error!(
                        path = %f.path.display(),
                        reason = DropReason::Vanished.as_str(),
                        "file disappeared before it was shipped"
                    );
                    true
                }
                Err(e) => {
                    let mismatch = matches!(e, AttemptError::Mismatch { .. });
                    self.stats.failed(mismatch);
                    tracing::warn!(
                        path = %f.path.display(),
                        error = %chain(e),
                        "failed to ship file, will retry"
                    );
                    if !e.is_local() {
                        return Pass::Failed;
                    }
                    skipped_oldest.get_or_insert(f.mtime);
                    false
                }
            };
            if gone {
                files_left -= 1;
                bytes_left = bytes_left.saturating_sub(f.size);
            }
            // The rest are newer, so the oldest still waiting is one
            // skipped after a local failure, else the next one.
            let oldest = skipped_oldest.or_else(|| waiting.get(i + 1).map(|w| w.mtime));
            self.stats.set_waiting(files_left, bytes_left, oldest);
        }
        Pass::Done
    }

    /// Deletes files unshipped (over the backlog's limits), counting each
    /// by reason; one ERROR line per reason, since this is data loss.
    async fn drop_files(&self, drops: Vec<(Waiting, DropReason)>) {
        if drops.is_empty() {
            return;
        }
        for reason in DropReason::ALL {
            let (mut files, mut bytes) = (0u64, 0u64);
            for (f, _) in drops.iter().filter(|(_, r)| *r == reason) {
                let path = f.path.clone();
                match blocking(move || remove(&path)).await {
                    Ok(()) => {
                        files += 1;
                        bytes += f.size;
                        self.stats.dropped(reason);
                        self.call_hook(Stage::Dropped(reason), self.dest.key(&f.rel).as_ref());
                        tracing::debug!(path = %f.path.display(), reason = reason.as_str(), "dropped file");
                    }
                    Err(e) => tracing::warn!(
                        path = %f.path.display(),
                        error = %chain(&e),
                        "failed to drop file from the backlog"
                    ),
                }
            }
            if files > 0 {
                tracing::error!(
                    files,
                    bytes,
                    reason = reason.as_str(),
                    max_backlog_files = self.config.max_backlog_files,
                    max_backlog_bytes = self.config.max_backlog_bytes,
                    max_age_ms = self.config.max_age_ms,
                    "dropped unshipped files from the backlog"
                );
            }
        }
    }

    /// One file's way: read, PUT to its stable key, HEAD and compare, delete.
    async fn ship_one(&self, f: &Waiting) -> Result<(), AttemptError> {
        let key = self.dest.key(&f.rel);
        let path = f.path.clone();
        let bytes = blocking(move || std::fs::read(&path))
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => AttemptError::Vanished,
                _ => AttemptError::Read {
                    path: f.path.clone(),
                    source,
                },
            })?;
        let len = bytes.len() as u64;
        let md5 = self
            .config
            .verify_etag_md5
            .then(|| hex(&Md5::digest(&bytes)));
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|source| AttemptError::Put {
                key: key.clone(),
                source,
            })?;
        self.call_hook(Stage::Uploaded, key.as_ref());

        let meta = self
            .store
            .head(&key)
            .await
            .map_err(|source| AttemptError::Head {
                key: key.clone(),
                source,
            })?;
        if meta.size != len {
            return Err(AttemptError::Mismatch {
                key,
                what: format!("{} bytes in the store, {len} in the file", meta.size),
            });
        }
        if let Some(md5) = md5 {
            let etag = meta.e_tag.as_deref().map(|t| t.trim_matches('"'));
            if etag != Some(md5.as_str()) {
                return Err(AttemptError::Mismatch {
                    key,
                    what: format!(
                        "ETag {etag:?} is not the file's MD5 {md5} \
                         (with SSE-KMS or SSE-C set verify_etag_md5 = false)"
                    ),
                });
            }
        }
        self.call_hook(Stage::Verified, key.as_ref());

        let path = f.path.clone();
        blocking(move || remove(&path))
            .await
            .map_err(|source| AttemptError::Delete {
                path: f.path.clone(),
                source,
            })?;
        self.call_hook(Stage::Deleted, key.as_ref());
        Ok(())
    }

    fn call_hook(&self, stage: Stage, key: &str) {
        if let Some(h) = &self.hook {
            h(stage, key);
        }
    }
}

fn destination_of(config: &ShipConfig) -> Result<Destination, ConfigError> {
    config.validate()?.ok_or_else(|| ConfigError {
        field: "destination",
        reason: "is required (s3://BUCKET/PREFIX/)".into(),
    })
}

/// Deletes a file; one already gone is fine.
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs file I/O on tokio's blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn md5_hex_is_what_s3_puts_in_an_etag() {
        assert_eq!(hex(&Md5::digest(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn error_chains_fit_on_one_line() {
        let e = AttemptError::Read {
            path: PathBuf::from("/d/f"),
            source: io::Error::other("disk on fire"),
        };
        assert_eq!(chain(&e), "failed to read /d/f: disk on fire");
        assert!(e.is_local());
    }
}
