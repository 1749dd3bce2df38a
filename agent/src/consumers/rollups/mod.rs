//! Rollups sink: every probe row folded into per-minute rows with
//! mergeable sketches (`slicetrace_schema::rollup`), written as the
//! `rollups` table, `DIR/rollups/date=…/node=…/part-<start>-<uuid>.parquet`.
//!
//! One thread (`rollup-writer`) reads its own bounded queue, like the
//! Parquet writer: the fan-out `try_send`s the rows (a full queue drops and
//! counts them, never stalls a probe). Minutes are held in memory; every
//! [`FILE_SECS`] of wall time the minutes that ended before the last
//! boundary are written, one file per hour they belong to (so a file never
//! spans two hours or dates, which compaction relies on). Flush and
//! shutdown write every minute held, the open one too: a minute may then
//! appear in two files, which readers merge (counts add, sketches merge).
//!
//! A file is written under its hidden temporary name, its footer written
//! and synced, then renamed: readers and the shipper (which ships any
//! table's closed files) never see half a file; recovery and retention of
//! the Parquet sink cover this table too (`layout::TABLES`). A write error
//! costs that file's minutes, logged; the next minutes write again.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::future::BoxFuture;
use parquet::arrow::ArrowWriter;
use slicetrace_schema::rollup::{bucket_start, HOUR_SECS, MINUTE_SECS};
use slicetrace_schema::{
    layout, rollups_batch, rollups_schema, writer_properties, Rollup, RollupRecord,
};

use super::{log_shutdown, request_shutdown, Sink, SinkError};
use crate::topology::{thread_queue, Msg, Tx};

/// Log and metrics name.
pub const NAME: &str = "rollups";

/// Seconds of wall time between rollup files (a divisor of an hour).
pub const FILE_SECS: u32 = 900;

/// Grace after a boundary before its minutes are written: rows of the last
/// minute still in the queue get in.
const GRACE_SECS: i64 = 5;

/// The rollups sink: the queue of the `rollup-writer` thread, and the thread.
#[derive(Debug)]
pub struct RollupSink {
    input: Tx,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RollupSink {
    /// Starts the writer thread for `data_dir` and `node`, reading a queue
    /// of `queue_msgs` messages. No disk I/O until rows come.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        node: &str,
        queue_msgs: usize,
    ) -> std::io::Result<Self> {
        let w = Writer {
            dir: data_dir.into().join(layout::ROLLUPS),
            node_dir: layout::node_dir(node),
            acc: Rollup::new(MINUTE_SECS),
        };
        let (input, rx) = thread_queue(queue_msgs);
        let thread = std::thread::Builder::new()
            .name("rollup-writer".into())
            .spawn(move || w.run(rx))?;
        Ok(Self {
            input,
            thread: Some(thread),
        })
    }
}

impl Sink for RollupSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn input(&self) -> &Tx {
        &self.input
    }

    fn shutdown(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let by = started + deadline;
            let r = request_shutdown(NAME, &self.input, by, by).await;
            if !r.as_ref().is_err_and(SinkError::is_late) {
                if let Some(t) = self.thread.take() {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
            log_shutdown(NAME, started, &r);
            r
        })
    }
}

struct Writer {
    dir: PathBuf,
    node_dir: String,
    acc: Rollup,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        loop {
            let wait = self.until_next_cut();
            match rx.recv_timeout(wait) {
                Ok(Msg::Probes(rows)) => {
                    for r in rows.iter() {
                        self.acc.add(r);
                    }
                }
                Ok(Msg::Health(_)) | Ok(Msg::Event(_)) => {}
                Ok(Msg::Flush(ack)) => {
                    self.write_closed(i64::MAX);
                    let _ = ack.send(Ok(()));
                }
                Ok(Msg::Shutdown { ack, .. }) => {
                    self.write_closed(i64::MAX);
                    let _ = ack.send(Ok(()));
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.write_closed(i64::MAX);
                    return;
                }
            }
            let cut = bucket_start(
                now_ns().saturating_sub(GRACE_SECS * 1_000_000_000),
                FILE_SECS,
            );
            self.write_closed(cut);
        }
    }

    fn until_next_cut(&self) -> Duration {
        let p = i64::from(FILE_SECS) * 1_000_000_000;
        let now = now_ns();
        let next = bucket_start(now, FILE_SECS) + p + GRACE_SECS * 1_000_000_000;
        Duration::from_nanos(
            u64::try_from(next - now)
                .unwrap_or(1_000_000_000)
                .max(1_000_000),
        )
    }

    /// Writes the minutes that end at or before `end_ns`, one file per hour.
    fn write_closed(&mut self, end_ns: i64) {
        let rows = self.acc.take_closed(end_ns);
        let mut by_hour: BTreeMap<i64, Vec<RollupRecord>> = BTreeMap::new();
        for r in rows {
            by_hour
                .entry(bucket_start(r.key.bucket_ns, HOUR_SECS))
                .or_default()
                .push(r);
        }
        for (hour, rows) in by_hour {
            let dir = self
                .dir
                .join(layout::date_dir(&layout::date_value(hour)))
                .join(&self.node_dir);
            let first = rows.iter().map(|r| r.key.bucket_ns).min().unwrap_or(hour);
            let name = layout::file_name(first, uuid::Uuid::new_v4());
            if let Err(e) = write_file(&dir, &name, &rows) {
                tracing::warn!(error = %e, rows = rows.len(), dir = %dir.display(), "failed to write a rollups file: these minutes are lost (the raw rows keep them)");
            }
        }
    }
}

/// tmp → footer → fsync → rename → directory fsync.
pub(crate) fn write_file(dir: &Path, name: &str, rows: &[RollupRecord]) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dir.join(layout::tmp_name(name));
    let dest = dir.join(name);
    let r = (|| -> Result<(), String> {
        let batch = rollups_batch(rows).map_err(|e| e.to_string())?;
        let schema = rollups_schema();
        let props = writer_properties(
            &schema,
            65_536,
            concat!("slicetrace-agent ", env!("CARGO_PKG_VERSION")),
        );
        let f = File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        let mut w = ArrowWriter::try_new(f, schema, Some(props)).map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())?;
        let f = w.into_inner().map_err(|e| e.to_string())?;
        f.sync_all()
            .map_err(|e| format!("sync {}: {e}", tmp.display()))?;
        fs::rename(&tmp, &dest).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("sync {}: {e}", dir.display()))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| dest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use slicetrace_schema::{Kernel, ProbeRecord};

    fn rec(ts_ns: i64, wall_ms: f64) -> ProbeRecord {
        ProbeRecord {
            ts_ns,
            node: "n1".into(),
            gpu_uuid: "GPU-1".into(),
            kernel: Kernel::Fft,
            shape: "n=8".into(),
            precision: "fp32".into(),
            wall_ms,
            arrival: Some(true),
            device: slicetrace_schema::DeviceFields {
                gpu_processes: Some(0),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn rows_become_minute_rollups_in_hour_sized_files_with_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RollupSink::new(dir.path(), "n1", 8).unwrap();
        // 2024-01-01T00:59:30Z and T01:00:30Z: two minutes in two hours.
        let t0 = 1_704_070_770_000_000_000;
        sink.export(vec![
            rec(t0, 1.0),
            rec(t0 + 1, 3.0),
            rec(t0 + 60_000_000_000, 2.0),
        ])
        .await
        .unwrap();
        sink.shutdown(Duration::from_secs(10)).await.unwrap();
        let part = dir.path().join("rollups/date=2024-01-01/node=n1");
        let mut names: Vec<String> = fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| layout::is_file_name(n)), "{names:?}");
        assert!(names[0].starts_with("part-20240101T005900Z-"), "{names:?}");
        let f = File::open(part.join(&names[0])).unwrap();
        let rd = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        for b in rd {
            rows.extend(
                slicetrace_schema::rollups_from_batch(
                    &b.unwrap(),
                    slicetrace_schema::SketchSet::ALL,
                )
                .unwrap(),
            );
        }
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].arrivals, 2);
        assert_eq!(rows[0].wall_ms.max(), Some(3.0));
    }
}
