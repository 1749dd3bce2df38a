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
//!
//! How it reads (the cost of 10,000 nodes is here): each thread folds the
//! Arrow batches of its node directories straight into its groups
//! ([`read::fold_batches`]), reading only the columns the check uses (not
//! `queue_ms_sketch`, `first_ts`, …), finding a row's group by its key
//! strings without allocating, and merging a sketch's bytes into the
//! group's dense counters ([`SketchAcc`]) only where the row counts: the
//! window's four sketches, and the baseline period's `wall_ms` and
//! `mcycles` of quiet rows (no tenants). No DDSketch is built per row.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{
    Array, BinaryArray, Float64Array, StringArray, TimestampNanosecondArray, UInt32Array,
    UInt64Array,
};
use arrow::record_batch::RecordBatch;
use hashbrown::{Equivalent, HashMap};
use slicetrace_schema::rollup::column;
use slicetrace_schema::SketchAcc;

use super::read::{self, ReadStats};
use super::RollupError;
use crate::fleet::{judge_units, FleetArgs, FleetResult, NewestFiles, Plan, Unit, UnitKey};
use crate::source::{ScanStats, TimeRange};

/// The columns every file is read with: what the baseline period and the
/// run totals use. A file with no row in the window (by its `ts`
/// statistics) is read with these only: the window's sketches of `gpu_ms`
/// and event cycles, its clocks, failures and throttling are not
/// decompressed.
const BASELINE_COLUMNS: &[&str] = &[
    "ts",
    "node",
    "gpu_uuid",
    "gpu_name",
    "kernel",
    "shape",
    "precision",
    "tenants",
    "last_ts",
    "runs",
    "arrivals",
    "wall_ms_sketch",
    "mcycles_sketch",
];

/// The columns only window rows use ([`WindowCols`]), read besides
/// [`BASELINE_COLUMNS`] in files the window touches.
const WINDOW_COLUMNS: &[&str] = &[
    "incorrect_arrivals",
    "hw_throttled_arrivals",
    "throttle_reasons",
    "sm_clock_mhz_sum",
    "sm_clock_runs",
    "gpu_ms_sketch",
    "event_mcycles_sketch",
];

/// Per unit, what is summed and merged before the quantiles are read.
#[derive(Default)]
struct Acc {
    gpu_name: String,
    precision: String,
    newest: Option<i64>,
    rows: u64,
    arrivals: u64,
    w_runs: u64,
    w_wall: SketchAcc,
    w_gpu: SketchAcc,
    w_clock_sum: f64,
    w_clock_runs: u64,
    w_mcycles: SketchAcc,
    w_event: SketchAcc,
    w_fails: u64,
    w_throttle: u64,
    w_hw: u64,
    w_max_tenants: Option<u32>,
    b_quiet: u64,
    b_wall: SketchAcc,
    b_mcycles: SketchAcc,
}

/// The arrays of one batch the check reads.
struct Cols<'a> {
    ts: &'a TimestampNanosecondArray,
    node: &'a StringArray,
    gpu: &'a StringArray,
    name: &'a StringArray,
    kernel: &'a StringArray,
    shape: &'a StringArray,
    precision: &'a StringArray,
    tenants: &'a UInt32Array,
    last: &'a TimestampNanosecondArray,
    runs: &'a UInt64Array,
    arrivals: &'a UInt64Array,
    wall: &'a BinaryArray,
    mcycles: &'a BinaryArray,
    /// Absent in a batch read with [`BASELINE_COLUMNS`].
    window: Option<WindowCols<'a>>,
}

/// The arrays only window rows use.
struct WindowCols<'a> {
    fails: &'a UInt64Array,
    hw: &'a UInt64Array,
    throttle: &'a UInt64Array,
    clock_sum: &'a Float64Array,
    clock_runs: &'a UInt64Array,
    gpu_ms: &'a BinaryArray,
    event: &'a BinaryArray,
}

impl<'a> Cols<'a> {
    /// The arrays of `b`; `narrow`: read with [`BASELINE_COLUMNS`].
    fn of(b: &'a RecordBatch, narrow: bool) -> Result<Self, slicetrace_schema::SchemaError> {
        Ok(Cols {
            ts: column(b, "ts")?,
            node: column(b, "node")?,
            gpu: column(b, "gpu_uuid")?,
            name: column(b, "gpu_name")?,
            kernel: column(b, "kernel")?,
            shape: column(b, "shape")?,
            precision: column(b, "precision")?,
            tenants: column(b, "tenants")?,
            last: column(b, "last_ts")?,
            runs: column(b, "runs")?,
            arrivals: column(b, "arrivals")?,
            wall: column(b, "wall_ms_sketch")?,
            mcycles: column(b, "mcycles_sketch")?,
            window: if narrow {
                None
            } else {
                Some(WindowCols {
                    fails: column(b, "incorrect_arrivals")?,
                    hw: column(b, "hw_throttled_arrivals")?,
                    throttle: column(b, "throttle_reasons")?,
                    clock_sum: column(b, "sm_clock_mhz_sum")?,
                    clock_runs: column(b, "sm_clock_runs")?,
                    gpu_ms: column(b, "gpu_ms_sketch")?,
                    event: column(b, "event_mcycles_sketch")?,
                })
            },
        })
    }
}

/// Merges row `i` of `a` (a null sketch is an empty one).
fn merge_at(
    acc: &mut SketchAcc,
    a: &BinaryArray,
    n: &str,
    i: usize,
) -> Result<(), slicetrace_schema::SchemaError> {
    if a.is_valid(i) {
        acc.merge_encoded(n, a.value(i))?;
    }
    Ok(())
}

impl Acc {
    /// Folds row `i` of `c` in.
    fn add(
        &mut self,
        c: &Cols<'_>,
        i: usize,
        window: TimeRange,
        baseline: Option<TimeRange>,
    ) -> Result<(), slicetrace_schema::SchemaError> {
        if self.gpu_name.is_empty() && c.name.is_valid(i) {
            self.gpu_name.push_str(c.name.value(i));
        }
        if self.precision.is_empty() {
            self.precision.push_str(c.precision.value(i));
        }
        let last = c.last.value(i);
        self.newest = Some(self.newest.map_or(last, |n| n.max(last)));
        self.rows += c.runs.value(i);
        let arrivals = c.arrivals.value(i);
        self.arrivals += arrivals;
        let bucket = c.ts.value(i);
        let inside = |t: TimeRange| bucket >= t.start_ns && bucket < t.end_ns;
        let tenants = c.tenants.is_valid(i).then(|| c.tenants.value(i));
        if inside(window) {
            // A file read without the window's columns has no row in the
            // window by its `ts` statistics: one here means the file lies.
            let w = c.window.as_ref().ok_or_else(|| {
                slicetrace_schema::SchemaError::MissingColumn(
                    "gpu_ms_sketch (a window row outside the file's ts statistics)".into(),
                )
            })?;
            self.w_runs += arrivals;
            merge_at(&mut self.w_wall, c.wall, "wall_ms_sketch", i)?;
            merge_at(&mut self.w_gpu, w.gpu_ms, "gpu_ms_sketch", i)?;
            self.w_clock_sum += w.clock_sum.value(i);
            self.w_clock_runs += w.clock_runs.value(i);
            merge_at(&mut self.w_mcycles, c.mcycles, "mcycles_sketch", i)?;
            merge_at(&mut self.w_event, w.event, "event_mcycles_sketch", i)?;
            self.w_fails += w.fails.value(i);
            if w.throttle.is_valid(i) {
                self.w_throttle |= w.throttle.value(i);
            }
            self.w_hw += w.hw.value(i);
            if let Some(t) = tenants {
                self.w_max_tenants = Some(self.w_max_tenants.map_or(t, |m| m.max(t)));
            }
        }
        if baseline.is_some_and(inside) && tenants == Some(0) {
            self.b_quiet += arrivals;
            merge_at(&mut self.b_wall, c.wall, "wall_ms_sketch", i)?;
            merge_at(&mut self.b_mcycles, c.mcycles, "mcycles_sketch", i)?;
        }
        Ok(())
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

/// A row's key, borrowed from its batch: it hashes as the [`UnitKey`] of
/// the same strings (a tuple hashes its fields in order, `&str` as `str`),
/// so a group is found without building a key.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str, &'a str, &'a str);

impl Equivalent<UnitKey> for KeyRef<'_> {
    fn equivalent(&self, k: &UnitKey) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2 && self.3 == k.3
    }
}

/// One thread's units, found by their key strings without allocating or
/// formatting a key per row.
#[derive(Default)]
struct Groups {
    index: HashMap<UnitKey, usize>,
    units: Vec<(UnitKey, Acc)>,
}

impl Groups {
    fn slot(&mut self, node: &str, gpu: &str, kernel: &str, shape: &str) -> &mut Acc {
        let k = KeyRef(node, gpu, kernel, shape);
        let at = match self.index.get(&k) {
            Some(&at) => at,
            None => {
                let at = self.units.len();
                let key = (
                    node.to_string(),
                    gpu.to_string(),
                    kernel.to_string(),
                    shape.to_string(),
                );
                self.index.insert(key.clone(), at);
                self.units.push((key, Acc::default()));
                at
            }
        };
        &mut self.units[at].1
    }

    fn fold(
        &mut self,
        path: &Path,
        b: &RecordBatch,
        narrow: bool,
        range: TimeRange,
        window: TimeRange,
        baseline: Option<TimeRange>,
    ) -> Result<(), RollupError> {
        let bad = |source| RollupError::Schema {
            path: path.to_path_buf(),
            source,
        };
        let c = Cols::of(b, narrow).map_err(bad)?;
        for i in 0..b.num_rows() {
            let bucket = c.ts.value(i);
            if bucket < range.start_ns || bucket >= range.end_ns {
                continue;
            }
            let acc = self.slot(
                c.node.value(i),
                c.gpu.value(i),
                c.kernel.value(i),
                c.shape.value(i),
            );
            acc.add(&c, i, window, baseline).map_err(bad)?;
        }
        Ok(())
    }

    fn merge(&mut self, o: Groups) {
        for (k, v) in o.units {
            match self.index.get(&KeyRef(&k.0, &k.1, &k.2, &k.3)) {
                Some(&at) => self.units[at].1.merge(v),
                // Most units are in one thread's node directories only:
                // moved, not merged into an empty one.
                None => {
                    self.index.insert(k.clone(), self.units.len());
                    self.units.push((k, v));
                }
            }
        }
    }
}

/// Every unit's summary from the rows of `dirs` whose bucket starts in
/// `range`, on `parallel` threads.
fn units(
    dirs: &[read::NodeDir],
    range: TimeRange,
    window: TimeRange,
    baseline: Option<TimeRange>,
    parallel: usize,
) -> Result<(BTreeMap<UnitKey, Unit>, ReadStats), RollupError> {
    let all = [BASELINE_COLUMNS, WINDOW_COLUMNS].concat();
    let (groups, stats) = read::fold_batches(
        dirs,
        Some(range),
        &all,
        Some((window, BASELINE_COLUMNS)),
        parallel,
        |g: &mut Groups, p: &Path, b: &RecordBatch, narrow: bool| {
            g.fold(p, b, narrow, range, window, baseline)
        },
        Groups::merge,
    )?;
    let units = groups
        .units
        .into_iter()
        .map(|(k, v)| (k, v.unit()))
        .collect();
    Ok((units, stats))
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
    let (units, stats) = units(&dirs, range, plan.window, plan.baseline, parallel)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rollup::synth::{generate, RollupSynth};
    use slicetrace_schema::{RollupRecord, Sketch, SketchSet};

    /// The summary as the reader computed it before the batch fold: every
    /// row decoded into a `RollupRecord`, DDSketches merged.
    #[derive(Default)]
    struct Reference {
        rows: u64,
        arrivals: u64,
        newest: Option<i64>,
        w_runs: u64,
        w_wall: Sketch,
        w_gpu: Sketch,
        w_mcycles: Sketch,
        w_event: Sketch,
        w_clock: (f64, u64),
        w_max_tenants: Option<u32>,
        b_quiet: u64,
        b_wall: Sketch,
        b_mcycles: Sketch,
    }

    fn reference(
        dirs: &[read::NodeDir],
        range: TimeRange,
        window: TimeRange,
        baseline: TimeRange,
    ) -> BTreeMap<UnitKey, Reference> {
        let (m, _) = read::fold(
            dirs,
            Some(range),
            SketchSet::ALL,
            1,
            |m: &mut BTreeMap<UnitKey, Reference>, r: RollupRecord| {
                let k = (
                    r.key.node.clone(),
                    r.key.gpu_uuid.clone(),
                    r.key.kernel.clone(),
                    r.key.shape.clone(),
                );
                let a = m.entry(k).or_default();
                a.rows += r.runs;
                a.arrivals += r.arrivals;
                a.newest = Some(a.newest.map_or(r.last_ts_ns, |n| n.max(r.last_ts_ns)));
                let inside =
                    |t: TimeRange| r.key.bucket_ns >= t.start_ns && r.key.bucket_ns < t.end_ns;
                if inside(window) {
                    a.w_runs += r.arrivals;
                    a.w_wall.merge(&r.wall_ms);
                    a.w_gpu.merge(&r.gpu_ms);
                    a.w_mcycles.merge(&r.mcycles);
                    a.w_event.merge(&r.event_mcycles);
                    a.w_clock.0 += r.sm_clock_mhz_sum;
                    a.w_clock.1 += r.sm_clock_runs;
                    if let Some(t) = r.key.tenants {
                        a.w_max_tenants = Some(a.w_max_tenants.map_or(t, |m| m.max(t)));
                    }
                }
                if inside(baseline) && r.key.tenants == Some(0) {
                    a.b_quiet += r.arrivals;
                    a.b_wall.merge(&r.wall_ms);
                    a.b_mcycles.merge(&r.mcycles);
                }
            },
            |_, _| unreachable!("one thread"),
        )
        .unwrap();
        m
    }

    #[test]
    fn the_batch_fold_equals_merging_decoded_ddsketches_row_by_row() {
        let tmp = tempfile::tempdir().unwrap();
        let end_ns = 1_796_601_600_000_000_000; // 2026-12-07T00:00:00Z
        let s = RollupSynth {
            nodes: 5,
            gpus_per_node: 2,
            end_ns,
            span_secs: 3 * 3600,
            hours: false,
            file_secs: 900,
            arrivals_per_min: 300,
            draws: 40,
            seed: 3,
            threads: 2,
        };
        generate(tmp.path(), &s).unwrap();
        // Window: the last 70 minutes; baseline: the 80 before (whole
        // buckets either side, tenant counts change every 10 minutes).
        let window = TimeRange {
            start_ns: end_ns - 70 * 60_000_000_000,
            end_ns,
        };
        let baseline = TimeRange {
            start_ns: window.start_ns - 80 * 60_000_000_000,
            end_ns: window.start_ns,
        };
        let range = TimeRange {
            start_ns: baseline.start_ns,
            end_ns,
        };
        let dirs = read::list(tmp.path(), Some(range)).unwrap();
        // Files wholly outside the window are read without its columns:
        // some are, here.
        let narrowed = dirs
            .iter()
            .flat_map(|d| &d.files)
            .filter(|f| {
                let (lo, hi) = read::open(f).unwrap().ts_range.unwrap();
                hi < window.start_ns || lo >= window.end_ns
            })
            .count();
        assert!(narrowed > 0);
        let want = reference(&dirs, range, window, baseline);
        for parallel in [1, 3] {
            let (got, stats) = units(&dirs, range, window, Some(baseline), parallel).unwrap();
            assert!(stats.files_read > 0);
            assert_eq!(got.len(), want.len());
            assert_eq!(got.len(), 5 * 2 * 2);
            for (k, w) in &want {
                let g = &got[k];
                assert_eq!(
                    (g.rows, g.arrivals, g.newest_ns),
                    (w.rows, w.arrivals, w.newest),
                    "{k:?}"
                );
                assert_eq!(g.w_runs, w.w_runs);
                assert!(g.w_runs > 0 && g.b_quiet_runs == w.b_quiet, "{k:?}");
                assert_eq!(g.w_wall_p99, w.w_wall.quantile(0.99), "{k:?}");
                assert_eq!(g.w_gpu_p50, w.w_gpu.quantile(0.5));
                assert_eq!(g.w_norm_p50, w.w_mcycles.quantile(0.5));
                assert_eq!(g.w_event_runs, w.w_event.count());
                assert_eq!(g.w_event_p50, w.w_event.quantile(0.5));
                assert_eq!(g.w_clock_p50, Some(w.w_clock.0 / w.w_clock.1 as f64));
                assert_eq!(g.w_max_tenants, w.w_max_tenants);
                assert_eq!(g.b_wall_p50, w.b_wall.quantile(0.5), "{k:?}");
                assert_eq!(g.b_wall_p99, w.b_wall.quantile(0.99));
                assert_eq!(g.b_event_runs, w.b_mcycles.count());
                assert_eq!(g.b_event_p50, w.b_mcycles.quantile(0.5));
            }
        }
        // Some unit had quiet baseline rows (their sketches were compared).
        assert!(want.values().any(|w| w.b_quiet > 0));
    }

    #[test]
    fn the_json_streamed_to_a_writer_equals_the_rendered_string() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: FleetArgs,
        }
        let tmp = tempfile::tempdir().unwrap();
        let end_ns = 1_796_601_600_000_000_000; // 2026-12-07T00:00:00Z
        let s = RollupSynth {
            nodes: 3,
            gpus_per_node: 2,
            end_ns,
            span_secs: 3600,
            hours: false,
            file_secs: 900,
            arrivals_per_min: 300,
            draws: 40,
            seed: 5,
            threads: 2,
        };
        generate(tmp.path(), &s).unwrap();
        let cli = <Cli as clap::Parser>::parse_from([
            "fleet",
            "--window",
            "30m",
            "--baseline-window",
            "30m",
            "--until",
            "2026-12-07T00:00:00Z",
        ]);
        let plan = Plan::from_args(&cli.a, end_ns).unwrap();
        let root = super::super::RollupRoot::Local(tmp.path().to_path_buf());
        let (r, _) = evaluate(&root, &cli.a, &plan, 2, "test").unwrap();
        assert_eq!(r.gpus.len(), 6);
        let want = crate::fleet::render(&r, crate::output::Format::Json);
        let mut got = Vec::new();
        crate::fleet::write_json(&r, &mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
}
