//! Retention: the writer thread deletes old files at start and after every
//! rotation, so the data dir stays within its age and size limits without a
//! separate cleaner. Only finished files count and go; a file being written
//! is never touched.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::layout::{is_visible_part, table_files};
use super::{io_err, ParquetError};
use crate::internal_events::{Counters, InternalEvent, ParquetRetentionDeleted};

/// Applies retention to the visible files under `data_dir` (all tables
/// together): deletes files modified more than `max_age` ago, then the
/// oldest files until the total is at most `max_bytes`. A zero limit is
/// off. Removes partition directories left empty. Counts deletions in
/// `parquet_retention_deleted` and returns how many it deleted. Blocking.
pub fn enforce_retention(
    data_dir: &Path,
    max_age: Duration,
    max_bytes: u64,
    counters: &Counters,
) -> Result<u64, ParquetError> {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for p in table_files(data_dir)? {
        if !is_visible_part(&p) {
            continue;
        }
        match fs::metadata(&p) {
            Ok(m) => files.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p)),
            // Deleted between listing and stat: nothing to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", &p)(e)),
        }
    }
    // Oldest first; the file name starts with the start time, so it breaks ties.
    files.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    let now = SystemTime::now();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut deleted = 0u64;
    for (mtime, size, path) in &files {
        let too_old =
            !max_age.is_zero() && now.duration_since(*mtime).unwrap_or(Duration::ZERO) > max_age;
        let too_big = max_bytes > 0 && total > max_bytes;
        if !too_old && !too_big {
            // Sorted by age: once a file is young enough and the total fits,
            // every later one is too.
            break;
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("delete", path)(e)),
        }
        total = total.saturating_sub(*size);
        deleted += 1;
        ParquetRetentionDeleted {
            path,
            too_old,
            too_big,
        }
        .emit(counters);
        // Remove `node=` then `date=` directories when they become empty;
        // `remove_dir` refuses non-empty ones, which is what we want.
        let mut dir = path.parent();
        for _ in 0..2 {
            match dir {
                Some(d) if fs::remove_dir(d).is_ok() => dir = d.parent(),
                _ => break,
            }
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            remaining_bytes = total,
            "parquet retention deleted old files"
        );
    }
    Ok(deleted)
}
