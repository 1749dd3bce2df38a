//! `slicetrace fleet` from rollups: the same summary per GPU, kernel and
//! shape as the raw query ([`crate::fleet::Unit`]), from merged sketches
//! and summed counts, then the same judgement
//! ([`crate::fleet::judge_units`]).
//!
//! What differs from raw rows, by construction:
//! * quantiles are DDSketch estimates, within ±1 % of the exact rank
//!   quantile (the raw path's are t-digest estimates);
//! * the window and the baseline period are taken in whole buckets: a
//!   bucket counts when it starts inside them (minute rows: at most a
//!   minute off at each end; hour rows: up to an hour);
//! * the median SM clock is the mean SM clock of the arrivals;
//! * the event time per SM cycle is judged for eligibility at rollup time
//!   with the default 2 ms slice (`--slice-ms` does not change it).

use std::collections::{BTreeMap, HashMap};

use slicetrace_schema::{RollupRecord, Sketch, SketchSet};

use super::read::{self, ReadStats};
use super::RollupError;
use crate::fleet::{judge_units, FleetArgs, FleetResult, NewestFiles, Plan, Unit, UnitKey};
use crate::source::{ScanStats, TimeRange};

/// Per unit, what is summed and merged before the quantiles are read.
#[derive(Default)]
struct Acc {
    gpu_name: String,
    precision: String,
    newest: Option<i64>,
    rows: u64,
    arrivals: u64,
    w_runs: u64,
    w_wall: Sketch,
    w_gpu: Sketch,
    w_clock_sum: f64,
    w_clock_runs: u64,
    w_mcycles: Sketch,
    w_event: Sketch,
    w_fails: u64,
    w_throttle: u64,
    w_hw: u64,
    w_max_tenants: Option<u32>,
    b_quiet: u64,
    b_wall: Sketch,
    b_mcycles: Sketch,
}

impl Acc {
    fn add(&mut self, r: &RollupRecord, window: TimeRange, baseline: Option<TimeRange>) {
        if let Some(n) = &r.gpu_name {
            if self.gpu_name.is_empty() {
                self.gpu_name.clone_from(n);
            }
        }
        if self.precision.is_empty() {
            self.precision.clone_from(&r.precision);
        }
        self.newest = Some(self.newest.map_or(r.last_ts_ns, |n| n.max(r.last_ts_ns)));
        self.rows += r.runs;
        self.arrivals += r.arrivals;
        let inside = |t: TimeRange| r.key.bucket_ns >= t.start_ns && r.key.bucket_ns < t.end_ns;
        if inside(window) {
            self.w_runs += r.arrivals;
            self.w_wall.merge(&r.wall_ms);
            self.w_gpu.merge(&r.gpu_ms);
            self.w_clock_sum += r.sm_clock_mhz_sum;
            self.w_clock_runs += r.sm_clock_runs;
            self.w_mcycles.merge(&r.mcycles);
            self.w_event.merge(&r.event_mcycles);
            self.w_fails += r.incorrect_arrivals;
            self.w_throttle |= r.throttle_reasons.unwrap_or(0);
            self.w_hw += r.hw_throttled_arrivals;
            if let Some(t) = r.key.tenants {
                self.w_max_tenants = Some(self.w_max_tenants.map_or(t, |m| m.max(t)));
            }
        }
        if baseline.is_some_and(inside) && r.key.tenants == Some(0) {
            self.b_quiet += r.arrivals;
            self.b_wall.merge(&r.wall_ms);
            self.b_mcycles.merge(&r.mcycles);
        }
    }

    fn merge(&mut self, o: Acc) {
        if self.gpu_name.is_empty() {
            self.gpu_name = o.gpu_name;
        }
        if self.precision.is_empty() {
            self.precision = o.precision;
        }
        self.newest = match (self.newest, o.newest) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.rows += o.rows;
        self.arrivals += o.arrivals;
        self.w_runs += o.w_runs;
        self.w_wall.merge(&o.w_wall);
        self.w_gpu.merge(&o.w_gpu);
        self.w_clock_sum += o.w_clock_sum;
        self.w_clock_runs += o.w_clock_runs;
        self.w_mcycles.merge(&o.w_mcycles);
        self.w_event.merge(&o.w_event);
        self.w_fails += o.w_fails;
        self.w_throttle |= o.w_throttle;
        self.w_hw += o.w_hw;
        self.w_max_tenants = match (self.w_max_tenants, o.w_max_tenants) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.b_quiet += o.b_quiet;
        self.b_wall.merge(&o.b_wall);
        self.b_mcycles.merge(&o.b_mcycles);
    }

    fn unit(&self) -> Unit {
        Unit {
            gpu_name: self.gpu_name.clone(),
            precision: self.precision.clone(),
            newest_ns: self.newest,
            rows: self.rows,
            arrivals: self.arrivals,
            w_runs: self.w_runs,
            w_wall_p99: self.w_wall.quantile(0.99),
            w_gpu_p50: self.w_gpu.quantile(0.5),
            w_clock_p50: (self.w_clock_runs > 0)
                .then(|| self.w_clock_sum / self.w_clock_runs as f64),
            w_norm_p50: self.w_mcycles.quantile(0.5),
            w_event_runs: self.w_event.count(),
            w_event_p50: self.w_event.quantile(0.5),
            w_fails: self.w_fails,
            w_throttle: self.w_throttle,
            w_hw_throttled: self.w_hw,
            w_max_tenants: self.w_max_tenants,
            b_quiet_runs: self.b_quiet,
            b_wall_p50: self.b_wall.quantile(0.5),
            b_wall_p99: self.b_wall.quantile(0.99),
            b_event_runs: self.b_mcycles.count(),
            b_event_p50: self.b_mcycles.quantile(0.5),
        }
    }
}

/// The fleet check from the rollups under `root`, for `plan`, on
/// `parallel` threads. `why` says why rollups were chosen.
pub fn evaluate(
    root: &super::RollupRoot,
    a: &FleetArgs,
    plan: &Plan,
    parallel: usize,
    why: &str,
) -> Result<(FleetResult, ReadStats), RollupError> {
    let range = plan.scan_range();
    let dirs = read::list_at(root, Some(range))?;
    let want = SketchSet {
        wall: true,
        gpu: true,
        queue: false,
        mcycles: true,
        event: true,
    };
    let (window, baseline) = (plan.window, plan.baseline);
    let (accs, stats) = read::fold(
        &dirs,
        Some(range),
        want,
        parallel,
        |m: &mut HashMap<UnitKey, Acc>, r: RollupRecord| {
            let key = (
                r.key.node.clone(),
                r.key.gpu_uuid.clone(),
                r.key.kernel.clone(),
                r.key.shape.clone(),
            );
            m.entry(key).or_default().add(&r, window, baseline);
        },
        |m, o| {
            for (k, v) in o {
                match m.get_mut(&k) {
                    Some(x) => x.merge(v),
                    None => {
                        m.insert(k, v);
                    }
                }
            }
        },
    )?;
    let units: BTreeMap<UnitKey, Unit> = accs.iter().map(|(k, v)| (k.clone(), v.unit())).collect();
    // Nodes with a rollup directory but no row in the range are stale, as
    // with raw files: the start of their newest file bounds their last row.
    let mut newest_files = NewestFiles::new();
    for d in &dirs {
        let node = d
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("node="))
            .unwrap_or_default()
            .to_string();
        let newest = d
            .files
            .iter()
            .filter_map(|f| {
                f.file_name()?
                    .to_str()
                    .and_then(crate::source::name_start_ns)
            })
            .max();
        if let Some(n) = newest {
            let e = newest_files.entry(node).or_insert(n);
            *e = (*e).max(n);
        }
    }
    let scan = ScanStats {
        files_listed: dirs.iter().map(|d| d.files.len()).sum(),
        files_opened: stats.files_read + stats.files_superseded,
        files_scanned: stats.files_read,
        files_pruned_by_name: stats.files_pruned_by_name,
        rows_in_scanned_files: stats.rows_read,
        ..ScanStats::default()
    };
    let source = super::DataSource::rollups(why, &stats);
    Ok((
        judge_units(a, plan, &units, scan, &newest_files, source),
        stats,
    ))
}
