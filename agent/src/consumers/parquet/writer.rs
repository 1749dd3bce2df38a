//! The `parquet-writer` thread: the only place that touches the disk for
//! the sink. It owns one [`Table`] per table, each with at most one open file
//! per UTC date, and runs one loop over its own bounded queue (the fan-outs
//! feed it directly): append rows (encoding a row group whenever
//! `row_group_rows` are pending), close everything on [`Msg::Flush`] and
//! [`Msg::Shutdown`], and on every wake-up encode pending rows
//! every `flush_interval_ms` and rotate files by age, size and date. A file
//! goes tmp → footer → sync → rename ([`OpenFile::finish`]); one that fails is
//! removed and its rows counted as lost ([`ParquetWriteFailed`]). Recovery and
//! retention run at start, and retention again after each rotation.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use slicetrace_schema::{
    health_batch, health_schema, layout, probes_batch, probes_schema, writer_properties,
    HealthRecord, ProbeRecord, SchemaError,
};

use super::layout::{sync_dir, NewFile};
use super::recovery::recover;
use super::retention::enforce_retention;
use super::{io_err, ParquetConfig, ParquetError};
use crate::internal_events::{
    error_chain, Counters, InternalEvent, ParquetFileRotated, ParquetWriteFailed,
};
use crate::topology::{Ack, Msg};

/// A kind of row this sink writes: one table.
trait Row: Clone + Send + Sized + 'static {
    /// Directory name of the table.
    const TABLE: &'static str;
    fn ts_ns(&self) -> i64;
    /// Key rows are sorted by before each batch is encoded: GPU, then time.
    /// A GPU's rows side by side repeat its strings and telemetry and
    /// step `ts` and `cycle` by small deltas, so a batch sorted by GPU
    /// encodes in about two thirds of the bytes of one in arrival order
    /// (measured in `docs/benchmarks.md`, "Compact raw rows").
    fn sort_key(&self) -> (u32, i64);
    fn batch(rows: &[Self]) -> Result<RecordBatch, SchemaError>;
    fn schema() -> SchemaRef;
}

/// `impl Row` for a record type: its table, and the schema crate's batch
/// builder and schema for it.
macro_rules! row {
    ($ty:ty, $table:expr, $batch:path, $schema:path) => {
        impl Row for $ty {
            const TABLE: &'static str = $table;
            fn ts_ns(&self) -> i64 {
                self.ts_ns
            }
            fn sort_key(&self) -> (u32, i64) {
                (self.gpu_index, self.ts_ns)
            }
            fn batch(rows: &[Self]) -> Result<RecordBatch, SchemaError> {
                $batch(rows)
            }
            fn schema() -> SchemaRef {
                $schema()
            }
        }
    };
}

row!(ProbeRecord, layout::PROBES, probes_batch, probes_schema);
row!(HealthRecord, layout::HEALTH, health_batch, health_schema);

/// Shared state the tables need to report what happens.
struct Ctx {
    cfg: ParquetConfig,
    counters: Arc<Counters>,
    /// A file was closed since the last retention check.
    rotated: bool,
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
        let NewFile { tmp, dest } = NewFile::in_dir(dir, first_ts_ns);
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let schema = R::schema();
        let props = writer_properties(
            &schema,
            cfg.row_group_rows,
            concat!("slicetrace-agent ", env!("CARGO_PKG_VERSION")),
        );
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
    /// disk whenever one is full), sorted by [`Row::sort_key`] (stable, so
    /// rows of one GPU and instant keep their order).
    fn encode(&mut self) -> Result<(), ParquetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending.sort_by_key(R::sort_key);
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
            node_part: layout::node_dir(node),
            open: BTreeMap::new(),
        }
    }

    /// Removes a broken file and counts its rows as lost.
    fn fail(ctx: &mut Ctx, f: OpenFile<R>, err: &ParquetError) {
        let (tmp, rows) = (f.tmp.clone(), f.rows);
        drop(f);
        Self::discard(ctx, &tmp, rows, err);
    }

    /// Removes the temporary file `tmp` of a file that failed and counts
    /// its `rows` as lost.
    fn discard(ctx: &mut Ctx, tmp: &Path, rows: u64, err: &ParquetError) {
        if let Err(e) = fs::remove_file(tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %tmp.display(), error = %e, "failed to remove broken parquet temporary file");
            }
        }
        ParquetWriteFailed {
            table: R::TABLE,
            rows_lost: rows,
            error: err,
        }
        .emit(&ctx.counters);
    }

    fn close(ctx: &mut Ctx, f: OpenFile<R>) -> Result<(), ParquetError> {
        let (tmp, rows) = (f.tmp.clone(), f.rows);
        match f.finish() {
            Ok(dest) => {
                ParquetFileRotated { rows }.emit(&ctx.counters);
                ctx.rotated = true;
                tracing::debug!(path = %dest.display(), rows, "closed parquet file");
                Ok(())
            }
            Err(err) => {
                Self::discard(ctx, &tmp, rows, &err);
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

    /// Adds rows (copied into the table's buffer: the fan-out shares them
    /// with the other consumers), opening, encoding and rotating as needed.
    fn append(&mut self, ctx: &mut Ctx, rows: &[R]) -> Result<(), ParquetError> {
        let mut by_date: BTreeMap<String, Vec<R>> = BTreeMap::new();
        for r in rows {
            by_date
                .entry(layout::date_value(r.ts_ns()))
                .or_default()
                .push(r.clone());
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
                let dir = self
                    .root
                    .join(layout::date_dir(&date))
                    .join(&self.node_part);
                let first_ts = group.first().map(|r| r.ts_ns()).unwrap_or_default();
                match OpenFile::<R>::open(&dir, first_ts, &ctx.cfg) {
                    Ok(f) => {
                        self.open.insert(date.clone(), f);
                    }
                    Err(e) => {
                        ParquetWriteFailed {
                            table: R::TABLE,
                            rows_lost: n,
                            error: &e,
                        }
                        .emit(&ctx.counters);
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
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let today = layout::date_value(now_ns);
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

/// The writer thread's state.
pub(super) struct Writer {
    data_dir: PathBuf,
    ctx: Ctx,
    probes: Table<ProbeRecord>,
    health: Table<HealthRecord>,
    last_encode: Instant,
}

impl Writer {
    /// The state of a writer for `data_dir` and `node`; touches no disk.
    /// `config` must have passed [`ParquetConfig::validate`].
    pub(super) fn new(
        config: ParquetConfig,
        data_dir: PathBuf,
        node: &str,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            probes: Table::new(&data_dir, node),
            health: Table::new(&data_dir, node),
            data_dir,
            ctx: Ctx {
                cfg: config,
                counters,
                rotated: false,
            },
            last_encode: Instant::now(),
        }
    }

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

    /// Closes every open file and answers `ack` with the outcome.
    fn close_and_answer(&mut self, ack: Ack) {
        let r = self.close_all().map_err(Into::into);
        // The requester may have given up waiting; nothing to do then.
        let _ = ack.send(r);
    }

    /// The thread's body: recovery and retention, then one loop over its
    /// queue until [`Msg::Shutdown`], or until every sender is gone.
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
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
            // Append errors are counted and logged where they happen
            // (`ParquetWriteFailed`); the rows of that file are lost.
            let appended = match rx.recv_timeout(self.next_wakeup()) {
                Ok(Msg::Probes(rows)) => self.probes.append(&mut self.ctx, &rows),
                Ok(Msg::Health(rows)) => self.health.append(&mut self.ctx, &rows),
                Ok(Msg::Event(_)) => Ok(()),
                Ok(Msg::Flush(ack)) => {
                    self.close_and_answer(ack);
                    Ok(())
                }
                Ok(Msg::Shutdown { ack, .. }) => {
                    self.close_and_answer(ack);
                    return;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => Ok(()),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    // Every sender is gone without a shutdown: still leave
                    // no file without its footer.
                    let _ = self.close_all();
                    return;
                }
            };
            if let Err(e) = appended {
                tracing::debug!(error = %error_chain(&e), "parquet append failed");
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
