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
use crate::{SchemaError, HEALTH_COLUMNS};

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
    /// `fft` or `gemm`.
    pub kernel: String,
    /// `healthy`, `degraded` or `unhealthy`.
    pub verdict: String,
    /// One-line reason.
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
}

/// Arrow schema of the `health` table.
pub fn health_schema() -> SchemaRef {
    Arc::new(schema_from_docs(HEALTH_COLUMNS, "health"))
}

/// Builds one `health` batch.
pub fn health_batch(rows: &[HealthRecord]) -> Result<RecordBatch, SchemaError> {
    let mut ts = TimestampNanosecondBuilder::new().with_timezone("UTC");
    let mut s: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::new()).collect();
    let mut idx = UInt32Builder::new();
    let mut u: Vec<UInt64Builder> = (0..4).map(|_| UInt64Builder::new()).collect();
    let mut f: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::new()).collect();
    for r in rows {
        ts.append_value(r.ts_ns);
        for (b, v) in s
            .iter_mut()
            .zip([&r.node, &r.gpu_uuid, &r.kernel, &r.verdict, &r.reason])
        {
            b.append_value(v);
        }
        idx.append_value(r.gpu_index);
        for (b, v) in u.iter_mut().zip([
            Some(r.window_secs),
            Some(r.samples),
            Some(r.correctness_failures),
            r.throttle_reasons,
        ]) {
            b.append_option(v);
        }
        for (b, v) in f.iter_mut().zip([
            r.wall_p50_ms,
            r.wall_p99_ms,
            r.gpu_p99_ms,
            r.queue_p99_ms,
            r.baseline_p99_ms,
            r.inflation,
        ]) {
            b.append_option(v);
        }
    }
    let mut s = s.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut u = u.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let f: Vec<ArrayRef> = f
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let next = |it: &mut dyn Iterator<Item = ArrayRef>| {
        it.next()
            .ok_or(SchemaError::MissingColumn("internal".into()))
    };
    let (node, uuid, kernel, verdict, reason) = (
        next(&mut s)?,
        next(&mut s)?,
        next(&mut s)?,
        next(&mut s)?,
        next(&mut s)?,
    );
    let (win, samples, fails, thr) = (next(&mut u)?, next(&mut u)?, next(&mut u)?, next(&mut u)?);
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        node,
        uuid,
        Arc::new(idx.finish()),
        kernel,
        verdict,
        reason,
        win,
        samples,
    ];
    cols.extend(f);
    cols.push(fails);
    cols.push(thr);
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
            kernel: "fft".into(),
            verdict: "healthy".into(),
            reason: "ok".into(),
            wall_p99_ms: Some(1.0),
            ..Default::default()
        };
        let b = health_batch(&[r.clone(), r]).expect("batch");
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.num_columns(), HEALTH_COLUMNS.len());
    }
}
