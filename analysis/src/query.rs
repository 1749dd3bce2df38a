//! `slicetrace sql`: any query over the registered tables (`probes`,
//! `arrivals` and `probe_files`, or `health`; see [`crate::source`]), printed
//! through the same renderers as the other commands. `sql` is raw: unlike the
//! other commands it adds no arrival filter, and `arrivals` is there to ask
//! for it.

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;

use crate::output::{Cell, Table};
use crate::scan::{self, ScanError};

fn is_numeric(t: &DataType) -> bool {
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(_, _))
}

/// Runs `sql` and collects the result as a [`Table`]. Numeric columns stay
/// numbers (JSON numbers, right-aligned cells); everything else is printed
/// with Arrow's display formatting.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Table, ScanError> {
    let mut table: Option<Table> = None;
    let opts = FormatOptions::default().with_null("");
    scan::for_each_batch(ctx, sql, None, |b| {
        let t = table.get_or_insert_with(|| {
            Table::new(b.schema().fields().iter().map(|f| f.name().clone()))
        });
        let mut cols: Vec<Vec<Cell>> = Vec::with_capacity(b.num_columns());
        for c in b.columns() {
            let n = c.len();
            if matches!(
                c.data_type(),
                DataType::Int64
                    | DataType::UInt64
                    | DataType::Int32
                    | DataType::UInt32
                    | DataType::Int16
                    | DataType::UInt16
                    | DataType::Int8
                    | DataType::UInt8
            ) {
                let a = cast(c, &DataType::UInt64).ok();
                let f = cast(c, &DataType::Float64).map_err(|_| ScanError::Column("?".into()))?;
                let f = f.as_primitive::<Float64Type>();
                cols.push(
                    (0..n)
                        .map(|i| match &a {
                            Some(u) if u.is_valid(i) => {
                                Cell::Int(u.as_primitive::<arrow::datatypes::UInt64Type>().value(i))
                            }
                            _ if f.is_valid(i) => Cell::Num(Some(f.value(i))),
                            _ => Cell::Num(None),
                        })
                        .collect(),
                );
            } else if is_numeric(c.data_type()) {
                let f = cast(c, &DataType::Float64).map_err(|_| ScanError::Column("?".into()))?;
                let f = f.as_primitive::<Float64Type>();
                cols.push(
                    (0..n)
                        .map(|i| Cell::Num(f.is_valid(i).then(|| f.value(i))))
                        .collect(),
                );
            } else {
                let fmt = ArrayFormatter::try_new(c.as_ref(), &opts)
                    .map_err(|e| ScanError::Consumer(format!("cannot display column: {e}")))?;
                cols.push(
                    (0..n)
                        .map(|i| Cell::Str(fmt.value(i).to_string()))
                        .collect(),
                );
            }
        }
        for i in 0..b.num_rows() {
            t.rows.push(cols.iter().map(|c| c[i].clone()).collect());
        }
        Ok(())
    })
    .await?;
    if let Some(t) = table {
        return Ok(t);
    }
    // No batch came back: still print the header.
    let df = ctx.sql(sql).await.map_err(|source| ScanError::Plan {
        sql: sql.to_string(),
        source,
    })?;
    Ok(Table::new(
        df.schema().fields().iter().map(|f| f.name().clone()),
    ))
}
