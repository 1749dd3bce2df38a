//! The `rollups` table: per minute (or, once compacted, per hour), per
//! node, GPU, kernel, shape, tenant count and busy count, the run counts and a
//! mergeable quantile sketch of each clock, so that a fleet-wide question
//! over hours reads thousands of times fewer rows than the raw `probes`.
//!
//! The agent folds every probe row into a [`Rollup`] as it goes and writes
//! the closed buckets (`DIR/rollups/date=…/node=…/part-….parquet`, the same
//! atomic temp-then-rename rule as the other tables); `slicetrace rollup`
//! builds the same rows from raw files and compacts minutes into hours.
//!
//! **Which rows feed what.** Latency figures come only from arrival runs
//! ([`ProbeRecord::is_arrival`], the CLI's default selection): the
//! `*_sketch` columns hold arrival runs only. The counts are of every run
//! (`runs`, `incorrect_runs`, `event_inflated_runs`) and of arrivals apart
//! (`arrivals`, `incorrect_arrivals`, `hw_throttled_arrivals`), because
//! correctness and health need every row while latency must not see the
//! burst runs. `--all-runs` questions are therefore answered from raw rows.
//!
//! **The sketch.** [`Sketch`] is a DDSketch (`sketches-ddsketch`, the
//! Datadog algorithm, Masson et al., VLDB 2019) with relative accuracy
//! [`SKETCH_ALPHA`] = 1 %: for any quantile q, the value it returns is
//! within ±1 % of the exact q-quantile of the values added (the value at
//! rank ⌊q·(n−1)⌋), whatever the distribution, and merging two sketches
//! gives exactly the sketch of the union, so the guarantee holds after any
//! number of merges (minutes → hours → fleet). HdrHistogram was the
//! alternative: its guarantee is also relative, but a histogram spans a
//! fixed value range in integer units and deserialises into a full
//! counts array (tens of kB), where a DDSketch stores only the occupied
//! bins (a few dozen for one minute of one GPU), which is what makes
//! merging millions of rows per query affordable. The binary column holds
//! the sketch in the DDSketch standard encoding of `sketches-java`
//! (`DDSketchWithExactSummaryStatistics.encode()`: count, exact min, max
//! and sum, the logarithmic index mapping's γ, then the bins), which the
//! Java, Go and Python DDSketch libraries decode too; see `schema/README.md`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Float64Array, Float64Builder, StringArray,
    StringBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder, UInt32Array,
    UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use sketches_ddsketch::{Config, DDSketch};

use crate::columns::ColumnDoc;
use crate::{event_eligible, event_mcycles, ProbeRecord, SchemaError, Thresholds, TABLE_KEY};

mod dense;
pub use dense::SketchAcc;

/// Version of the `rollups` table layout, under its own footer key
/// [`ROLLUP_SCHEMA_VERSION_KEY`] (the `probes`/`health` version does not
/// move with it). Same rule as [`crate::SCHEMA_VERSION`]: bump on any change
/// an older reader would misread.
pub const ROLLUP_SCHEMA_VERSION: u32 = 1;

/// Parquet key-value metadata key that carries [`ROLLUP_SCHEMA_VERSION`].
pub const ROLLUP_SCHEMA_VERSION_KEY: &str = "slicetrace.rollup_schema_version";

/// Footer key of a compacted (hour) file: the names of the files it folded
/// in, one per line. A reader that finds both skips those files, so a
/// compaction cut off between writing the hour file and removing the
/// minute files never counts a run twice.
pub const ROLLUP_SOURCES_KEY: &str = "slicetrace.rollup_sources";

/// Relative accuracy of every sketch: a quantile is within ±1 % of the
/// exact one.
pub const SKETCH_ALPHA: f64 = 0.01;

/// Most bins a sketch keeps (sketches-ddsketch's default). With α = 1 %,
/// 2048 bins span about 18 orders of magnitude, far more than any clock
/// here, so no bin is ever collapsed in practice.
pub const SKETCH_MAX_BINS: u32 = 2048;

/// Smallest positive value a sketch tells apart from 0 (the crate's
/// default, 1e-9 ms).
pub const SKETCH_MIN_VALUE: f64 = 1.0e-9;

/// Length of an agent's bucket, seconds.
pub const MINUTE_SECS: u32 = 60;
/// Length of a compacted bucket, seconds.
pub const HOUR_SECS: u32 = 3600;

/// The sketch config every writer and reader uses (α, bins, minimum).
fn config() -> Config {
    Config::new(SKETCH_ALPHA, SKETCH_MAX_BINS, SKETCH_MIN_VALUE)
}

/// A mergeable quantile sketch with relative accuracy [`SKETCH_ALPHA`].
#[derive(Clone)]
pub struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sketch(n={})", self.count())
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Sketch(DDSketch::new(config()))
    }

    /// Adds one value (NaN is ignored).
    pub fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.0.add(v);
        }
    }

    /// Adds `v` as if it were added `count` times.
    pub fn add_with_count(&mut self, v: f64, count: u64) {
        if v.is_finite() {
            self.0.add_with_count(v, count);
        }
    }

    /// Folds `other` in: the result is the sketch of both inputs.
    pub fn merge(&mut self, other: &Sketch) {
        // Both come from `config()` (decode rebuilds it from γ alone, which
        // with the default bins and minimum is the same config), so the
        // crate's config check cannot fail; if it ever did, the other side
        // is dropped rather than mixed into the wrong bins.
        let _ = self.0.merge(&other.0);
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The q-quantile (0 ≤ q ≤ 1) within ±[`SKETCH_ALPHA`] relative error;
    /// `None` when empty or q is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q).ok().flatten()
    }

    /// Exact largest value.
    pub fn max(&self) -> Option<f64> {
        self.0.max()
    }

    /// Exact smallest value.
    pub fn min(&self) -> Option<f64> {
        self.0.min()
    }

    /// Exact sum of the values.
    pub fn sum(&self) -> Option<f64> {
        self.0.sum()
    }

    /// The DDSketch standard binary encoding (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        self.0.to_java_bytes()
    }

    /// Decodes [`Sketch::encode`]'s bytes; a sketch made with another
    /// relative accuracy is refused.
    pub fn decode(column: &str, bytes: &[u8]) -> Result<Sketch, SchemaError> {
        let bad = |why: String| SchemaError::UnknownValue {
            column: column.to_string(),
            value: why,
        };
        let s = DDSketch::from_java_bytes(bytes).map_err(|e| bad(format!("sketch: {e}")))?;
        let mut out = Sketch::new();
        out.0
            .merge(&s)
            .map_err(|_| bad("sketch with another relative accuracy".into()))?;
        Ok(out)
    }
}

/// The start of the `period_s`-second bucket that holds `ts_ns`.
pub fn bucket_start(ts_ns: i64, period_s: u32) -> i64 {
    let p = i64::from(period_s.max(1)) * 1_000_000_000;
    ts_ns.div_euclid(p) * p
}

/// What one rollup row groups by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey {
    /// Bucket start, ns since the epoch (UTC).
    pub bucket_ns: i64,
    /// Node.
    pub node: String,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Kernel.
    pub kernel: String,
    /// Shape.
    pub shape: String,
    /// Tenant count (`gpu_processes`), `None` when unknown.
    pub tenants: Option<u32>,
    /// Busy tenant contexts around the run (`busy_count`), `None` when
    /// unknown.
    pub busy_count: Option<u32>,
}

/// One row of the `rollups` table (see [`ROLLUP_COLUMNS`]).
#[derive(Debug, Clone)]
pub struct RollupRecord {
    /// What the row groups by.
    pub key: RollupKey,
    /// Bucket length, seconds ([`MINUTE_SECS`] or [`HOUR_SECS`]).
    pub period_s: u32,
    /// Device index.
    pub gpu_index: u32,
    /// Product name.
    pub gpu_name: Option<String>,
    /// Precision.
    pub precision: String,
    /// First run's `ts`.
    pub first_ts_ns: i64,
    /// Last run's `ts`.
    pub last_ts_ns: i64,
    /// Every run.
    pub runs: u64,
    /// Arrival runs.
    pub arrivals: u64,
    /// Runs with `correct = false`.
    pub incorrect_runs: u64,
    /// Arrival runs with `correct = false`.
    pub incorrect_arrivals: u64,
    /// Runs with `event_inflated = true`.
    pub event_inflated_runs: u64,
    /// Arrival runs that saw a hardware throttle reason.
    pub hw_throttled_arrivals: u64,
    /// Bitwise OR of the arrivals' throttle reasons (`None`: none known).
    pub throttle_reasons: Option<u64>,
    /// Σ sm_clock_mhz over the arrivals that read it.
    pub sm_clock_mhz_sum: f64,
    /// Arrivals that read the SM clock.
    pub sm_clock_runs: u64,
    /// wall_ms of the arrivals.
    pub wall_ms: Sketch,
    /// gpu_ms of the arrivals.
    pub gpu_ms: Sketch,
    /// queue_ms of the arrivals.
    pub queue_ms: Sketch,
    /// Event time per SM cycle (gpu_ms × sm_clock_mhz / 1000, Mcycles) of the arrivals.
    pub mcycles: Sketch,
    /// The same over the arrivals whose event clock may be judged for
    /// health ([`event_eligible`] with the default slice).
    pub event_mcycles: Sketch,
}

impl RollupRecord {
    /// An empty row for `key`.
    pub fn empty(key: RollupKey, period_s: u32) -> Self {
        RollupRecord {
            key,
            period_s,
            gpu_index: 0,
            gpu_name: None,
            precision: String::new(),
            first_ts_ns: i64::MAX,
            last_ts_ns: i64::MIN,
            runs: 0,
            arrivals: 0,
            incorrect_runs: 0,
            incorrect_arrivals: 0,
            event_inflated_runs: 0,
            hw_throttled_arrivals: 0,
            throttle_reasons: None,
            sm_clock_mhz_sum: 0.0,
            sm_clock_runs: 0,
            wall_ms: Sketch::new(),
            gpu_ms: Sketch::new(),
            queue_ms: Sketch::new(),
            mcycles: Sketch::new(),
            event_mcycles: Sketch::new(),
        }
    }

    /// Folds one probe row in (its key must be this row's).
    pub fn add(&mut self, r: &ProbeRecord) {
        let th = Thresholds::DEFAULT;
        self.gpu_index = r.gpu_index;
        if r.gpu_name.is_some() {
            self.gpu_name.clone_from(&r.gpu_name);
        }
        if self.precision.is_empty() {
            self.precision.clone_from(&r.precision);
        }
        self.first_ts_ns = self.first_ts_ns.min(r.ts_ns);
        self.last_ts_ns = self.last_ts_ns.max(r.ts_ns);
        self.runs += 1;
        let bad = r.correct == Some(false);
        self.incorrect_runs += u64::from(bad);
        self.event_inflated_runs += u64::from(r.event_inflated == Some(true));
        if !r.is_arrival() {
            return;
        }
        self.arrivals += 1;
        self.incorrect_arrivals += u64::from(bad);
        if let Some(t) = r.device.throttle_reasons {
            self.throttle_reasons = Some(self.throttle_reasons.unwrap_or(0) | t);
            self.hw_throttled_arrivals += u64::from(t & th.throttle_unhealthy_mask != 0);
        }
        if let Some(c) = r.device.sm_clock_mhz {
            self.sm_clock_mhz_sum += f64::from(c);
            self.sm_clock_runs += 1;
        }
        self.wall_ms.add(r.wall_ms);
        if let Some(g) = r.gpu_ms {
            self.gpu_ms.add(g);
        }
        if let Some(q) = r.queue_ms {
            self.queue_ms.add(q);
        }
        if let Some(m) = event_mcycles(r) {
            self.mcycles.add(m);
            if event_eligible(r, &th) {
                self.event_mcycles.add(m);
            }
        }
    }

    /// Folds another row of the same key (or of a finer bucket inside this
    /// one) in: counts add, sketches merge.
    pub fn merge(&mut self, o: &RollupRecord) {
        self.gpu_index = o.gpu_index;
        if o.gpu_name.is_some() {
            self.gpu_name.clone_from(&o.gpu_name);
        }
        if self.precision.is_empty() {
            self.precision.clone_from(&o.precision);
        }
        self.first_ts_ns = self.first_ts_ns.min(o.first_ts_ns);
        self.last_ts_ns = self.last_ts_ns.max(o.last_ts_ns);
        self.runs += o.runs;
        self.arrivals += o.arrivals;
        self.incorrect_runs += o.incorrect_runs;
        self.incorrect_arrivals += o.incorrect_arrivals;
        self.event_inflated_runs += o.event_inflated_runs;
        self.hw_throttled_arrivals += o.hw_throttled_arrivals;
        self.throttle_reasons = match (self.throttle_reasons, o.throttle_reasons) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) | b.unwrap_or(0)),
        };
        self.sm_clock_mhz_sum += o.sm_clock_mhz_sum;
        self.sm_clock_runs += o.sm_clock_runs;
        self.wall_ms.merge(&o.wall_ms);
        self.gpu_ms.merge(&o.gpu_ms);
        self.queue_ms.merge(&o.queue_ms);
        self.mcycles.merge(&o.mcycles);
        self.event_mcycles.merge(&o.event_mcycles);
    }

    /// Mean SM clock of the arrivals, MHz.
    pub fn sm_clock_mean_mhz(&self) -> Option<f64> {
        (self.sm_clock_runs > 0).then(|| self.sm_clock_mhz_sum / self.sm_clock_runs as f64)
    }
}

/// Probe rows folded into buckets of one length, in memory.
#[derive(Debug, Clone)]
pub struct Rollup {
    period_s: u32,
    rows: HashMap<RollupKey, RollupRecord>,
}

impl Rollup {
    /// Empty, with buckets of `period_s` seconds.
    pub fn new(period_s: u32) -> Self {
        Rollup {
            period_s: period_s.max(1),
            rows: HashMap::new(),
        }
    }

    /// The key of probe row `r`.
    pub fn key_of(&self, r: &ProbeRecord) -> RollupKey {
        RollupKey {
            bucket_ns: bucket_start(r.ts_ns, self.period_s),
            node: r.node.clone(),
            gpu_uuid: r.gpu_uuid.clone(),
            kernel: r.kernel.as_str().to_string(),
            shape: r.shape.clone(),
            tenants: r.tenants(),
            busy_count: r.busy_count,
        }
    }

    /// Folds one probe row in.
    pub fn add(&mut self, r: &ProbeRecord) {
        let key = self.key_of(r);
        let period = self.period_s;
        self.rows
            .entry(key.clone())
            .or_insert_with(|| RollupRecord::empty(key, period))
            .add(r);
    }

    /// Folds a rollup row in (re-bucketed to this rollup's period).
    pub fn merge_row(&mut self, r: &RollupRecord) {
        let mut key = r.key.clone();
        key.bucket_ns = bucket_start(key.bucket_ns, self.period_s);
        let period = self.period_s;
        self.rows
            .entry(key.clone())
            .or_insert_with(|| RollupRecord::empty(key, period))
            .merge(r);
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Takes the rows of the buckets that end at or before `end_ns` (all of
    /// them with `i64::MAX`), sorted by bucket, node, GPU, kernel, shape
    /// and tenants.
    pub fn take_closed(&mut self, end_ns: i64) -> Vec<RollupRecord> {
        let p = i64::from(self.period_s) * 1_000_000_000;
        let mut out: BTreeMap<RollupKey, RollupRecord> = BTreeMap::new();
        self.rows.retain(|k, v| {
            if k.bucket_ns.saturating_add(p) <= end_ns {
                out.insert(k.clone(), v.clone());
                false
            } else {
                true
            }
        });
        out.into_values().collect()
    }
}

const fn c(
    name: &'static str,
    arrow_type: &'static str,
    nullable: bool,
    unit: &'static str,
    meaning: &'static str,
) -> ColumnDoc {
    ColumnDoc {
        name,
        arrow_type,
        nullable,
        unit,
        meaning,
    }
}

/// The `rollups` table, in column order.
#[rustfmt::skip]
pub const ROLLUP_COLUMNS: &[ColumnDoc] = &[
    c("ts", "timestamp(ns, UTC)", false, "ns since epoch", "Start of the bucket (a whole minute, or a whole hour once compacted)."),
    c("period_s", "uint32", false, "s", "Bucket length: 60 (the agent's minute rollups) or 3600 (`slicetrace rollup --to hour`)."),
    c("node", "utf8", false, "-", "Node name (as in `probes`)."),
    c("gpu_uuid", "utf8", false, "-", "GPU UUID (as in `probes`)."),
    c("gpu_index", "uint32", false, "-", "Device index on the node."),
    c("gpu_name", "utf8", true, "-", "Product name."),
    c("kernel", "utf8", false, "-", "`fft` or `gemm`."),
    c("shape", "utf8", false, "-", "Problem shape."),
    c("precision", "utf8", false, "-", "Numeric precision of the kernel."),
    c("tenants", "uint32", true, "-", "Other compute processes on the GPU (`gpu_processes`); null when unknown. A grouping key: rows with different tenant counts are apart."),
    c("busy_count", "uint32", true, "-", "Busy tenant contexts around the run (`busy_count` of `probes`); null when unknown. A grouping key too."),
    c("first_ts", "timestamp(ns, UTC)", false, "ns since epoch", "`ts` of the bucket's first run."),
    c("last_ts", "timestamp(ns, UTC)", false, "ns since epoch", "`ts` of the bucket's last run."),
    c("runs", "uint64", false, "-", "Every run (burst runs included)."),
    c("arrivals", "uint64", false, "-", "Arrival runs (the `arrival` rule of the CLI): the runs the sketches hold."),
    c("incorrect_runs", "uint64", false, "-", "Runs with `correct = false`."),
    c("incorrect_arrivals", "uint64", false, "-", "Arrival runs with `correct = false`."),
    c("event_inflated_runs", "uint64", false, "-", "Runs with `event_inflated = true`."),
    c("hw_throttled_arrivals", "uint64", false, "-", "Arrival runs with a hardware throttle reason (the verdicts' unhealthy mask)."),
    c("throttle_reasons", "uint64", true, "-", "Bitwise OR of the arrivals' throttle reason masks; null when none was read."),
    c("sm_clock_mhz_sum", "float64", false, "MHz", "Σ `sm_clock_mhz` over the arrivals that read it (mean = this ÷ `sm_clock_runs`)."),
    c("sm_clock_runs", "uint64", false, "-", "Arrivals that read the SM clock."),
    c("wall_ms_sketch", "binary", true, "ms", "DDSketch (α = 1 %) of the arrivals' `wall_ms`; null when none."),
    c("gpu_ms_sketch", "binary", true, "ms", "DDSketch of the arrivals' `gpu_ms`; null when none."),
    c("queue_ms_sketch", "binary", true, "ms", "DDSketch of the arrivals' `queue_ms`; null when none."),
    c("mcycles_sketch", "binary", true, "Mcycles", "DDSketch of the arrivals' event time per SM cycle, `gpu_ms × sm_clock_mhz / 1000`; null when none."),
    c("event_mcycles_sketch", "binary", true, "Mcycles", "The same over the arrivals whose event clock may be judged for health (quiet, or not preempted mid-kernel: `event_eligible` with the default 2 ms slice); null when none."),
];

/// The Arrow schema of the `rollups` table, with the table name and
/// [`ROLLUP_SCHEMA_VERSION`] in its metadata.
pub fn rollups_schema() -> SchemaRef {
    let fields: Vec<Field> = ROLLUP_COLUMNS
        .iter()
        .map(|d| Field::new(d.name, crate::record::parse_type(d.arrow_type), d.nullable))
        .collect();
    let mut meta = HashMap::new();
    meta.insert(
        ROLLUP_SCHEMA_VERSION_KEY.to_string(),
        ROLLUP_SCHEMA_VERSION.to_string(),
    );
    meta.insert(TABLE_KEY.to_string(), crate::layout::ROLLUPS.to_string());
    Arc::new(Schema::new_with_metadata(fields, meta))
}

fn ts_col(it: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b = TimestampNanosecondBuilder::new().with_timezone("UTC");
    for v in it {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn u64_col(it: impl Iterator<Item = Option<u64>>) -> ArrayRef {
    let mut b = UInt64Builder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn u32_col(it: impl Iterator<Item = Option<u32>>) -> ArrayRef {
    let mut b = UInt32Builder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn str_col<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn sketch_col<'a>(it: impl Iterator<Item = &'a Sketch>) -> ArrayRef {
    let mut b = BinaryBuilder::new();
    for s in it {
        if s.count() == 0 {
            b.append_null();
        } else {
            b.append_value(s.encode());
        }
    }
    Arc::new(b.finish())
}

/// Builds one Arrow batch of the `rollups` table.
pub fn rollups_batch(rows: &[RollupRecord]) -> Result<RecordBatch, SchemaError> {
    let it = || rows.iter();
    let mut f = Float64Builder::new();
    for r in rows {
        f.append_value(r.sm_clock_mhz_sum);
    }
    let columns: Vec<ArrayRef> = vec![
        ts_col(it().map(|r| r.key.bucket_ns)),
        u32_col(it().map(|r| Some(r.period_s))),
        str_col(it().map(|r| Some(r.key.node.as_str()))),
        str_col(it().map(|r| Some(r.key.gpu_uuid.as_str()))),
        u32_col(it().map(|r| Some(r.gpu_index))),
        str_col(it().map(|r| r.gpu_name.as_deref())),
        str_col(it().map(|r| Some(r.key.kernel.as_str()))),
        str_col(it().map(|r| Some(r.key.shape.as_str()))),
        str_col(it().map(|r| Some(r.precision.as_str()))),
        u32_col(it().map(|r| r.key.tenants)),
        u32_col(it().map(|r| r.key.busy_count)),
        ts_col(it().map(|r| r.first_ts_ns)),
        ts_col(it().map(|r| r.last_ts_ns)),
        u64_col(it().map(|r| Some(r.runs))),
        u64_col(it().map(|r| Some(r.arrivals))),
        u64_col(it().map(|r| Some(r.incorrect_runs))),
        u64_col(it().map(|r| Some(r.incorrect_arrivals))),
        u64_col(it().map(|r| Some(r.event_inflated_runs))),
        u64_col(it().map(|r| Some(r.hw_throttled_arrivals))),
        u64_col(it().map(|r| r.throttle_reasons)),
        Arc::new(f.finish()),
        u64_col(it().map(|r| Some(r.sm_clock_runs))),
        sketch_col(it().map(|r| &r.wall_ms)),
        sketch_col(it().map(|r| &r.gpu_ms)),
        sketch_col(it().map(|r| &r.queue_ms)),
        sketch_col(it().map(|r| &r.mcycles)),
        sketch_col(it().map(|r| &r.event_mcycles)),
    ];
    RecordBatch::try_new(rollups_schema(), columns).map_err(SchemaError::Arrow)
}

/// Column `name` of a `rollups` batch as the Arrow array type `T` (a
/// missing column or another type is an error).
pub fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, SchemaError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| SchemaError::MissingColumn(name.to_string()))?;
    col.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| SchemaError::WrongType {
            column: name.to_string(),
            found: col.data_type().to_string(),
            expected: std::any::type_name::<T>().to_string(),
        })
}

/// Which sketch columns [`rollups_from_batch`] decodes (a reader that needs
/// only some skips the others' cost; skipped ones read as empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SketchSet {
    /// `wall_ms_sketch`.
    pub wall: bool,
    /// `gpu_ms_sketch`.
    pub gpu: bool,
    /// `queue_ms_sketch`.
    pub queue: bool,
    /// `mcycles_sketch`.
    pub mcycles: bool,
    /// `event_mcycles_sketch`.
    pub event: bool,
}

impl SketchSet {
    /// Every sketch.
    pub const ALL: SketchSet = SketchSet {
        wall: true,
        gpu: true,
        queue: true,
        mcycles: true,
        event: true,
    };
}

/// Reads rows back from a `rollups` batch (the inverse of
/// [`rollups_batch`]), decoding the sketches in `want`.
pub fn rollups_from_batch(
    batch: &RecordBatch,
    want: SketchSet,
) -> Result<Vec<RollupRecord>, SchemaError> {
    let ts = |n| column::<TimestampNanosecondArray>(batch, n);
    let s = |n| column::<StringArray>(batch, n);
    let u32c = |n| column::<UInt32Array>(batch, n);
    let u64c = |n| column::<UInt64Array>(batch, n);
    let (bucket, first, last) = (ts("ts")?, ts("first_ts")?, ts("last_ts")?);
    let (node, uuid, name, kernel, shape, precision) = (
        s("node")?,
        s("gpu_uuid")?,
        s("gpu_name")?,
        s("kernel")?,
        s("shape")?,
        s("precision")?,
    );
    let (period, index, tenants) = (u32c("period_s")?, u32c("gpu_index")?, u32c("tenants")?);
    // Added after the first rollups: a file without it reads null.
    let busy = u32c("busy_count").ok();
    let (runs, arrivals, inc, inc_a, infl, hw, thr, clock_runs) = (
        u64c("runs")?,
        u64c("arrivals")?,
        u64c("incorrect_runs")?,
        u64c("incorrect_arrivals")?,
        u64c("event_inflated_runs")?,
        u64c("hw_throttled_arrivals")?,
        u64c("throttle_reasons")?,
        u64c("sm_clock_runs")?,
    );
    let clock_sum = column::<Float64Array>(batch, "sm_clock_mhz_sum")?;
    let sk = |n: &str, on: bool| -> Result<Option<&BinaryArray>, SchemaError> {
        if on {
            column::<BinaryArray>(batch, n).map(Some)
        } else {
            Ok(None)
        }
    };
    let wall = sk("wall_ms_sketch", want.wall)?;
    let gpu = sk("gpu_ms_sketch", want.gpu)?;
    let queue = sk("queue_ms_sketch", want.queue)?;
    let mcyc = sk("mcycles_sketch", want.mcycles)?;
    let event = sk("event_mcycles_sketch", want.event)?;
    let dec = |a: Option<&BinaryArray>, n: &str, i: usize| -> Result<Sketch, SchemaError> {
        match a {
            Some(a) if a.is_valid(i) => Sketch::decode(n, a.value(i)),
            _ => Ok(Sketch::new()),
        }
    };
    let opt_u64 = |a: &UInt64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        out.push(RollupRecord {
            key: RollupKey {
                bucket_ns: bucket.value(i),
                node: node.value(i).to_string(),
                gpu_uuid: uuid.value(i).to_string(),
                kernel: kernel.value(i).to_string(),
                shape: shape.value(i).to_string(),
                tenants: tenants.is_valid(i).then(|| tenants.value(i)),
                busy_count: busy.filter(|b| b.is_valid(i)).map(|b| b.value(i)),
            },
            period_s: period.value(i),
            gpu_index: index.value(i),
            gpu_name: name.is_valid(i).then(|| name.value(i).to_string()),
            precision: precision.value(i).to_string(),
            first_ts_ns: first.value(i),
            last_ts_ns: last.value(i),
            runs: runs.value(i),
            arrivals: arrivals.value(i),
            incorrect_runs: inc.value(i),
            incorrect_arrivals: inc_a.value(i),
            event_inflated_runs: infl.value(i),
            hw_throttled_arrivals: hw.value(i),
            throttle_reasons: opt_u64(thr, i),
            sm_clock_mhz_sum: clock_sum.value(i),
            sm_clock_runs: clock_runs.value(i),
            wall_ms: dec(wall, "wall_ms_sketch", i)?,
            gpu_ms: dec(gpu, "gpu_ms_sketch", i)?,
            queue_ms: dec(queue, "queue_ms_sketch", i)?,
            mcycles: dec(mcyc, "mcycles_sketch", i)?,
            event_mcycles: dec(event, "event_mcycles_sketch", i)?,
        });
    }
    Ok(out)
}

/// Whether `t` is the Arrow type of a sketch column.
pub fn is_sketch_type(t: &DataType) -> bool {
    matches!(t, DataType::Binary)
}

/// The Arrow type of the bucket and run times.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Kernel;

    fn rec(ts_ns: i64, wall: f64, arrival: bool) -> ProbeRecord {
        ProbeRecord {
            ts_ns,
            node: "n1".into(),
            gpu_uuid: "GPU-1".into(),
            kernel: Kernel::Fft,
            shape: "n=8".into(),
            precision: "fp32".into(),
            wall_ms: wall,
            gpu_ms: Some(wall / 2.0),
            queue_ms: Some(wall / 2.0),
            device: crate::DeviceFields {
                sm_clock_mhz: Some(1980),
                gpu_processes: Some(0),
                ..Default::default()
            },
            arrival: Some(arrival),
            correct: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn sketch_quantiles_are_within_alpha_after_merges_and_encoding() {
        let mut vals: Vec<f64> = (1..=10_000)
            .map(|i| 0.05 * f64::from(i).powf(1.3))
            .collect();
        let mut parts = vec![Sketch::new(), Sketch::new(), Sketch::new()];
        for (i, v) in vals.iter().enumerate() {
            parts[i % 3].add(*v);
        }
        let mut merged = Sketch::new();
        for p in &parts {
            merged.merge(&Sketch::decode("x", &p.encode()).unwrap());
        }
        vals.sort_by(f64::total_cmp);
        assert_eq!(merged.count(), 10_000);
        for q in [0.01, 0.5, 0.9, 0.99, 0.999] {
            let exact = vals[(q * (vals.len() - 1) as f64) as usize];
            let got = merged.quantile(q).unwrap();
            assert!(
                (got - exact).abs() <= SKETCH_ALPHA * exact,
                "q={q}: {got} vs {exact}"
            );
        }
        assert_eq!(merged.max(), Some(*vals.last().unwrap()));
    }

    #[test]
    fn latency_sketches_hold_arrivals_only_and_counts_hold_every_run() {
        let mut r = Rollup::new(MINUTE_SECS);
        let t0 = 1_704_067_200_000_000_000; // a whole minute
        r.add(&rec(t0, 1.0, true));
        r.add(&rec(t0 + 1, 100.0, false));
        let mut bad = rec(t0 + 2, 2.0, true);
        bad.correct = Some(false);
        r.add(&bad);
        r.add(&rec(t0 + 61_000_000_000, 3.0, true));
        let rows = r.take_closed(t0 + 60_000_000_000);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.runs, row.arrivals, row.incorrect_arrivals), (3, 2, 1));
        assert_eq!(row.wall_ms.count(), 2);
        assert_eq!(row.wall_ms.max(), Some(2.0));
        assert_eq!(r.len(), 1, "the open minute stays");
        let back = rollups_from_batch(&rollups_batch(&rows).unwrap(), SketchSet::ALL).unwrap();
        assert_eq!(back[0].key, row.key);
        assert_eq!(back[0].wall_ms.count(), 2);
        assert_eq!(back[0].sm_clock_mean_mhz(), Some(1980.0));
    }

    #[test]
    fn an_empty_sketch_is_null_not_zero() {
        let mut r = Rollup::new(MINUTE_SECS);
        let mut x = rec(0, 1.0, true);
        x.gpu_ms = None;
        x.queue_ms = None;
        r.add(&x);
        let b = rollups_batch(&r.take_closed(i64::MAX)).unwrap();
        assert!(b.column_by_name("gpu_ms_sketch").unwrap().is_null(0));
        assert!(b.column_by_name("wall_ms_sketch").unwrap().is_valid(0));
    }
}
