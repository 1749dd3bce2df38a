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
//! otherwise when the raw `probes` partitions of the range are absent but
//! rollup partitions exist, or when the range is longer than
//! `--rollups-after` (default 6 h) and rollups exist. Every output names its
//! source ([`DataSource`]): a line under a table, a `source` field in JSON.
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
    /// A range at least this long is answered from rollups when they exist
    /// (shorter ranges read raw rows unless those are absent).
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

/// Raw rows or rollups for a command over `range` (`None`: the command
/// has no time range) on `root`. `raw_only` names a reason the question
/// needs raw rows (`--all-runs`, a SQL `--where`, [`ON_CLUSTER`]).
///
/// On an object store this costs one delimited LIST of `rollups/` and one
/// of `probes/`. A listing that fails counts as no rollups: the raw path
/// then runs and reports the store's error itself.
pub fn choose(
    root: &RollupRoot,
    range: Option<TimeRange>,
    args: &SourceArgs,
    raw_only: Option<&str>,
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
        assert_eq!(choose(data, Some(r), &a, None).kind, "raw");
        std::fs::create_dir_all(root.join("rollups/date=2024-01-01/node=n")).unwrap();
        assert_eq!(choose(data, Some(r), &a, None).kind, "rollups");
        std::fs::create_dir_all(root.join("probes/date=2024-01-01/node=n")).unwrap();
        assert_eq!(choose(data, Some(r), &a, None).kind, "raw");
        let long = SourceArgs {
            rollups_after: Duration::from_secs(1800),
            ..a
        };
        assert_eq!(choose(data, Some(r), &long, None).kind, "rollups");
        let exact = SourceArgs {
            exact: true,
            ..long
        };
        assert_eq!(choose(data, Some(r), &exact, None).kind, "raw");
        assert_eq!(choose(data, Some(r), &long, Some("--all-runs")).kind, "raw");
    }
}
