//! `[parquet]` in the agent's config file: when files rotate, how many rows a
//! row group holds, how often buffered rows reach the disk and what retention
//! keeps. Validated once by [`ParquetSink::new`](super::ParquetSink::new),
//! before the writer thread starts; the thread trusts these values.

use serde::{Deserialize, Serialize};
use slicetrace_schema::DEFAULT_ROW_GROUP_ROWS;

use crate::field_error::FieldError;

/// Configuration of the Parquet sink (`[parquet]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Write Parquet files at all. Default `true` (the rule of every
    /// component: `enabled = false` turns it off).
    pub enabled: bool,
    /// Close the open file and start a new one after this long, ms.
    /// Default 300000 (5 min). Bounds what a crash can lose.
    pub rotate_interval_ms: u64,
    /// Close the open file once it reaches about this size, bytes.
    /// Default 64 MiB.
    pub rotate_bytes: u64,
    /// Rows per Parquet row group (also the most rows buffered in memory
    /// before they are encoded). Default 8192.
    pub row_group_rows: usize,
    /// Delete files older than this, ms (by modification time). Default
    /// 7 days. 0 disables the age limit.
    pub retention_age_ms: u64,
    /// Keep the visible files of all tables under this total size, bytes,
    /// deleting the oldest first. Default 10 GiB. 0 disables the size limit.
    pub retention_bytes: u64,
    /// How often buffered rows are encoded into the open file, ms.
    /// Default 10000 (10 s).
    pub flush_interval_ms: u64,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rotate_interval_ms: 300_000,
            rotate_bytes: 64 * 1024 * 1024,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            retention_age_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 10 * 1024 * 1024 * 1024,
            flush_interval_ms: 10_000,
        }
    }
}

impl ParquetConfig {
    /// Checks values that serde cannot: names the first bad field and why.
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field, reason: &str| Err(FieldError::new(field, reason));
        if self.rotate_interval_ms == 0 {
            return bad("rotate_interval_ms", "must be greater than 0");
        }
        if self.rotate_bytes == 0 {
            return bad("rotate_bytes", "must be greater than 0");
        }
        if self.row_group_rows == 0 {
            return bad("row_group_rows", "must be greater than 0");
        }
        if self.flush_interval_ms == 0 {
            return bad("flush_interval_ms", "must be greater than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: ParquetConfig = toml::from_str("rotate_bytes = 1024").expect("parse");
        assert_eq!(c.rotate_bytes, 1024);
        assert_eq!(c.rotate_interval_ms, 300_000);
        assert_eq!(c.row_group_rows, 8192);
        assert!(c.enabled);
        assert!(toml::from_str::<ParquetConfig>("rotate_mb = 1").is_err());
        let bad = ParquetConfig {
            row_group_rows: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("row_group_rows"));
    }
}
