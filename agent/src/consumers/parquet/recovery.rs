//! Recovery of leftover temporary files, the first thing the writer thread
//! does at start. A crash, a kill or a shutdown that ran out of time leaves
//! `.part-….parquet.tmp` files behind: one whose footer and rows read back
//! (the stop came between footer and rename) is renamed into place; any
//! other is removed. Either way no temporary file outlives a restart.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use slicetrace_schema::layout;

use super::layout::{final_path_of_tmp, sync_dir, walk_files};
use super::{io_err, ParquetError};
use crate::internal_events::{Counters, InternalEvent, ParquetTmpRecovered, ParquetTmpRemoved};

/// What [`recover`] did with the temporary files it found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Final paths of temporary files that were readable and renamed into place.
    pub recovered: Vec<PathBuf>,
    /// Temporary files that were unreadable and removed.
    pub removed: Vec<PathBuf>,
}

/// Recovers leftover temporary files under `data_dir` (from a crash or a
/// shutdown that ran out of time): a file whose footer is valid and whose
/// rows all decode is renamed into place, any other is removed. Counts them
/// in `parquet_tmp_recovered` / `parquet_tmp_removed`. Blocking: call it off
/// the async runtime (the sink calls it on its writer thread at start).
pub fn recover(data_dir: &Path, counters: &Counters) -> Result<RecoveryReport, ParquetError> {
    let mut report = RecoveryReport::default();
    for table in layout::TABLES {
        let mut files = Vec::new();
        walk_files(&data_dir.join(table), &mut files)?;
        for tmp in files {
            let Some(dest) = final_path_of_tmp(&tmp) else {
                continue;
            };
            if readable_parquet(&tmp) && !dest.exists() {
                fs::rename(&tmp, &dest).map_err(io_err("rename", &tmp))?;
                if let Some(dir) = dest.parent() {
                    sync_dir(dir)?;
                }
                ParquetTmpRecovered { path: &dest }.emit(counters);
                report.recovered.push(dest);
            } else {
                fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
                ParquetTmpRemoved { path: &tmp }.emit(counters);
                report.removed.push(tmp);
            }
        }
    }
    Ok(report)
}

/// The footer parses and every row group decodes.
fn readable_parquet(p: &Path) -> bool {
    let Ok(f) = File::open(p) else {
        return false;
    };
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(f) else {
        return false;
    };
    let Ok(reader) = builder.build() else {
        return false;
    };
    reader.into_iter().all(|b| b.is_ok())
}
