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
//! never on the async runtime, and that thread reads its own bounded queue
//! directly (a `std` channel of [`crate::topology::Msg`]): the fan-outs `try_send` probe rows
//! and verdicts into it, and flush and shutdown are messages on the same
//! queue, answered once everything queued before them is written. A slow
//! disk fills the queue, where the fan-out drops and counts, instead of
//! growing memory here. The thread buffers rows in memory and encodes them
//! into the open file's row group every `flush_interval_ms` (or every
//! `row_group_rows`), rotates by time, size and date, applies retention after
//! each rotation and at start, and recovers leftover temporary files at start.
//! [`ParquetSink`] is the handle: the queue's sender and the thread.
//!
//! A write error (disk full, permissions) costs the rows of the file being
//! written: they are counted in `parquet_rows_dropped`, the broken temporary
//! file is removed, an ERROR line is logged at most once a minute, and the
//! next rows open a new file, so writing resumes by itself when space returns.
//!
//! The `parquet_*` counters count rows and files of both tables together.
//!
//! One job per file, in the order a row meets them: `config.rs`
//! (`[parquet]`), this file (the errors and the handle), `writer.rs`
//! (the thread's loop and its open files), `layout.rs` (paths, over the names that
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use slicetrace_schema::SchemaError;

pub use config::ParquetConfig;
pub use recovery::{recover, RecoveryReport};
pub use retention::enforce_retention;

use super::{log_shutdown, request_shutdown, Sink, SinkError};
use crate::internal_events::Counters;
use crate::topology::{thread_queue, Tx};
use writer::Writer;

const SINK_NAME: &str = "parquet";

/// Errors of the Parquet sink.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// A configuration value is out of range.
    #[error("invalid parquet config: {0}")]
    Config(#[from] crate::field_error::FieldError),
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

/// The Parquet sink: the sending end of the `parquet-writer` thread's
/// queue, and the thread.
#[derive(Debug)]
pub struct ParquetSink {
    input: Tx,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ParquetSink {
    /// Starts the writer thread for `data_dir`, writing files for `node`,
    /// reading a queue of `queue_msgs` messages.
    ///
    /// The thread first recovers leftover temporary files and applies
    /// retention, then handles its queue in order, so a
    /// [`Sink::force_flush`] right after `new` answers once recovery is
    /// done. Does not touch the disk itself; fails only on a bad config or
    /// when the thread cannot be started.
    pub fn new(
        config: ParquetConfig,
        data_dir: impl Into<PathBuf>,
        node: &str,
        counters: Arc<Counters>,
        queue_msgs: usize,
    ) -> Result<Self, ParquetError> {
        config.validate()?;
        let writer = Writer::new(config, data_dir.into(), node, counters);
        let (input, rx) = thread_queue(queue_msgs);
        let thread = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| ParquetError::Io {
                action: "start writer thread for",
                path: PathBuf::from("parquet-writer"),
                source,
            })?;
        Ok(Self {
            input,
            thread: Some(thread),
        })
    }
}

impl Sink for ParquetSink {
    fn name(&self) -> &'static str {
        SINK_NAME
    }

    fn input(&self) -> &Tx {
        &self.input
    }

    /// Closes every open file and stops the writer thread, waiting at most
    /// `deadline` (a late answer is [`SinkError::is_late`]). On timeout the
    /// thread keeps closing files in the background; open files stay
    /// temporary files and are recovered at the next start.
    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let started = Instant::now();
            let by = started + deadline;
            let r = request_shutdown(SINK_NAME, &self.input, by, by).await;
            let late = r.as_ref().is_err_and(SinkError::is_late);
            if !late {
                if let Some(t) = self.thread.take() {
                    // The thread answered and returns right after; joining
                    // off the runtime keeps even that instant off it.
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
            log_shutdown(SINK_NAME, started, &r);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use slicetrace_schema::ProbeRecord;

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
        let mut sink = ParquetSink::new(
            ParquetConfig::default(),
            dir.path(),
            "n1",
            counters.clone(),
            8,
        )
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
