//! How every slicetrace Parquet file is written: the one set of writer
//! properties that the agent's Parquet sink, `slicetrace-load --out` and the
//! CLI's synthetic generator (`slicetrace gen-synthetic`) all use, so a file
//! reads the same whichever of them wrote it.
//!
//! The properties carry the Arrow schema's metadata (the schema version and
//! the table name) as plain footer key-values too: `ArrowWriter` embeds the
//! Arrow schema only as the opaque `ARROW:schema` entry, which DuckDB and
//! other non-Arrow readers ignore, and the CLI checks the plain key before it
//! reads a file.

use arrow::datatypes::Schema;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Zstd level of every column: level 3 (zstd's own default) compresses probe
/// rows well at a cost the writer thread does not notice.
pub const ZSTD_LEVEL: i32 = 3;

/// Columns stored with `DELTA_BINARY_PACKED` instead of a dictionary: the
/// launch time and the arrival counter, which rise within a GPU's run of
/// rows (the agent sorts each encoded batch by GPU and time), so their
/// deltas take a few bits where a dictionary of distinct values takes all.
pub const DELTA_COLUMNS: &[&str] = &["ts", "cycle"];

/// Columns stored with `BYTE_STREAM_SPLIT` instead of a dictionary: the
/// measured doubles, almost all distinct. Split into byte planes, the sign,
/// exponent and high mantissa bytes of similar values repeat, and the low
/// bytes that [`crate::precision`] leaves zero vanish under zstd. Not
/// `gpu_ms` and `tflops`: CUDA events tick in about 0.5 µs, so a file holds
/// few distinct values of them and a dictionary stores those in about a
/// third of the bytes (measured on the H100 rows: 0.97 against 2.85 bytes
/// per row for `gpu_ms`).
pub const SPLIT_COLUMNS: &[&str] = &[
    "wall_ms",
    "queue_ms",
    "host_wall_ms",
    "arrival_gap_ms",
    "clock_error_us",
    "power_w",
];

/// Columns whose name ends so hold encoded sketches (the `rollups` table):
/// `PLAIN`, without a dictionary.
pub const SKETCH_SUFFIX: &str = "_sketch";

/// Rows per row group unless a writer says otherwise (the agent's
/// `parquet.row_group_rows` default): small enough that the agent buffers
/// little, large enough for readers to skip by statistics.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 8192;

/// Writer properties for a file of `schema`: zstd at [`ZSTD_LEVEL`] (the
/// `rollups` table: snappy, see below), the encodings of [`DELTA_COLUMNS`],
/// [`SPLIT_COLUMNS`] and the [`SKETCH_SUFFIX`] columns for those of
/// `schema`'s columns (dictionaries for the rest), at most `row_group_rows`
/// rows per row group (at least 1), `schema`'s metadata as footer key-values
/// (sorted by key, so equal inputs give equal footers) and `created_by`
/// naming the program that wrote the file. DuckDB, pyarrow and polars read
/// these encodings and codecs (the end-to-end tests check it).
///
/// Rollup files are snappy: they are read far more often than written (a
/// fleet check over an hour of a 10,000-node fleet decompresses 40,000 of
/// them), and snappy decompresses them for about 15 % less of that check's
/// CPU than zstd, at 20 % more bytes (316 against 264 bytes per rollup row;
/// docs/benchmarks.md, "Rollups"). Raw rows keep zstd: they are written
/// once and mostly read by time-pruned queries, and bytes per row is their
/// budget.
pub fn writer_properties(
    schema: &Schema,
    row_group_rows: usize,
    created_by: &str,
) -> WriterProperties {
    let mut kv: Vec<KeyValue> = schema
        .metadata()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    kv.sort_by(|a, b| a.key.cmp(&b.key));
    // ZSTD_LEVEL is a constant inside zstd's range (a test checks it), so the
    // fallback to zstd's default level is never taken.
    let zstd = ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default();
    let table = schema.metadata().get(crate::TABLE_KEY).map(String::as_str);
    let mut builder = WriterProperties::builder();
    for f in schema.fields() {
        let name = f.name().as_str();
        let encoding = if DELTA_COLUMNS.contains(&name) {
            Encoding::DELTA_BINARY_PACKED
        } else if SPLIT_COLUMNS.contains(&name) {
            Encoding::BYTE_STREAM_SPLIT
        } else if name.ends_with(SKETCH_SUFFIX) {
            // Encoded sketches are all distinct: a dictionary only adds a
            // copy on read (and bytes).
            Encoding::PLAIN
        } else {
            continue;
        };
        let path = ColumnPath::from(name);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, encoding);
    }
    builder
        // Min/max per column chunk (what readers prune row groups by), not
        // per page: a page index costs about 2 kB a file, as much as 1.4
        // bytes per row of a 5-minute file of one GPU, and these files have
        // too few pages per column for it to skip anything.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_compression(if table == Some(crate::layout::ROLLUPS) {
            Compression::SNAPPY
        } else {
            Compression::ZSTD(zstd)
        })
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_key_value_metadata(Some(kv))
        .set_created_by(created_by.to_string())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{health_schema, probes_schema, SCHEMA_VERSION, SCHEMA_VERSION_KEY, TABLE_KEY};
    use parquet::schema::types::ColumnPath;

    fn footer_value(p: &WriterProperties, key: &str) -> Option<String> {
        p.key_value_metadata()?
            .iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.clone())
    }

    #[test]
    fn properties_carry_zstd_level_row_groups_and_schema_metadata() {
        let p = writer_properties(&probes_schema(), 1234, "slicetrace-test 0");
        assert_eq!(
            p.compression(&ColumnPath::from("wall_ms")),
            Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"))
        );
        assert_eq!(p.max_row_group_row_count(), Some(1234));
        assert_eq!(p.created_by(), "slicetrace-test 0");
        assert_eq!(
            footer_value(&p, SCHEMA_VERSION_KEY),
            Some(SCHEMA_VERSION.to_string())
        );
        assert_eq!(footer_value(&p, TABLE_KEY).as_deref(), Some("probes"));
        let h = writer_properties(&health_schema(), DEFAULT_ROW_GROUP_ROWS, "x");
        assert_eq!(footer_value(&h, TABLE_KEY).as_deref(), Some("health"));
    }

    #[test]
    fn clocks_and_counters_get_their_encodings_without_dictionaries() {
        let p = writer_properties(&probes_schema(), 10, "x");
        for c in DELTA_COLUMNS {
            let path = ColumnPath::from(*c);
            assert_eq!(
                p.encoding(&path),
                Some(Encoding::DELTA_BINARY_PACKED),
                "{c}"
            );
            assert!(!p.dictionary_enabled(&path), "{c}");
        }
        for c in SPLIT_COLUMNS {
            let path = ColumnPath::from(*c);
            assert_eq!(p.encoding(&path), Some(Encoding::BYTE_STREAM_SPLIT), "{c}");
            assert!(!p.dictionary_enabled(&path), "{c}");
        }
        // Every named column exists in the probes table (a rename would
        // silently drop its encoding).
        let schema = probes_schema();
        for c in DELTA_COLUMNS.iter().chain(SPLIT_COLUMNS) {
            assert!(schema.field_with_name(c).is_ok(), "{c}");
        }
        let node = ColumnPath::from("node");
        assert_eq!(p.encoding(&node), None);
        assert!(p.dictionary_enabled(&node));
    }

    #[test]
    fn rollup_files_are_snappy_with_plain_sketches_and_other_tables_zstd() {
        let schema = crate::rollups_schema();
        let r = writer_properties(&schema, 10, "x");
        let sketches: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|n| n.ends_with(SKETCH_SUFFIX))
            .collect();
        assert_eq!(sketches.len(), 5, "{sketches:?}");
        for c in &sketches {
            let path = ColumnPath::from(*c);
            assert_eq!(r.encoding(&path), Some(Encoding::PLAIN), "{c}");
            assert!(!r.dictionary_enabled(&path), "{c}");
            assert_eq!(r.compression(&path), Compression::SNAPPY, "{c}");
        }
        let node = ColumnPath::from("node");
        assert!(r.dictionary_enabled(&node));
        assert_eq!(r.compression(&node), Compression::SNAPPY);
        for s in [probes_schema(), health_schema()] {
            let p = writer_properties(&s, 10, "x");
            assert!(matches!(
                p.compression(&ColumnPath::from("node")),
                Compression::ZSTD(_)
            ));
        }
    }

    #[test]
    fn zero_row_group_rows_means_one() {
        let p = writer_properties(&probes_schema(), 0, "x");
        assert_eq!(p.max_row_group_row_count(), Some(1));
    }
}
