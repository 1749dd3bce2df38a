//! `slicetrace report`: the tail-latency summary per group.
//!
//! The rows are the arrival runs unless `--all-runs` (the `WHERE` clause
//! comes from [`crate::pred::where_sql`]). The default groups,
//! [`default_by`], are `node,gpu_uuid,kernel,tenants`: a GPU's latency with
//! 0, 1 or 3 tenants are different distributions, and one percentile over
//! their mix matches none of them. Per group: run count, throughput in runs
//! per second (`count / (max(ts) − min(ts))`), p50/p95/p99/p99.9/max of
//! `wall_ms`, `gpu_ms` and `queue_ms`, jitter (`p99 / p50` of `wall_ms`) and
//! the tail queue share (see [`crate::stats::tail_queue_share`]).
//!
//! Exact mode streams the filtered columns out of DataFusion and computes
//! percentiles with [`crate::stats::quantile_sorted`] (DuckDB's
//! `quantile_cont`). `--approx` pushes everything into DataFusion's
//! `approx_percentile_cont` (t-digest), which needs no per-group memory.
//!
//! [`health`] summarises the agent's `health` table instead (`--table health`).

use arrow::array::Array;
use datafusion::prelude::SessionContext;

use crate::output::{Cell, Format, Table};
use crate::query;
use crate::scan::{self, KeyColumn, KeyVal, ScanError};
use crate::stats::{ratio, tail_queue_share_aligned, Dist};

/// Default `--by` of the probes report; `tenants` only when some counted
/// run knows its tenant count (a CPU backend without NVML never does).
pub fn default_by(with_tenants: bool) -> Vec<String> {
    let mut by: Vec<String> = ["node", "gpu_uuid", "kernel"].map(String::from).to_vec();
    if with_tenants {
        by.push("tenants".into());
    }
    by
}

/// Default `--by` of the health report.
pub const HEALTH_DEFAULT_BY: &str = "node,gpu_uuid,kernel";

/// One group's result.
#[derive(Debug, Clone, Default)]
pub struct ReportRow {
    /// Group key values, in `--by` order.
    pub keys: Vec<KeyVal>,
    /// Runs.
    pub count: u64,
    /// Runs per second over the group's time span; `None` for a zero span.
    pub runs_per_s: Option<f64>,
    /// `wall_ms` summary.
    pub wall: Dist,
    /// `gpu_ms` summary.
    pub gpu: Dist,
    /// `queue_ms` summary.
    pub queue: Dist,
    /// p99 / p50 of `wall_ms`.
    pub jitter: Option<f64>,
    /// Share of the p99 tail's wall time spent queueing.
    pub tail_queue_share: Option<f64>,
}

#[derive(Default)]
struct Acc {
    keys: Vec<KeyVal>,
    count: u64,
    ts_min: i64,
    ts_max: i64,
    wall: Vec<f64>,
    gpu: Vec<f64>,
    queue: Vec<f64>,
}

fn throughput(count: u64, ts_min: i64, ts_max: i64) -> Option<f64> {
    let span_s = (ts_max - ts_min) as f64 / 1e9;
    (span_s > 0.0).then(|| count as f64 / span_s)
}

fn select_sql(by: &[String], filter: &str) -> String {
    let mut cols: Vec<String> = by.iter().map(|c| format!("\"{c}\"")).collect();
    cols.extend(["ts", "wall_ms", "gpu_ms", "queue_ms"].map(String::from));
    format!("SELECT {} FROM probes WHERE {filter}", cols.join(", "))
}

/// One group's order statistics. `wall` and `queue` are still in row order
/// (aligned) when this starts: the tail queue share needs the pairs, and
/// reads them in place after the wall percentiles were selected on the one
/// copy this makes; `gpu` and `queue` are then selected in place.
fn finish(g: &mut Acc) -> ReportRow {
    let mut wall_sel = g.wall.clone();
    let wall = Dist::from_values(&mut wall_sel);
    drop(wall_sel);
    let share = tail_queue_share_aligned(&g.wall, &g.queue, wall.p99);
    ReportRow {
        count: g.count,
        runs_per_s: throughput(g.count, g.ts_min, g.ts_max),
        jitter: wall.jitter(),
        tail_queue_share: share,
        gpu: Dist::from_values(&mut g.gpu),
        queue: Dist::from_values(&mut g.queue),
        wall,
        keys: std::mem::take(&mut g.keys),
    }
}

/// Exact report in one pass: DataFusion reads, filters and projects; each
/// batch's rows get their group numbers from a [`scan::GroupIndex`] and
/// their values are appended to the group's vectors straight from the
/// Arrow buffers (no per-row key strings, no intermediate copies). The order
/// statistics are then selected per group ([`Dist::from_values`], O(n)),
/// groups spread over the cores. `SLICETRACE_LOG=debug` logs the time of
/// each stage.
pub async fn exact(
    ctx: &SessionContext,
    by: &[String],
    filter: &str,
    total_rows: Option<u64>,
) -> Result<Vec<ReportRow>, ScanError> {
    let started = std::time::Instant::now();
    let sql = select_sql(by, filter);
    let mut index = scan::GroupIndex::new(by.len());
    let mut groups: Vec<Acc> = Vec::new();
    let mut consume = std::time::Duration::ZERO;
    scan::for_each_batch(ctx, &sql, total_rows, |b| {
        let t = std::time::Instant::now();
        let gids = index.assign(b, by)?;
        while groups.len() < index.len() {
            groups.push(Acc {
                keys: index.keys(groups.len()).to_vec(),
                ts_min: i64::MAX,
                ts_max: i64::MIN,
                ..Default::default()
            });
        }
        let ts = scan::ns_array(b, "ts")?;
        let wall = scan::f64_array(b, "wall_ms")?;
        let gpu = scan::f64_array(b, "gpu_ms")?;
        let queue = scan::f64_array(b, "queue_ms")?;
        let val = |a: &arrow::array::Float64Array, i: usize| {
            if a.is_null(i) {
                f64::NAN
            } else {
                a.value(i)
            }
        };
        for (i, &gi) in gids.iter().enumerate() {
            let g = &mut groups[gi as usize];
            g.count += 1;
            if ts.is_valid(i) {
                let t = ts.value(i);
                g.ts_min = g.ts_min.min(t);
                g.ts_max = g.ts_max.max(t);
            }
            g.wall.push(val(&wall, i));
            g.gpu.push(val(&gpu, i));
            g.queue.push(val(&queue, i));
        }
        consume += t.elapsed();
        Ok(())
    })
    .await?;
    let scanned = started.elapsed();
    // Order statistics per group, spread over the cores (one group per task).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = groups.len().div_ceil(threads).max(1);
    let mut rows: Vec<ReportRow> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .chunks_mut(chunk)
            .map(|part| s.spawn(move || part.iter_mut().map(finish).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| ScanError::Consumer("a report worker thread panicked".into()))?,
            );
        }
        Ok::<_, ScanError>(out)
    })?;
    rows.sort_by(|a, b| a.keys.cmp(&b.keys));
    tracing::debug!(
        scan_ms = scanned.as_millis() as u64,
        consume_ms = consume.as_millis() as u64,
        select_ms = (started.elapsed() - scanned).as_millis() as u64,
        groups = rows.len(),
        "exact report stages (scan includes consume)"
    );
    Ok(rows)
}

/// Approximate report, entirely inside DataFusion.
pub async fn approx(
    ctx: &SessionContext,
    by: &[String],
    filter: &str,
) -> Result<Vec<ReportRow>, ScanError> {
    let keys: Vec<String> = by.iter().map(|c| format!("\"{c}\"")).collect();
    let key_list = keys.join(", ");
    let mut aggs = vec![
        "count(*) AS n".to_string(),
        "min(ts) AS t0".into(),
        "max(ts) AS t1".into(),
    ];
    for c in ["wall", "gpu", "queue"] {
        aggs.push(format!("count({c}_ms) AS {c}_n"));
        for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99"), (0.999, "p999")] {
            aggs.push(format!(
                "approx_percentile_cont({q}) WITHIN GROUP (ORDER BY {c}_ms) AS {c}_{name}"
            ));
        }
        aggs.push(format!("max({c}_ms) AS {c}_max"));
    }
    let join_on = if keys.is_empty() {
        "TRUE".to_string()
    } else {
        keys.iter()
            .map(|k| format!("(f.{k} IS NOT DISTINCT FROM g.{k})"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let gkeys: Vec<String> = keys.iter().map(|k| format!("g.{k}")).collect();
    let group_by = |ks: &[String]| {
        if ks.is_empty() {
            String::new()
        } else {
            format!("GROUP BY {}", ks.join(", "))
        }
    };
    let sel_keys = if keys.is_empty() {
        String::new()
    } else {
        format!("{key_list}, ")
    };
    let sel_gkeys = if keys.is_empty() {
        String::new()
    } else {
        format!("{}, ", gkeys.join(", "))
    };
    let sql = format!(
        "WITH f AS (SELECT * FROM probes WHERE {filter}), \
         g AS (SELECT {sel_keys}{aggs} FROM f {gb}), \
         t AS (SELECT {sel_gkeys}sum(f.queue_ms) / sum(f.wall_ms) AS share FROM f JOIN g ON {join_on} \
               WHERE f.wall_ms >= g.wall_p99 AND f.queue_ms IS NOT NULL {gbg}) \
         SELECT g.*, t.share FROM g LEFT JOIN t ON {join_t}",
        aggs = aggs.join(", "),
        gb = group_by(&keys),
        gbg = group_by(&gkeys),
        join_t = if keys.is_empty() {
            "TRUE".to_string()
        } else {
            keys.iter()
                .map(|k| format!("(g.{k} IS NOT DISTINCT FROM t.{k})"))
                .collect::<Vec<_>>()
                .join(" AND ")
        },
    );
    let mut rows = Vec::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let key_cols: Vec<KeyColumn> = by
            .iter()
            .map(|c| KeyColumn::new(b, c))
            .collect::<Result<_, _>>()?;
        let n = scan::ints(b, "n")?;
        let (t0, t1) = (scan::ints(b, "t0")?, scan::ints(b, "t1")?);
        let share = scan::floats(b, "share")?;
        let dist = |c: &str| -> Result<Vec<Dist>, ScanError> {
            let cnt = scan::ints(b, &format!("{c}_n"))?;
            let f = |s: &str| scan::floats(b, &format!("{c}_{s}"));
            let (p50, p95, p99, p999, max) =
                (f("p50")?, f("p95")?, f("p99")?, f("p999")?, f("max")?);
            let o = |v: f64| (!v.is_nan()).then_some(v);
            Ok((0..b.num_rows())
                .map(|i| Dist {
                    n: cnt[i].unwrap_or(0) as usize,
                    p50: o(p50[i]),
                    p95: o(p95[i]),
                    p99: o(p99[i]),
                    p999: o(p999[i]),
                    max: o(max[i]),
                })
                .collect())
        };
        let (wall, gpu, queue) = (dist("wall")?, dist("gpu")?, dist("queue")?);
        for i in 0..b.num_rows() {
            let count = n[i].unwrap_or(0) as u64;
            rows.push(ReportRow {
                keys: key_cols.iter().map(|k| k.get(i)).collect(),
                count,
                runs_per_s: match (t0[i], t1[i]) {
                    (Some(a), Some(z)) => throughput(count, a, z),
                    _ => None,
                },
                jitter: ratio(wall[i].p99, wall[i].p50),
                tail_queue_share: (!share[i].is_nan()).then_some(share[i]),
                wall: wall[i],
                gpu: gpu[i],
                queue: queue[i],
            });
        }
        Ok(())
    })
    .await?;
    rows.sort_by(|a, b| a.keys.cmp(&b.keys));
    Ok(rows)
}

const STATS: [&str; 5] = ["p50", "p95", "p99", "p99_9", "max"];

fn dist_cells(d: &Dist) -> Vec<Cell> {
    [d.p50, d.p95, d.p99, d.p999, d.max].map(Cell::Num).to_vec()
}

/// Renders the report. Table format prints one line per group and clock;
/// JSON and CSV print one flat record per group (`wall_p50_ms`, ...).
pub fn render(rows: &[ReportRow], by: &[String], format: Format) -> String {
    if format == Format::Table {
        let mut h: Vec<String> = by.to_vec();
        h.extend(["clock", "runs", "runs/s"].map(String::from));
        h.extend(["p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"].map(String::from));
        h.extend(["jitter p99/p50", "tail queue share"].map(String::from));
        let mut t = Table::new(h);
        for r in rows {
            for (i, (clock, d)) in [("wall", &r.wall), ("gpu", &r.gpu), ("queue", &r.queue)]
                .into_iter()
                .enumerate()
            {
                let mut row: Vec<Cell> = r
                    .keys
                    .iter()
                    .map(|k| {
                        if i == 0 {
                            k.cell()
                        } else {
                            Cell::Str(String::new())
                        }
                    })
                    .collect();
                row.push(Cell::Str(clock.into()));
                row.push(Cell::Int(d.n as u64));
                row.push(if i == 0 {
                    Cell::Num(r.runs_per_s)
                } else {
                    Cell::Str(String::new())
                });
                row.extend(dist_cells(d));
                if i == 0 {
                    row.push(Cell::Num(r.jitter));
                    row.push(Cell::Num(r.tail_queue_share));
                } else {
                    row.push(Cell::Str(String::new()));
                    row.push(Cell::Str(String::new()));
                }
                t.rows.push(row);
            }
        }
        return t.render(format);
    }
    let mut h: Vec<String> = by.to_vec();
    h.extend(["count", "runs_per_s"].map(String::from));
    for c in ["wall", "gpu", "queue"] {
        h.extend(STATS.iter().map(|s| format!("{c}_{s}_ms")));
    }
    h.extend(["jitter", "tail_queue_share"].map(String::from));
    let mut t = Table::new(h);
    for r in rows {
        let mut row: Vec<Cell> = r.keys.iter().map(KeyVal::cell).collect();
        row.push(Cell::Int(r.count));
        row.push(Cell::Num(r.runs_per_s));
        for d in [&r.wall, &r.gpu, &r.queue] {
            row.extend(dist_cells(d));
        }
        row.push(Cell::Num(r.jitter));
        row.push(Cell::Num(r.tail_queue_share));
        t.rows.push(row);
    }
    t.render(format)
}

/// The health report: per group of the `health` table (default
/// [`HEALTH_DEFAULT_BY`]), how many evaluations gave each verdict, the
/// latest verdict and its reason, and the worst window p99 and inflation.
pub async fn health(ctx: &SessionContext, by: &[String], filter: &str) -> Result<Table, ScanError> {
    let keys: Vec<String> = by.iter().map(|c| format!("\"{c}\"")).collect();
    let k = keys.join(", ");
    let (sel, tail) = if keys.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{k}, "), format!("GROUP BY {k} ORDER BY {k}"))
    };
    let per = |v: &str| format!("sum(CASE WHEN verdict = '{v}' THEN 1 ELSE 0 END) AS {v}");
    let sql = format!(
        "SELECT {sel}count(*) AS evaluations, {}, {}, {}, \
         last_value(verdict ORDER BY ts) AS latest_verdict, max(ts) AS latest_ts, \
         max(wall_p99_ms) AS max_wall_p99_ms, max(inflation) AS max_inflation, \
         sum(correctness_failures) AS correctness_failures, \
         last_value(reason ORDER BY ts) AS latest_reason \
         FROM health WHERE {filter} {tail}",
        per("healthy"),
        per("degraded"),
        per("unhealthy"),
    );
    query::run(ctx, &sql).await
}
