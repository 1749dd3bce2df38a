//! `slicetrace compare`: the before/after degradation table, per kernel and
//! shape, once for the event clock (`gpu_ms`) and once for the host clock
//! (`wall_ms`). On a time-sliced GPU the event clock barely moves while the
//! host clock degrades; printing both side by side shows what events hide.
//!
//! With `--split-by-occupancy` the sides are tenant counts (see
//! [`crate::pred::TENANTS_SQL`]): 0 tenants is the baseline, compared with
//! all runs with ≥1 tenant and then with each tenant count on its own.
//!
//! Both sides are arrival runs unless `--all-runs` (the caller builds the
//! predicates with [`crate::pred::where_sql`]).
//!
//! The only rate printed is the kernel's execution rate on the event clock,
//! Σ flops / Σ `gpu_ms`. The same ratio on the host clock is the probe's own
//! work per second of waiting: beside tenants it falls by 95 % and more,
//! which reads as if the tenants lost that much, when it only says the probe
//! waited for its slice. Host-clock rows therefore carry no rate.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;

use crate::output::{Cell, Format, Table};
use crate::pred::TENANTS_SQL;
use crate::scan::{self, ScanError};
use crate::stats::{quantile_sorted, ratio, sort_values};

/// Values of one side for one kernel and shape.
#[derive(Debug, Clone, Default)]
struct Side {
    wall: Vec<f64>,
    gpu: Vec<f64>,
    flops_wall: f64,
    sum_wall: f64,
    flops_gpu: f64,
    sum_gpu: f64,
}

impl Side {
    fn push(&mut self, wall: f64, gpu: f64, flops: f64) {
        if !wall.is_nan() {
            self.wall.push(wall);
            self.sum_wall += wall;
            self.flops_wall += flops;
        }
        if !gpu.is_nan() {
            self.gpu.push(gpu);
            self.sum_gpu += gpu;
            self.flops_gpu += flops;
        }
    }

    fn merge(&mut self, o: &Side) {
        self.wall.extend_from_slice(&o.wall);
        self.gpu.extend_from_slice(&o.gpu);
        self.flops_wall += o.flops_wall;
        self.sum_wall += o.sum_wall;
        self.flops_gpu += o.flops_gpu;
        self.sum_gpu += o.sum_gpu;
    }
}

/// Summary of one clock on one side.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ClockStats {
    /// Runs.
    pub n: usize,
    /// p50, ms.
    pub p50: Option<f64>,
    /// p99, ms.
    pub p99: Option<f64>,
    /// p99 / p50.
    pub jitter: Option<f64>,
    /// Σ flops / Σ gpu_ms, TFLOP/s: the kernel's execution rate (event
    /// clock only; null on the host clock, see the module docs).
    pub tflops: Option<f64>,
}

fn clock_stats(v: &mut Vec<f64>, flops: f64, sum_ms: f64) -> ClockStats {
    let s = sort_values(v);
    let (p50, p99) = (quantile_sorted(s, 0.5), quantile_sorted(s, 0.99));
    ClockStats {
        n: s.len(),
        p50,
        p99,
        jitter: ratio(p99, p50),
        tflops: (sum_ms > 0.0).then(|| flops / sum_ms / 1e9),
    }
}

/// One line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompareRow {
    /// Kernel.
    pub kernel: String,
    /// Shape.
    pub shape: String,
    /// `gpu (event)` or `wall (host)`.
    pub clock: String,
    /// Baseline side.
    pub before: ClockStats,
    /// Compared side.
    pub after: ClockStats,
    /// after.p50 / before.p50.
    pub p50_factor: Option<f64>,
    /// after.p99 / before.p99.
    pub p99_factor: Option<f64>,
    /// (after.tflops / before.tflops − 1) · 100: the change of the kernel's
    /// execution rate (event clock only; null on the host clock).
    pub throughput_change_pct: Option<f64>,
}

/// One comparison (baseline against one other side).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompareBlock {
    /// Label of the baseline side.
    pub baseline: String,
    /// Label of the compared side.
    pub against: String,
    /// Lines, per kernel and shape, event clock first.
    pub rows: Vec<CompareRow>,
}

type Key = (String, String);

async fn collect(
    ctx: &SessionContext,
    filter: &str,
    with_tenants: bool,
) -> Result<BTreeMap<(Option<u32>, Key), Side>, ScanError> {
    let sql = format!(
        "SELECT kernel, shape, wall_ms, gpu_ms, flops, {TENANTS_SQL} AS tenants FROM probes WHERE {filter}"
    );
    let mut out: BTreeMap<(Option<u32>, Key), Side> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let (k, s) = (scan::strings(b, "kernel")?, scan::strings(b, "shape")?);
        let (w, g, f) = (
            scan::floats(b, "wall_ms")?,
            scan::floats(b, "gpu_ms")?,
            scan::floats(b, "flops")?,
        );
        let t = scan::u32s(b, "tenants")?;
        for i in 0..b.num_rows() {
            let tenants = if with_tenants { t[i] } else { Some(0) };
            if with_tenants && tenants.is_none() {
                continue;
            }
            let key = (tenants, (k[i].clone(), s[i].clone()));
            let flops = if f[i].is_nan() { 0.0 } else { f[i] };
            out.entry(key).or_default().push(w[i], g[i], flops);
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

fn block(
    before: &BTreeMap<Key, Side>,
    after: &BTreeMap<Key, Side>,
    baseline: &str,
    against: &str,
) -> CompareBlock {
    let mut rows = Vec::new();
    let keys: std::collections::BTreeSet<&Key> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let mut b = before.get(key).cloned().unwrap_or_default();
        let mut a = after.get(key).cloned().unwrap_or_default();
        for (clock, bs, as_) in [
            (
                "gpu (event)",
                clock_stats(&mut b.gpu, b.flops_gpu, b.sum_gpu),
                clock_stats(&mut a.gpu, a.flops_gpu, a.sum_gpu),
            ),
            (
                "wall (host)",
                ClockStats {
                    tflops: None,
                    ..clock_stats(&mut b.wall, b.flops_wall, b.sum_wall)
                },
                ClockStats {
                    tflops: None,
                    ..clock_stats(&mut a.wall, a.flops_wall, a.sum_wall)
                },
            ),
        ] {
            rows.push(CompareRow {
                kernel: key.0.clone(),
                shape: key.1.clone(),
                clock: clock.into(),
                p50_factor: ratio(as_.p50, bs.p50),
                p99_factor: ratio(as_.p99, bs.p99),
                throughput_change_pct: ratio(as_.tflops, bs.tflops).map(|r| (r - 1.0) * 100.0),
                before: bs,
                after: as_,
            });
        }
    }
    CompareBlock {
        baseline: baseline.into(),
        against: against.into(),
        rows,
    }
}

fn strip(m: BTreeMap<(Option<u32>, Key), Side>) -> BTreeMap<Key, Side> {
    let mut out: BTreeMap<Key, Side> = BTreeMap::new();
    for ((_, k), s) in m {
        out.entry(k).or_default().merge(&s);
    }
    out
}

/// Compares the rows matching `baseline_sql` with those matching `against_sql`.
pub async fn compare(
    ctx: &SessionContext,
    baseline_sql: &str,
    against_sql: &str,
    baseline: &str,
    against: &str,
) -> Result<CompareBlock, ScanError> {
    let b = strip(collect(ctx, baseline_sql, false).await?);
    let a = strip(collect(ctx, against_sql, false).await?);
    if b.is_empty() {
        return Err(ScanError::Consumer(format!(
            "no rows match the baseline ({baseline_sql})"
        )));
    }
    if a.is_empty() {
        return Err(ScanError::Consumer(format!(
            "no rows match --against ({against_sql})"
        )));
    }
    Ok(block(&b, &a, baseline, against))
}

/// 0 tenants against ≥1, then against each tenant count.
pub async fn split_by_occupancy(
    ctx: &SessionContext,
    filter: &str,
) -> Result<Vec<CompareBlock>, ScanError> {
    let all = collect(ctx, filter, true).await?;
    let mut by_level: BTreeMap<u32, BTreeMap<Key, Side>> = BTreeMap::new();
    for ((t, k), s) in all {
        if let Some(t) = t {
            by_level.entry(t).or_default().insert(k, s);
        }
    }
    let Some(base) = by_level.remove(&0) else {
        return Err(ScanError::Consumer(
            "no runs with 0 tenants (tenants = gpu_processes, other compute processes on the GPU) to use as the baseline".into(),
        ));
    };
    if by_level.is_empty() {
        return Err(ScanError::Consumer(
            "no runs with 1 or more tenants to compare with the 0-tenant baseline".into(),
        ));
    }
    let mut any: BTreeMap<Key, Side> = BTreeMap::new();
    for m in by_level.values() {
        for (k, s) in m {
            any.entry(k.clone()).or_default().merge(s);
        }
    }
    let mut blocks = vec![block(&base, &any, "0 tenants", ">=1 tenants")];
    if by_level.len() > 1 {
        for (t, m) in &by_level {
            blocks.push(block(&base, m, "0 tenants", &format!("{t} tenants")));
        }
    }
    Ok(blocks)
}

const HEADERS: [&str; 14] = [
    "kernel",
    "shape",
    "clock",
    "runs before",
    "runs after",
    "p50 before ms",
    "p50 after ms",
    "p50 ×",
    "p99 before ms",
    "p99 after ms",
    "p99 ×",
    "jitter before",
    "jitter after",
    "kernel TFLOP/s Δ %",
];

fn cells(r: &CompareRow) -> Vec<Cell> {
    vec![
        Cell::Str(r.kernel.clone()),
        Cell::Str(r.shape.clone()),
        Cell::Str(r.clock.clone()),
        Cell::Int(r.before.n as u64),
        Cell::Int(r.after.n as u64),
        Cell::Num(r.before.p50),
        Cell::Num(r.after.p50),
        Cell::Num(r.p50_factor),
        Cell::Num(r.before.p99),
        Cell::Num(r.after.p99),
        Cell::Num(r.p99_factor),
        Cell::Num(r.before.jitter),
        Cell::Num(r.after.jitter),
        if r.before.tflops.is_none() && r.after.tflops.is_none() {
            Cell::Str(String::new())
        } else {
            Cell::Num(r.throughput_change_pct)
        },
    ]
}

/// Renders the blocks: one table per block, one JSON array, or one CSV
/// with the block's sides as the first two columns.
pub fn render(blocks: &[CompareBlock], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(blocks).unwrap_or_else(|_| "[]".into()),
        Format::Csv => {
            let mut t = Table::new(["baseline", "against"].into_iter().chain(HEADERS));
            for b in blocks {
                for r in &b.rows {
                    let mut row = vec![Cell::Str(b.baseline.clone()), Cell::Str(b.against.clone())];
                    row.extend(cells(r));
                    t.rows.push(row);
                }
            }
            t.render(Format::Csv)
        }
        Format::Table => {
            let mut out = String::new();
            for b in blocks {
                out.push_str(&format!(
                    "{} (before) vs {} (after)\n",
                    b.baseline, b.against
                ));
                let mut t = Table::new(HEADERS);
                t.rows.extend(b.rows.iter().map(cells));
                out.push_str(&t.render(Format::Table));
                out.push_str("\n\n");
            }
            out.trim_end().to_string()
        }
    }
}
