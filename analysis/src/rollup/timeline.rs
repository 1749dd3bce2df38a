//! `slicetrace plot --kind timeline` from rollups: per series (`--by`,
//! default node, GPU and kernel), the p99 of `wall_ms` of each bucket
//! (minute or hour; the rows of one bucket merged across tenant counts),
//! and the bucket's largest tenant count, drawn by the plot module.

use std::collections::BTreeMap;

use slicetrace_schema::{RollupRecord, Sketch, SketchSet};

use super::read::{self, ReadStats};
use super::report::check_by;
use super::RollupError;
use crate::plot::TimelineSeries;
use crate::source::TimeRange;

fn value(r: &RollupRecord, col: &str) -> String {
    match col {
        "node" => r.key.node.clone(),
        "gpu_uuid" => r.key.gpu_uuid.chars().take(12).collect(),
        "gpu_name" => r.gpu_name.clone().unwrap_or_default(),
        "kernel" => r.key.kernel.clone(),
        "shape" => r.key.shape.clone(),
        "busy_count" => r.key.busy_count.map(|t| t.to_string()).unwrap_or_default(),
        _ => r.key.tenants.map(|t| t.to_string()).unwrap_or_default(),
    }
}

type Buckets = BTreeMap<i64, (Sketch, Option<u32>)>;

/// The series of the rollups under `root` in `range`, grouped by `by`
/// (the first six, as the raw timeline).
pub fn series(
    root: &super::RollupRoot,
    by: &[String],
    range: Option<TimeRange>,
    parallel: usize,
) -> Result<(Vec<TimelineSeries>, ReadStats), RollupError> {
    check_by(by)?;
    let dirs = read::list_at(root, range)?;
    let want = SketchSet {
        wall: true,
        gpu: false,
        queue: false,
        mcycles: false,
        event: false,
    };
    let (m, stats) = read::fold(
        &dirs,
        range,
        want,
        parallel,
        |m: &mut BTreeMap<Vec<String>, Buckets>, r: RollupRecord| {
            let k: Vec<String> = by.iter().map(|c| value(&r, c)).collect();
            let e = m.entry(k).or_default().entry(r.key.bucket_ns).or_default();
            e.0.merge(&r.wall_ms);
            if let Some(t) = r.key.tenants {
                e.1 = Some(e.1.map_or(t, |x| x.max(t)));
            }
        },
        |m, o| {
            for (k, v) in o {
                let mine = m.entry(k).or_default();
                for (b, (s, t)) in v {
                    let e = mine.entry(b).or_default();
                    e.0.merge(&s);
                    e.1 = match (e.1, t) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        },
    )?;
    let out = m
        .into_iter()
        .take(6)
        .map(|(k, buckets)| TimelineSeries {
            label: k.join(" "),
            p99: buckets
                .iter()
                .filter_map(|(b, (s, _))| Some((*b as f64 / 1e9, s.quantile(0.99)?)))
                .collect(),
            tenants: buckets
                .iter()
                .filter_map(|(b, (_, t))| Some((*b as f64 / 1e9, f64::from((*t)?))))
                .collect(),
        })
        .collect();
    Ok((out, stats))
}
