//! Listing and reading rollup files: `DATA/rollups/date=…/node=…/part-….parquet`
//! for the dates of a range, one node directory per work item, folded on
//! `parallel` threads into one accumulator each, then merged.
//!
//! In a node directory, an hour file's `slicetrace.rollup_sources` names the
//! minute files it already holds: those are skipped (counted in
//! [`ReadStats::files_superseded`]), so readers are right at every step of a
//! compaction.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetStatisticsPolicy;
use serde::Serialize;
use slicetrace_schema::rollup::ROLLUP_SOURCES_KEY;
use slicetrace_schema::{
    layout, rollups_from_batch, RollupRecord, SketchSet, ROLLUP_SCHEMA_VERSION,
    ROLLUP_SCHEMA_VERSION_KEY,
};

use super::store::{Body, RollupRoot, StoreRoot};
use super::{dates_of, RollupError};
use crate::source::TimeRange;

/// What a read did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadStats {
    /// Node directories listed.
    pub node_dirs: usize,
    /// Files read.
    pub files_read: usize,
    /// Minute files skipped because an hour file holds them.
    pub files_superseded: usize,
    /// Files whose name places them after the range, or (minute files)
    /// in an hour that ends before it: not opened.
    pub files_pruned_by_name: usize,
    /// Rows read (before the range filter).
    pub rows_read: u64,
}

/// One node directory's files.
#[derive(Debug, Clone)]
pub struct NodeDir {
    /// `DATA/rollups/date=…/node=…` (on an object store, its key).
    pub dir: PathBuf,
    /// Its finished data files, sorted by name (on an object store, their
    /// keys).
    pub files: Vec<PathBuf>,
    /// The object store holding them; `None` for a local directory.
    pub store: Option<Arc<StoreRoot>>,
}

/// [`list`] on either kind of root: on an object store, one recursive
/// LIST per `date=` partition of `range` that exists (all of them with
/// `None`), after one delimited LIST of `rollups/`.
pub fn list_at(root: &RollupRoot, range: Option<TimeRange>) -> Result<Vec<NodeDir>, RollupError> {
    match root {
        RollupRoot::Local(p) => list(p, range),
        RollupRoot::Store(s) => {
            let present = root.dates(layout::ROLLUPS)?;
            let dates: Vec<String> = match range {
                Some(r) => dates_of(r)
                    .into_iter()
                    .filter(|d| present.contains(d))
                    .collect(),
                None => present.into_iter().collect(),
            };
            Ok(s.list_nodes(&dates)?
                .into_iter()
                .map(|(dir, files)| NodeDir {
                    dir,
                    files,
                    store: Some(s.clone()),
                })
                .collect())
        }
    }
}

/// The node directories of every date partition `range` touches (all dates
/// with `None`).
pub fn list(root: &Path, range: Option<TimeRange>) -> Result<Vec<NodeDir>, RollupError> {
    let table = root.join(layout::ROLLUPS);
    let dates: Vec<PathBuf> = match range {
        Some(r) => dates_of(r)
            .iter()
            .map(|d| table.join(layout::date_dir(d)))
            .filter(|p| p.is_dir())
            .collect(),
        None => match fs::read_dir(&table) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_dir()
                            && p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("date="))
                    })
                    .collect();
                v.sort();
                v
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RollupError::io("list", &table)(e)),
        },
    };
    let mut out = Vec::new();
    for d in dates {
        let mut nodes: Vec<PathBuf> = fs::read_dir(&d)
            .map_err(RollupError::io("list", &d))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("node="))
            })
            .collect();
        nodes.sort();
        for n in nodes {
            let mut files: Vec<PathBuf> = fs::read_dir(&n)
                .map_err(RollupError::io("list", &n))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|x| x.to_str())
                        .is_some_and(layout::is_file_name)
                })
                .collect();
            files.sort();
            out.push(NodeDir {
                dir: n,
                files,
                store: None,
            });
        }
    }
    Ok(out)
}

/// A rollup file opened: its footer's sources and a reader builder.
pub(crate) struct Opened {
    pub(crate) builder: ParquetRecordBatchReaderBuilder<Body>,
    pub(crate) sources: Vec<String>,
    pub(crate) rows: u64,
    /// The file's bytes, when it was read whole (always, so far): batches
    /// are then read with [`super::pages`] (zstd pages with the thread's
    /// one context).
    pub(crate) bytes: Option<bytes::Bytes>,
    /// The smallest and largest `ts` of its rows by the footer's
    /// statistics; `None` when a row group has none.
    pub(crate) ts_range: Option<(i64, i64)>,
}

/// Opens the local file `path`, checking the table and version in its
/// footer. The file is read whole, in one read: rollup files are small
/// (tens to hundreds of KB), and reading each column chunk from the file
/// took a `dup`, a seek and a read per column, 20 columns in each of
/// 40,000 files for an hour of a 10,000-node fleet.
pub(crate) fn open(path: &Path) -> Result<Opened, RollupError> {
    let b = fs::read(path).map_err(RollupError::io("open", path))?;
    open_body(path, Body::Bytes(b.into()))
}

/// Opens the file `f` of the node directory `d`, local or in its store.
pub(crate) fn open_in(d: &NodeDir, f: &Path) -> Result<Opened, RollupError> {
    match &d.store {
        None => open(f),
        Some(s) => {
            let body = s.fetch(std::slice::from_ref(&f.to_path_buf()))?;
            let b = body.into_iter().next().unwrap_or_default();
            open_body(f, Body::Bytes(b))
        }
    }
}

/// Removes the file `f` of the node directory `d`, local or in its store.
pub(crate) fn remove_in(d: &NodeDir, f: &Path) -> Result<(), RollupError> {
    match &d.store {
        None => fs::remove_file(f).map_err(RollupError::io("remove", f)),
        Some(s) => s.delete(f),
    }
}

/// Opens a rollup file's bytes (`path` names it in errors).
pub(crate) fn open_body(path: &Path, body: Body) -> Result<Opened, RollupError> {
    let bytes = match &body {
        Body::Bytes(b) => Some(b.clone()),
        Body::File(_) => None,
    };
    // What a rollup reader never uses is not decoded from the footer: the
    // embedded Arrow schema (the Parquet types give the same arrays: the
    // readers downcast, so a timestamp's zone name does not matter) and the
    // column statistics (files are chosen by name, rows by `ts`). A
    // 10,000-node check opens tens of thousands of small files.
    // Only `ts`'s (the first column) statistics are decoded: whole-file
    // projections are chosen by them ([`fold_batches`]).
    let options = ArrowReaderOptions::new()
        .with_skip_arrow_metadata(true)
        .with_column_stats_policy(ParquetStatisticsPolicy::skip_except(&[0]))
        .with_encoding_stats_policy(ParquetStatisticsPolicy::SkipAll)
        .with_size_stats_policy(ParquetStatisticsPolicy::SkipAll);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(body, options).map_err(|source| {
            RollupError::Parquet {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let meta = builder.metadata().file_metadata();
    let kv = meta.key_value_metadata().cloned().unwrap_or_default();
    let get = |k: &str| kv.iter().find(|x| x.key == k).and_then(|x| x.value.clone());
    if let Some(v) = get(ROLLUP_SCHEMA_VERSION_KEY) {
        let found: u32 = v.trim().parse().unwrap_or(u32::MAX);
        if found > ROLLUP_SCHEMA_VERSION {
            return Err(RollupError::NewerVersion {
                path: path.to_path_buf(),
                found,
                supported: ROLLUP_SCHEMA_VERSION,
            });
        }
    }
    let sources = get(ROLLUP_SOURCES_KEY)
        .map(|s| {
            s.lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let rows = u64::try_from(meta.num_rows()).unwrap_or(0);
    let ts_range = ts_range(builder.metadata());
    Ok(Opened {
        builder,
        sources,
        rows,
        bytes,
        ts_range,
    })
}

/// The smallest and largest `ts` of a file's rows by its row groups'
/// statistics, if every row group has them (and `ts` is the first column,
/// as in every version of the table).
fn ts_range(meta: &parquet::file::metadata::ParquetMetaData) -> Option<(i64, i64)> {
    use parquet::file::statistics::Statistics;
    let schema = meta.file_metadata().schema_descr();
    if schema.num_columns() == 0 || schema.column(0).name() != "ts" {
        return None;
    }
    let mut out: Option<(i64, i64)> = None;
    for rg in meta.row_groups() {
        let Some(Statistics::Int64(s)) = rg.column(0).statistics() else {
            return None;
        };
        let (lo, hi) = (*s.min_opt()?, *s.max_opt()?);
        out = Some(out.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    }
    out
}

/// Reads every row of an opened file, decoding the sketches in `want`
/// (the other sketch columns are not even read).
pub(crate) fn rows_of(
    path: &Path,
    o: Opened,
    want: SketchSet,
) -> Result<Vec<RollupRecord>, RollupError> {
    let skip: Vec<&str> = [
        ("wall_ms_sketch", want.wall),
        ("gpu_ms_sketch", want.gpu),
        ("queue_ms_sketch", want.queue),
        ("mcycles_sketch", want.mcycles),
        ("event_mcycles_sketch", want.event),
    ]
    .iter()
    .filter(|(_, on)| !on)
    .map(|(n, _)| *n)
    .collect();
    let schema = o.builder.parquet_schema();
    let keep: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| !skip.contains(&schema.column(i).name()))
        .collect();
    let mask = ProjectionMask::leaves(schema, keep);
    let reader = o
        .builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|source| RollupError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| RollupError::Parquet {
            path: path.to_path_buf(),
            source: parquet::errors::ParquetError::ArrowError(e.to_string()),
        })?;
        let rows = rollups_from_batch(&b, want).map_err(|source| RollupError::Schema {
            path: path.to_path_buf(),
            source,
        })?;
        out.extend(rows);
    }
    Ok(out)
}

/// The files of `d` to read: all but the minute files an hour file holds.
/// Returns them opened, and how many were superseded.
pub(crate) fn live_files(d: &NodeDir) -> Result<(Vec<(PathBuf, Opened)>, usize), RollupError> {
    let mut opened = Vec::with_capacity(d.files.len());
    let mut held: HashSet<String> = HashSet::new();
    match &d.store {
        None => {
            for f in &d.files {
                let o = open(f)?;
                held.extend(o.sources.iter().cloned());
                opened.push((f.clone(), o));
            }
        }
        Some(s) => {
            for (f, b) in d.files.iter().zip(s.fetch(&d.files)?) {
                let o = open_body(f, Body::Bytes(b))?;
                held.extend(o.sources.iter().cloned());
                opened.push((f.to_path_buf(), o));
            }
        }
    }
    let before = opened.len();
    opened.retain(|(p, _)| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        !held.contains(name)
    });
    let superseded = before - opened.len();
    Ok((opened, superseded))
}

/// `d` without the minute files whose rows all lie before `range`, and how
/// many those were; they are neither read nor opened. A minute file (the
/// agent's, `rollup --from-raw`'s, `gen-rollups`') never spans two hours
/// and is named by its first bucket, so one whose name starts in an hour
/// that ends at or before the range's start holds no row of the range.
/// Hour files (`…-hour.parquet`, one per node and date) are always kept.
fn before_range(d: &NodeDir, range: Option<TimeRange>) -> (NodeDir, usize) {
    let Some(r) = range else {
        return (d.clone(), 0);
    };
    let hour_ns = i64::from(slicetrace_schema::rollup::HOUR_SECS) * 1_000_000_000;
    let hour_suffix = format!("-{}{}", super::compact::HOUR_TAG, layout::FILE_SUFFIX);
    let files: Vec<PathBuf> = d
        .files
        .iter()
        .filter(|f| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let ends = crate::source::name_start_ns(name).map(|s| {
                slicetrace_schema::rollup::bucket_start(s, slicetrace_schema::rollup::HOUR_SECS)
                    + hour_ns
            });
            name.ends_with(&hour_suffix) || ends.is_none_or(|e| e > r.start_ns)
        })
        .cloned()
        .collect();
    let pruned = d.files.len() - files.len();
    (
        NodeDir {
            dir: d.dir.clone(),
            files,
            store: d.store.clone(),
        },
        pruned,
    )
}

/// Folds every row of the node directories `dirs` whose bucket starts in
/// `range` into one `T` per thread (`fold`), then merges them (`merge`).
/// `parallel` threads at most.
pub fn fold<T, F, M>(
    dirs: &[NodeDir],
    range: Option<TimeRange>,
    want: SketchSet,
    parallel: usize,
    fold: F,
    merge: M,
) -> Result<(T, ReadStats), RollupError>
where
    T: Default + Send,
    F: Fn(&mut T, RollupRecord) + Sync,
    M: Fn(&mut T, T),
{
    fold_files(
        dirs,
        range,
        parallel,
        |acc: &mut T, p: &Path, o: Opened| {
            for row in rows_of(p, o, want)? {
                let inside = range.is_none_or(|r| {
                    row.key.bucket_ns >= r.start_ns && row.key.bucket_ns < r.end_ns
                });
                if inside {
                    fold(acc, row);
                }
            }
            Ok(())
        },
        merge,
    )
}

/// Like [`fold`], but hands `fold` the Arrow batches of each file, with
/// only the `columns` named (a column a file lacks is left out, not an
/// error): the caller reads what it needs from the arrays, decodes no
/// sketch it does not use and allocates nothing per row. Rows are not
/// filtered by `range`: `fold` gets every row of the files whose name
/// does not place them after it, and checks `ts` itself.
///
/// With `narrow = Some((window, fewer))`, a file whose `ts` statistics
/// place every row outside `window` is read with the columns `fewer`
/// only, and `fold` is told so (its last argument, `true`).
pub fn fold_batches<T, F, M>(
    dirs: &[NodeDir],
    range: Option<TimeRange>,
    columns: &[&str],
    narrow: Option<(TimeRange, &[&str])>,
    parallel: usize,
    fold: F,
    merge: M,
) -> Result<(T, ReadStats), RollupError>
where
    T: Default + Send,
    F: Fn(&mut T, &Path, &RecordBatch, bool) -> Result<(), RollupError> + Sync,
    M: Fn(&mut T, T),
{
    fold_files(
        dirs,
        range,
        parallel,
        |acc: &mut T, p: &Path, o: Opened| {
            let narrowed = match (narrow, o.ts_range) {
                (Some((w, _)), Some((lo, hi))) => hi < w.start_ns || lo >= w.end_ns,
                _ => false,
            };
            let columns = match narrow {
                Some((_, fewer)) if narrowed => fewer,
                _ => columns,
            };
            let schema = o.builder.parquet_schema();
            let keep: Vec<usize> = (0..schema.num_columns())
                .filter(|&i| columns.contains(&schema.column(i).name()))
                .collect();
            // Batches no larger than the file: the reader sizes its
            // buffers by the batch size, and most rollup files hold a few
            // hundred rows.
            let batch = usize::try_from(o.rows).unwrap_or(65_536).clamp(1, 65_536);
            let bad = |source| RollupError::Parquet {
                path: p.to_path_buf(),
                source,
            };
            let reader = match o.bytes {
                // In memory: for zstd files one context per thread, not
                // two per column chunk (`pages`).
                Some(bytes) => {
                    super::pages::reader(o.builder.metadata().clone(), bytes, keep, batch)
                        .map_err(bad)?
                }
                None => {
                    let mask = ProjectionMask::leaves(schema, keep);
                    o.builder
                        .with_projection(mask)
                        .with_batch_size(batch)
                        .build()
                        .map_err(bad)?
                }
            };
            for b in reader {
                let b =
                    b.map_err(|e| bad(parquet::errors::ParquetError::ArrowError(e.to_string())))?;
                fold(acc, p, &b, narrowed)?;
            }
            Ok(())
        },
        merge,
    )
}

/// The work loop of [`fold`] and [`fold_batches`]: each thread takes node
/// directories in turn and hands each live file not pruned by name to
/// `per_file`.
fn fold_files<T, F, M>(
    dirs: &[NodeDir],
    range: Option<TimeRange>,
    parallel: usize,
    per_file: F,
    merge: M,
) -> Result<(T, ReadStats), RollupError>
where
    T: Default + Send,
    F: Fn(&mut T, &Path, Opened) -> Result<(), RollupError> + Sync,
    M: Fn(&mut T, T),
{
    let next = AtomicUsize::new(0);
    let stats = Mutex::new(ReadStats {
        node_dirs: dirs.len(),
        ..ReadStats::default()
    });
    let first_err: Mutex<Option<RollupError>> = Mutex::new(None);
    let threads = parallel.clamp(1, dirs.len().max(1));
    let parts: Vec<T> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut acc = T::default();
                    let mut local = ReadStats::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(d) = dirs.get(i) else { break };
                        let r = (|| -> Result<(), RollupError> {
                            let (kept, before) = before_range(d, range);
                            local.files_pruned_by_name += before;
                            let (files, superseded) = live_files(&kept)?;
                            local.files_superseded += superseded;
                            for (p, o) in files {
                                let start = p
                                    .file_name()
                                    .and_then(|n| n.to_str())
                                    .and_then(crate::source::name_start_ns);
                                if let (Some(r), Some(s)) = (range, start) {
                                    if s >= r.end_ns {
                                        local.files_pruned_by_name += 1;
                                        continue;
                                    }
                                }
                                local.files_read += 1;
                                local.rows_read += o.rows;
                                per_file(&mut acc, &p, o)?;
                            }
                            Ok(())
                        })();
                        if let Err(e) = r {
                            if let Ok(mut g) = first_err.lock() {
                                g.get_or_insert(e);
                            }
                            // Stop every thread: the first error decides.
                            next.store(dirs.len(), Ordering::Relaxed);
                            break;
                        }
                    }
                    if let Ok(mut g) = stats.lock() {
                        g.files_read += local.files_read;
                        g.files_superseded += local.files_superseded;
                        g.files_pruned_by_name += local.files_pruned_by_name;
                        g.rows_read += local.rows_read;
                    }
                    acc
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut it = parts.into_iter();
    let mut total = it.next().unwrap_or_default();
    for p in it {
        merge(&mut total, p);
    }
    let stats = stats.into_inner().unwrap_or_default();
    Ok((total, stats))
}
