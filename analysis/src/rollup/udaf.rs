//! SQL over the sketch columns: `sketch_merge(<binary sketch>)`, an
//! aggregate (DataFusion `AggregateUDFImpl`) that merges DDSketches into
//! one, and `sketch_quantile(<binary sketch>, q)`, a scalar function that
//! reads a quantile (±1 %). The partial state is the merged sketch's bytes,
//! so the aggregate runs in partial/final stages on any executor that has
//! it registered ([`register`]). The aggregate merges each row's bytes
//! straight into dense counters ([`SketchAcc`]) rather than decoding a
//! DDSketch per row; its state is the same standard encoding.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, Float64Array, Float64Builder};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use slicetrace_schema::SketchAcc;

/// Registers `sketch_merge` and `sketch_quantile` with `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(SketchMerge::new()));
    ctx.register_udf(ScalarUDF::from(SketchQuantile::new()));
}

/// `sketch_merge(binary) -> binary`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SketchMerge {
    signature: Signature,
}

impl SketchMerge {
    /// The aggregate.
    pub fn new() -> Self {
        SketchMerge {
            signature: Signature::exact(vec![DataType::Binary], Volatility::Immutable),
        }
    }
}

impl Default for SketchMerge {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for SketchMerge {
    fn name(&self) -> &str {
        "sketch_merge"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn accumulator(&self, _acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MergeAcc(SketchAcc::new())))
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("sketch", DataType::Binary, true))])
    }
}

#[derive(Debug)]
struct MergeAcc(SketchAcc);

impl MergeAcc {
    fn fold(&mut self, a: &ArrayRef) -> Result<()> {
        let Some(b) = a.as_any().downcast_ref::<BinaryArray>() else {
            return exec_err!("sketch_merge expects a binary sketch column");
        };
        for i in 0..b.len() {
            if b.is_valid(i) {
                if let Err(e) = self.0.merge_encoded("sketch_merge", b.value(i)) {
                    return exec_err!("{e}");
                }
            }
        }
        Ok(())
    }
    fn bytes(&self) -> ScalarValue {
        ScalarValue::Binary((self.0.count() > 0).then(|| self.0.encode()))
    }
}

impl Accumulator for MergeAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match values.first() {
            Some(a) => self.fold(a),
            None => Ok(()),
        }
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.bytes())
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.0.heap_bytes()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.bytes()])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
}

/// `sketch_quantile(binary, float64) -> float64`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SketchQuantile {
    signature: Signature,
}

impl SketchQuantile {
    /// The function.
    pub fn new() -> Self {
        SketchQuantile {
            signature: Signature::exact(
                vec![DataType::Binary, DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }
}

impl Default for SketchQuantile {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for SketchQuantile {
    fn name(&self) -> &str {
        "sketch_quantile"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (Some(s), Some(q)) = (arrays.first(), arrays.get(1)) else {
            return exec_err!("sketch_quantile(sketch, q) takes two arguments");
        };
        let (Some(s), Some(q)) = (
            s.as_any().downcast_ref::<BinaryArray>(),
            q.as_any().downcast_ref::<Float64Array>(),
        ) else {
            return exec_err!("sketch_quantile expects (binary, float64)");
        };
        let mut out = Float64Builder::with_capacity(s.len());
        for i in 0..s.len() {
            if s.is_null(i) || q.is_null(i) {
                out.append_null();
                continue;
            }
            let mut k = SketchAcc::new();
            match k.merge_encoded("sketch_quantile", s.value(i)) {
                Ok(()) => out.append_option(k.quantile(q.value(i))),
                Err(e) => return exec_err!("{e}"),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arrow::array::BinaryBuilder;
    use arrow::datatypes::Schema;
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use slicetrace_schema::Sketch;

    #[tokio::test]
    async fn sql_merges_sketches_in_partitions_and_reads_a_quantile_within_alpha() {
        // 1..=3000 split over 30 sketches, in three partitions (so the
        // partial states are merged too).
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Binary, true)]));
        let mut parts = Vec::new();
        for p in 0..3 {
            let mut b = BinaryBuilder::new();
            for k in 0..10 {
                let mut s = Sketch::new();
                for v in 1..=100 {
                    s.add(f64::from((p * 10 + k) * 100 + v));
                }
                b.append_value(s.encode());
            }
            b.append_null();
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(b.finish())]).unwrap();
            parts.push(vec![batch]);
        }
        let ctx = SessionContext::new();
        register(&ctx);
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, parts).unwrap()))
            .unwrap();
        let out = ctx
            .sql("SELECT sketch_quantile(sketch_merge(s), 0.99) AS p99 FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let p99 = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0);
        // Rank ⌊0.99 · 2999⌋ = 2969 holds the value 2970.
        assert!((p99 - 2970.0).abs() <= 0.01 * 2970.0, "{p99}");
    }
}
