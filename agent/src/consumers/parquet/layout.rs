//! The sink's side of the on-disk layout: the names are defined once in
//! [`slicetrace_schema::layout`] (shared with the CLI and the synthetic
//! generator); this module turns them into paths for the writer thread
//! (where a new file goes, under which temporary name) and into the file
//! walks that recovery and retention run over every table.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use slicetrace_schema::layout;

use super::{io_err, ParquetError};

/// Where a new file of one table goes: its temporary and its final path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewFile {
    /// The hidden name it is written under.
    pub(super) tmp: PathBuf,
    /// The name it is renamed to once its footer is written and synced.
    pub(super) dest: PathBuf,
}

impl NewFile {
    /// A fresh, uniquely named file in partition directory `dir` whose first
    /// row is at `first_ts_ns`.
    pub(super) fn in_dir(dir: &Path, first_ts_ns: i64) -> Self {
        let name = layout::file_name(first_ts_ns, uuid::Uuid::new_v4());
        Self {
            tmp: dir.join(layout::tmp_name(&name)),
            dest: dir.join(name),
        }
    }
}

/// All regular files below `dir` (recursively); a missing `dir` is empty.
pub(super) fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ParquetError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let ft = entry.file_type().map_err(io_err("stat", &entry.path()))?;
        if ft.is_dir() {
            walk_files(&entry.path(), out)?;
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// All regular files of every table under `data_dir`.
pub(super) fn table_files(data_dir: &Path) -> Result<Vec<PathBuf>, ParquetError> {
    let mut files = Vec::new();
    for table in layout::TABLES {
        walk_files(&data_dir.join(table), &mut files)?;
    }
    Ok(files)
}

/// A finished data file (`part-….parquet`), which readers see.
pub(super) fn is_visible_part(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(layout::is_file_name)
}

/// `.part-X.parquet.tmp` → `part-X.parquet` in the same directory.
pub(super) fn final_path_of_tmp(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?.to_str()?;
    let inner = layout::final_name_of_tmp(name)?;
    Some(p.with_file_name(inner))
}

/// Syncs a directory, so that a rename inside it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<(), ParquetError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_names_map_to_final_names_and_never_match_parquet_glob() {
        let tmp = Path::new("/d/.part-20240101T000000Z-abc.parquet.tmp");
        assert_eq!(
            final_path_of_tmp(tmp),
            Some(PathBuf::from("/d/part-20240101T000000Z-abc.parquet"))
        );
        assert!(!is_visible_part(tmp));
        assert!(final_path_of_tmp(Path::new("/d/part-x.parquet")).is_none());
        assert!(final_path_of_tmp(Path::new("/d/.other.tmp")).is_none());
    }

    #[test]
    fn new_files_are_hidden_until_renamed() {
        // 2024-01-01T23:59:59Z
        let f = NewFile::in_dir(Path::new("/d"), 1_704_153_599_000_000_000);
        assert_eq!(final_path_of_tmp(&f.tmp), Some(f.dest.clone()));
        assert!(is_visible_part(&f.dest));
        assert!(!is_visible_part(&f.tmp));
        let name = f.dest.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.starts_with("part-20240101T235959Z-"), "{name}");
    }
}
