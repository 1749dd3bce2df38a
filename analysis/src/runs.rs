//! Which runs a command counts, and the line that says so.
//!
//! Only arrival runs (see [`crate::pred::ARRIVAL_SQL`]) sample what a caller
//! arriving at random sees: a run issued right after the probe's own
//! previous run finds the driver has just rotated away from it and waits
//! about a full slice round, so burst runs measure the probe's own rhythm.
//! `report`, `compare`, `fleet` and `plot` therefore count arrival runs
//! unless `--all-runs` is given; the rule itself is applied in
//! [`crate::pred::where_sql`]. Before the command runs, [`count`] asks how
//! many rows the user's predicate keeps and how many of them are arrivals,
//! so that the command can refuse an empty selection with the right reason
//! and print which runs it counted ([`RunCounts::describe`]).

use datafusion::prelude::SessionContext;

use crate::pred::ARRIVAL_SQL;
use crate::scan::{self, ScanError};

/// Rows selected by the user's predicate, and how many of them count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunCounts {
    /// Rows matching the user's predicate (all runs).
    pub rows: u64,
    /// Of those, arrival runs.
    pub arrivals: u64,
    /// Whether every run is counted (`--all-runs`).
    pub all_runs: bool,
    /// Of the counted rows, those with a known tenant count.
    pub with_tenants: u64,
}

/// Why a command has nothing to count.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// The user's predicate keeps no row.
    #[error("no rows in {location} match --where {filter}")]
    NoMatch {
        /// The data.
        location: String,
        /// The user's predicate as given.
        filter: String,
    },
    /// Rows exist but none is an arrival run.
    #[error(
        "none of the {rows} runs{selected} in {location} is an arrival run (column arrival, or for \
         old files the first FFT run of a burst); pass --all-runs to count burst runs too"
    )]
    NoArrivals {
        /// The data.
        location: String,
        /// Rows selected.
        rows: u64,
        /// " selected by --where" or "".
        selected: &'static str,
    },
    /// The table holds no row at all.
    #[error("no probe rows under {0}")]
    NoRows(String),
}

impl RunCounts {
    /// Rows the command counts.
    pub fn counted(&self) -> u64 {
        if self.all_runs {
            self.rows
        } else {
            self.arrivals
        }
    }

    /// The line every command prints, e.g.
    /// `runs: arrivals only (1200 of 9000 rows); --all-runs to include burst runs`.
    pub fn describe(&self) -> String {
        if self.all_runs {
            format!(
                "runs: all, burst runs included ({} rows, {} of them arrivals)",
                self.rows, self.arrivals
            )
        } else {
            format!(
                "runs: arrivals only ({} of {} rows); --all-runs to include burst runs",
                self.arrivals, self.rows
            )
        }
    }

    /// A short form for chart titles, e.g. `arrival runs, 1200 of 9000`.
    pub fn short(&self) -> String {
        if self.all_runs {
            format!("all {} runs, bursts included", self.rows)
        } else {
            format!("arrival runs, {} of {}", self.arrivals, self.rows)
        }
    }

    /// An error when nothing is left to count.
    pub fn check(&self, location: &str, filter: Option<&str>) -> Result<(), RunsError> {
        let filter = filter.filter(|f| !f.trim().is_empty());
        if self.rows == 0 {
            return Err(match filter {
                Some(f) => RunsError::NoMatch {
                    location: location.to_string(),
                    filter: f.to_string(),
                },
                None => RunsError::NoRows(location.to_string()),
            });
        }
        if self.counted() == 0 {
            return Err(RunsError::NoArrivals {
                location: location.to_string(),
                rows: self.rows,
                selected: if filter.is_some() {
                    " selected by --where"
                } else {
                    ""
                },
            });
        }
        Ok(())
    }
}

/// Counts the rows of `probes` matching `user_sql` (the user's predicate as
/// SQL, `TRUE` for none) and the arrival runs among them.
pub async fn count(
    ctx: &SessionContext,
    user_sql: &str,
    all_runs: bool,
) -> Result<RunCounts, ScanError> {
    let tenants = if all_runs {
        "count(tenants)".to_string()
    } else {
        format!("count(CASE WHEN {ARRIVAL_SQL} THEN tenants END)")
    };
    let sql = format!(
        "SELECT count(*) AS n, sum(CASE WHEN {ARRIVAL_SQL} THEN 1 ELSE 0 END) AS a, \
         {tenants} AS t FROM probes WHERE {user_sql}"
    );
    let mut out = RunCounts {
        all_runs,
        ..Default::default()
    };
    scan::for_each_batch(ctx, &sql, None, |b| {
        let (n, a, t) = (
            scan::ints(b, "n")?,
            scan::ints(b, "a")?,
            scan::ints(b, "t")?,
        );
        let u = |v: Option<i64>| v.map_or(0, |v| v.max(0) as u64);
        out.rows += u(n[0]);
        out.arrivals += u(a[0]);
        out.with_tenants += u(t[0]);
        Ok(())
    })
    .await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_which_runs_count() {
        let c = RunCounts {
            rows: 9000,
            arrivals: 1200,
            all_runs: false,
            with_tenants: 1200,
        };
        assert_eq!(
            c.describe(),
            "runs: arrivals only (1200 of 9000 rows); --all-runs to include burst runs"
        );
        assert_eq!(c.counted(), 1200);
        let all = RunCounts {
            all_runs: true,
            ..c
        };
        assert_eq!(all.counted(), 9000);
        assert!(all
            .describe()
            .contains("all, burst runs included (9000 rows"));
    }

    #[test]
    fn empty_selections_name_their_reason() {
        let none = RunCounts::default();
        assert_eq!(
            none.check("/d", None).expect_err("empty").to_string(),
            "no probe rows under /d"
        );
        assert!(none
            .check("/d", Some("node='x'"))
            .expect_err("empty")
            .to_string()
            .contains("match --where node='x'"));
        let bursts = RunCounts {
            rows: 10,
            ..Default::default()
        };
        let e = bursts
            .check("/d", None)
            .expect_err("no arrivals")
            .to_string();
        assert!(
            e.contains("none of the 10 runs in /d") && e.contains("--all-runs"),
            "{e}"
        );
        assert!(RunCounts {
            all_runs: true,
            ..bursts
        }
        .check("/d", None)
        .is_ok());
    }
}
