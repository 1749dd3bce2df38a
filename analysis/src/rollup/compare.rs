//! `slicetrace compare` from rollups: the same blocks as the raw compare
//! ([`crate::compare::CompareBlock`]), from merged sketches, with sides
//! that rollups can tell apart: tenant counts (`--split-by-occupancy`) or
//! time ranges (`--baseline START..END --against START..END`, whole
//! buckets that start inside them). Rollups keep no FLOP counts, so the
//! kernel TFLOP/s change is left empty.

use std::collections::BTreeMap;

use slicetrace_schema::{RollupRecord, Sketch, SketchSet};

use super::read::{self, ReadStats};
use super::RollupError;
use crate::compare::{ClockStats, CompareBlock, CompareRow};
use crate::source::TimeRange;
use crate::stats::ratio;

type Key = (String, String);

#[derive(Default, Clone)]
struct Side {
    wall: Sketch,
    gpu: Sketch,
}

impl Side {
    fn add(&mut self, r: &RollupRecord) {
        self.wall.merge(&r.wall_ms);
        self.gpu.merge(&r.gpu_ms);
    }
    fn merge(&mut self, o: &Side) {
        self.wall.merge(&o.wall);
        self.gpu.merge(&o.gpu);
    }
}

fn stats(s: &Sketch) -> ClockStats {
    let (p50, p99) = (s.quantile(0.5), s.quantile(0.99));
    ClockStats {
        n: s.count() as usize,
        p50,
        p99,
        jitter: ratio(p99, p50),
        tflops: None,
    }
}

fn block(b: &BTreeMap<Key, Side>, a: &BTreeMap<Key, Side>, bl: &str, al: &str) -> CompareBlock {
    let keys: std::collections::BTreeSet<&Key> = b.keys().chain(a.keys()).collect();
    let mut rows = Vec::new();
    for k in keys {
        let (bs, as_) = (
            b.get(k).cloned().unwrap_or_default(),
            a.get(k).cloned().unwrap_or_default(),
        );
        for (clock, x, y) in [
            ("gpu (event)", stats(&bs.gpu), stats(&as_.gpu)),
            ("wall (host)", stats(&bs.wall), stats(&as_.wall)),
        ] {
            rows.push(CompareRow {
                kernel: k.0.clone(),
                shape: k.1.clone(),
                clock: clock.into(),
                p50_factor: ratio(y.p50, x.p50),
                p99_factor: ratio(y.p99, x.p99),
                throughput_change_pct: None,
                before: x,
                after: y,
            });
        }
    }
    CompareBlock {
        baseline: bl.into(),
        against: al.into(),
        rows,
    }
}

/// The sides of a rollup compare.
#[derive(Debug, Clone, Copy)]
pub enum Sides {
    /// 0 tenants against ≥ 1, then each tenant count.
    Occupancy,
    /// Two time ranges.
    Ranges(TimeRange, TimeRange),
}

/// Compare blocks from the rollups under `root`.
pub fn compare(
    root: &super::RollupRoot,
    sides: Sides,
    parallel: usize,
) -> Result<(Vec<CompareBlock>, ReadStats), RollupError> {
    let want = SketchSet {
        wall: true,
        gpu: true,
        queue: false,
        mcycles: false,
        event: false,
    };
    let range = match sides {
        Sides::Occupancy => None,
        Sides::Ranges(b, a) => Some(TimeRange {
            start_ns: b.start_ns.min(a.start_ns),
            end_ns: b.end_ns.max(a.end_ns),
        }),
    };
    let dirs = read::list_at(root, range)?;
    // Per (side tag, kernel, shape): the tag is the tenant count, or 0/1
    // for the baseline/against range.
    type M = BTreeMap<(Option<u32>, Key), Side>;
    let (m, stats) = read::fold(
        &dirs,
        range,
        want,
        parallel,
        |m: &mut M, r: RollupRecord| {
            let k = (r.key.kernel.clone(), r.key.shape.clone());
            let tags: Vec<Option<u32>> = match sides {
                Sides::Occupancy => vec![r.key.tenants],
                Sides::Ranges(b, a) => {
                    let t = r.key.bucket_ns;
                    let mut v = Vec::new();
                    if t >= b.start_ns && t < b.end_ns {
                        v.push(Some(0));
                    }
                    if t >= a.start_ns && t < a.end_ns {
                        v.push(Some(1));
                    }
                    v
                }
            };
            for tag in tags {
                m.entry((tag, k.clone())).or_default().add(&r);
            }
        },
        |m, o| {
            for (k, v) in o {
                m.entry(k).or_default().merge(&v);
            }
        },
    )?;
    let mut levels: BTreeMap<u32, BTreeMap<Key, Side>> = BTreeMap::new();
    for ((t, k), s) in m {
        if let Some(t) = t {
            levels.entry(t).or_default().insert(k, s);
        }
    }
    let usage = |s: &str| RollupError::Usage(s.to_string());
    let blocks = match sides {
        Sides::Ranges(..) => {
            let b = levels
                .remove(&0)
                .ok_or_else(|| usage("no rollups in the --baseline range"))?;
            let a = levels
                .remove(&1)
                .ok_or_else(|| usage("no rollups in the --against range"))?;
            vec![block(&b, &a, "baseline", "against")]
        }
        Sides::Occupancy => {
            let base = levels
                .remove(&0)
                .ok_or_else(|| usage("no rollups with 0 tenants to use as the baseline"))?;
            if levels.is_empty() {
                return Err(usage(
                    "no rollups with 1 or more tenants to compare with the 0-tenant baseline",
                ));
            }
            let mut any: BTreeMap<Key, Side> = BTreeMap::new();
            for m in levels.values() {
                for (k, s) in m {
                    any.entry(k.clone()).or_default().merge(s);
                }
            }
            let mut blocks = vec![block(&base, &any, "0 tenants", ">=1 tenants")];
            if levels.len() > 1 {
                for (t, m) in &levels {
                    blocks.push(block(&base, m, "0 tenants", &format!("{t} tenants")));
                }
            }
            blocks
        }
    };
    Ok((blocks, stats))
}
