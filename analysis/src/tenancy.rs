//! The rows `blame` and `whatif` model: one per arrival run, with who else
//! was on the GPU around it.
//!
//! Both commands read arrival runs only (a run issued after the probe's own
//! previous run waits about a full rotation and says nothing about what a
//! random caller waits), from the `probes` table that [`crate::source`]
//! registered, optionally cut to `--since/--until` (the files outside are
//! not even opened, see [`crate::source::open_range`]). For each run they
//! need its wait (`queue_ms`), its execution time (`gpu_ms`), its `wall_ms`,
//! and the tenants:
//! * `busy_tenants` / `busy_count`: the tenant processes NVML's per-process
//!   utilisation samples showed running work (SM share > 0) around the run,
//!   as `<tenant>=<sm_pct>` (`namespace/pod`, else `pid:<pid>`);
//! * `gpu_processes`: tenant processes holding a context, busy or not;
//! * `pods` / `processes`: who holds a context, by name, so that a tenant
//!   that is resident but never busy still gets a (zero) line in `blame`.
//!
//! `busy_tenants` and `busy_count` arrived with schema version 4; a table
//! without them (older files, or a build whose schema lacks them) reads them
//! as null, which both commands handle (see their docs).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use rand::Rng;

use crate::pred::ARRIVAL_SQL;
use crate::scan::{self, ScanError};
use crate::stats::{quantile_sorted, quantiles_select};

/// Errors of `blame` and `whatif`: every one is bad input (exit 2) except
/// a failed scan.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// Reading the rows failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// `--since`/`--until` do not parse or are empty.
    #[error("bad --since/--until: {0}")]
    BadRange(String),
    /// No arrival run was selected.
    #[error("no arrival rows in {0} (blame and whatif count arrival runs only: column arrival)")]
    NoArrivals(String),
    /// The rows say nothing about the tenants.
    #[error("no tenant data in {location}: {what}")]
    NoTenantData {
        /// The data.
        location: String,
        /// What is missing.
        what: String,
    },
    /// `--gpu` names a GPU without arrival rows.
    #[error("unknown GPU {gpu:?}: the arrival rows have {known}")]
    UnknownGpu {
        /// The GPU asked for.
        gpu: String,
        /// The GPUs present.
        known: String,
    },
    /// Any other bad argument, in one line.
    #[error("{0}")]
    Bad(String),
}

/// A tenant process seen busy around a run: an entry of `busy_tenants`.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    /// `namespace/pod`, else `pid:<pid>`.
    pub tenant: String,
    /// The largest SM share NVML gave the process in the window, 0–100.
    pub sm_pct: Option<u32>,
}

impl Busy {
    /// Parses `"<tenant>=<sm_pct>"`; an entry without a readable share keeps
    /// its whole text as the tenant.
    pub fn parse(s: &str) -> Busy {
        match s.rsplit_once('=') {
            Some((t, p)) if !t.is_empty() => match p.trim().parse::<u32>() {
                Ok(v) => Busy {
                    tenant: t.to_string(),
                    sm_pct: Some(v),
                },
                Err(_) => Busy {
                    tenant: s.to_string(),
                    sm_pct: None,
                },
            },
            _ => Busy {
                tenant: s.to_string(),
                sm_pct: None,
            },
        }
    }
}

/// One arrival run.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// `gpu_uuid`.
    pub gpu: String,
    /// `node`.
    pub node: String,
    /// `kernel`.
    pub kernel: String,
    /// `queue_ms`; NaN when null.
    pub wait_ms: f64,
    /// `gpu_ms`; NaN when null.
    pub gpu_ms: f64,
    /// `wall_ms`.
    pub wall_ms: f64,
    /// `busy_tenants`, parsed; `None` when unknown.
    pub busy: Option<Vec<Busy>>,
    /// `busy_count`.
    pub busy_count: Option<u32>,
    /// `gpu_processes`.
    pub gpu_processes: Option<u32>,
    /// Tenants holding a context: the `pods` column when it is known, else
    /// `pid:<pid>` of each entry of `processes`.
    pub residents: Vec<String>,
}

impl Arrival {
    /// Busy tenant contexts: `busy_count`, else the length of `busy_tenants`.
    pub fn busy_contexts(&self) -> Option<u32> {
        self.busy_count
            .or_else(|| self.busy.as_ref().map(|b| b.len() as u32))
    }
}

/// `--since`/`--until` (RFC 3339) as a half-open range in ns; `None` when
/// neither is given.
pub fn time_range(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Option<(i64, i64)>, TenancyError> {
    if since.is_none() && until.is_none() {
        return Ok(None);
    }
    let parse = |flag: &str, s: &str| -> Result<i64, TenancyError> {
        DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .and_then(|d| d.with_timezone(&Utc).timestamp_nanos_opt())
            .ok_or_else(|| {
                TenancyError::BadRange(format!(
                    "{flag} {s:?} is not an RFC 3339 instant such as 2026-01-01T00:00:00Z"
                ))
            })
    };
    let start = since.map(|s| parse("--since", s)).transpose()?;
    let end = until.map(|s| parse("--until", s)).transpose()?;
    let (start, end) = (start.unwrap_or(0), end.unwrap_or(i64::MAX));
    if end <= start {
        return Err(TenancyError::BadRange(
            "--until must be after --since".into(),
        ));
    }
    Ok(Some((start, end)))
}

/// The `WHERE` clause: arrival runs, in the range if any.
pub fn where_sql(range: Option<(i64, i64)>) -> String {
    match range {
        None => format!("({ARRIVAL_SQL})"),
        Some((a, z)) => {
            let t = |ns: i64| {
                DateTime::<Utc>::from_timestamp_nanos(ns)
                    .format("%Y-%m-%dT%H:%M:%S%.9fZ")
                    .to_string()
            };
            format!(
                "({ARRIVAL_SQL}) AND ts >= TIMESTAMP '{}' AND ts < TIMESTAMP '{}'",
                t(a),
                t(z)
            )
        }
    }
}

fn str_lists(b: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<String>>>, ScanError> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| ScanError::Column(name.to_string()))?;
    let want = DataType::List(std::sync::Arc::new(Field::new(
        "item",
        DataType::Utf8,
        true,
    )));
    let c = cast(c, &want).map_err(|_| ScanError::Column(name.to_string()))?;
    let l = c.as_list::<i32>();
    Ok((0..l.len())
        .map(|i| {
            l.is_valid(i).then(|| {
                let v = l.value(i);
                let s = v.as_string::<i32>();
                (0..s.len())
                    .filter(|&j| s.is_valid(j))
                    .map(|j| s.value(j).to_string())
                    .collect()
            })
        })
        .collect())
}

fn texts(b: &RecordBatch, name: &str) -> Result<Vec<String>, ScanError> {
    let k = scan::KeyColumn::new(b, name)?;
    Ok((0..b.num_rows())
        .map(|i| k.text(i).unwrap_or("").to_string())
        .collect())
}

/// Reads the arrival rows matching `filter` (see [`where_sql`]). `columns`
/// are the table's columns: `busy_tenants` and `busy_count` are read only
/// when the table has them (otherwise they are unknown on every row).
pub async fn load(
    ctx: &SessionContext,
    columns: &[String],
    filter: &str,
) -> Result<Vec<Arrival>, ScanError> {
    let has = |c: &str| columns.iter().any(|x| x == c);
    let mut cols = vec![
        "gpu_uuid",
        "node",
        "kernel",
        "queue_ms",
        "gpu_ms",
        "wall_ms",
        "gpu_processes",
        "processes",
        "pods",
    ];
    let (with_busy, with_count) = (has("busy_tenants"), has("busy_count"));
    if with_busy {
        cols.push("busy_tenants");
    }
    if with_count {
        cols.push("busy_count");
    }
    let sql = format!(
        "SELECT {} FROM probes WHERE {filter}",
        cols.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = Vec::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let gpu = texts(b, "gpu_uuid")?;
        let node = texts(b, "node")?;
        let kernel = texts(b, "kernel")?;
        let wait = scan::floats(b, "queue_ms")?;
        let gpu_ms = scan::floats(b, "gpu_ms")?;
        let wall = scan::floats(b, "wall_ms")?;
        let procs = scan::u32s(b, "gpu_processes")?;
        let processes = str_lists(b, "processes")?;
        let pods = str_lists(b, "pods")?;
        let busy = if with_busy {
            str_lists(b, "busy_tenants")?
        } else {
            vec![None; b.num_rows()]
        };
        let count = if with_count {
            scan::u32s(b, "busy_count")?
        } else {
            vec![None; b.num_rows()]
        };
        for i in 0..b.num_rows() {
            let residents = match (&pods[i], &processes[i]) {
                (Some(p), _) => p.clone(),
                (None, Some(ps)) => ps
                    .iter()
                    .filter_map(|e| e.split(':').next())
                    .filter(|p| !p.is_empty())
                    .map(|p| format!("pid:{p}"))
                    .collect(),
                (None, None) => Vec::new(),
            };
            out.push(Arrival {
                gpu: gpu[i].clone(),
                node: node[i].clone(),
                kernel: kernel[i].clone(),
                wait_ms: wait[i],
                gpu_ms: gpu_ms[i],
                wall_ms: wall[i],
                busy: busy[i]
                    .as_ref()
                    .map(|v| v.iter().map(|s| Busy::parse(s)).collect()),
                busy_count: count[i],
                gpu_processes: procs[i],
                residents,
            });
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// The GPUs present, in order, after `--gpu`: an unknown GPU is an error.
pub fn gpus(rows: &[Arrival], want: Option<&str>) -> Result<Vec<String>, TenancyError> {
    let mut all: Vec<String> = rows.iter().map(|r| r.gpu.clone()).collect();
    all.sort();
    all.dedup();
    match want {
        None => Ok(all),
        Some(g) if all.iter().any(|x| x == g) => Ok(vec![g.to_string()]),
        Some(g) => Err(TenancyError::UnknownGpu {
            gpu: g.to_string(),
            known: all.join(", "),
        }),
    }
}

/// `quantile_cont` of `v` (NaNs dropped), by selection.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    quantiles_select(&mut s, &[q])[0]
}

/// The 2.5 % and 97.5 % points of bootstrap replicates (`None` without any).
pub fn interval95(reps: &mut Vec<f64>) -> (Option<f64>, Option<f64>) {
    reps.retain(|x| !x.is_nan());
    reps.sort_unstable_by(f64::total_cmp);
    (quantile_sorted(reps, 0.025), quantile_sorted(reps, 0.975))
}

/// A resample of `n` indices with replacement.
pub fn resample(rng: &mut impl Rng, n: usize) -> Vec<usize> {
    (0..n).map(|_| rng.random_range(0..n)).collect()
}

/// Bootstrap replicates and the seed every command uses, so that the same
/// data give the same intervals.
pub const BOOTSTRAP_REPS: usize = 200;
/// The RNG seed of bootstraps and Monte Carlo draws.
pub const SEED: u64 = 0x5eed_b1a3e;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_entries_parse_tenant_and_share() {
        assert_eq!(
            Busy::parse("ns/pod-a=87"),
            Busy {
                tenant: "ns/pod-a".into(),
                sm_pct: Some(87)
            }
        );
        assert_eq!(Busy::parse("pid:42=0").sm_pct, Some(0));
        assert_eq!(Busy::parse("pid:42").tenant, "pid:42");
        assert_eq!(Busy::parse("pid:42=x").tenant, "pid:42=x");
    }

    #[test]
    fn range_needs_order_and_rfc3339() {
        assert!(time_range(None, None).expect("none").is_none());
        assert!(time_range(Some("yesterday"), None).is_err());
        assert!(time_range(Some("2026-01-02T00:00:00Z"), Some("2026-01-01T00:00:00Z")).is_err());
        let (a, z) = time_range(Some("2026-01-01T00:00:00Z"), None)
            .expect("ok")
            .expect("some");
        assert!(a > 0 && z == i64::MAX);
        assert!(where_sql(Some((a, z))).contains("ts >= TIMESTAMP '2026-01-01T00:00:00"));
    }
}
