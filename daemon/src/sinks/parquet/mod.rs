//! Parquet sink: probe rows (and live-health verdicts) as Hive-partitioned,
//! zstd-compressed Parquet files that readers can glob at any moment.
//!
//! Layout: `DIR/probes/date=YYYY-MM-DD/node=NAME/part-<start>-<uuid>.parquet`
//! (and the same under `DIR/health/`). The date is the UTC date of the rows'
//! `ts`, so a file never spans two dates. A file is written as
//! `.part-<start>-<uuid>.parquet.tmp` in the same directory, which no
//! `*.parquet` glob matches, and renamed into place only after its footer is
//! written and synced: a reader never sees a half-written file.
//!
//! All file I/O happens on one dedicated writer thread (`parquet-writer`),
//! never on the async runtime. [`ParquetSink`] is the async handle: `export`
//! hands rows to the thread and waits for their acknowledgement, which only
//! means "buffered", so a slow disk slows the sink's runner and fills its
//! bounded channel (where the pipeline drops and counts) instead of growing
//! memory here. The thread buffers rows in memory and encodes them into the
//! open file's row group every `flush_interval_ms` (or every
//! `row_group_rows`), rotates by time, size and date, applies retention after
//! each rotation and at start, and recovers leftover temporary files at start.
//!
//! A write error (disk full, permissions) costs the rows of the file being
//! written: they are counted in `parquet_rows_dropped`, the broken temporary
//! file is removed, an ERROR line is logged at most once a minute, and the
//! next rows open a new file, so writing resumes by itself when space returns.
//!
//! The `parquet_*` counters count rows and files of both tables together.
//!
//! One job per file, in the order a row meets them: `config.rs`
//! (`[parquet]`), this file (the errors and the async handle), `writer.rs`
//! (the thread and its open files), `layout.rs` (paths, over the names that
//! `slicetrace_schema::layout` defines for every writer and reader),
//! `recovery.rs` (leftover temporary files at start) and `retention.rs` (by
//! age and size). Writer settings come from
//! [`slicetrace_schema::writer_properties`].

mod config;
mod layout;
mod recovery;
mod retention;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use slicetrace_schema::{HealthRecord, ProbeRecord, SchemaError};
use tokio::sync::oneshot;

pub use config::ParquetConfig;
pub use recovery::{recover, RecoveryReport};
pub use retention::enforce_retention;

use super::{Sink, SinkError};
use crate::internal_events::Counters;
use writer::{Cmd, Writer};

const SINK_NAME: &str = "parquet";

/// Errors of the Parquet sink.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// A configuration value is out of range.
    #[error("invalid parquet config: {0}")]
    Config(#[from] crate::config::FieldError),
    /// A file-system operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done (`create`, `rename`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The Parquet writer failed (usually an I/O error underneath).
    #[error("failed to write parquet file {path}")]
    Write {
        /// The temporary file being written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Rows could not be turned into an Arrow batch.
    #[error("failed to encode rows for {path}")]
    Encode {
        /// The temporary file being written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: SchemaError,
    },
    /// The writer thread could not be started, or is gone.
    #[error("parquet writer thread is not running")]
    WriterGone,
    /// Shutdown did not finish within its deadline; open files stay as
    /// temporary files and are recovered at the next start.
    #[error("parquet shutdown did not finish within {0:?}")]
    Deadline(Duration),
}

impl From<ParquetError> for SinkError {
    fn from(e: ParquetError) -> Self {
        match e {
            ParquetError::Io {
                action,
                path,
                source,
            } => SinkError::Io {
                sink: SINK_NAME,
                context: format!("failed to {action} {}", path.display()),
                source,
            },
            other => SinkError::Other {
                sink: SINK_NAME,
                context: other.to_string(),
                source: Box::new(other),
            },
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ParquetError + 'a {
    move |source| ParquetError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The Parquet sink: an async handle to the `parquet-writer` thread.
#[derive(Debug)]
pub struct ParquetSink {
    tx: std_mpsc::Sender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ParquetSink {
    /// Starts the writer thread for `data_dir`, writing files for `node`.
    ///
    /// The thread first recovers leftover temporary files and applies
    /// retention, then serves requests in order, so a
    /// [`Sink::force_flush`] right after `new` returns once recovery is done.
    /// Does not touch the disk itself; fails only on a bad config or when
    /// the thread cannot be started.
    pub fn new(
        config: ParquetConfig,
        data_dir: impl Into<PathBuf>,
        node: &str,
        counters: Arc<Counters>,
    ) -> Result<Self, ParquetError> {
        config.validate()?;
        let writer = Writer::new(config, data_dir.into(), node, counters);
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| ParquetError::Io {
                action: "start writer thread for",
                path: PathBuf::from("parquet-writer"),
                source,
            })?;
        Ok(Self {
            tx,
            thread: Some(thread),
        })
    }

    /// Sends `cmd` built around a fresh answer channel and waits for the answer.
    async fn call(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<(), ParquetError>>) -> Cmd,
    ) -> Result<(), ParquetError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(cmd(ack))
            .map_err(|_| ParquetError::WriterGone)?;
        rx.await.map_err(|_| ParquetError::WriterGone)?
    }
}

impl Sink for ParquetSink {
    fn name(&self) -> &'static str {
        SINK_NAME
    }

    /// Hands rows to the writer thread. Returns once they are buffered; an
    /// error means some rows were lost (already counted and logged).
    fn export(&mut self, records: Vec<ProbeRecord>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            Ok(self.call(|ack| Cmd::Probes(records, ack)).await?)
        })
    }

    fn export_health(
        &mut self,
        records: Vec<HealthRecord>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            Ok(self.call(|ack| Cmd::Health(records, ack)).await?)
        })
    }

    /// Closes every open file (footer, sync, rename): everything exported so
    /// far becomes visible. The next rows open new files.
    fn force_flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move { Ok(self.call(Cmd::Flush).await?) })
    }

    /// Closes every open file and stops the writer thread, waiting at most
    /// `deadline`. On timeout the thread keeps closing files in the
    /// background; whatever is still temporary is recovered at next start.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let res = tokio::time::timeout(deadline, self.call(Cmd::Shutdown)).await;
            match res {
                Ok(r) => {
                    if let Some(t) = self.thread.take() {
                        // The thread answered and returns right after; joining
                        // off the runtime keeps even that instant off it.
                        let _ = tokio::task::spawn_blocking(move || t.join()).await;
                    }
                    Ok(r?)
                }
                Err(_) => Err(ParquetError::Deadline(deadline).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    fn rec(ts_ns: i64, wall_ms: f64) -> ProbeRecord {
        ProbeRecord {
            ts_ns,
            node: "n1".into(),
            gpu_uuid: "GPU-1".into(),
            backend: slicetrace_schema::Backend::Cpu,
            kernel: slicetrace_schema::Kernel::Fft,
            shape: "n=8".into(),
            precision: "fp32".into(),
            wall_ms,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn rows_split_at_utc_midnight_and_carry_schema_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counters = Arc::new(Counters::default());
        let mut sink =
            ParquetSink::new(ParquetConfig::default(), dir.path(), "n1", counters.clone())
                .expect("sink");
        // 2024-01-01T23:59:59Z and 2024-01-02T00:00:01Z
        let t0 = 1_704_153_599_000_000_000;
        sink.export(vec![rec(t0, 1.0), rec(t0 + 2_000_000_000, 2.0)])
            .await
            .expect("export");
        sink.shutdown(Duration::from_secs(10))
            .await
            .expect("shutdown");
        let mut files = Vec::new();
        layout::walk_files(dir.path(), &mut files).expect("walk");
        files.sort();
        assert_eq!(files.len(), 2, "{files:?}");
        let s0 = files[0].to_string_lossy().to_string();
        let s1 = files[1].to_string_lossy().to_string();
        assert!(
            s0.contains("probes/date=2024-01-01/node=n1/part-20240101T235959Z-"),
            "{s0}"
        );
        assert!(
            s1.contains("probes/date=2024-01-02/node=n1/part-20240102T000001Z-"),
            "{s1}"
        );
        let reader =
            parquet::file::reader::SerializedFileReader::new(File::open(&files[0]).expect("open"))
                .expect("reader");
        use parquet::file::reader::FileReader;
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        assert!(kv
            .iter()
            .any(|k| k.key == slicetrace_schema::SCHEMA_VERSION_KEY
                && k.value.as_deref() == Some(&slicetrace_schema::SCHEMA_VERSION.to_string())));
        assert_eq!(Counters::get(&counters.parquet_rows_written), 2);
        assert_eq!(Counters::get(&counters.parquet_files_rotated), 2);
    }
}
