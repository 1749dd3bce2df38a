//! Rollups: the `rollups` table (per-minute, then per-hour rows with
//! DDSketch sketches, [`slicetrace_schema::rollup`]) on the CLI's side.
//!
//! * [`read`] lists the rollup files of a time range under `DATA/rollups/`
//!   and folds their rows on `--parallel` threads, skipping minute files
//!   that an hour file already holds (its `slicetrace.rollup_sources`), so a
//!   compaction cut off half-way never counts a run twice;
//! * [`compact`] is `slicetrace rollup`: `--to hour` folds the minute files
//!   of every finished hour into one hour file per node (temp name, sync,
//!   rename, only then the minute files go), and `--from-raw` builds
//!   minute rollups from raw `probes` files written before the agent wrote
//!   rollups;
//! * [`fleet`] and [`report`] answer `slicetrace fleet` and `slicetrace
//!   report` from merged sketches, [`timeline`] draws `plot --kind timeline`
//!   from the per-minute p99s;
//! * [`udaf`] registers `sketch_merge` (an aggregate) and `sketch_quantile`
//!   with a DataFusion session, for SQL over the sketch columns;
//! * [`synth`] generates rollups directly for the benchmarks.
//!
//! When the CLI answers from rollups ([`choose`]): with `--exact` never;
//! `fleet` ([`Policy::WhenCovered`]) whenever rollups cover the range (every
//! node with raw rows in the range's `date=` partitions also has rollups
//! there: otherwise the whole check reads raw rows, and says which nodes
//! lack rollups); `report`, `compare` and `plot` ([`Policy::LongRanges`])
//! when the raw `probes` partitions of the range are absent but rollup
//! partitions exist, or when the range is longer than `--rollups-after`
//! (default 6 h) and rollups exist. Every output names its source
//! ([`DataSource`]): a line under a table, a `source` field in JSON.
//!
//! Rollups are read the same way from a local directory and from an
//! `s3://BUCKET/PREFIX/` ([`store`]): only the `date=` partitions of the
//! range are listed, and the files are read through the object store.
//! `slicetrace rollup` (compaction) works on local directories only.
//!
//! On a Ballista cluster (`--engine df://…`) the raw path runs
//! ([`ON_CLUSTER`]): the rollup path folds sketches in this process, not in
//! a DataFusion plan, so it would not run on the cluster at all.

pub mod compact;
pub mod compare;
pub mod fleet;
mod pages;
pub mod read;
pub mod report;
pub mod store;
pub mod synth;
pub mod timeline;
pub mod udaf;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use slicetrace_schema::{layout, SKETCH_ALPHA};

use crate::source::TimeRange;
pub use store::RollupRoot;

/// Why a command on a Ballista cluster answers from raw rows although
/// rollups exist: the rollup path is not a DataFusion plan.
pub const ON_CLUSTER: &str = "--engine df://: the rollup path merges sketches in this process, \
not in a DataFusion plan, so the cluster answers from raw rows";

/// Errors of the rollup paths.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// A file-system operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A rollup file could not be read or written as Parquet.
    #[error("{path}: not a readable rollups file")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A rollup file's rows do not convert.
    #[error("{path}: bad rollup rows")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: slicetrace_schema::SchemaError,
    },
    /// A rollup file written by a newer slicetrace.
    #[error("{path}: rollup schema version {found} is newer than this build's {supported}")]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// This build's.
        supported: u32,
    },
    /// An object store could not be listed or read.
    #[error("failed to {action} {location}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// Where.
        location: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// Bad input (flags, a location rollups cannot use).
    #[error("{0}")]
    Usage(String),
    /// A query over raw rows failed.
    #[error(transparent)]
    Scan(#[from] crate::scan::ScanError),
    /// The raw rows could not be opened.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

impl RollupError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| RollupError::Io {
            action,
            path,
            source,
        }
    }
}

/// Which data answered a command.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataSource {
    /// `raw` (the `probes` rows, exact) or `rollups` (merged sketches).
    pub kind: &'static str,
    /// Why this source.
    pub why: String,
    /// Relative error bound of the quantiles (rollups only).
    pub relative_error: Option<f64>,
    /// Rollup files read (rollups only).
    pub rollup_files: Option<usize>,
    /// Rollup rows read (rollups only).
    pub rollup_rows: Option<u64>,
    /// Minute files skipped because an hour file already holds them.
    pub rollup_files_superseded: Option<usize>,
}

impl DataSource {
    /// The raw rows.
    pub fn raw() -> Self {
        DataSource {
            kind: "raw",
            why: "raw probe rows".into(),
            relative_error: None,
            rollup_files: None,
            rollup_rows: None,
            rollup_files_superseded: None,
        }
    }

    /// The raw rows, with a reason.
    pub fn raw_because(why: impl Into<String>) -> Self {
        DataSource {
            why: why.into(),
            ..Self::raw()
        }
    }

    /// Rollups, read as `stats` says.
    pub fn rollups(why: impl Into<String>, stats: &read::ReadStats) -> Self {
        DataSource {
            kind: "rollups",
            why: why.into(),
            relative_error: Some(SKETCH_ALPHA),
            rollup_files: Some(stats.files_read),
            rollup_rows: Some(stats.rows_read),
            rollup_files_superseded: Some(stats.files_superseded),
        }
    }

    /// One line for table output.
    pub fn line(&self) -> String {
        match self.kind {
            "rollups" => format!(
                "source: rollups ({}; {} files, {} rows; quantiles within ±{} % of exact; --exact reads raw rows)",
                self.why,
                self.rollup_files.unwrap_or(0),
                self.rollup_rows.unwrap_or(0),
                SKETCH_ALPHA * 100.0
            ),
            _ => format!("source: raw rows ({})", self.why),
        }
    }
}

/// Flags that choose between raw rows and rollups.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct SourceArgs {
    /// Always answer from the raw probe rows (exact quantiles), never from
    /// rollups.
    #[arg(long)]
    pub exact: bool,
    /// report, compare, plot: a range at least this long is answered from
    /// rollups when they exist (shorter ranges read raw rows unless those
    /// are absent). fleet ignores it: it answers from rollups whenever they
    /// cover the range.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub rollups_after: Duration,
}

impl Default for SourceArgs {
    fn default() -> Self {
        SourceArgs {
            exact: false,
            rollups_after: Duration::from_secs(6 * 3600),
        }
    }
}

/// The agent's data directory for `data` (`DIR`, `DIR/probes` or
/// `DIR/health` all name `DIR`); `None` for object-store URLs.
pub fn data_root(data: &str) -> Option<PathBuf> {
    if data.contains("://") {
        return None;
    }
    let p = PathBuf::from(data);
    match p.file_name().and_then(|n| n.to_str()) {
        Some(n) if n == layout::PROBES || n == layout::HEALTH || n == layout::ROLLUPS => {
            p.parent().map(Path::to_path_buf)
        }
        _ => Some(p),
    }
}

/// The dates (`YYYY-MM-DD`) that `range` touches.
pub(crate) fn dates_of(range: TimeRange) -> Vec<String> {
    let day = 86_400 * 1_000_000_000_i64;
    let mut out = Vec::new();
    let mut t = range.start_ns.div_euclid(day) * day;
    while t < range.end_ns {
        out.push(layout::date_value(t));
        t = t.saturating_add(day);
    }
    out
}

/// Whether `table` has a `date=` partition for any date of `range`.
fn has_partitions(present: &BTreeSet<String>, range: TimeRange) -> bool {
    dates_of(range).iter().any(|d| present.contains(d))
}

/// When a command prefers rollups over raw rows that are also there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `report`, `compare`, `plot`: only for ranges of at least
    /// `--rollups-after` (their tables print exact quantiles by default).
    LongRanges,
    /// `fleet`: whenever rollups cover the range. A fleet check compares
    /// quantiles with thresholds whose margins are far wider than the
    /// sketch's ±1 % (a ratio of two sketch quantiles is within about
    /// ±2 %, against a degraded factor of 1.5× and a peer deviation of at
    /// least 3.5 × 5 % = 17.5 % of the median; counts are exact), so only
    /// a GPU within about 2 % of a threshold can be judged otherwise than
    /// from exact quantiles; and a rollup row stands for a minute of a
    /// GPU, kernel, shape and tenant count instead of one row per run.
    /// "Cover": every
    /// node with a `probes/date=D/node=N/` directory for a date `D` of the
    /// range also has `rollups/date=D/node=N/`; a node whose agent predates
    /// rollups would otherwise drop out of the check (or read stale), so
    /// then the whole check reads raw rows and `why` names those nodes.
    WhenCovered,
}

/// The nodes with a raw `probes` directory but no `rollups` directory in
/// the `date=` partitions `dates` (one delimited LIST per date and table
/// on a store).
pub fn nodes_without_rollups(
    root: &RollupRoot,
    dates: &[String],
) -> Result<BTreeSet<String>, RollupError> {
    let mut out = BTreeSet::new();
    for d in dates {
        let raw = root.nodes(layout::PROBES, d)?;
        if raw.is_empty() {
            continue;
        }
        let rolled = root.nodes(layout::ROLLUPS, d)?;
        out.extend(raw.into_iter().filter(|n| !rolled.contains(n)));
    }
    Ok(out)
}

/// Names `nodes` for a `why`: the count and the first few.
fn name_nodes(nodes: &BTreeSet<String>) -> String {
    const SHOWN: usize = 5;
    let first: Vec<&str> = nodes.iter().take(SHOWN).map(String::as_str).collect();
    let more = nodes.len().saturating_sub(SHOWN);
    if more > 0 {
        format!("{} and {more} more", first.join(", "))
    } else {
        first.join(", ")
    }
}

/// Raw rows or rollups for a command over `range` (`None`: the command
/// has no time range) on `root`, under `policy`. `raw_only` names a reason
/// the question needs raw rows (`--all-runs`, a SQL `--where`,
/// [`ON_CLUSTER`]).
///
/// On an object store this costs one delimited LIST of `rollups/` and one
/// of `probes/`, and under [`Policy::WhenCovered`] one delimited LIST of
/// each table's `date=` partitions of the range. A listing that fails
/// counts as no rollups (or, for the node comparison, as not covered): the
/// raw path then runs and reports the store's error itself.
pub fn choose(
    root: &RollupRoot,
    range: Option<TimeRange>,
    args: &SourceArgs,
    raw_only: Option<&str>,
    policy: Policy,
) -> DataSource {
    if args.exact {
        return DataSource::raw_because("--exact");
    }
    let dates = |table: &str| match root.dates(table) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, table, "listing failed: taken as absent");
            BTreeSet::new()
        }
    };
    let rolled_dates = dates(layout::ROLLUPS);
    let rolled = match range {
        Some(r) => has_partitions(&rolled_dates, r),
        None => !rolled_dates.is_empty(),
    };
    if !rolled {
        return DataSource::raw_because("no rollups for this range");
    }
    if let Some(why) = raw_only {
        return DataSource::raw_because(why.to_string());
    }
    let raw_dates = dates(layout::PROBES);
    let raw = match range {
        Some(r) => has_partitions(&raw_dates, r),
        None => !raw_dates.is_empty(),
    };
    if !raw {
        return DataSource {
            kind: "rollups",
            why: "no raw rows for this range".into(),
            ..DataSource::raw()
        };
    }
    if let (Policy::WhenCovered, Some(r)) = (policy, range) {
        let raw_in_range: Vec<String> = dates_of(r)
            .into_iter()
            .filter(|d| raw_dates.contains(d))
            .collect();
        return match nodes_without_rollups(root, &raw_in_range) {
            Ok(lacking) if lacking.is_empty() => DataSource {
                kind: "rollups",
                why: "rollups cover the range (fleet's default)".into(),
                ..DataSource::raw()
            },
            Ok(lacking) => DataSource::raw_because(format!(
                "{} node(s) with raw rows but no rollups in this range's date partitions \
                 (agents older than rollups?): {}; the whole check reads raw rows \
                 (slicetrace rollup --from-raw builds their rollups)",
                lacking.len(),
                name_nodes(&lacking)
            )),
            Err(e) => DataSource::raw_because(format!(
                "could not compare the nodes of raw rows and rollups ({e}): raw rows"
            )),
        };
    }
    let long = range.is_some_and(|r| {
        let len = r.end_ns.saturating_sub(r.start_ns);
        i128::from(len) >= args.rollups_after.as_nanos() as i128
    });
    if long {
        DataSource {
            kind: "rollups",
            why: format!(
                "range at least --rollups-after {}",
                humantime::format_duration(args.rollups_after)
            ),
            ..DataSource::raw()
        }
    } else {
        DataSource::raw_because(format!(
            "range shorter than --rollups-after {}",
            humantime::format_duration(args.rollups_after)
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn data_root_accepts_the_dir_or_a_table_dir() {
        assert_eq!(data_root("/d/probes"), Some(PathBuf::from("/d")));
        assert_eq!(data_root("/d"), Some(PathBuf::from("/d")));
        assert_eq!(data_root("s3://b/p"), None);
    }

    #[test]
    fn choose_prefers_raw_for_short_ranges_and_rollups_when_raw_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let day0 = 1_704_067_200_000_000_000_i64; // 2024-01-01
        let r = TimeRange {
            start_ns: day0,
            end_ns: day0 + 3_600_000_000_000,
        };
        let data = &RollupRoot::Local(root.to_path_buf());
        let a = SourceArgs::default();
        let kind = |args: &SourceArgs, raw_only: Option<&str>| {
            choose(data, Some(r), args, raw_only, Policy::LongRanges).kind
        };
        assert_eq!(kind(&a, None), "raw");
        std::fs::create_dir_all(root.join("rollups/date=2024-01-01/node=n")).unwrap();
        assert_eq!(kind(&a, None), "rollups");
        std::fs::create_dir_all(root.join("probes/date=2024-01-01/node=n")).unwrap();
        assert_eq!(kind(&a, None), "raw");
        let long = SourceArgs {
            rollups_after: Duration::from_secs(1800),
            ..a
        };
        assert_eq!(kind(&long, None), "rollups");
        let exact = SourceArgs {
            exact: true,
            ..long
        };
        assert_eq!(kind(&exact, None), "raw");
        assert_eq!(kind(&long, Some("--all-runs")), "raw");
    }

    #[test]
    fn fleet_answers_from_rollups_when_they_cover_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let day0 = 1_704_067_200_000_000_000_i64; // 2024-01-01
        let r = TimeRange {
            start_ns: day0 + 3_600_000_000_000,
            end_ns: day0 + 2 * 3_600_000_000_000,
        };
        let data = &RollupRoot::Local(root.to_path_buf());
        let a = SourceArgs::default();
        let fleet = |args: &SourceArgs| choose(data, Some(r), args, None, Policy::WhenCovered);
        let mk = |t: &str, n: &str| {
            std::fs::create_dir_all(root.join(format!("{t}/date=2024-01-01/node={n}"))).unwrap()
        };
        mk("probes", "a");
        mk("probes", "b");
        // Raw rows only: raw.
        assert_eq!(fleet(&a).kind, "raw");
        mk("rollups", "a");
        mk("rollups", "b");
        // Both, for every node, a range far shorter than --rollups-after:
        // rollups for fleet, raw for report and the others.
        let src = fleet(&a);
        assert_eq!(src.kind, "rollups", "{src:?}");
        assert!(src.why.contains("cover"), "{src:?}");
        assert_eq!(
            choose(data, Some(r), &a, None, Policy::LongRanges).kind,
            "raw"
        );
        // --exact and the raw-only questions still read raw rows.
        let exact = SourceArgs { exact: true, ..a };
        assert_eq!(fleet(&exact).why, "--exact");
        assert_eq!(
            choose(
                data,
                Some(r),
                &a,
                Some("--where needs raw rows"),
                Policy::WhenCovered
            )
            .kind,
            "raw"
        );
        // A node whose agent writes no rollups: the whole check reads raw
        // rows, and says which node.
        mk("probes", "old-agent");
        let src = fleet(&a);
        assert_eq!(src.kind, "raw", "{src:?}");
        assert!(src.why.starts_with("1 node(s)"), "{src:?}");
        assert!(src.why.contains("old-agent"), "{src:?}");
        // A node with rollups and no raw rows (raw files shipped away or
        // expired) does not stop the rollups.
        mk("rollups", "old-agent");
        mk("rollups", "raw-gone");
        assert_eq!(fleet(&a).kind, "rollups");
    }

    #[test]
    fn nodes_without_rollups_names_the_first_few() {
        let many: BTreeSet<String> = (0..8).map(|i| format!("n{i}")).collect();
        assert_eq!(name_nodes(&many), "n0, n1, n2, n3, n4 and 3 more");
    }
}
