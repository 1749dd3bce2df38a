//! Row predicates given on the command line: a SQL `WHERE` clause, or a time
//! range `START..END` of RFC 3339 instants (END exclusive). Group-by column
//! lists are checked here too, because they are pasted into SQL.
//!
//! [`where_sql`] is the one place where a command's rows are chosen: the
//! user's predicate and, unless `--all-runs`, the arrival rule
//! ([`ARRIVAL_SQL`]). Every command (`report`, `compare`, `fleet`, `plot`)
//! builds its `WHERE` clause through it, so they all count the same runs.

use chrono::{DateTime, Utc};

/// The one rule for arrival runs (runs that sample what a caller arriving at
/// random sees), from the schema crate: the `arrival` column, or for files
/// written before it existed, the first FFT run of each burst.
pub use slicetrace_schema::ARRIVAL_SQL;

/// The tenant count of a run (other compute processes on the GPU, as NVML
/// sees them), from the schema crate. The table `probes` carries it as the
/// derived column `tenants` (see [`crate::source`]).
pub use slicetrace_schema::TENANTS_SQL;

/// Errors in a predicate or column list.
#[derive(Debug, thiserror::Error)]
pub enum PredError {
    /// A time range whose ends do not parse.
    #[error("bad time range {0:?}: expected RFC 3339 START..END, e.g. 2026-01-01T00:00:00Z..2026-01-01T01:00:00Z")]
    BadRange(String),
    /// The range is empty.
    #[error("time range {0:?} is empty (END must be after START)")]
    EmptyRange(String),
    /// A group-by entry is not a plain column name.
    #[error("bad column name {0:?} in --by (expected names like node,gpu_uuid,kernel)")]
    BadColumn(String),
}

fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Turns a predicate into SQL. `A..B` where both ends parse as RFC 3339 is a
/// half-open time range on `ts` (plus a `date` bound so partitions prune
/// when the table is partitioned); anything else is taken as SQL.
pub fn to_sql(pred: &str, hive: bool) -> Result<String, PredError> {
    let Some((a, b)) = pred.split_once("..") else {
        return Ok(format!("({pred})"));
    };
    let looks_like_range =
        a.trim().len() >= 10 && a.trim().as_bytes().get(4) == Some(&b'-') && !pred.contains('\'');
    if !looks_like_range {
        return Ok(format!("({pred})"));
    }
    let (Some(start), Some(end)) = (parse_instant(a), parse_instant(b)) else {
        return Err(PredError::BadRange(pred.to_string()));
    };
    if end <= start {
        return Err(PredError::EmptyRange(pred.to_string()));
    }
    let fmt = |d: DateTime<Utc>| d.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string();
    let mut sql = format!(
        "(ts >= TIMESTAMP '{}' AND ts < TIMESTAMP '{}')",
        fmt(start),
        fmt(end)
    );
    if hive {
        sql = format!(
            "({sql} AND date >= '{}' AND date <= '{}')",
            start.format("%Y-%m-%d"),
            end.format("%Y-%m-%d")
        );
    }
    Ok(sql)
}

/// The `WHERE` clause of a command: `user` (SQL or a `START..END` range, see
/// [`to_sql`]; `None` or blank for every row) and, unless `all_runs`, only
/// arrival runs ([`ARRIVAL_SQL`]).
pub fn where_sql(user: Option<&str>, hive: bool, all_runs: bool) -> Result<String, PredError> {
    let user = match user {
        Some(f) if !f.trim().is_empty() => Some(to_sql(f, hive)?),
        _ => None,
    };
    Ok(match (user, all_runs) {
        (None, true) => "TRUE".to_string(),
        (None, false) => format!("({ARRIVAL_SQL})"),
        (Some(u), true) => u,
        (Some(u), false) => format!("({ARRIVAL_SQL}) AND {u}"),
    })
}

/// Splits and checks a comma-separated column list.
pub fn columns(list: &str) -> Result<Vec<String>, PredError> {
    let cols: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for c in &cols {
        let ok = c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && !c.starts_with(|ch: char| ch.is_ascii_digit());
        if !ok {
            return Err(PredError::BadColumn(c.clone()));
        }
    }
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_range_becomes_half_open_ts_bounds() {
        let s = to_sql("2026-01-01T00:00:00Z..2026-01-01T01:00:00Z", true).expect("range");
        assert!(s.contains("ts >= TIMESTAMP '2026-01-01T00:00:00.000000000Z'"));
        assert!(s.contains("ts < TIMESTAMP '2026-01-01T01:00:00.000000000Z'"));
        assert!(s.contains("date >= '2026-01-01'"));
    }

    #[test]
    fn sql_passes_through() {
        assert_eq!(to_sql("node='a'", true).expect("sql"), "(node='a')");
        assert_eq!(
            to_sql("x BETWEEN 1 AND 2", false).expect("sql"),
            "(x BETWEEN 1 AND 2)"
        );
    }

    #[test]
    fn bad_ranges_are_errors() {
        assert!(to_sql("2026-01-01T00:00:00Z..nope", true).is_err());
        assert!(to_sql("2026-01-02T00:00:00Z..2026-01-01T00:00:00Z", true).is_err());
    }

    #[test]
    fn arrival_rule_is_added_unless_all_runs() {
        assert_eq!(
            where_sql(None, true, false).expect("sql"),
            format!("({ARRIVAL_SQL})")
        );
        assert_eq!(where_sql(Some("  "), true, true).expect("sql"), "TRUE");
        assert_eq!(
            where_sql(Some("tenants >= 1"), false, false).expect("sql"),
            format!("({ARRIVAL_SQL}) AND (tenants >= 1)")
        );
        assert_eq!(
            where_sql(Some("kernel='fft'"), false, true).expect("sql"),
            "(kernel='fft')"
        );
        assert!(where_sql(Some("2026-01-02T00:00:00Z..nope"), true, false).is_err());
    }

    #[test]
    fn group_columns_are_plain_names() {
        assert_eq!(
            columns("node, kernel").expect("cols"),
            vec!["node", "kernel"]
        );
        assert!(columns("node;drop").is_err());
    }
}
