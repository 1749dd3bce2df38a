//! Running one query over `probes` and handing its batches to a consumer,
//! with a progress indicator on stderr for scans that take more than about a
//! second (only when stderr is a terminal, so pipes and CI logs stay clean).
//!
//! Exact percentiles need every value of a group, so the commands let
//! DataFusion do the parallel part (listing, pruning, decoding, filtering,
//! projecting) and fold the resulting batches into per-group vectors here.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt32Type};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Errors raised while running a query.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The SQL did not plan (bad column, syntax error, bad `--where`).
    #[error("invalid query: {sql}")]
    Plan {
        /// The SQL that was sent.
        sql: String,
        /// The cause.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Reading or computing failed.
    #[error("query failed while reading the probes table")]
    Exec(#[source] datafusion::error::DataFusionError),
    /// A column of the result had an unexpected type.
    #[error("result column {0:?} is missing or has an unexpected type")]
    Column(String),
    /// A consumer failed.
    #[error("{0}")]
    Consumer(String),
}

/// Shows rows processed on stderr once a scan has run for a second.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    shown: bool,
    enabled: bool,
}

impl Progress {
    /// A progress indicator; `total_rows` gives a bar, `None` a spinner.
    pub fn new(total_rows: Option<u64>) -> Self {
        let bar = ProgressBar::with_draw_target(total_rows, ProgressDrawTarget::hidden());
        let style = match total_rows {
            Some(_) => ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} rows, eta {eta}",
            ),
            None => {
                ProgressStyle::with_template("{spinner} {elapsed_precise} {human_pos} rows kept")
            }
        };
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            start: Instant::now(),
            shown: false,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Counts `rows` more.
    pub fn inc(&mut self, rows: u64) {
        self.bar.inc(rows);
        if self.enabled && !self.shown && self.start.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    /// Removes the indicator.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `sql` and calls `f` on every non-empty batch.
pub async fn for_each_batch(
    ctx: &SessionContext,
    sql: &str,
    total_rows: Option<u64>,
    mut f: impl FnMut(&RecordBatch) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    tracing::debug!(%sql, "running query");
    let df = ctx.sql(sql).await.map_err(|source| ScanError::Plan {
        sql: sql.to_string(),
        source,
    })?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|source| ScanError::Plan {
            sql: sql.to_string(),
            source,
        })?;
    let mut progress = Progress::new(total_rows);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(ScanError::Exec)?;
        progress.inc(batch.num_rows() as u64);
        if batch.num_rows() > 0 {
            f(&batch)?;
        }
    }
    progress.finish();
    Ok(())
}

fn col(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef, ScanError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ScanError::Column(name.to_string()))?;
    if c.data_type() == to {
        return Ok(c.clone());
    }
    cast(c, to).map_err(|_| ScanError::Column(name.to_string()))
}

/// Column `name` as strings (nulls become `""`).
pub fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<String>, ScanError> {
    let a = col(batch, name, &DataType::Utf8)?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| {
            if a.is_null(i) {
                String::new()
            } else {
                a.value(i).to_string()
            }
        })
        .collect())
}

/// A string column, kept as an Arrow array.
pub fn string_array(batch: &RecordBatch, name: &str) -> Result<ArrayRef, ScanError> {
    col(batch, name, &DataType::Utf8)
}

/// Column `name` as `f64` (nulls become NaN).
pub fn floats(batch: &RecordBatch, name: &str) -> Result<Vec<f64>, ScanError> {
    let a = col(batch, name, &DataType::Float64)?;
    let a = a.as_primitive::<Float64Type>();
    Ok((0..a.len())
        .map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) })
        .collect())
}

/// Column `name` (a timestamp or integer) as `i64` nanoseconds.
pub fn ints(batch: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, ScanError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ScanError::Column(name.to_string()))?;
    let c = match c.data_type() {
        DataType::Timestamp(_, _) => cast(
            c,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
        )
        .and_then(|c| cast(&c, &DataType::Int64)),
        _ => cast(c, &DataType::Int64),
    }
    .map_err(|_| ScanError::Column(name.to_string()))?;
    let a = c.as_primitive::<Int64Type>();
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect())
}

/// Column `name` as optional `u32`.
pub fn u32s(batch: &RecordBatch, name: &str) -> Result<Vec<Option<u32>>, ScanError> {
    let a = col(batch, name, &DataType::UInt32)?;
    let a = a.as_primitive::<UInt32Type>();
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect())
}

/// Column `name` as optional `bool`.
pub fn bools(batch: &RecordBatch, name: &str) -> Result<Vec<Option<bool>>, ScanError> {
    let a = col(batch, name, &DataType::Boolean)?;
    let a = a.as_boolean();
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect())
}
