//! `slicetrace report` from rollups: per group, the arrival count and the
//! quantiles of the three clocks from merged sketches (within ±1 % of the
//! exact rank quantile), and the incorrect runs.
//!
//! Groups may be any of the rollups' keys ([`GROUP_COLUMNS`]); a time
//! range (`--where START..END`) selects whole buckets that start inside it.

use std::collections::BTreeMap;

use slicetrace_schema::{RollupRecord, Sketch, SketchSet};

use super::read::{self, ReadStats};
use super::RollupError;
use crate::output::{Cell, Table};
use crate::source::TimeRange;

/// Columns a rollup report can group by.
pub const GROUP_COLUMNS: [&str; 7] = [
    "node",
    "gpu_uuid",
    "gpu_name",
    "kernel",
    "shape",
    "tenants",
    "busy_count",
];

/// The default grouping, as the raw report's.
pub const DEFAULT_BY: [&str; 4] = ["node", "gpu_uuid", "kernel", "tenants"];

#[derive(Default)]
struct Acc {
    arrivals: u64,
    runs: u64,
    incorrect: u64,
    first: Option<i64>,
    last: Option<i64>,
    wall: Sketch,
    gpu: Sketch,
    queue: Sketch,
}

impl Acc {
    fn add(&mut self, r: &RollupRecord) {
        self.arrivals += r.arrivals;
        self.runs += r.runs;
        self.incorrect += r.incorrect_arrivals;
        self.first = Some(self.first.map_or(r.first_ts_ns, |f| f.min(r.first_ts_ns)));
        self.last = Some(self.last.map_or(r.last_ts_ns, |f| f.max(r.last_ts_ns)));
        self.wall.merge(&r.wall_ms);
        self.gpu.merge(&r.gpu_ms);
        self.queue.merge(&r.queue_ms);
    }
    fn merge(&mut self, o: Acc) {
        self.arrivals += o.arrivals;
        self.runs += o.runs;
        self.incorrect += o.incorrect;
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, o.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.wall.merge(&o.wall);
        self.gpu.merge(&o.gpu);
        self.queue.merge(&o.queue);
    }
}

fn value(r: &RollupRecord, col: &str) -> String {
    match col {
        "node" => r.key.node.clone(),
        "gpu_uuid" => r.key.gpu_uuid.clone(),
        "gpu_name" => r.gpu_name.clone().unwrap_or_default(),
        "kernel" => r.key.kernel.clone(),
        "shape" => r.key.shape.clone(),
        "busy_count" => r.key.busy_count.map(|t| t.to_string()).unwrap_or_default(),
        _ => r.key.tenants.map(|t| t.to_string()).unwrap_or_default(),
    }
}

/// Checks `by` against [`GROUP_COLUMNS`].
pub fn check_by(by: &[String]) -> Result<(), RollupError> {
    for c in by {
        if !GROUP_COLUMNS.contains(&c.as_str()) {
            return Err(RollupError::Usage(format!(
                "--by {c}: rollups group only by {} (use --exact for raw rows)",
                GROUP_COLUMNS.join(", ")
            )));
        }
    }
    Ok(())
}

/// The report over the rollups under `root` in `range`, grouped by `by`.
pub fn report(
    root: &super::RollupRoot,
    by: &[String],
    range: Option<TimeRange>,
    parallel: usize,
) -> Result<(Table, ReadStats), RollupError> {
    check_by(by)?;
    let dirs = read::list_at(root, range)?;
    let want = SketchSet {
        wall: true,
        gpu: true,
        queue: true,
        mcycles: false,
        event: false,
    };
    let (groups, stats) = read::fold(
        &dirs,
        range,
        want,
        parallel,
        |m: &mut BTreeMap<Vec<String>, Acc>, r: RollupRecord| {
            let key: Vec<String> = by.iter().map(|c| value(&r, c)).collect();
            m.entry(key).or_default().add(&r);
        },
        |m, o| {
            for (k, v) in o {
                m.entry(k).or_default().merge(v);
            }
        },
    )?;
    let mut headers: Vec<String> = by.to_vec();
    for h in [
        "runs",
        "wall_p50_ms",
        "wall_p90_ms",
        "wall_p99_ms",
        "wall_p999_ms",
        "wall_max_ms",
        "gpu_p50_ms",
        "gpu_p99_ms",
        "queue_p50_ms",
        "queue_p99_ms",
        "incorrect",
    ] {
        headers.push(h.to_string());
    }
    let mut t = Table::new(headers);
    for (k, a) in groups {
        if a.arrivals == 0 {
            continue;
        }
        let mut row: Vec<Cell> = k.into_iter().map(Cell::Str).collect();
        row.push(Cell::Int(a.arrivals));
        for q in [0.5, 0.9, 0.99, 0.999] {
            row.push(Cell::Num(a.wall.quantile(q)));
        }
        row.push(Cell::Num(a.wall.max()));
        row.push(Cell::Num(a.gpu.quantile(0.5)));
        row.push(Cell::Num(a.gpu.quantile(0.99)));
        row.push(Cell::Num(a.queue.quantile(0.5)));
        row.push(Cell::Num(a.queue.quantile(0.99)));
        row.push(Cell::Int(a.incorrect));
        t.rows.push(row);
    }
    Ok((t, stats))
}
