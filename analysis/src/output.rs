//! Rendering results: comfy-table tables for people, JSON and CSV for
//! scripts. Every command builds a [`Table`] of typed cells and picks the
//! renderer from `--format`; JSON keeps full `f64` precision (the DuckDB
//! cross-check compares to 1e-9), tables round for reading.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell as CCell, CellAlignment, ContentArrangement};
use serde_json::{Map, Value};

/// Output format, from `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// A table for the terminal.
    #[default]
    Table,
    /// An array of JSON objects, one per row.
    Json,
    /// CSV with a header line.
    Csv,
}

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Str(String),
    /// A number; `None` is null.
    Num(Option<f64>),
    /// A count.
    Int(u64),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Str(s) => s.clone(),
            Cell::Num(None) => "-".into(),
            Cell::Num(Some(v)) => fmt_num(*v),
            Cell::Int(n) => n.to_string(),
        }
    }

    fn csv(&self) -> String {
        match self {
            Cell::Str(s) => csv_quote(s),
            Cell::Num(None) => String::new(),
            Cell::Num(Some(v)) => format!("{v}"),
            Cell::Int(n) => n.to_string(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Str(s) => Value::String(s.clone()),
            Cell::Num(Some(v)) if v.is_finite() => serde_json::Number::from_f64(*v)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Cell::Num(_) => Value::Null,
            Cell::Int(n) => Value::from(*n),
        }
    }
}

/// Rounds for a terminal: four significant-ish digits without exponent noise.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a == 0.0 {
        "0".into()
    } else if a < 0.01 {
        format!("{v:.5}")
    } else if a < 1.0 {
        format!("{v:.4}")
    } else if a < 100.0 {
        format!("{v:.3}")
    } else if a < 100_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Headers and rows.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names (also the JSON keys).
    pub headers: Vec<String>,
    /// Rows, each as long as `headers`.
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// An empty table with these headers.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// As a comfy-table for the terminal.
    pub fn to_comfy(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(self.headers.iter().map(CCell::new));
        for r in &self.rows {
            t.add_row(r.iter().map(|c| {
                let cell = CCell::new(c.text());
                match c {
                    Cell::Str(_) => cell,
                    _ => cell.set_alignment(CellAlignment::Right),
                }
            }));
        }
        t.to_string()
    }

    /// As JSON values, one object per row.
    pub fn to_json_values(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for (h, c) in self.headers.iter().zip(r) {
                    m.insert(h.clone(), c.json());
                }
                Value::Object(m)
            })
            .collect()
    }

    /// As CSV with a header line.
    pub fn to_csv(&self) -> String {
        let mut out = self
            .headers
            .iter()
            .map(|h| csv_quote(h))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for r in &self.rows {
            out.push_str(&r.iter().map(Cell::csv).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.to_comfy(),
            Format::Json => serde_json::to_string_pretty(&Value::Array(self.to_json_values()))
                .unwrap_or_else(|_| "[]".into()),
            Format::Csv => self.to_csv().trim_end().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_quotes() {
        let mut t = Table::new(["a", "b"]);
        t.rows
            .push(vec![Cell::Str("x,y".into()), Cell::Num(Some(1.5))]);
        t.rows.push(vec![Cell::Str("q\"".into()), Cell::Num(None)]);
        assert_eq!(t.to_csv(), "a,b\n\"x,y\",1.5\n\"q\"\"\",\n");
    }

    #[test]
    fn json_keeps_full_precision_and_nulls() {
        let mut t = Table::new(["v"]);
        t.rows.push(vec![Cell::Num(Some(0.1 + 0.2))]);
        t.rows.push(vec![Cell::Num(None)]);
        let v = t.to_json_values();
        assert_eq!(v[0]["v"].as_f64(), Some(0.1 + 0.2));
        assert!(v[1]["v"].is_null());
    }
}
