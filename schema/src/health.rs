//! [`HealthRecord`]: one live verdict, as written to the small `health` table.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampNanosecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::record::schema_from_docs;
use crate::{Kernel, SchemaError, HEALTH_COLUMNS};

/// One evaluation of the live verdict for a GPU and kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Evaluation time, ns since epoch.
    pub ts_ns: i64,
    /// Node name.
    pub node: String,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Device index.
    pub gpu_index: u32,
    /// The probe kernel (written as `fft` or `gemm`).
    pub kernel: Kernel,
    /// Health: `healthy`, `unknown`, `degraded` or `unhealthy`.
    pub verdict: String,
    /// One-line reason of the health verdict.
    pub reason: String,
    /// Window length, s.
    pub window_secs: u64,
    /// Runs in the window.
    pub samples: u64,
    /// p50 wall, ms.
    pub wall_p50_ms: Option<f64>,
    /// p99 wall, ms.
    pub wall_p99_ms: Option<f64>,
    /// p99 gpu, ms.
    pub gpu_p99_ms: Option<f64>,
    /// p99 queue, ms.
    pub queue_p99_ms: Option<f64>,
    /// Baseline p99 wall, ms.
    pub baseline_p99_ms: Option<f64>,
    /// wall p99 / baseline p99.
    pub inflation: Option<f64>,
    /// Failed correctness checks in the window.
    pub correctness_failures: u64,
    /// Throttle reasons seen in the window.
    pub throttle_reasons: Option<u64>,
    /// Bounded reason of the health verdict ([`crate::Reason`]).
    pub health_reason: Option<String>,
    /// Baseline the event clock was judged against (`learned`, `sku`).
    pub health_baseline_source: Option<String>,
    /// Contention state (`ok`, `contended`, `over-shared`).
    pub contention: Option<String>,
    /// Bounded reason of the contention state.
    pub contention_reason: Option<String>,
    /// One-line contention reason, with the tenant count.
    pub contention_detail: Option<String>,
    /// Baseline the wall clock was judged against (`slo`, `learned`, `sku`).
    pub contention_baseline_source: Option<String>,
    /// Largest tenant count in the window.
    pub tenants: Option<u32>,
    /// p50 of the event time per SM cycle, millions of cycles.
    pub event_p50_mcycles: Option<f64>,
    /// The baseline it was judged against, millions of cycles.
    pub event_baseline_mcycles: Option<f64>,
    /// The tenant with the largest attributed share of this GPU's wait in
    /// the window (`namespace/pod`, else `pid:<pid>`); `None` when no
    /// arrival in the window had a busy tenant, or busy tenants are unknown.
    pub top_tenant: Option<String>,
    /// Its attributed share of the window's total wait (0–1).
    pub top_tenant_wait_share: Option<f64>,
    /// The span sampler's decision for this evaluation's span (`false`:
    /// not exported). Not a column: it travels from the verdicts' fan-out
    /// to the OTLP exporter only. `None`: no decision (exported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_sampled: Option<bool>,
}

/// Arrow schema of the `health` table.
pub fn health_schema() -> SchemaRef {
    Arc::new(schema_from_docs(HEALTH_COLUMNS, "health"))
}

/// Builds one `health` batch.
pub fn health_batch(rows: &[HealthRecord]) -> Result<RecordBatch, SchemaError> {
    fn strs<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
        let mut b = StringBuilder::new();
        for x in v {
            b.append_option(x);
        }
        Arc::new(b.finish())
    }
    fn u64s(v: impl Iterator<Item = Option<u64>>) -> ArrayRef {
        let mut b = UInt64Builder::new();
        for x in v {
            b.append_option(x);
        }
        Arc::new(b.finish())
    }
    fn u32s(v: impl Iterator<Item = Option<u32>>) -> ArrayRef {
        let mut b = UInt32Builder::new();
        for x in v {
            b.append_option(x);
        }
        Arc::new(b.finish())
    }
    fn f64s(v: impl Iterator<Item = Option<f64>>) -> ArrayRef {
        let mut b = Float64Builder::new();
        for x in v {
            b.append_option(x);
        }
        Arc::new(b.finish())
    }
    let mut ts = TimestampNanosecondBuilder::new().with_timezone("UTC");
    for r in rows {
        ts.append_value(r.ts_ns);
    }
    let it = || rows.iter();
    // In the order of HEALTH_COLUMNS.
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        strs(it().map(|r| Some(r.node.as_str()))),
        strs(it().map(|r| Some(r.gpu_uuid.as_str()))),
        u32s(it().map(|r| Some(r.gpu_index))),
        strs(it().map(|r| Some(r.kernel.as_str()))),
        strs(it().map(|r| Some(r.verdict.as_str()))),
        strs(it().map(|r| Some(r.reason.as_str()))),
        u64s(it().map(|r| Some(r.window_secs))),
        u64s(it().map(|r| Some(r.samples))),
        f64s(it().map(|r| r.wall_p50_ms)),
        f64s(it().map(|r| r.wall_p99_ms)),
        f64s(it().map(|r| r.gpu_p99_ms)),
        f64s(it().map(|r| r.queue_p99_ms)),
        f64s(it().map(|r| r.baseline_p99_ms)),
        f64s(it().map(|r| r.inflation)),
        u64s(it().map(|r| Some(r.correctness_failures))),
        u64s(it().map(|r| r.throttle_reasons)),
        strs(it().map(|r| r.health_reason.as_deref())),
        strs(it().map(|r| r.health_baseline_source.as_deref())),
        strs(it().map(|r| r.contention.as_deref())),
        strs(it().map(|r| r.contention_reason.as_deref())),
        strs(it().map(|r| r.contention_detail.as_deref())),
        strs(it().map(|r| r.contention_baseline_source.as_deref())),
        u32s(it().map(|r| r.tenants)),
        f64s(it().map(|r| r.event_p50_mcycles)),
        f64s(it().map(|r| r.event_baseline_mcycles)),
        strs(it().map(|r| r.top_tenant.as_deref())),
        f64s(it().map(|r| r.top_tenant_wait_share)),
    ];
    RecordBatch::try_new(health_schema(), cols).map_err(SchemaError::Arrow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_batch_matches_schema() {
        let r = HealthRecord {
            node: "n".into(),
            gpu_uuid: "GPU-1".into(),
            kernel: Kernel::Fft,
            verdict: "healthy".into(),
            reason: "ok".into(),
            wall_p99_ms: Some(1.0),
            contention: Some("contended".into()),
            tenants: Some(3),
            ..Default::default()
        };
        let b = health_batch(&[r.clone(), r]).expect("batch");
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.num_columns(), HEALTH_COLUMNS.len());
    }

    /// Two columns of the same type swapped in `health_batch` still make a
    /// valid batch: only values read back by column name catch it.
    #[test]
    fn health_batch_puts_each_field_in_its_named_column() {
        use arrow::array::AsArray;
        use arrow::datatypes::TimestampNanosecondType;
        use arrow::util::display::array_value_to_string;

        // Every value differs from every other, so any swap shows.
        let r = HealthRecord {
            ts_ns: 1_700_000_000_123_456_789,
            node: "node-a".into(),
            gpu_uuid: "GPU-1".into(),
            gpu_index: 7,
            kernel: Kernel::Gemm,
            verdict: "degraded".into(),
            reason: "wall p99 high".into(),
            window_secs: 60,
            samples: 1234,
            wall_p50_ms: Some(1.5),
            wall_p99_ms: Some(2.5),
            gpu_p99_ms: Some(3.5),
            queue_p99_ms: Some(4.5),
            baseline_p99_ms: Some(5.5),
            inflation: Some(6.5),
            correctness_failures: 9,
            throttle_reasons: Some(36),
            health_reason: Some("event-slow".into()),
            health_baseline_source: Some("learned".into()),
            contention: Some("contended".into()),
            contention_reason: Some("wait-over-baseline".into()),
            contention_detail: Some("3 tenants".into()),
            contention_baseline_source: Some("slo".into()),
            tenants: Some(3),
            event_p50_mcycles: Some(7.5),
            event_baseline_mcycles: Some(8.5),
            top_tenant: Some("ml/train-a".into()),
            top_tenant_wait_share: Some(0.25),
            span_sampled: None,
        };
        let want: &[(&str, &str)] = &[
            ("node", "node-a"),
            ("gpu_uuid", "GPU-1"),
            ("gpu_index", "7"),
            ("kernel", "gemm"),
            ("verdict", "degraded"),
            ("reason", "wall p99 high"),
            ("window_secs", "60"),
            ("samples", "1234"),
            ("wall_p50_ms", "1.5"),
            ("wall_p99_ms", "2.5"),
            ("gpu_p99_ms", "3.5"),
            ("queue_p99_ms", "4.5"),
            ("baseline_p99_ms", "5.5"),
            ("inflation", "6.5"),
            ("correctness_failures", "9"),
            ("throttle_reasons", "36"),
            ("health_reason", "event-slow"),
            ("health_baseline_source", "learned"),
            ("contention", "contended"),
            ("contention_reason", "wait-over-baseline"),
            ("contention_detail", "3 tenants"),
            ("contention_baseline_source", "slo"),
            ("tenants", "3"),
            ("event_p50_mcycles", "7.5"),
            ("event_baseline_mcycles", "8.5"),
            ("top_tenant", "ml/train-a"),
            ("top_tenant_wait_share", "0.25"),
        ];
        assert_eq!(want.len() + 1, HEALTH_COLUMNS.len(), "every column but ts");
        // Second row: every optional field absent, so it must read back null.
        let b = health_batch(&[r.clone(), HealthRecord::default()]).expect("batch");
        let col = |name: &str| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        let ts = col("ts").as_primitive::<TimestampNanosecondType>();
        assert_eq!(ts.value(0), r.ts_ns);
        for (name, value) in want {
            let c = col(name);
            assert_eq!(
                array_value_to_string(c, 0).expect("display"),
                *value,
                "column {name}"
            );
            let nullable = HEALTH_COLUMNS
                .iter()
                .find(|d| d.name == *name)
                .expect("documented")
                .nullable;
            assert_eq!(c.is_null(1), nullable, "column {name} in the empty row");
        }
    }
}
