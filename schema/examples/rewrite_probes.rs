//! Rewrites `probes` Parquet files as this build's agent would write their
//! rows: records read back ([`probes_from_batch`]), sorted by GPU and time
//! (the agent's order within each encoded batch), then [`probes_batch`]
//! (stored precision, ids only for exported spans) and [`writer_properties`]
//! (encodings, zstd). For measuring bytes per row before and after on the
//! same rows (`docs/benchmarks.md`); not part of any product path.
//!
//! Usage: cargo run --release -p slicetrace-schema --example rewrite_probes -- OUT_DIR FILE...
//! Each FILE becomes OUT_DIR/<n>-<file name>.

use std::fs::File;
use std::path::PathBuf;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use slicetrace_schema::{
    probes_batch, probes_from_batch, probes_schema, writer_properties, DEFAULT_ROW_GROUP_ROWS,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: rewrite_probes OUT_DIR FILE...")?);
    std::fs::create_dir_all(&out)?;
    for (n, f) in args.enumerate() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f)?)?.build()?;
        let mut rows = Vec::new();
        for b in reader {
            rows.extend(probes_from_batch(&b?)?);
        }
        rows.sort_by_key(|r| (r.gpu_index, r.ts_ns));
        let name = PathBuf::from(&f);
        let dest = out.join(format!(
            "{n}-{}",
            name.file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("x.parquet")
        ));
        let schema = probes_schema();
        let props = writer_properties(&schema, DEFAULT_ROW_GROUP_ROWS, "rewrite_probes");
        let mut w = ArrowWriter::try_new(File::create(&dest)?, schema, Some(props))?;
        w.write(&probes_batch(&rows)?)?;
        w.close()?;
        println!("{f} -> {} ({} rows)", dest.display(), rows.len());
    }
    Ok(())
}
