//! Running one query over `probes` and handing its batches to a consumer,
//! with a progress indicator on stderr for scans that take more than about a
//! second (only when stderr is a terminal, so pipes and CI logs stay clean).
//!
//! Exact percentiles need every value of a group, so the commands let
//! DataFusion do the parallel part (listing, pruning, decoding, filtering,
//! projecting) and fold the resulting batches into per-group vectors here.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt32Type};
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Cell;

/// Errors raised while running a query.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A column named in `--where`, `--by` or the SQL does not exist. One
    /// line: the name and its nearest valid matches, not DataFusion's list
    /// of every field.
    #[error("unknown column {column:?}{}", suggest(.suggestions))]
    UnknownColumn {
        /// The name as written.
        column: String,
        /// The closest valid names, best first (may be empty).
        suggestions: Vec<String>,
    },
    /// The SQL did not plan (syntax error, bad `--where`). The SQL that was
    /// sent is logged at debug level (`SLICETRACE_LOG=debug`).
    #[error("invalid query")]
    Plan {
        /// The SQL that was sent.
        sql: String,
        /// The cause.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Reading or computing failed.
    #[error("query failed while reading the table")]
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

fn suggest(names: &[String]) -> String {
    match names {
        [] => "; list the columns with: slicetrace sql DATA \"DESCRIBE probes\"".to_string(),
        [one] => format!("; did you mean {one}?"),
        more => format!("; did you mean one of {}?", more.join(", ")),
    }
}

/// Edit distance (Levenshtein) between two names, case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (
        a.to_lowercase().chars().collect(),
        b.to_lowercase().chars().collect(),
    );
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to three names of `valid` closest to `name`: within an edit distance
/// of a third of the name (at least 2), or containing it, or contained in it.
pub fn nearest(name: &str, valid: &[String]) -> Vec<String> {
    let lname = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = valid
        .iter()
        .filter_map(|v| {
            let d = distance(name, v);
            let lv = v.to_lowercase();
            let related =
                lv.len() >= 3 && lname.len() >= 3 && (lv.contains(&lname) || lname.contains(&lv));
            (d <= limit || related).then_some((d, v))
        })
        .collect();
    scored.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, v) in scored {
        if !out.contains(v) {
            out.push(v.clone());
        }
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// Turns a planning error into [`ScanError::UnknownColumn`] when its root
/// cause is a field that does not exist, else into [`ScanError::Plan`].
fn plan_error(sql: &str, source: DataFusionError) -> ScanError {
    if let DataFusionError::SchemaError(err, _) = source.find_root() {
        let SchemaError::FieldNotFound {
            field,
            valid_fields,
        } = err.as_ref()
        else {
            return ScanError::Plan {
                sql: sql.to_string(),
                source,
            };
        };
        let mut valid: Vec<String> = valid_fields.iter().map(|c| c.name.clone()).collect();
        valid.sort();
        valid.dedup();
        return ScanError::UnknownColumn {
            column: field.name.clone(),
            suggestions: nearest(&field.name, &valid),
        };
    }
    ScanError::Plan {
        sql: sql.to_string(),
        source,
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
    let df = ctx.sql(sql).await.map_err(|e| plan_error(sql, e))?;
    let mut stream = df.execute_stream().await.map_err(|e| plan_error(sql, e))?;
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

/// One group-key value, typed so that numbers print as numbers (JSON) and
/// sort numerically, and null stays null.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyVal {
    /// Null (sorts first).
    Null,
    /// An integer column's value.
    Int(i64),
    /// Anything else, as Arrow displays it.
    Text(String),
}

impl KeyVal {
    /// As a table cell: numbers right-aligned, null as `-` (JSON null).
    pub fn cell(&self) -> Cell {
        match self {
            KeyVal::Null => Cell::Num(None),
            KeyVal::Int(v) => u64::try_from(*v).map_or(Cell::Num(Some(*v as f64)), Cell::Int),
            KeyVal::Text(s) => Cell::Str(s.clone()),
        }
    }

    /// As text for labels (`-` for null).
    pub fn label(&self) -> String {
        match self {
            KeyVal::Null => "-".into(),
            KeyVal::Int(v) => v.to_string(),
            KeyVal::Text(s) => s.clone(),
        }
    }
}

/// A group-key column of one batch, for [`KeyColumn::get`].
pub struct KeyColumn {
    ints: Option<arrow::array::Int64Array>,
    text: ArrayRef,
}

impl KeyColumn {
    /// Reads column `name` of `batch`.
    pub fn new(batch: &RecordBatch, name: &str) -> Result<Self, ScanError> {
        let c = batch
            .column_by_name(name)
            .ok_or_else(|| ScanError::Column(name.to_string()))?;
        let ints = if c.data_type().is_integer() {
            let a = cast(c, &DataType::Int64).map_err(|_| ScanError::Column(name.to_string()))?;
            Some(a.as_primitive::<Int64Type>().clone())
        } else {
            None
        };
        Ok(KeyColumn {
            ints,
            text: col(batch, name, &DataType::Utf8)?,
        })
    }

    /// The text of row `i` (for hashing; `None` when null).
    pub fn text(&self, i: usize) -> Option<&str> {
        let a = self.text.as_string::<i32>();
        a.is_valid(i).then(|| a.value(i))
    }

    /// The typed value of row `i`.
    pub fn get(&self, i: usize) -> KeyVal {
        if self.text.is_null(i) {
            return KeyVal::Null;
        }
        match &self.ints {
            Some(a) => KeyVal::Int(a.value(i)),
            None => KeyVal::Text(self.text.as_string::<i32>().value(i).to_string()),
        }
    }
}

/// Group numbers for rows, by the values of some key columns, kept across
/// batches: the one pass of the exact report. A key column's values get a
/// number of their own first (a dictionary column once per distinct entry,
/// a string column through a short list of the values seen last, so the
/// few nodes and kernels of a batch are found by comparing, not hashing),
/// then the tuple of those numbers gets the group's. No row's strings are
/// copied; a group's typed key values are made once, when it first appears.
#[derive(Debug, Default)]
pub struct GroupIndex {
    columns: Vec<Interner>,
    groups: HashMap<Box<[u32]>, u32>,
    keys: Vec<Vec<KeyVal>>,
    /// Recently seen tuples (key ids, group), most recent first.
    recent: Vec<(Box<[u32]>, u32)>,
}

/// Numbers for the distinct values of one key column.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<KeyVal, u32>,
    values: Vec<KeyVal>,
}

impl Interner {
    fn id(&mut self, v: KeyVal) -> u32 {
        if let Some(&id) = self.ids.get(&v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.ids.insert(v, id);
        id
    }

    fn id_of_str(&mut self, v: &str) -> u32 {
        // Look up by the borrowed text first: most calls find it.
        if let Some(&id) = self.ids.get(&KeyVal::Text(v.to_string())) {
            return id;
        }
        self.id(KeyVal::Text(v.to_string()))
    }

    /// The value numbers of `a`'s rows.
    fn column_ids(&mut self, a: &ArrayRef, name: &str) -> Result<Vec<u32>, ScanError> {
        use arrow::array::{DictionaryArray, StringViewArray};
        use arrow::datatypes::{
            Int16Type, Int32Type, Int8Type, UInt16Type, UInt32Type as U32, UInt8Type,
        };
        let n = a.len();
        let null = |me: &mut Self| me.id(KeyVal::Null);
        // Strings: a short list of (text, id) seen last in this batch.
        fn strings<'a>(
            me: &mut Interner,
            n: usize,
            get: impl Fn(usize) -> Option<&'a str>,
        ) -> Vec<u32> {
            let mut recent: Vec<(&str, u32)> = Vec::with_capacity(8);
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let id = match get(i) {
                    None => me.id(KeyVal::Null),
                    Some(v) => match recent.iter().find(|(t, _)| *t == v) {
                        Some(&(_, id)) => id,
                        None => {
                            let id = me.id_of_str(v);
                            if recent.len() == 8 {
                                recent.pop();
                            }
                            recent.insert(0, (v, id));
                            id
                        }
                    },
                };
                out.push(id);
            }
            out
        }
        macro_rules! dict {
            ($kt:ty) => {{
                let d = a
                    .as_any()
                    .downcast_ref::<DictionaryArray<$kt>>()
                    .ok_or_else(|| ScanError::Column(name.to_string()))?;
                let values = cast(d.values(), &DataType::Utf8)
                    .map_err(|_| ScanError::Column(name.to_string()))?;
                let vs = values.as_string::<i32>();
                let map: Vec<u32> = (0..vs.len())
                    .map(|j| {
                        if vs.is_null(j) {
                            self.id(KeyVal::Null)
                        } else {
                            self.id_of_str(vs.value(j))
                        }
                    })
                    .collect();
                let nullid = null(self);
                let keys = d.keys();
                return Ok((0..n)
                    .map(|i| {
                        if keys.is_null(i) {
                            nullid
                        } else {
                            map.get(keys.value(i) as usize).copied().unwrap_or(nullid)
                        }
                    })
                    .collect());
            }};
        }
        match a.data_type() {
            DataType::Utf8 => {
                let s = a.as_string::<i32>();
                Ok(strings(self, n, |i| s.is_valid(i).then(|| s.value(i))))
            }
            DataType::LargeUtf8 => {
                let s = a.as_string::<i64>();
                Ok(strings(self, n, |i| s.is_valid(i).then(|| s.value(i))))
            }
            DataType::Utf8View => {
                let s = a
                    .as_any()
                    .downcast_ref::<StringViewArray>()
                    .ok_or_else(|| ScanError::Column(name.to_string()))?;
                Ok(strings(self, n, |i| s.is_valid(i).then(|| s.value(i))))
            }
            DataType::Dictionary(k, _) => match k.as_ref() {
                DataType::Int8 => dict!(Int8Type),
                DataType::Int16 => dict!(Int16Type),
                DataType::Int32 => dict!(Int32Type),
                DataType::UInt8 => dict!(UInt8Type),
                DataType::UInt16 => dict!(UInt16Type),
                DataType::UInt32 => dict!(U32),
                _ => self.fallback(a, name),
            },
            t if t.is_integer() => {
                let c =
                    cast(a, &DataType::Int64).map_err(|_| ScanError::Column(name.to_string()))?;
                let c = c.as_primitive::<Int64Type>();
                let mut last: Option<(i64, u32)> = None;
                Ok((0..n)
                    .map(|i| {
                        if c.is_null(i) {
                            return self.id(KeyVal::Null);
                        }
                        let v = c.value(i);
                        match last {
                            Some((lv, id)) if lv == v => id,
                            _ => {
                                let id = self.id(KeyVal::Int(v));
                                last = Some((v, id));
                                id
                            }
                        }
                    })
                    .collect())
            }
            _ => self.fallback(a, name),
        }
    }

    /// Any other type, by its text (as [`KeyColumn`] shows it).
    fn fallback(&mut self, a: &ArrayRef, name: &str) -> Result<Vec<u32>, ScanError> {
        let t = cast(a, &DataType::Utf8).map_err(|_| ScanError::Column(name.to_string()))?;
        let s = t.as_string::<i32>();
        Ok((0..a.len())
            .map(|i| {
                if s.is_null(i) {
                    self.id(KeyVal::Null)
                } else {
                    self.id_of_str(s.value(i))
                }
            })
            .collect())
    }
}

impl GroupIndex {
    /// An index over `columns` key columns.
    pub fn new(columns: usize) -> Self {
        GroupIndex {
            columns: (0..columns).map(|_| Interner::default()).collect(),
            ..Default::default()
        }
    }

    /// Groups so far.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no group exists yet.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key values of group `g`, in column order.
    pub fn keys(&self, g: usize) -> &[KeyVal] {
        &self.keys[g]
    }

    /// The group number of every row of `batch` by the columns `names`
    /// (the same names, in the same order, on every call).
    pub fn assign(&mut self, batch: &RecordBatch, names: &[String]) -> Result<Vec<u32>, ScanError> {
        let n = batch.num_rows();
        if names.is_empty() {
            if self.keys.is_empty() {
                self.keys.push(Vec::new());
            }
            return Ok(vec![0; n]);
        }
        let ids: Vec<Vec<u32>> = names
            .iter()
            .zip(self.columns.iter_mut())
            .map(|(name, interner)| {
                let a = batch
                    .column_by_name(name)
                    .ok_or_else(|| ScanError::Column(name.to_string()))?;
                interner.column_ids(a, name)
            })
            .collect::<Result<_, _>>()?;
        let mut tuple = vec![0u32; names.len()];
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            for (t, col) in tuple.iter_mut().zip(&ids) {
                *t = col[i];
            }
            let g = match self.recent.iter().find(|(k, _)| **k == tuple[..]) {
                Some(&(_, g)) => g,
                None => {
                    let g = match self.groups.get(&tuple[..]) {
                        Some(&g) => g,
                        None => {
                            let g = self.keys.len() as u32;
                            self.keys.push(
                                tuple
                                    .iter()
                                    .zip(&self.columns)
                                    .map(|(&id, c)| c.values[id as usize].clone())
                                    .collect(),
                            );
                            self.groups.insert(tuple.clone().into_boxed_slice(), g);
                            g
                        }
                    };
                    if self.recent.len() == 8 {
                        self.recent.pop();
                    }
                    self.recent.insert(0, (tuple.clone().into_boxed_slice(), g));
                    g
                }
            };
            out.push(g);
        }
        Ok(out)
    }
}

/// Column `name` as a `Float64` array without copying when it is one
/// already (nulls stay nulls).
pub fn f64_array(batch: &RecordBatch, name: &str) -> Result<arrow::array::Float64Array, ScanError> {
    let a = col(batch, name, &DataType::Float64)?;
    Ok(a.as_primitive::<Float64Type>().clone())
}

/// Column `name` (a timestamp or integer) as an `Int64`-valued array of
/// nanoseconds, without copying when it is a nanosecond timestamp already.
pub fn ns_array(batch: &RecordBatch, name: &str) -> Result<arrow::array::Int64Array, ScanError> {
    use arrow::datatypes::{TimeUnit, TimestampNanosecondType};
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ScanError::Column(name.to_string()))?;
    if let DataType::Timestamp(TimeUnit::Nanosecond, _) = c.data_type() {
        let t = c.as_primitive::<TimestampNanosecondType>();
        return Ok(arrow::array::Int64Array::new(
            t.values().clone(),
            t.nulls().cloned(),
        ));
    }
    let v = ints(batch, name)?;
    Ok(v.into_iter().collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_index_numbers_rows_by_key_values_across_batches_and_types() {
        use arrow::array::{DictionaryArray, StringArray, StringViewArray, UInt32Array};
        use arrow::datatypes::{Field, Schema, UInt16Type};
        use std::sync::Arc;
        let names: Vec<String> = ["node", "kernel", "tenants"].map(String::from).to_vec();
        let batch = |node: ArrayRef, kernel: ArrayRef, tenants: Vec<Option<u32>>| {
            let t: ArrayRef = Arc::new(UInt32Array::from(tenants));
            let schema = Schema::new(vec![
                Field::new("node", node.data_type().clone(), true),
                Field::new("kernel", kernel.data_type().clone(), true),
                Field::new("tenants", DataType::UInt32, true),
            ]);
            RecordBatch::try_new(Arc::new(schema), vec![node, kernel, t]).expect("batch")
        };
        // A partition column (dictionary) and a string view, as DataFusion
        // gives them; then plain strings for the same values.
        let dict: DictionaryArray<UInt16Type> =
            vec!["n1", "n1", "n2", "n1", "n2"].into_iter().collect();
        let b1 = batch(
            Arc::new(dict),
            Arc::new(StringViewArray::from(vec![
                Some("fft"),
                Some("gemm"),
                Some("fft"),
                Some("fft"),
                None,
            ])),
            vec![Some(0), Some(0), Some(0), None, Some(3)],
        );
        let b2 = batch(
            Arc::new(StringArray::from(vec!["n2", "n1", "n3"])),
            Arc::new(StringArray::from(vec![None, Some("gemm"), Some("fft")])),
            vec![Some(3), Some(0), Some(0)],
        );
        let mut ix = GroupIndex::new(names.len());
        let g1 = ix.assign(&b1, &names).expect("b1");
        let g2 = ix.assign(&b2, &names).expect("b2");
        assert_eq!(g1, vec![0, 1, 2, 3, 4]);
        // Same values, other array types: the same groups; a new one last.
        assert_eq!(g2, vec![4, 1, 5]);
        assert_eq!(ix.len(), 6);
        let t = |s: &str| KeyVal::Text(s.into());
        assert_eq!(ix.keys(3), &[t("n1"), t("fft"), KeyVal::Null]);
        assert_eq!(ix.keys(4), &[t("n2"), KeyVal::Null, KeyVal::Int(3)]);
        assert_eq!(ix.keys(5), &[t("n3"), t("fft"), KeyVal::Int(0)]);
        // No key columns: one group.
        let mut all = GroupIndex::new(0);
        assert_eq!(all.assign(&b2, &[]).expect("none"), vec![0, 0, 0]);
        assert_eq!(all.len(), 1);
        assert!(matches!(
            ix.assign(&b2, &["nope".to_string()]),
            Err(ScanError::Column(_))
        ));
    }

    #[test]
    fn nearest_names_come_first() {
        let valid: Vec<String> = ["wall_ms", "gpu_ms", "queue_ms", "node", "kernel", "tenants"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearest("wal_ms", &valid)[0], "wall_ms");
        assert_eq!(nearest("tenant", &valid), vec!["tenants".to_string()]);
        assert!(nearest("zzzzzzzz", &valid).is_empty());
        assert_eq!(distance("kernel", "KERNEL"), 0);
    }

    #[test]
    fn unknown_column_is_one_line() {
        let e = ScanError::UnknownColumn {
            column: "wal_ms".into(),
            suggestions: vec!["wall_ms".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown column \"wal_ms\"; did you mean wall_ms?"
        );
    }
}
