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

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use slicetrace_schema::{
    health_batch, health_schema, probes_batch, probes_schema, HealthRecord, ProbeRecord,
    SchemaError,
};
use tokio::sync::oneshot;

use super::{LogLimiter, Sink, SinkError};
use crate::internal_events::Counters;

const SINK_NAME: &str = "parquet";
/// Prefix and suffix of a file being written; `*.parquet` never matches it.
const TMP_PREFIX: &str = ".";
const TMP_SUFFIX: &str = ".tmp";
/// The tables this sink writes, as directory names under the data dir.
const TABLES: [&str; 2] = ["probes", "health"];

/// Configuration of the Parquet sink (`[parquet]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Write Parquet files at all. Default `true`.
    pub enabled: bool,
    /// Close the open file and start a new one after this long, ms.
    /// Default 300000 (5 min). Bounds what a crash can lose.
    pub rotate_interval_ms: u64,
    /// Close the open file once it reaches about this size, bytes.
    /// Default 64 MiB.
    pub rotate_bytes: u64,
    /// Rows per Parquet row group (also the most rows buffered in memory
    /// before they are encoded). Default 8192.
    pub row_group_rows: usize,
    /// Delete files older than this, ms (by modification time). Default
    /// 7 days. 0 disables the age limit.
    pub retention_age_ms: u64,
    /// Keep the visible files of all tables under this total size, bytes,
    /// deleting the oldest first. Default 10 GiB. 0 disables the size limit.
    pub retention_bytes: u64,
    /// How often buffered rows are encoded into the open file, ms.
    /// Default 10000 (10 s).
    pub flush_interval_ms: u64,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rotate_interval_ms: 300_000,
            rotate_bytes: 64 * 1024 * 1024,
            row_group_rows: 8192,
            retention_age_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 10 * 1024 * 1024 * 1024,
            flush_interval_ms: 10_000,
        }
    }
}

impl ParquetConfig {
    /// Checks values that serde cannot: returns the name of the first bad
    /// field with the reason.
    pub fn validate(&self) -> Result<(), ParquetError> {
        let bad =
            |field: &'static str, reason: &'static str| Err(ParquetError::Config { field, reason });
        if self.rotate_interval_ms == 0 {
            return bad("rotate_interval_ms", "must be greater than 0");
        }
        if self.rotate_bytes == 0 {
            return bad("rotate_bytes", "must be greater than 0");
        }
        if self.row_group_rows == 0 {
            return bad("row_group_rows", "must be greater than 0");
        }
        if self.flush_interval_ms == 0 {
            return bad("flush_interval_ms", "must be greater than 0");
        }
        Ok(())
    }
}

/// Errors of the Parquet sink.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// A configuration value is out of range.
    #[error("invalid parquet config: {field} {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// Why it is invalid.
        reason: &'static str,
    },
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

/// What [`recover`] did with the temporary files it found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Final paths of temporary files that were readable and renamed into place.
    pub recovered: Vec<PathBuf>,
    /// Temporary files that were unreadable and removed.
    pub removed: Vec<PathBuf>,
}

/// Recovers leftover temporary files under `data_dir` (from a crash or a
/// shutdown that ran out of time): a file whose footer is valid and whose
/// rows all decode is renamed into place, any other is removed. Counts them
/// in `parquet_tmp_recovered` / `parquet_tmp_removed`. Blocking: call it off
/// the async runtime (the sink calls it on its writer thread at start).
pub fn recover(data_dir: &Path, counters: &Counters) -> Result<RecoveryReport, ParquetError> {
    let mut report = RecoveryReport::default();
    for table in TABLES {
        let mut files = Vec::new();
        walk_files(&data_dir.join(table), &mut files)?;
        for tmp in files {
            let Some(dest) = final_path_of_tmp(&tmp) else {
                continue;
            };
            if readable_parquet(&tmp) && !dest.exists() {
                fs::rename(&tmp, &dest).map_err(io_err("rename", &tmp))?;
                if let Some(dir) = dest.parent() {
                    sync_dir(dir)?;
                }
                Counters::inc(&counters.parquet_tmp_recovered);
                tracing::info!(path = %dest.display(), "recovered leftover parquet temporary file");
                report.recovered.push(dest);
            } else {
                fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
                Counters::inc(&counters.parquet_tmp_removed);
                tracing::warn!(path = %tmp.display(), "removed unreadable leftover parquet temporary file");
                report.removed.push(tmp);
            }
        }
    }
    Ok(report)
}

/// Applies retention to the visible files under `data_dir` (all tables
/// together): deletes files modified more than `max_age` ago, then the
/// oldest files until the total is at most `max_bytes`. A zero limit is
/// off. Removes partition directories left empty. Counts deletions in
/// `parquet_retention_deleted` and returns how many it deleted. Blocking.
pub fn enforce_retention(
    data_dir: &Path,
    max_age: Duration,
    max_bytes: u64,
    counters: &Counters,
) -> Result<u64, ParquetError> {
    let mut paths = Vec::new();
    for table in TABLES {
        walk_files(&data_dir.join(table), &mut paths)?;
    }
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for p in paths {
        if !is_visible_part(&p) {
            continue;
        }
        match fs::metadata(&p) {
            Ok(m) => files.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p)),
            // Deleted between listing and stat: nothing to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", &p)(e)),
        }
    }
    // Oldest first; the file name starts with the start time, so it breaks ties.
    files.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    let now = SystemTime::now();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut deleted = 0u64;
    for (mtime, size, path) in &files {
        let too_old =
            !max_age.is_zero() && now.duration_since(*mtime).unwrap_or(Duration::ZERO) > max_age;
        let too_big = max_bytes > 0 && total > max_bytes;
        if !too_old && !too_big {
            // Sorted by age: once a file is young enough and the total fits,
            // every later one is too.
            break;
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("delete", path)(e)),
        }
        total = total.saturating_sub(*size);
        deleted += 1;
        Counters::inc(&counters.parquet_retention_deleted);
        tracing::debug!(path = %path.display(), too_old, too_big, "retention deleted parquet file");
        // Remove `node=` then `date=` directories when they become empty;
        // `remove_dir` refuses non-empty ones, which is what we want.
        let mut dir = path.parent();
        for _ in 0..2 {
            match dir {
                Some(d) if fs::remove_dir(d).is_ok() => dir = d.parent(),
                _ => break,
            }
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            remaining_bytes = total,
            "parquet retention deleted old files"
        );
    }
    Ok(deleted)
}

/// All regular files below `dir` (recursively); a missing `dir` is empty.
fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ParquetError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let ft = entry.file_type().map_err(io_err("stat", &entry.path()))?;
        if ft.is_dir() {
            walk_files(&entry.path(), out)?;
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn is_visible_part(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
}

/// `.part-X.parquet.tmp` → `part-X.parquet` in the same directory.
fn final_path_of_tmp(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?.to_str()?;
    let inner = name.strip_prefix(TMP_PREFIX)?.strip_suffix(TMP_SUFFIX)?;
    if !(inner.starts_with("part-") && inner.ends_with(".parquet")) {
        return None;
    }
    Some(p.with_file_name(inner))
}

/// The footer parses and every row group decodes.
fn readable_parquet(p: &Path) -> bool {
    let Ok(f) = File::open(p) else {
        return false;
    };
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(f) else {
        return false;
    };
    let Ok(reader) = builder.build() else {
        return false;
    };
    reader.into_iter().all(|b| b.is_ok())
}

fn sync_dir(dir: &Path) -> Result<(), ParquetError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// A Hive partition value that is safe as one path component.
fn partition_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() || v.chars().all(|c| c == '.') {
        "_".into()
    } else {
        v
    }
}

fn utc(ts_ns: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_nanos(ts_ns)
}

/// A kind of row this sink writes: one table.
trait Row: Send + Sized + 'static {
    /// Directory name of the table.
    const TABLE: &'static str;
    fn ts_ns(&self) -> i64;
    fn batch(rows: &[Self]) -> Result<RecordBatch, SchemaError>;
    fn schema() -> SchemaRef;
}

impl Row for ProbeRecord {
    const TABLE: &'static str = "probes";
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }
    fn batch(rows: &[Self]) -> Result<RecordBatch, SchemaError> {
        probes_batch(rows)
    }
    fn schema() -> SchemaRef {
        probes_schema()
    }
}

impl Row for HealthRecord {
    const TABLE: &'static str = "health";
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }
    fn batch(rows: &[Self]) -> Result<RecordBatch, SchemaError> {
        health_batch(rows)
    }
    fn schema() -> SchemaRef {
        health_schema()
    }
}

/// Shared state the tables need to report what happens.
struct Ctx {
    cfg: ParquetConfig,
    counters: Arc<Counters>,
    error_log: LogLimiter,
    /// A file was closed since the last retention check.
    rotated: bool,
}

impl Ctx {
    /// Counts a failed file and logs it (rate-limited).
    fn write_failed(&mut self, table: &str, rows_lost: u64, err: &ParquetError) {
        Counters::inc(&self.counters.parquet_write_errors);
        Counters::add(&self.counters.parquet_rows_dropped, rows_lost);
        if let Some(suppressed) = self.error_log.check() {
            tracing::error!(
                table,
                rows_lost,
                suppressed_since_last = suppressed,
                total_write_errors = Counters::get(&self.counters.parquet_write_errors),
                total_rows_dropped = Counters::get(&self.counters.parquet_rows_dropped),
                error = %error_chain(err),
                "parquet write failed; rows lost, will retry with a new file"
            );
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One file being written.
struct OpenFile<R> {
    tmp: PathBuf,
    dest: PathBuf,
    writer: ArrowWriter<File>,
    /// Rows not yet encoded into the writer.
    pending: Vec<R>,
    /// Rows in this file, encoded or pending.
    rows: u64,
    opened: Instant,
}

impl<R: Row> OpenFile<R> {
    fn open(dir: &Path, first_ts_ns: i64, cfg: &ParquetConfig) -> Result<Self, ParquetError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let start = utc(first_ts_ns).format("%Y%m%dT%H%M%SZ");
        let name = format!("part-{start}-{}.parquet", uuid::Uuid::new_v4());
        let dest = dir.join(&name);
        let tmp = dir.join(format!("{TMP_PREFIX}{name}{TMP_SUFFIX}"));
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let schema = R::schema();
        // ArrowWriter only embeds the Arrow schema (with its metadata) as the
        // opaque `ARROW:schema` entry; DuckDB and other non-Arrow readers see
        // only plain footer key-values, so the schema version goes there too.
        let kv: Vec<KeyValue> = schema
            .metadata()
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let zstd = ZstdLevel::try_new(3).map_err(|source| ParquetError::Write {
            path: tmp.clone(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_max_row_group_row_count(Some(cfg.row_group_rows.max(1)))
            .set_key_value_metadata(Some(kv))
            .set_created_by(format!("slicetrace-agent {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = match ArrowWriter::try_new(file, schema, Some(props)) {
            Ok(w) => w,
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                return Err(ParquetError::Write { path: tmp, source });
            }
        };
        tracing::debug!(path = %tmp.display(), "opened parquet file");
        Ok(Self {
            tmp,
            dest,
            writer,
            pending: Vec::new(),
            rows: 0,
            opened: Instant::now(),
        })
    }

    /// Encodes pending rows into the writer (which writes a row group to
    /// disk whenever one is full).
    fn encode(&mut self) -> Result<(), ParquetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = R::batch(&self.pending).map_err(|source| ParquetError::Encode {
            path: self.tmp.clone(),
            source,
        })?;
        self.writer
            .write(&batch)
            .map_err(|source| ParquetError::Write {
                path: self.tmp.clone(),
                source,
            })?;
        self.pending.clear();
        Ok(())
    }

    fn approx_bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Writes the footer, syncs, renames into place and syncs the directory.
    /// On error the temporary file is left for the caller to remove.
    fn finish(mut self) -> Result<PathBuf, ParquetError> {
        (|| {
            self.encode()?;
            let file = self
                .writer
                .into_inner()
                .map_err(|source| ParquetError::Write {
                    path: self.tmp.clone(),
                    source,
                })?;
            file.sync_all().map_err(io_err("sync", &self.tmp))?;
            drop(file);
            fs::rename(&self.tmp, &self.dest).map_err(io_err("rename", &self.tmp))?;
            if let Some(dir) = self.dest.parent() {
                sync_dir(dir)?;
            }
            Ok(self.dest)
        })()
    }
}

/// The open files of one table, by UTC date.
struct Table<R> {
    /// `DATA_DIR/<table>`.
    root: PathBuf,
    /// `node=<NAME>` path component.
    node_part: String,
    open: BTreeMap<String, OpenFile<R>>,
}

impl<R: Row> Table<R> {
    fn new(data_dir: &Path, node: &str) -> Self {
        Self {
            root: data_dir.join(R::TABLE),
            node_part: format!("node={}", partition_value(node)),
            open: BTreeMap::new(),
        }
    }

    /// Removes a broken file and counts its rows as lost.
    fn fail(ctx: &mut Ctx, f: OpenFile<R>, err: &ParquetError) {
        let (tmp, rows) = (f.tmp.clone(), f.rows);
        drop(f);
        if let Err(e) = fs::remove_file(&tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %tmp.display(), error = %e, "failed to remove broken parquet temporary file");
            }
        }
        ctx.write_failed(R::TABLE, rows, err);
    }

    fn close(ctx: &mut Ctx, f: OpenFile<R>) -> Result<(), ParquetError> {
        let (tmp, rows) = (f.tmp.clone(), f.rows);
        match f.finish() {
            Ok(dest) => {
                Counters::add(&ctx.counters.parquet_rows_written, rows);
                Counters::inc(&ctx.counters.parquet_files_rotated);
                ctx.rotated = true;
                tracing::debug!(path = %dest.display(), rows, "closed parquet file");
                Ok(())
            }
            Err(err) => {
                if let Err(e) = fs::remove_file(&tmp) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %tmp.display(), error = %e, "failed to remove broken parquet temporary file");
                    }
                }
                ctx.write_failed(R::TABLE, rows, &err);
                Err(err)
            }
        }
    }

    /// Closes the files whose key matches `pred`; returns the first error.
    fn close_where(
        &mut self,
        ctx: &mut Ctx,
        mut pred: impl FnMut(&str, &OpenFile<R>) -> bool,
    ) -> Result<(), ParquetError> {
        let keys: Vec<String> = self
            .open
            .iter()
            .filter(|(k, f)| pred(k, f))
            .map(|(k, _)| k.clone())
            .collect();
        let mut first = Ok(());
        for k in keys {
            if let Some(f) = self.open.remove(&k) {
                if let Err(e) = Self::close(ctx, f) {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    fn close_all(&mut self, ctx: &mut Ctx) -> Result<(), ParquetError> {
        self.close_where(ctx, |_, _| true)
    }

    /// Adds rows, opening, encoding and rotating as needed.
    fn append(&mut self, ctx: &mut Ctx, rows: Vec<R>) -> Result<(), ParquetError> {
        let mut by_date: BTreeMap<String, Vec<R>> = BTreeMap::new();
        for r in rows {
            by_date
                .entry(utc(r.ts_ns()).format("%Y-%m-%d").to_string())
                .or_default()
                .push(r);
        }
        let mut first_err = Ok(());
        let mut keep = |res: Result<(), ParquetError>| {
            if let Err(e) = res {
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
        };
        for (date, group) in by_date {
            // Midnight: rows of a newer date close the older dates' files.
            keep(self.close_where(ctx, |k, _| k < date.as_str()));
            let n = group.len() as u64;
            if !self.open.contains_key(&date) {
                let dir = self.root.join(format!("date={date}")).join(&self.node_part);
                let first_ts = group.first().map(|r| r.ts_ns()).unwrap_or_default();
                match OpenFile::<R>::open(&dir, first_ts, &ctx.cfg) {
                    Ok(f) => {
                        self.open.insert(date.clone(), f);
                    }
                    Err(e) => {
                        ctx.write_failed(R::TABLE, n, &e);
                        keep(Err(e));
                        continue;
                    }
                }
            }
            let Some(f) = self.open.get_mut(&date) else {
                continue;
            };
            f.pending.extend(group);
            f.rows += n;
            if f.pending.len() >= ctx.cfg.row_group_rows {
                if let Err(e) = f.encode() {
                    if let Some(f) = self.open.remove(&date) {
                        Self::fail(ctx, f, &e);
                    }
                    keep(Err(e));
                    continue;
                }
            }
            if f.approx_bytes() >= ctx.cfg.rotate_bytes {
                if let Some(f) = self.open.remove(&date) {
                    keep(Self::close(ctx, f));
                }
            }
        }
        first_err
    }

    /// Periodic work: encode pending rows (when `encode` is set), rotate by
    /// age, size and by the wall-clock date.
    fn tick(&mut self, ctx: &mut Ctx, encode: bool) {
        if encode {
            let mut broken = Vec::new();
            for (k, f) in self.open.iter_mut() {
                if let Err(e) = f.encode() {
                    broken.push((k.clone(), e));
                }
            }
            for (k, e) in broken {
                if let Some(f) = self.open.remove(&k) {
                    Self::fail(ctx, f, &e);
                }
            }
        }
        let max_age = Duration::from_millis(ctx.cfg.rotate_interval_ms);
        let max_bytes = ctx.cfg.rotate_bytes;
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        // Errors are counted and logged inside `close`.
        let _ = self.close_where(ctx, |date, f| {
            f.opened.elapsed() >= max_age || f.approx_bytes() >= max_bytes || date < today.as_str()
        });
    }

    /// When the oldest open file must rotate.
    fn next_rotation(&self, rotate: Duration) -> Option<Instant> {
        self.open.values().map(|f| f.opened + rotate).min()
    }
}

/// A request to the writer thread. Every one is answered.
enum Cmd {
    Probes(Vec<ProbeRecord>, oneshot::Sender<Result<(), ParquetError>>),
    Health(Vec<HealthRecord>, oneshot::Sender<Result<(), ParquetError>>),
    /// Close every open file.
    Flush(oneshot::Sender<Result<(), ParquetError>>),
    /// Close every open file and stop.
    Shutdown(oneshot::Sender<Result<(), ParquetError>>),
}

/// The writer thread's state.
struct Writer {
    data_dir: PathBuf,
    ctx: Ctx,
    probes: Table<ProbeRecord>,
    health: Table<HealthRecord>,
    last_encode: Instant,
}

impl Writer {
    fn close_all(&mut self) -> Result<(), ParquetError> {
        let a = self.probes.close_all(&mut self.ctx);
        let b = self.health.close_all(&mut self.ctx);
        self.retention();
        a.and(b)
    }

    fn retention(&mut self) {
        self.ctx.rotated = false;
        let age = Duration::from_millis(self.ctx.cfg.retention_age_ms);
        if let Err(e) = enforce_retention(
            &self.data_dir,
            age,
            self.ctx.cfg.retention_bytes,
            &self.ctx.counters,
        ) {
            tracing::warn!(error = %error_chain(&e), "parquet retention failed");
        }
    }

    fn next_wakeup(&self) -> Duration {
        let flush = Duration::from_millis(self.ctx.cfg.flush_interval_ms);
        let rotate = Duration::from_millis(self.ctx.cfg.rotate_interval_ms);
        let mut at = self.last_encode + flush;
        for t in [
            self.probes.next_rotation(rotate),
            self.health.next_rotation(rotate),
        ]
        .into_iter()
        .flatten()
        {
            at = at.min(t);
        }
        // Never spin, never sleep so long that a date change goes unnoticed.
        at.saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(5), Duration::from_secs(60))
    }

    fn run(mut self, rx: std_mpsc::Receiver<Cmd>) {
        match recover(&self.data_dir, &self.ctx.counters) {
            Ok(r) if !r.recovered.is_empty() || !r.removed.is_empty() => tracing::info!(
                recovered = r.recovered.len(),
                removed = r.removed.len(),
                "parquet recovery finished"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %error_chain(&e), "parquet recovery failed"),
        }
        self.retention();
        loop {
            match rx.recv_timeout(self.next_wakeup()) {
                Ok(Cmd::Probes(rows, ack)) => {
                    let r = self.probes.append(&mut self.ctx, rows);
                    let _ = ack.send(r);
                }
                Ok(Cmd::Health(rows, ack)) => {
                    let r = self.health.append(&mut self.ctx, rows);
                    let _ = ack.send(r);
                }
                Ok(Cmd::Flush(ack)) => {
                    let r = self.close_all();
                    let _ = ack.send(r);
                }
                Ok(Cmd::Shutdown(ack)) => {
                    let r = self.close_all();
                    let _ = ack.send(r);
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    // The sink was dropped without shutdown: still leave no
                    // file without its footer.
                    let _ = self.close_all();
                    return;
                }
            }
            let encode =
                self.last_encode.elapsed() >= Duration::from_millis(self.ctx.cfg.flush_interval_ms);
            if encode {
                self.last_encode = Instant::now();
            }
            self.probes.tick(&mut self.ctx, encode);
            self.health.tick(&mut self.ctx, encode);
            if self.ctx.rotated {
                self.retention();
            }
        }
    }
}

/// The Parquet sink: an async handle to the `parquet-writer` thread.
#[derive(Debug)]
pub struct ParquetSink {
    tx: std_mpsc::Sender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Cmd::Probes(r, _) => return write!(f, "Probes({})", r.len()),
            Cmd::Health(r, _) => return write!(f, "Health({})", r.len()),
            Cmd::Flush(_) => "Flush",
            Cmd::Shutdown(_) => "Shutdown",
        };
        f.write_str(name)
    }
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
        let data_dir = data_dir.into();
        let writer = Writer {
            probes: Table::new(&data_dir, node),
            health: Table::new(&data_dir, node),
            data_dir,
            ctx: Ctx {
                cfg: config,
                counters,
                error_log: LogLimiter::per_minute(),
                rotated: false,
            },
            last_encode: Instant::now(),
        };
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
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: ParquetConfig = toml::from_str("rotate_bytes = 1024").expect("parse");
        assert_eq!(c.rotate_bytes, 1024);
        assert_eq!(c.rotate_interval_ms, 300_000);
        assert!(c.enabled);
        assert!(toml::from_str::<ParquetConfig>("rotate_mb = 1").is_err());
        let bad = ParquetConfig {
            row_group_rows: 0,
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ParquetError::Config {
                field: "row_group_rows",
                ..
            })
        ));
    }

    #[test]
    fn tmp_names_map_to_final_names_and_never_match_parquet_glob() {
        let tmp = Path::new("/d/.part-20240101T000000Z-abc.parquet.tmp");
        assert_eq!(
            final_path_of_tmp(tmp),
            Some(PathBuf::from("/d/part-20240101T000000Z-abc.parquet"))
        );
        assert!(!is_visible_part(tmp));
        assert!(final_path_of_tmp(Path::new("/d/part-x.parquet")).is_none());
        assert!(final_path_of_tmp(Path::new("/d/.other.tmp")).is_none());
    }

    #[test]
    fn partition_values_are_one_path_component() {
        assert_eq!(partition_value("node-1.example"), "node-1.example");
        assert_eq!(partition_value("a/b c"), "a_b_c");
        assert_eq!(partition_value(".."), "_");
        assert_eq!(partition_value(""), "_");
    }

    fn rec(ts_ns: i64, wall_ms: f64) -> ProbeRecord {
        ProbeRecord {
            ts_ns,
            node: "n1".into(),
            gpu_uuid: "GPU-1".into(),
            backend: "cpu".into(),
            kernel: "fft".into(),
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
        walk_files(dir.path(), &mut files).expect("walk");
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
