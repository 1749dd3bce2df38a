//! [`ProbeRecord`] and its Arrow form.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, ListArray,
    ListBuilder, StringArray, StringBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder,
    UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::columns::ColumnDoc;
use crate::precision::{ceil_us, round_ms, round_rel};
use crate::{
    Backend, Contention, Kernel, SchemaError, SpanId, TraceId, Verdict, WallClock, COLUMNS,
    SCHEMA_VERSION, SCHEMA_VERSION_KEY, TABLE_KEY,
};

/// One probe kernel run, joined with the device readings and the occupancy
/// that were current when it ran. One record is one row of the `probes`
/// table and one OTLP span.
///
/// Every field that can be unknown is an `Option`; `None` is written as a
/// null, never as 0 or an empty list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Launch time, ns since the Unix epoch (UTC).
    pub ts_ns: i64,
    /// Node name.
    pub node: String,
    /// Physical GPU UUID, or `CPU-<index>`.
    pub gpu_uuid: String,
    /// Device index on the node.
    pub gpu_index: u32,
    /// Product name.
    pub gpu_name: Option<String>,
    /// `cuda` or `cpu`.
    pub backend: Backend,
    /// `fft` or `gemm`.
    pub kernel: Kernel,
    /// Problem shape.
    pub shape: String,
    /// `fp32`, `fp16` or `bf16`.
    pub precision: String,
    /// `graph` or `stream` (CUDA), `None` (CPU).
    pub submit: Option<String>,
    /// FLOP per run.
    pub flops: f64,
    /// Probe cycle number.
    pub cycle: u64,
    /// Index inside the burst.
    pub burst_seq: u32,
    /// Event-clock execution time, ms.
    pub gpu_ms: Option<f64>,
    /// Host-clock launch-to-completion time, ms.
    pub wall_ms: f64,
    /// `wall_ms - gpu_ms`, ms.
    pub queue_ms: Option<f64>,
    /// Achieved TFLOP/s on the event clock.
    pub tflops: Option<f64>,
    /// Correctness check passed.
    pub correct: Option<bool>,
    /// Relative error of the check.
    pub rel_error: Option<f64>,
    /// The GPU's NVML readings around the run (the `sm_clock_mhz` …
    /// `sm_clock_mhz_after` columns), filled by the agent's telemetry in one
    /// piece.
    #[serde(flatten)]
    pub device: DeviceFields,
    /// Pods holding a replica of this GPU.
    pub pods: Option<Vec<String>>,
    /// `pods.len()`.
    pub pod_count: Option<u32>,
    /// Pods with a process on the GPU.
    pub active_pods: Option<Vec<String>>,
    /// Replicas per GPU (node label).
    pub replicas: Option<u32>,
    /// Sharing strategy (node label).
    pub sharing_strategy: Option<String>,
    /// Occupancy came from a stale cache.
    pub occupancy_stale: Option<bool>,
    /// Live verdict.
    pub verdict: Option<Verdict>,
    /// OTLP trace id (32 hex in the column).
    pub trace_id: Option<TraceId>,
    /// OTLP span id (16 hex in the column).
    pub span_id: Option<SpanId>,
    /// The run began at a random arrival moment (not right after the
    /// probe's own previous run). `None` in old files.
    pub arrival: Option<bool>,
    /// Planned gap before this arrival, ms.
    pub arrival_gap_ms: Option<f64>,
    /// Event time inflated against the quiet baseline while shared
    /// (preempted mid-kernel).
    pub event_inflated: Option<bool>,
    /// Live contention state.
    pub contention: Option<Contention>,
    /// Host monotonic clock from launch until the probe's wait returned, ms
    /// (what a caller that sleeps on completion sees). `None` in old files.
    pub host_wall_ms: Option<f64>,
    /// Which clock `wall_ms` (and `queue_ms`) came from. `None` in old files
    /// (then the host's).
    pub wall_clock: Option<WallClock>,
    /// Error bound of the GPU clock's calibration at this run, µs; `None`
    /// without GPU stamps.
    pub clock_error_us: Option<f64>,
    /// The span sampler chose this run's span tree for export (`false`: it
    /// was sampled out; the row keeps its `trace_id` either way). `None`
    /// when no OTLP exporter runs, and in old files.
    pub span_sampled: Option<bool>,
    /// Tenant processes NVML's per-process utilisation samples showed busy
    /// (SM share > 0) from one NVML sample period before launch to the
    /// row's completion, as `<tenant>=<sm_pct>` (`namespace/pod`, else
    /// `pid:<pid>`). `None` when unknown; empty when nobody was busy.
    pub busy_tenants: Option<Vec<String>>,
    /// `busy_tenants.len()`: busy tenant contexts around this run.
    pub busy_count: Option<u32>,
}

impl ProbeRecord {
    /// Whether this run counts as an arrival: the `arrival` column, or for
    /// rows written before it existed, the first FFT run of a burst (the
    /// same rule as [`crate::ARRIVAL_SQL`]).
    pub fn is_arrival(&self) -> bool {
        self.arrival
            .unwrap_or(self.burst_seq == 0 && self.kernel == Kernel::Fft)
    }

    /// Other compute processes sharing the GPU (the one definition of
    /// "tenants", same as [`crate::TENANTS_SQL`]); `None` when unknown.
    pub fn tenants(&self) -> Option<u32> {
        self.device.gpu_processes
    }
}

/// The NVML columns of a [`ProbeRecord`]: what the agent's telemetry read of
/// the GPU just before and just after the run. One struct, so the telemetry
/// fills it and the probe loop copies it onto each row in one assignment.
/// A reading the driver does not give is `None` (a null column), never 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceFields {
    /// SM clock read right before the run (before the burst in burst
    /// mode), MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz (full NVML sample, at most 1 s old).
    pub mem_clock_mhz: Option<u32>,
    /// GPU utilisation over NVML's own sample period, % (full sample).
    pub gpu_util_pct: Option<u32>,
    /// Memory-controller utilisation, % (full sample).
    pub mem_util_pct: Option<u32>,
    /// Board power draw, W (full sample).
    pub power_w: Option<f64>,
    /// GPU temperature, °C (full sample).
    pub temp_c: Option<u32>,
    /// Clocks-event reasons, OR of the readings right before and right
    /// after the run, idle bit 0x1 removed.
    pub throttle_reasons: Option<u64>,
    /// Framebuffer memory in use, MiB (full sample).
    pub fb_used_mib: Option<u64>,
    /// Compute processes on the GPU other than the agent.
    pub gpu_processes: Option<u32>,
    /// Those processes, `pid:name:used_mib`.
    pub processes: Option<Vec<String>>,
    /// SM clock read right after the run (after the burst), MHz.
    pub sm_clock_mhz_after: Option<u32>,
}

pub(crate) fn parse_type(t: &str) -> DataType {
    match t {
        "timestamp(ns, UTC)" => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        "utf8" => DataType::Utf8,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float64" => DataType::Float64,
        "bool" => DataType::Boolean,
        "binary" => DataType::Binary,
        "list<utf8>" => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        // COLUMNS is a compile-time constant covered by unit tests; an unknown
        // spelling there is a programming error caught before release.
        other => unreachable!("unknown arrow type {other} in column docs"),
    }
}

pub(crate) fn schema_from_docs(docs: &[ColumnDoc], table: &str) -> Schema {
    let fields: Vec<Field> = docs
        .iter()
        .map(|d| Field::new(d.name, parse_type(d.arrow_type), d.nullable))
        .collect();
    let mut meta = HashMap::new();
    meta.insert(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string());
    meta.insert(TABLE_KEY.to_string(), table.to_string());
    Schema::new_with_metadata(fields, meta)
}

/// The Arrow schema of the `probes` table, with the schema version and table
/// name in its metadata (which the Parquet writer copies into the footer).
pub fn probes_schema() -> SchemaRef {
    Arc::new(schema_from_docs(COLUMNS, "probes"))
}

fn list_array(values: impl Iterator<Item = Option<Vec<String>>>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for v in values {
        match v {
            Some(items) => {
                for s in items {
                    b.values().append_value(s);
                }
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

macro_rules! col {
    ($rows:expr, $builder:ty, |$r:ident| $e:expr) => {{
        let mut b = <$builder>::with_capacity($rows.len());
        for $r in $rows {
            b.append_option($e);
        }
        Arc::new(b.finish()) as ArrayRef
    }};
}

fn str_col<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in it {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// Ids become hex only here, at the edge of the on-disk format.
fn hex_col<T: std::fmt::Display>(it: impl Iterator<Item = Option<T>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in it {
        b.append_option(v.map(|v| v.to_string()));
    }
    Arc::new(b.finish())
}

/// Parses a value of a closed set from a utf8 cell; a word this build does
/// not know is [`SchemaError::UnknownValue`], naming the column.
fn word<T: std::str::FromStr>(column: &str, v: &str) -> Result<T, SchemaError> {
    v.parse().map_err(|_| SchemaError::UnknownValue {
        column: column.to_string(),
        value: v.to_string(),
    })
}

/// Whether `r`'s span tree went to an OTLP collector: only then do its ids
/// name something a user can look up, so only then are they written (schema
/// version 4; random ids cost about 30 bytes a row, more than all the rest).
fn exported(r: &ProbeRecord) -> bool {
    r.span_sampled == Some(true)
}

/// Builds one Arrow record batch of the `probes` table from `rows`, at the
/// stored precision of [`crate::precision`]; `trace_id` and `span_id` only
/// for rows whose spans were exported (`span_sampled = true`).
pub fn probes_batch(rows: &[ProbeRecord]) -> Result<RecordBatch, SchemaError> {
    let ts = {
        let mut b = TimestampNanosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
        for r in rows {
            b.append_value(r.ts_ns);
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        ts,
        str_col(rows.iter().map(|r| Some(r.node.as_str()))),
        str_col(rows.iter().map(|r| Some(r.gpu_uuid.as_str()))),
        col!(rows, UInt32Builder, |r| Some(r.gpu_index)),
        str_col(rows.iter().map(|r| r.gpu_name.as_deref())),
        str_col(rows.iter().map(|r| Some(r.backend.as_str()))),
        str_col(rows.iter().map(|r| Some(r.kernel.as_str()))),
        str_col(rows.iter().map(|r| Some(r.shape.as_str()))),
        str_col(rows.iter().map(|r| Some(r.precision.as_str()))),
        str_col(rows.iter().map(|r| r.submit.as_deref())),
        col!(rows, Float64Builder, |r| Some(r.flops)),
        col!(rows, UInt64Builder, |r| Some(r.cycle)),
        col!(rows, UInt32Builder, |r| Some(r.burst_seq)),
        col!(rows, Float64Builder, |r| r.gpu_ms),
        col!(rows, Float64Builder, |r| Some(round_ms(r.wall_ms))),
        col!(rows, Float64Builder, |r| r.queue_ms.map(round_ms)),
        col!(rows, Float64Builder, |r| r.tflops.map(round_rel)),
        col!(rows, BooleanBuilder, |r| r.correct),
        col!(rows, Float64Builder, |r| r.rel_error),
        col!(rows, UInt32Builder, |r| r.device.sm_clock_mhz),
        col!(rows, UInt32Builder, |r| r.device.mem_clock_mhz),
        col!(rows, UInt32Builder, |r| r.device.gpu_util_pct),
        col!(rows, UInt32Builder, |r| r.device.mem_util_pct),
        col!(rows, Float64Builder, |r| r.device.power_w.map(round_rel)),
        col!(rows, UInt32Builder, |r| r.device.temp_c),
        col!(rows, UInt64Builder, |r| r.device.throttle_reasons),
        col!(rows, UInt64Builder, |r| r.device.fb_used_mib),
        col!(rows, UInt32Builder, |r| r.device.gpu_processes),
        list_array(rows.iter().map(|r| r.device.processes.clone())),
        col!(rows, UInt32Builder, |r| r.device.sm_clock_mhz_after),
        list_array(rows.iter().map(|r| r.pods.clone())),
        col!(rows, UInt32Builder, |r| r.pod_count),
        list_array(rows.iter().map(|r| r.active_pods.clone())),
        col!(rows, UInt32Builder, |r| r.replicas),
        str_col(rows.iter().map(|r| r.sharing_strategy.as_deref())),
        col!(rows, BooleanBuilder, |r| r.occupancy_stale),
        str_col(rows.iter().map(|r| r.verdict.map(Verdict::as_str))),
        hex_col(rows.iter().map(|r| r.trace_id.filter(|_| exported(r)))),
        hex_col(rows.iter().map(|r| r.span_id.filter(|_| exported(r)))),
        col!(rows, BooleanBuilder, |r| r.arrival),
        col!(rows, Float64Builder, |r| r.arrival_gap_ms.map(round_ms)),
        col!(rows, BooleanBuilder, |r| r.event_inflated),
        str_col(rows.iter().map(|r| r.contention.map(Contention::as_str))),
        col!(rows, Float64Builder, |r| r.host_wall_ms.map(round_ms)),
        str_col(rows.iter().map(|r| r.wall_clock.map(WallClock::as_str))),
        col!(rows, Float64Builder, |r| r.clock_error_us.map(ceil_us)),
        col!(rows, BooleanBuilder, |r| r.span_sampled),
        list_array(rows.iter().map(|r| r.busy_tenants.clone())),
        col!(rows, UInt32Builder, |r| r.busy_count),
    ];
    RecordBatch::try_new(probes_schema(), columns).map_err(SchemaError::Arrow)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, SchemaError> {
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

fn opt<T>(valid: bool, v: T) -> Option<T> {
    valid.then_some(v)
}

fn list_at(a: &ListArray, i: usize) -> Option<Vec<String>> {
    if a.is_null(i) {
        return None;
    }
    let v = a.value(i);
    let s = v.as_any().downcast_ref::<StringArray>()?;
    Some(
        (0..s.len())
            .filter(|&j| s.is_valid(j))
            .map(|j| s.value(j).to_string())
            .collect(),
    )
}

/// Reads records back from a `probes` batch (the inverse of [`probes_batch`]).
/// Columns this build does not know are ignored; missing nullable ones read
/// as `None`, missing required ones are an error.
pub fn probes_from_batch(batch: &RecordBatch) -> Result<Vec<ProbeRecord>, SchemaError> {
    let ts = column::<TimestampNanosecondArray>(batch, "ts")?;
    let s = |n: &str| column::<StringArray>(batch, n);
    let u32c = |n: &str| column::<UInt32Array>(batch, n);
    let u64c = |n: &str| column::<UInt64Array>(batch, n);
    let f64c = |n: &str| column::<Float64Array>(batch, n);
    let bc = |n: &str| column::<BooleanArray>(batch, n);
    let lc = |n: &str| column::<ListArray>(batch, n);
    let (node, uuid, idx, name) = (
        s("node")?,
        s("gpu_uuid")?,
        u32c("gpu_index")?,
        s("gpu_name")?,
    );
    let (backend, kernel, shape, prec) =
        (s("backend")?, s("kernel")?, s("shape")?, s("precision")?);
    let submit = s("submit")?;
    let (flops, cycle, seq) = (f64c("flops")?, u64c("cycle")?, u32c("burst_seq")?);
    let (gpu_ms, wall_ms, queue_ms, tflops) = (
        f64c("gpu_ms")?,
        f64c("wall_ms")?,
        f64c("queue_ms")?,
        f64c("tflops")?,
    );
    let (correct, rel) = (bc("correct")?, f64c("rel_error")?);
    let (sm, mem, gu, mu) = (
        u32c("sm_clock_mhz")?,
        u32c("mem_clock_mhz")?,
        u32c("gpu_util_pct")?,
        u32c("mem_util_pct")?,
    );
    let (pw, temp, thr, fb, procs_n) = (
        f64c("power_w")?,
        u32c("temp_c")?,
        u64c("throttle_reasons")?,
        u64c("fb_used_mib")?,
        u32c("gpu_processes")?,
    );
    let (procs, sm_after, pods, pod_count, active) = (
        lc("processes")?,
        u32c("sm_clock_mhz_after")?,
        lc("pods")?,
        u32c("pod_count")?,
        lc("active_pods")?,
    );
    let (replicas, strategy, stale, verdict, trace, span) = (
        u32c("replicas")?,
        s("sharing_strategy")?,
        bc("occupancy_stale")?,
        s("verdict")?,
        s("trace_id")?,
        s("span_id")?,
    );
    let ostr = |a: &StringArray, i: usize| opt(a.is_valid(i), a.value(i).to_string());
    fn oword<T: std::str::FromStr>(
        column: &str,
        a: Option<&StringArray>,
        i: usize,
    ) -> Result<Option<T>, SchemaError> {
        match a {
            Some(a) if a.is_valid(i) => word(column, a.value(i)).map(Some),
            _ => Ok(None),
        }
    }
    // Columns added after schema version 1 shipped: absent in old files.
    let arrival = bc("arrival").ok();
    let gap = f64c("arrival_gap_ms").ok();
    let inflated = bc("event_inflated").ok();
    let contention = s("contention").ok();
    let host_wall = f64c("host_wall_ms").ok();
    let wall_clock = s("wall_clock").ok();
    let clock_err = f64c("clock_error_us").ok();
    let sampled = bc("span_sampled").ok();
    let busy = lc("busy_tenants").ok();
    let busy_n = u32c("busy_count").ok();
    let ob = |a: Option<&BooleanArray>, i: usize| a.and_then(|a| opt(a.is_valid(i), a.value(i)));
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        out.push(ProbeRecord {
            ts_ns: ts.value(i),
            node: node.value(i).to_string(),
            gpu_uuid: uuid.value(i).to_string(),
            gpu_index: idx.value(i),
            gpu_name: ostr(name, i),
            backend: word("backend", backend.value(i))?,
            kernel: word("kernel", kernel.value(i))?,
            shape: shape.value(i).to_string(),
            precision: prec.value(i).to_string(),
            submit: ostr(submit, i),
            flops: flops.value(i),
            cycle: cycle.value(i),
            burst_seq: seq.value(i),
            gpu_ms: opt(gpu_ms.is_valid(i), gpu_ms.value(i)),
            wall_ms: wall_ms.value(i),
            queue_ms: opt(queue_ms.is_valid(i), queue_ms.value(i)),
            tflops: opt(tflops.is_valid(i), tflops.value(i)),
            correct: opt(correct.is_valid(i), correct.value(i)),
            rel_error: opt(rel.is_valid(i), rel.value(i)),
            device: DeviceFields {
                sm_clock_mhz: opt(sm.is_valid(i), sm.value(i)),
                mem_clock_mhz: opt(mem.is_valid(i), mem.value(i)),
                gpu_util_pct: opt(gu.is_valid(i), gu.value(i)),
                mem_util_pct: opt(mu.is_valid(i), mu.value(i)),
                power_w: opt(pw.is_valid(i), pw.value(i)),
                temp_c: opt(temp.is_valid(i), temp.value(i)),
                throttle_reasons: opt(thr.is_valid(i), thr.value(i)),
                fb_used_mib: opt(fb.is_valid(i), fb.value(i)),
                gpu_processes: opt(procs_n.is_valid(i), procs_n.value(i)),
                processes: list_at(procs, i),
                sm_clock_mhz_after: opt(sm_after.is_valid(i), sm_after.value(i)),
            },
            pods: list_at(pods, i),
            pod_count: opt(pod_count.is_valid(i), pod_count.value(i)),
            active_pods: list_at(active, i),
            replicas: opt(replicas.is_valid(i), replicas.value(i)),
            sharing_strategy: ostr(strategy, i),
            occupancy_stale: opt(stale.is_valid(i), stale.value(i)),
            verdict: oword("verdict", Some(verdict), i)?,
            trace_id: oword("trace_id", Some(trace), i)?,
            span_id: oword("span_id", Some(span), i)?,
            arrival: ob(arrival, i),
            arrival_gap_ms: gap.and_then(|a| opt(a.is_valid(i), a.value(i))),
            event_inflated: ob(inflated, i),
            contention: oword("contention", contention, i)?,
            host_wall_ms: host_wall.and_then(|a| opt(a.is_valid(i), a.value(i))),
            wall_clock: oword("wall_clock", wall_clock, i)?,
            clock_error_us: clock_err.and_then(|a| opt(a.is_valid(i), a.value(i))),
            span_sampled: ob(sampled, i),
            busy_tenants: busy.and_then(|a| list_at(a, i)),
            busy_count: busy_n.and_then(|a| opt(a.is_valid(i), a.value(i))),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProbeRecord {
        ProbeRecord {
            ts_ns: 1_700_000_000_000_000_000,
            node: "n1".into(),
            gpu_uuid: "GPU-1234".into(),
            gpu_index: 0,
            gpu_name: Some("NVIDIA H100".into()),
            backend: Backend::Cuda,
            kernel: Kernel::Fft,
            shape: "c2c 1d n=4096 batch=8".into(),
            precision: "fp32".into(),
            flops: 1.0e6,
            cycle: 3,
            burst_seq: 1,
            gpu_ms: Some(0.05),
            // Values at the stored precision, so a round trip is exact.
            wall_ms: 0.0625,
            queue_ms: Some(0.0125 - 0.0125 % crate::precision::MS_QUANTUM),
            tflops: Some(0.015625),
            correct: Some(true),
            rel_error: Some(1e-7),
            pods: Some(vec!["a/b".into(), "c/d".into()]),
            pod_count: Some(2),
            device: DeviceFields {
                processes: Some(vec![]),
                ..Default::default()
            },
            verdict: Some(Verdict::Degraded),
            contention: Some(Contention::OverShared),
            trace_id: Some(TraceId::from_bytes([0x1f; 16])),
            span_id: Some(SpanId::from_bytes([0xa0; 8])),
            span_sampled: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_written_only_for_exported_spans() {
        let rows = [
            sample(),
            ProbeRecord {
                span_sampled: Some(false),
                ..sample()
            },
            ProbeRecord {
                span_sampled: None,
                ..sample()
            },
        ];
        let back = probes_from_batch(&probes_batch(&rows).expect("batch")).expect("read back");
        assert_eq!(back[0].trace_id, sample().trace_id);
        assert_eq!(back[0].span_id, sample().span_id);
        for r in &back[1..] {
            assert_eq!((r.trace_id, r.span_id), (None, None));
        }
    }

    #[test]
    fn clocks_are_stored_at_their_documented_precision() {
        let r = ProbeRecord {
            wall_ms: 1.234_567_8,
            queue_ms: Some(0.333_333_3),
            host_wall_ms: Some(1.299_999_9),
            arrival_gap_ms: Some(187.654_321),
            clock_error_us: Some(3.000_001),
            gpu_ms: Some(0.901_234_567),
            tflops: Some(51.234_567_89),
            device: DeviceFields {
                power_w: Some(312.456),
                ..Default::default()
            },
            ..sample()
        };
        let back = probes_from_batch(&probes_batch(std::slice::from_ref(&r)).expect("batch"))
            .expect("back");
        let b = &back[0];
        let q = crate::precision::MS_QUANTUM;
        for (got, want) in [
            (b.wall_ms, r.wall_ms),
            (b.queue_ms.expect("q"), 0.333_333_3),
            (b.host_wall_ms.expect("h"), 1.299_999_9),
            (b.arrival_gap_ms.expect("g"), 187.654_321),
        ] {
            assert!(
                (got - want).abs() <= q / 2.0 && got != want,
                "{want} -> {got}"
            );
            assert_eq!((got / q).fract(), 0.0);
        }
        let ce = b.clock_error_us.expect("ce");
        assert!(ce >= 3.000_001 && ce - 3.000_001 < crate::precision::US_QUANTUM);
        // gpu_ms is kept as measured.
        assert_eq!(b.gpu_ms, r.gpu_ms);
        for (got, want) in [(b.tflops, r.tflops), (b.device.power_w, r.device.power_w)] {
            let (g, w) = (got.expect("v"), want.expect("v"));
            assert!(((g - w) / w).abs() < 1e-6, "{w} -> {g}");
        }
    }

    #[test]
    fn round_trip_keeps_nulls_and_empty_lists_apart() {
        let rows = vec![
            sample(),
            ProbeRecord {
                pods: None,
                ..sample()
            },
        ];
        let batch = probes_batch(&rows).expect("batch");
        assert_eq!(batch.num_columns(), COLUMNS.len());
        let back = probes_from_batch(&batch).expect("read back");
        assert_eq!(back, rows);
        assert_eq!(back[0].device.processes, Some(vec![]));
        assert_eq!(back[1].pods, None);
        assert_eq!(back[0].device.sm_clock_mhz, None);
    }

    #[test]
    fn schema_carries_version_metadata() {
        let s = probes_schema();
        assert_eq!(
            s.metadata().get(SCHEMA_VERSION_KEY),
            Some(&SCHEMA_VERSION.to_string())
        );
        assert_eq!(
            s.metadata().get(TABLE_KEY).map(String::as_str),
            Some("probes")
        );
        assert_eq!(
            s.field_with_name("ts").expect("ts").data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
        );
    }

    #[test]
    fn missing_required_column_is_an_error() {
        let batch = probes_batch(&[sample()]).expect("batch");
        let idx = batch.schema().index_of("wall_ms").expect("idx");
        let mut b = batch.clone();
        b.remove_column(idx);
        assert!(
            matches!(probes_from_batch(&b), Err(SchemaError::MissingColumn(c)) if c == "wall_ms")
        );
    }

    #[test]
    fn columns_keep_their_words_and_hex() {
        let batch = probes_batch(&[sample()]).expect("batch");
        let s = |n: &str| {
            column::<StringArray>(&batch, n)
                .expect("col")
                .value(0)
                .to_string()
        };
        assert_eq!(
            [s("backend"), s("kernel"), s("verdict"), s("contention")],
            ["cuda", "fft", "degraded", "over-shared"]
        );
        assert_eq!(s("trace_id"), "1f".repeat(16));
        assert_eq!(s("span_id"), "a0".repeat(8));
    }

    #[test]
    fn unknown_kernel_or_verdict_in_a_file_is_an_error() {
        for (name, bad) in [("kernel", "conv"), ("verdict", "fine"), ("trace_id", "xyz")] {
            let batch = probes_batch(&[sample()]).expect("batch");
            let idx = batch.schema().index_of(name).expect("idx");
            let mut cols = batch.columns().to_vec();
            cols[idx] = Arc::new(StringArray::from(vec![bad]));
            let b = RecordBatch::try_new(batch.schema(), cols).expect("batch");
            assert!(
                matches!(probes_from_batch(&b), Err(SchemaError::UnknownValue { column, value }) if column == name && value == bad),
                "{name}"
            );
        }
    }
}
