//! The local backlog: which files under the data directory are closed and
//! waiting, and which of them must go unshipped when the backlog is over
//! its limits.
//!
//! A file waits when its path is `DATA/<table>/date=…/node=…/<name>.parquet`
//! with no hidden segment: any table directory counts (`probes`, `health`,
//! later `rollups`), and the Parquet sink's temporary files
//! (`.part-….parquet.tmp`) never match, because the writer renames a file
//! to its final name only after its footer is written and synced. So a name
//! that matches is a complete file that will not change again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use slicetrace_schema::layout;

use crate::stats::DropReason;

/// A closed file waiting to be shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// Where it is.
    pub(crate) path: PathBuf,
    /// Its path relative to the data directory, `/`-separated: the object
    /// key under the destination's prefix.
    pub(crate) rel: String,
    /// Its size, bytes.
    pub(crate) size: u64,
    /// When it was last modified (closed).
    pub(crate) mtime: SystemTime,
}

/// Whether a segment is hidden from readers and from shipping (`.x`, `_x`),
/// as Hive readers treat them.
fn hidden(seg: &str) -> bool {
    seg.starts_with('.') || seg.starts_with('_')
}

/// Whether `segs` (table, partition dirs..., file name) name a closed data
/// file of the layout.
pub(crate) fn is_closed_data_file(segs: &[&str]) -> bool {
    let Some((name, dirs)) = segs.split_last() else {
        return false;
    };
    let Some((table, partition)) = dirs.split_first() else {
        return false;
    };
    !hidden(name)
        && name.ends_with(layout::FILE_SUFFIX)
        && !name.ends_with(layout::TMP_SUFFIX)
        && !hidden(table)
        && !partition.iter().any(|s| hidden(s))
        && layout::is_partition_path(partition.iter().copied())
}

fn walk(dir: &Path, segs: &mut Vec<String>, out: &mut Vec<Waiting>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        // Removed meanwhile (an emptied partition): nothing waits there.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            // Not UTF-8: no writer of ours made it.
            continue;
        };
        let ft = entry.file_type()?;
        segs.push(name);
        if ft.is_dir() && !hidden(segs.last().map_or("", String::as_str)) {
            walk(&entry.path(), segs, out)?;
        } else if ft.is_file() {
            let refs: Vec<&str> = segs.iter().map(String::as_str).collect();
            if is_closed_data_file(&refs) {
                match entry.metadata() {
                    Ok(m) => out.push(Waiting {
                        path: entry.path(),
                        rel: refs.join("/"),
                        size: m.len(),
                        mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        segs.pop();
    }
    Ok(())
}

/// Every closed data file under `data_dir`, oldest first (by modification
/// time, then path). A missing `data_dir` has none. Blocking.
pub(crate) fn scan(data_dir: &Path) -> io::Result<Vec<Waiting>> {
    let mut out = Vec::new();
    walk(data_dir, &mut Vec::new(), &mut out)?;
    out.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.rel.cmp(&b.rel)));
    Ok(out)
}

/// The limits of the backlog (0 or `None`: no limit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_files: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_age: Option<Duration>,
}

/// Splits `files` (oldest first) into what keeps waiting and what is
/// dropped, and why: first every file older than `max_age`, then the oldest
/// files until the rest fit `max_files` and `max_bytes`. The newest file is
/// never dropped for space, even when it alone is over the byte limit.
pub(crate) fn plan_drops(
    files: Vec<Waiting>,
    limits: Limits,
    now: SystemTime,
) -> (Vec<Waiting>, Vec<(Waiting, DropReason)>) {
    let mut dropped = Vec::new();
    let mut keep = Vec::with_capacity(files.len());
    for f in files {
        let age = now.duration_since(f.mtime).unwrap_or(Duration::ZERO);
        if limits.max_age.is_some_and(|max| age > max) {
            dropped.push((f, DropReason::MaxAge));
        } else {
            keep.push(f);
        }
    }
    let mut count = keep.len() as u64;
    let mut bytes: u64 = keep.iter().map(|f| f.size).sum();
    let over = |count: u64, bytes: u64| {
        (limits.max_files > 0 && count > limits.max_files)
            || (limits.max_bytes > 0 && bytes > limits.max_bytes)
    };
    let mut first_kept = 0;
    while count > 1 && over(count, bytes) {
        let f = &keep[first_kept];
        count -= 1;
        bytes -= f.size;
        first_kept += 1;
    }
    let kept = keep.split_off(first_kept);
    dropped.extend(keep.into_iter().map(|f| (f, DropReason::BacklogFull)));
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(rel: &str, size: u64, mtime_secs: u64) -> Waiting {
        Waiting {
            path: PathBuf::from("/d").join(rel),
            rel: rel.into(),
            size,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs),
        }
    }

    #[test]
    fn only_closed_files_in_partitions_wait() {
        let ok = |p: &str| is_closed_data_file(&p.split('/').collect::<Vec<_>>());
        assert!(ok("probes/date=2026-01-01/node=n/part-1-a.parquet"));
        assert!(ok("health/date=2026-01-01/node=n/part-1-a.parquet"));
        assert!(ok("rollups/date=2026-01-01/node=n/part-1-a.parquet"));
        // The writer's temporary names, in every spelling.
        assert!(!ok("probes/date=2026-01-01/node=n/.part-1-a.parquet.tmp"));
        assert!(!ok("probes/date=2026-01-01/node=n/part-1-a.parquet.tmp"));
        assert!(!ok("probes/date=2026-01-01/node=n/.part-1-a.parquet"));
        // Not in a partition, or somewhere hidden.
        assert!(!ok("probes/part-1-a.parquet"));
        assert!(!ok("state/health-baseline.json"));
        assert!(!ok("state/date=2026-01-01/node=n/x.json"));
        assert!(!ok(".trash/date=2026-01-01/node=n/part-1-a.parquet"));
        assert!(!ok("probes/date=2026-01-01/node=n/_tmp/part-1-a.parquet"));
        assert!(!ok("part-1-a.parquet"));
    }

    #[test]
    fn scan_finds_closed_files_oldest_first_and_skips_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("probes/date=2026-01-01/node=n");
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("part-2-b.parquet"), b"bb").unwrap();
        fs::write(part.join(".part-3-c.parquet.tmp"), b"half").unwrap();
        let older = part.join("part-1-a.parquet");
        fs::write(&older, b"a").unwrap();
        let t = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&older)
            .unwrap()
            .set_modified(t)
            .unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        fs::write(dir.path().join("state/health-baseline.json"), b"{}").unwrap();
        let got = scan(dir.path()).unwrap();
        let rels: Vec<_> = got.iter().map(|w| w.rel.as_str()).collect();
        assert_eq!(
            rels,
            [
                "probes/date=2026-01-01/node=n/part-1-a.parquet",
                "probes/date=2026-01-01/node=n/part-2-b.parquet"
            ]
        );
        assert_eq!(got[1].size, 2);
        assert!(scan(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn full_backlog_drops_the_oldest_never_the_newest() {
        let files: Vec<_> = (0..5)
            .map(|i| file(&format!("f{i}"), 10, 1000 + i))
            .collect();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2000);
        let limits = Limits {
            max_files: 3,
            max_bytes: 0,
            max_age: None,
        };
        let (keep, drop) = plan_drops(files.clone(), limits, now);
        let k: Vec<_> = keep.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(k, ["f2", "f3", "f4"]);
        assert!(drop.iter().all(|(_, r)| *r == DropReason::BacklogFull));
        assert_eq!(drop.len(), 2);
        // By bytes: 25 bytes allowed keeps the two newest.
        let limits = Limits {
            max_files: 0,
            max_bytes: 25,
            max_age: None,
        };
        let (keep, _) = plan_drops(files.clone(), limits, now);
        assert_eq!(keep.len(), 2);
        assert_eq!(keep[1].rel, "f4");
        // A newest file alone over the limit still stays.
        let limits = Limits {
            max_files: 0,
            max_bytes: 1,
            max_age: None,
        };
        let (keep, drop) = plan_drops(files, limits, now);
        assert_eq!(keep.len(), 1);
        assert_eq!(keep[0].rel, "f4");
        assert_eq!(drop.len(), 4);
    }

    #[test]
    fn retention_drops_files_older_than_max_age() {
        let files = vec![file("old", 1, 100), file("new", 1, 1900)];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2000);
        let limits = Limits {
            max_files: 0,
            max_bytes: 0,
            max_age: Some(Duration::from_secs(500)),
        };
        let (keep, drop) = plan_drops(files, limits, now);
        assert_eq!(keep.len(), 1);
        assert_eq!(drop.len(), 1);
        assert_eq!(drop[0].0.rel, "old");
        assert_eq!(drop[0].1, DropReason::MaxAge);
    }
}
