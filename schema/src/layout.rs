//! Where the agent's files go on disk: the one definition of the Hive layout
//! that the agent's Parquet sink writes, the synthetic generator imitates and
//! the `slicetrace` CLI recognises (partition columns `date` and `node`).
//!
//! `DIR/<table>/date=YYYY-MM-DD/node=NAME/part-<start>-<id>.parquet`, where
//! `<table>` is one of [`TABLES`], the date is the UTC date of the rows' `ts`
//! (so a file never spans two dates), `NAME` is the node name made safe as
//! one path component ([`partition_value`]) and `<start>` is the first row's
//! time as `YYYYMMDDTHHMMSSZ`. A file being written is named
//! `.part-<start>-<id>.parquet.tmp` in the same directory ([`tmp_name`]):
//! hidden, and matched by no `*.parquet` glob, so readers never see it.

use std::fmt::Display;
use std::path::PathBuf;

/// Directory (and `slicetrace.table` footer value) of the probes table.
pub const PROBES: &str = "probes";
/// Directory (and `slicetrace.table` footer value) of the health table.
pub const HEALTH: &str = "health";
/// Directory (and `slicetrace.table` footer value) of the rollups table
/// (per-minute summaries with mergeable sketches, `crate::rollup`).
pub const ROLLUPS: &str = "rollups";
/// Every table the agent writes, as directory names under its data dir
/// (recovery and retention walk them all; the shipper ships any table).
pub const TABLES: [&str; 3] = [PROBES, HEALTH, ROLLUPS];

/// First partition column: the UTC date of the rows, `YYYY-MM-DD`.
pub const DATE_KEY: &str = "date";
/// Second partition column: the node that wrote the file.
pub const NODE_KEY: &str = "node";

/// Extension of a finished data file.
pub const FILE_SUFFIX: &str = ".parquet";
/// Start of a finished data file's name.
pub const FILE_PREFIX: &str = "part-";
/// Prepended to a data file's name while it is written (hides it).
pub const TMP_PREFIX: &str = ".";
/// Appended to a data file's name while it is written.
pub const TMP_SUFFIX: &str = ".tmp";

fn utc(ts_ns: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_nanos(ts_ns)
}

/// The `date` partition value of a row at `ts_ns`: its UTC date, `YYYY-MM-DD`.
/// Values compare in time order as strings.
pub fn date_value(ts_ns: i64) -> String {
    utc(ts_ns).format("%Y-%m-%d").to_string()
}

/// A Hive partition value that is safe as one path component: characters
/// other than ASCII letters, digits, `.`, `-` and `_` become `_`, and an
/// empty or all-dots value becomes `_`.
pub fn partition_value(s: &str) -> String {
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

/// The `node=NAME` directory of `node` (made safe by [`partition_value`]).
pub fn node_dir(node: &str) -> String {
    format!("{NODE_KEY}={}", partition_value(node))
}

/// The `date=YYYY-MM-DD` directory of a `date` from [`date_value`].
pub fn date_dir(date: &str) -> String {
    format!("{DATE_KEY}={date}")
}

/// The partition directory, relative to a table's directory, of `node`'s
/// rows on `date` (a value from [`date_value`]): `date=…/node=…`.
pub fn partition_dir(date: &str, node: &str) -> PathBuf {
    PathBuf::from(date_dir(date)).join(node_dir(node))
}

/// The name of a finished data file whose first row is at `first_ts_ns`:
/// `part-<YYYYMMDDTHHMMSSZ>-<id>.parquet`. `id` keeps names unique (the
/// agent uses a random UUID).
pub fn file_name(first_ts_ns: i64, id: impl Display) -> String {
    let start = utc(first_ts_ns).format("%Y%m%dT%H%M%SZ");
    format!("{FILE_PREFIX}{start}-{id}{FILE_SUFFIX}")
}

/// The name under which a data file called `file_name` is written.
pub fn tmp_name(file_name: &str) -> String {
    format!("{TMP_PREFIX}{file_name}{TMP_SUFFIX}")
}

/// Whether `name` is a finished data file's name (`part-….parquet`).
pub fn is_file_name(name: &str) -> bool {
    name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)
}

/// The finished name of a file being written: `.part-X.parquet.tmp` →
/// `part-X.parquet`; `None` for any other name.
pub fn final_name_of_tmp(tmp_name: &str) -> Option<&str> {
    let inner = tmp_name
        .strip_prefix(TMP_PREFIX)?
        .strip_suffix(TMP_SUFFIX)?;
    is_file_name(inner).then_some(inner)
}

/// Whether the directories between a table's directory and a file, as path
/// segments, are partition directories: `date=…` then `node=…` first.
pub fn is_partition_path<'a>(dirs: impl IntoIterator<Item = &'a str>) -> bool {
    let mut segs = dirs.into_iter().filter(|s| !s.is_empty());
    let date = format!("{DATE_KEY}=");
    let node = format!("{NODE_KEY}=");
    segs.next().is_some_and(|s| s.starts_with(&date))
        && segs.next().is_some_and(|s| s.starts_with(&node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_one_path_component() {
        assert_eq!(partition_value("node-1.example"), "node-1.example");
        assert_eq!(partition_value("a/b c"), "a_b_c");
        assert_eq!(partition_value(".."), "_");
        assert_eq!(partition_value(""), "_");
    }

    #[test]
    fn names_follow_the_hive_layout() {
        // 2024-01-01T23:59:59Z
        let t = 1_704_153_599_000_000_000;
        assert_eq!(date_value(t), "2024-01-01");
        assert_eq!(date_value(t + 2_000_000_000), "2024-01-02");
        assert_eq!(
            partition_dir(&date_value(t), "n 1"),
            PathBuf::from("date=2024-01-01/node=n_1")
        );
        let name = file_name(t, "abc");
        assert_eq!(name, "part-20240101T235959Z-abc.parquet");
        assert!(is_file_name(&name));
        assert!(is_partition_path("date=2024-01-01/node=n_1".split('/')));
        assert!(is_partition_path("date=x/node=y/sub".split('/')));
        assert!(!is_partition_path("node=y/date=x".split('/')));
        assert!(!is_partition_path("date=x".split('/')));
        assert!(!is_partition_path("".split('/')));
    }

    #[test]
    fn tmp_names_map_to_final_names_and_never_match_parquet_glob() {
        let tmp = tmp_name("part-20240101T000000Z-abc.parquet");
        assert_eq!(tmp, ".part-20240101T000000Z-abc.parquet.tmp");
        assert_eq!(
            final_name_of_tmp(&tmp),
            Some("part-20240101T000000Z-abc.parquet")
        );
        assert!(!is_file_name(&tmp));
        assert!(!tmp.ends_with(FILE_SUFFIX));
        assert!(final_name_of_tmp("part-x.parquet").is_none());
        assert!(final_name_of_tmp(".other.tmp").is_none());
    }
}
