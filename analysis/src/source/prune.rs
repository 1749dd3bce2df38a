//! Opening only what a time range needs, for `fleet` over thousands of
//! nodes: the agent writes a file per node every few minutes, so a day of a
//! 2,000-node fleet is about 576,000 files, and reading every footer costs
//! more than the query.
//!
//! Three steps, each counted in [`ScanStats`]:
//! 1. **Partitions.** Only the `date=` directories whose UTC date overlaps
//!    the range are listed (a file never spans two dates).
//! 2. **File names.** A file is named after its first row
//!    (`part-<YYYYMMDDTHHMMSSZ>-…`), and the agent writes one file at a time
//!    per node and date, so within one `date=/node=` directory a file's rows
//!    end before the next file's first row. A file that starts after the
//!    range, or whose successor starts before the range, is not opened.
//!    [`NAME_SLACK_NS`] absorbs rows that reach the writer slightly out of
//!    order; `name_pruning: false` opens every listed file instead.
//! 3. **Footers.** Each remaining file's footer is read (at most `parallel`
//!    at a time) and checked like every other command's (see `check.rs`);
//!    the row-group min/max of `ts` tells which row groups, and so which
//!    files, lie outside the range. The query's own `ts` filter then lets
//!    DataFusion skip the same row groups.
//!
//! A file whose footer cannot be read (truncated, not Parquet, foreign or
//! newer schema, a failed read) is skipped and named in
//! [`ScanStats::skipped`], unless `strict`, where it is the error.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde::Serialize;
use slicetrace_schema::layout;

use super::locate::{display_name, list_files, locate, Listed, Located};
use super::{check_footer, register, Dataset, FileInfo, OpenOptions, SourceError, Target, Tuning};

/// How far out of order (ns) a row may reach the agent's writer: a file's
/// rows are taken to lie in `[own start − slack, next file's start + slack)`.
pub const NAME_SLACK_NS: i64 = 60 * 1_000_000_000;

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// A listed file with its name's start time.
type Named = (Option<i64>, ObjectMeta);
/// One listing: the end of its day (partitioned tables) and its files.
type Listing = (Option<i64>, Vec<Listed>);
/// What reading one footer gave: rows, row groups, row groups outside.
type Opened = (String, Result<(u64, usize, usize), SourceError>);

/// A half-open time range `[start_ns, end_ns)`, ns since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// First instant in the range.
    pub start_ns: i64,
    /// First instant after the range.
    pub end_ns: i64,
}

impl TimeRange {
    /// Whether `[lo, hi]` (inclusive, as Parquet statistics are) overlaps.
    fn overlaps(&self, lo: i64, hi: i64) -> bool {
        hi >= self.start_ns && lo < self.end_ns
    }
}

/// How to open a range.
#[derive(Debug, Clone)]
pub struct RangeOptions {
    /// S3 endpoint and table, as for [`super::open`].
    pub open: OpenOptions,
    /// The rows wanted.
    pub range: TimeRange,
    /// Footers read at once, and DataFusion's partitions.
    pub parallel: usize,
    /// A file that cannot be read is an error, not a skipped file.
    pub strict: bool,
    /// Skip files by their names' start times (see the module doc).
    pub name_pruning: bool,
    /// Bytes the query's operators may reserve (`None`: unbounded); see
    /// `fleet --memory-limit`.
    pub memory_limit: Option<usize>,
}

/// A file that was skipped because it could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedFile {
    /// Local path or `s3://` URL.
    pub file: String,
    /// Why, in one line.
    pub reason: String,
}

/// What listing and pruning did (see the module doc).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanStats {
    /// `date=` partitions listed (overlapping the range).
    pub partitions_listed: usize,
    /// `date=` partitions outside the range, never listed.
    pub partitions_pruned: usize,
    /// Data files found in the listed partitions.
    pub files_listed: usize,
    /// Of those, not opened: their names place them outside the range.
    pub files_pruned_by_name: usize,
    /// Footers read.
    pub files_opened: usize,
    /// Opened, but every row group lies outside the range.
    pub files_pruned_by_stats: usize,
    /// Opened and unreadable: skipped (see `skipped`).
    pub files_skipped: usize,
    /// Files the query reads.
    pub files_scanned: usize,
    /// Row groups in the opened, readable files.
    pub row_groups_total: usize,
    /// Of those, outside the range by their `ts` statistics.
    pub row_groups_skipped: usize,
    /// Rows in the scanned files (footer counts, whole files).
    pub rows_in_scanned_files: u64,
    /// The unreadable files, by name.
    pub skipped: Vec<SkippedFile>,
}

/// A dataset registered over the files of one range.
pub struct RangeDataset {
    /// The session, table `probes` over exactly the files scanned (no
    /// partition columns: `node` comes from the files).
    pub ds: Dataset,
    /// What was listed, pruned, opened and skipped.
    pub stats: ScanStats,
    /// Per `node=` directory seen in the listed partitions, the start of its
    /// newest file (a lower bound of its newest row), ns.
    pub newest_file_by_node: BTreeMap<String, i64>,
}

/// The first row's time from a data file's name (`part-YYYYMMDDTHHMMSSZ-…`).
pub fn name_start_ns(file_name: &str) -> Option<i64> {
    let rest = file_name.strip_prefix(layout::FILE_PREFIX)?;
    let stamp = rest.get(..16)?;
    let t = NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

fn date_start_ns(dir: &str) -> Option<i64> {
    let d = dir.strip_prefix(&format!("{}=", layout::DATE_KEY))?;
    let d = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
    d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()
}

/// The files of one `date=/node=` directory (or of a non-partitioned
/// table) that the names cannot rule out. `day_end_ns` bounds the last file
/// (a file never spans two dates). Returns (kept, pruned count).
fn prune_by_name(
    mut files: Vec<Named>,
    day_end_ns: Option<i64>,
    range: TimeRange,
) -> (Vec<ObjectMeta>, usize) {
    files.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.location.cmp(&b.1.location)));
    let starts: Vec<Option<i64>> = files.iter().map(|f| f.0).collect();
    let mut kept = Vec::new();
    let mut pruned = 0;
    for (i, (start, meta)) in files.into_iter().enumerate() {
        let Some(start) = start else {
            kept.push(meta);
            continue;
        };
        // The next file with a larger start bounds this one's rows.
        let next = starts[i + 1..].iter().flatten().find(|&&s| s > start);
        let upper = match (next, day_end_ns) {
            (Some(&n), _) => Some(n.saturating_add(NAME_SLACK_NS)),
            (None, Some(end)) => Some(end),
            (None, None) => None,
        };
        let after = start.saturating_sub(NAME_SLACK_NS) >= range.end_ns;
        let before = upper.is_some_and(|u| u <= range.start_ns);
        if after || before {
            pruned += 1;
        } else {
            kept.push(meta);
        }
    }
    (kept, pruned)
}

/// Row groups of a footer, and how many lie outside `range` by their `ts`
/// statistics (row groups without statistics count as inside).
fn row_groups_outside(md: &ParquetMetaData, range: TimeRange) -> (usize, usize) {
    let descr = md.file_metadata().schema_descr();
    let Some(ts) = descr.columns().iter().position(|c| c.name() == "ts") else {
        return (md.num_row_groups(), 0);
    };
    let mut outside = 0;
    for rg in md.row_groups() {
        if rg.num_rows() == 0 {
            outside += 1;
            continue;
        }
        if let Some(Statistics::Int64(s)) = rg.column(ts).statistics() {
            if let (Some(&lo), Some(&hi)) = (s.min_opt(), s.max_opt()) {
                if !range.overlaps(lo, hi) {
                    outside += 1;
                }
            }
        }
    }
    (md.num_row_groups(), outside)
}

/// Opens the probes (or health) table of `data` for the rows of
/// `opts.range` only: see the module doc.
pub async fn open_range(data: &str, opts: &RangeOptions) -> Result<RangeDataset, SourceError> {
    let loc = locate(data, &opts.open).await?;
    open_located(loc, opts).await
}

/// [`open_range`] on a located store (tests wrap its store).
async fn open_located(loc: Located, opts: &RangeOptions) -> Result<RangeDataset, SourceError> {
    let table = opts.open.table;
    let range = opts.range;
    let mut stats = ScanStats::default();
    let store_err = |source| SourceError::Store {
        location: loc.display.clone(),
        source,
    };

    // 1. Partitions.
    let top = loc
        .store
        .list_with_delimiter(Some(&loc.prefix))
        .await
        .map_err(store_err)?;
    let mut dates: Vec<(ObjPath, i64)> = Vec::new();
    for p in &top.common_prefixes {
        let Some(name) = p.filename() else { continue };
        if let Some(day) = date_start_ns(name) {
            if range.overlaps(day, day.saturating_add(NS_PER_DAY - 1)) {
                dates.push((p.clone(), day));
            } else {
                stats.partitions_pruned += 1;
            }
        }
    }
    let hive = !(dates.is_empty() && stats.partitions_pruned == 0);
    stats.partitions_listed = dates.len();
    // Files grouped by directory, each with its day's end (hive only).
    let mut groups: BTreeMap<String, (Option<i64>, Vec<Named>)> = BTreeMap::new();
    let mut any_file = false;
    let listings: Vec<Listing> = if hive {
        futures::stream::iter(dates.iter().map(|(p, day)| {
            let loc = &loc;
            async move {
                let files = list_files(loc, p, table).await?;
                Ok::<_, SourceError>((Some(day.saturating_add(NS_PER_DAY)), files))
            }
        }))
        .buffer_unordered(opts.parallel.max(1))
        .try_collect()
        .await?
    } else {
        vec![(None, list_files(&loc, &loc.prefix, table).await?)]
    };
    let mut newest_file_by_node: BTreeMap<String, i64> = BTreeMap::new();
    for (day_end, files) in listings {
        for (rel, meta) in files {
            any_file = true;
            stats.files_listed += 1;
            let start = rel.last().and_then(|n| name_start_ns(n));
            let dir = rel[..rel.len().saturating_sub(1)].join("/");
            if let (Some(node), Some(s)) = (
                rel.get(1)
                    .and_then(|d| d.strip_prefix(&format!("{}=", layout::NODE_KEY)))
                    .filter(|_| hive),
                start,
            ) {
                let e = newest_file_by_node.entry(node.to_string()).or_insert(s);
                *e = (*e).max(s);
            }
            groups
                .entry(dir)
                .or_insert_with(|| (day_end, Vec::new()))
                .1
                .push((start, meta));
        }
    }
    if !any_file && !hive {
        return Err(SourceError::Empty {
            table,
            location: loc.display.clone(),
        });
    }

    // 2. File names.
    let mut to_open: Vec<ObjectMeta> = Vec::new();
    for (_, (day_end, files)) in groups {
        if opts.name_pruning {
            let (kept, pruned) = prune_by_name(files, day_end, range);
            stats.files_pruned_by_name += pruned;
            to_open.extend(kept);
        } else {
            to_open.extend(files.into_iter().map(|f| f.1));
        }
    }
    to_open.sort_by(|a, b| a.location.cmp(&b.location));

    // 3. Footers.
    stats.files_opened = to_open.len();
    let store = loc.store.clone();
    let opened: Vec<Opened> = futures::stream::iter(to_open.into_iter().map(|m| {
        let store = store.clone();
        let name = display_name(&loc, &m.location);
        async move {
            let r = check_footer(store.as_ref(), &m.location, m.size, &name, table)
                .await
                .map(|md| {
                    let (total, outside) = row_groups_outside(&md, range);
                    (md.file_metadata().num_rows().max(0) as u64, total, outside)
                });
            (name, r)
        }
    }))
    .buffered(opts.parallel.max(1))
    .collect()
    .await;
    let mut scanned: Vec<FileInfo> = Vec::new();
    for (name, r) in opened {
        match r {
            Ok((rows, total, outside)) => {
                stats.row_groups_total += total;
                stats.row_groups_skipped += outside;
                if outside == total {
                    stats.files_pruned_by_stats += 1;
                } else {
                    stats.rows_in_scanned_files += rows;
                    scanned.push(FileInfo { name, rows });
                }
            }
            Err(e) if opts.strict => return Err(e),
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "skipping unreadable file");
                stats.skipped.push(SkippedFile {
                    file: name,
                    reason: e.to_string(),
                });
            }
        }
    }
    stats.files_skipped = stats.skipped.len();
    stats.files_scanned = scanned.len();
    let names: Vec<String> = scanned.iter().map(|f| f.name.clone()).collect();
    let tuning = Tuning {
        parallel: Some(opts.parallel),
        memory_limit: opts.memory_limit,
    };
    let (ctx, columns) = register(
        &loc,
        table,
        Target::Files(&names),
        tuning,
        &opts.open.engine,
    )
    .await?;
    tracing::debug!(?stats, "registered range");
    Ok(RangeDataset {
        ds: Dataset {
            table,
            location: loc.display.clone(),
            total_rows: stats.rows_in_scanned_files,
            files: scanned,
            hive: false,
            ctx,
            columns,
        },
        stats,
        newest_file_by_node,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures::stream::BoxStream;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, PutMultipartOptions,
        PutOptions, PutPayload, PutResult,
    };

    /// A store that counts the reads in flight at once (each read held for
    /// a few ms so that concurrent ones overlap).
    #[derive(Debug)]
    struct InFlight {
        inner: Arc<dyn ObjectStore>,
        now: AtomicUsize,
        max: AtomicUsize,
        reads: AtomicUsize,
    }

    impl std::fmt::Display for InFlight {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "InFlight({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for InFlight {
        async fn put_opts(
            &self,
            location: &ObjPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &ObjPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &ObjPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let r = self.inner.get_opts(location, options).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            r
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjPath>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&ObjPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjPath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &ObjPath,
            to: &ObjPath,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// Opens a 4-node synthetic fleet (a file per node every 5 minutes
    /// over an hour) through [`InFlight`] with `parallel`; returns the most
    /// reads in flight at once, the reads, and the footers opened.
    async fn open_counting(dir: &std::path::Path, parallel: usize) -> (usize, usize, usize) {
        let open = OpenOptions::default();
        let mut loc = locate(dir.to_str().unwrap(), &open).await.unwrap();
        let counting = Arc::new(InFlight {
            inner: loc.store.clone(),
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        loc.store = counting.clone();
        let day = 1_767_225_600_000_000_000;
        let opts = RangeOptions {
            open,
            range: TimeRange {
                start_ns: day,
                end_ns: day + 60 * MIN,
            },
            parallel,
            strict: true,
            name_pruning: true,
            memory_limit: None,
        };
        let rd = open_located(loc, &opts).await.unwrap();
        (
            counting.max.load(Ordering::SeqCst),
            counting.reads.load(Ordering::SeqCst),
            rd.stats.files_opened,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn footer_reads_in_flight_never_exceed_parallel() {
        let tmp = tempfile::tempdir().unwrap();
        let l = crate::synth::FleetLayout {
            nodes: 4,
            gpus_per_node: 1,
            end_ns: 1_767_225_600_000_000_000 + 60 * MIN,
            span_secs: 3600,
            dense_secs: 0,
            file_secs: 300,
            rate_per_gpu: 0.0,
            sparse_rows_per_gpu: 2,
            seed: 3,
            threads: 1,
            slow: None,
            rollups: false,
        };
        crate::synth::generate_fleet(tmp.path(), &l).unwrap();
        // 4 nodes × 12 files, every one in the hour: 48 footers, 3 reads each.
        let (max1, reads1, opened1) = open_counting(tmp.path(), 1).await;
        assert_eq!(opened1, 48);
        assert!(reads1 >= 2 * opened1, "{reads1} reads");
        assert_eq!(max1, 1, "--parallel 1 read {max1} at once");
        let (max3, _, opened3) = open_counting(tmp.path(), 3).await;
        assert_eq!(opened3, 48);
        assert!(max3 <= 3, "--parallel 3 read {max3} at once");
        // The bound is what holds it back: with room, reads overlap.
        let (max16, _, _) = open_counting(tmp.path(), 16).await;
        assert!(max16 > 3, "--parallel 16 read at most {max16} at once");
    }

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            location: ObjPath::from(name),
            last_modified: DateTime::<Utc>::from_timestamp_nanos(0),
            size: 100,
            e_tag: None,
            version: None,
        }
    }

    const MIN: i64 = 60 * 1_000_000_000;

    #[test]
    fn file_names_give_their_first_row() {
        assert_eq!(
            name_start_ns("part-20260101T000500Z-abc.parquet"),
            Some(1_767_225_600_000_000_000 + 5 * MIN)
        );
        assert_eq!(name_start_ns("part-x.parquet"), None);
    }

    #[test]
    fn files_before_and_after_the_range_are_pruned_by_name() {
        let day = 1_767_225_600_000_000_000;
        // A file every 10 minutes from 00:00 to 01:50.
        let files: Vec<(Option<i64>, ObjectMeta)> = (0..12)
            .map(|i| (Some(day + i * 10 * MIN), meta(&format!("f{i:02}"))))
            .collect();
        let range = TimeRange {
            start_ns: day + 35 * MIN,
            end_ns: day + 65 * MIN,
        };
        let (kept, pruned) = prune_by_name(files, Some(day + 1440 * MIN), range);
        let kept: Vec<String> = kept.iter().map(|m| m.location.to_string()).collect();
        // f03 (00:30) holds 00:35; f06 (01:00) holds 01:04; f02 ends at 00:30
        // (+ slack) and f07 starts at 01:10 (- slack): both out.
        assert_eq!(kept, ["f03", "f04", "f05", "f06"]);
        assert_eq!(pruned, 8);
    }

    #[test]
    fn a_file_without_a_parseable_name_is_always_opened() {
        let range = TimeRange {
            start_ns: 10,
            end_ns: 20,
        };
        let (kept, pruned) = prune_by_name(vec![(None, meta("odd"))], None, range);
        assert_eq!((kept.len(), pruned), (1, 0));
    }
}
