//! `slicetrace rollup`: compaction of minute rollups into hour rollups, and
//! minute rollups built from raw rows written before the agent wrote them.
//!
//! **`--to hour`**, per `date=/node=` directory: the minute files whose
//! rows all lie in one finished hour (before the hour that holds `now`)
//! are folded into hour rows, with the directory's existing hour files,
//! into one file per node and date, `part-<date>T000000Z-hour.parquet`
//! (one file per node-day rather than per node-hour: a day of a 10,000-node
//! fleet is 10,000 files to open, not 240,000; a file from before, one per
//! hour, is folded in at the next run). The new file is written under a
//! hidden temporary name, synced and renamed over the old one (readers see
//! the old or the new file, never half of one); its footer lists every
//! file it holds (`slicetrace.rollup_sources`). Only then are those minute
//! files (and older hour files) removed. A run cut off anywhere is safe:
//! before the rename nothing changed; after it, readers skip the files the
//! hour file lists, and the next run removes them without folding them in
//! again. Rerunning on compacted data changes nothing (idempotent), and
//! counts are kept exactly (sketches merge losslessly; a test checks the
//! totals).
//!
//! On an object store (`s3://BUCKET/PREFIX`, where the agents ship) the
//! same steps run with objects: the hour file is written in one PUT under
//! its stable name (an object is visible whole or not at all, so no
//! temporary name is needed), and only after that PUT succeeded are the
//! minute objects it holds deleted. Cut off in between, readers skip the
//! minute objects the hour file lists and the next run deletes them.
//!
//! **`--from-raw`** reads the raw `probes` rows through DataFusion and
//! writes minute rollups, one file per node and hour,
//! `part-<hour>-fromraw.parquet` (a rerun replaces it: idempotent). An
//! hour of a node that already has other rollup files (the agent's, or an
//! hour file) is left alone, so runs are never counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use serde::Serialize;
use slicetrace_schema::rollup::{bucket_start, HOUR_SECS, MINUTE_SECS, ROLLUP_SOURCES_KEY};
use slicetrace_schema::{
    layout, rollups_batch, rollups_schema, writer_properties, Backend, DeviceFields, Kernel,
    ProbeRecord, Rollup, RollupRecord, SketchSet,
};

use super::read::{self, rows_of};
use super::RollupError;

/// Suffix (before `.parquet`) of an hour file's name.
pub const HOUR_TAG: &str = "hour";
/// Suffix of a file built from raw rows.
pub const FROM_RAW_TAG: &str = "fromraw";

const HOUR_NS: i64 = HOUR_SECS as i64 * 1_000_000_000;
/// Seconds per day: hour rows are kept in one file per node and date.
pub const DAY_SECS: u32 = 86_400;

/// What a compaction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// Hour files written (new or replaced; one per node and date).
    pub hour_files_written: usize,
    /// Minute files folded into hour files and removed.
    pub minute_files_compacted: usize,
    /// Files already held by an hour file (a cut-off run), removed.
    pub leftovers_removed: usize,
    /// Minute files left: their hour is not finished.
    pub minute_files_kept: usize,
    /// Runs in the rows folded this time (equal before and after).
    pub runs_folded: u64,
}

/// Writes `rows` to `dir/name` atomically: hidden temporary name, footer,
/// fsync, rename, directory fsync. `sources` go to the footer.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    rows: &[RollupRecord],
    sources: &[String],
    created_by: &str,
) -> Result<PathBuf, RollupError> {
    fs::create_dir_all(dir).map_err(RollupError::io("create directory", dir))?;
    let dest = dir.join(name);
    let tmp = dir.join(layout::tmp_name(name));
    let result = (|| {
        let file = File::create(&tmp).map_err(RollupError::io("create", &tmp))?;
        let file = encode(file, &tmp, rows, sources, created_by)?;
        file.sync_all().map_err(RollupError::io("sync", &tmp))?;
        fs::rename(&tmp, &dest).map_err(RollupError::io("rename", &tmp))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(RollupError::io("sync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}

/// Writes `rows` as a rollups Parquet file into `out` (`path` names it in
/// errors), with `sources` in the footer.
fn encode<W: std::io::Write + Send>(
    out: W,
    path: &Path,
    rows: &[RollupRecord],
    sources: &[String],
    created_by: &str,
) -> Result<W, RollupError> {
    let batch = rollups_batch(rows).map_err(|source| RollupError::Schema {
        path: path.to_path_buf(),
        source,
    })?;
    let mut schema = (*rollups_schema()).clone();
    if !sources.is_empty() {
        let mut meta = schema.metadata().clone();
        meta.insert(ROLLUP_SOURCES_KEY.to_string(), sources.join("\n"));
        schema = schema.with_metadata(meta);
    }
    let schema = std::sync::Arc::new(schema);
    let props = writer_properties(&schema, 65_536, created_by);
    let pq = |source| RollupError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(pq)?;
    let batch = batch
        .with_schema(schema.clone())
        .map_err(|e| pq(e.into()))?;
    w.write(&batch).map_err(pq)?;
    w.into_inner().map_err(pq)
}

/// Writes `rows` as `name` in the node directory `d`: [`write_atomic`]
/// locally; in an object store one PUT of the whole file, which readers
/// see whole or not at all.
fn write_in(
    d: &read::NodeDir,
    name: &str,
    rows: &[RollupRecord],
    sources: &[String],
) -> Result<(), RollupError> {
    match &d.store {
        None => write_atomic(&d.dir, name, rows, sources, created_by()).map(|_| ()),
        Some(s) => {
            let key = d.dir.join(name);
            let body = encode(Vec::new(), &key, rows, sources, created_by())?;
            s.put(&key, body)
        }
    }
}

fn hour_name(hour_ns: i64, tag: &str) -> String {
    let start = chrono::DateTime::from_timestamp_nanos(hour_ns).format("%Y%m%dT%H%M%SZ");
    format!(
        "{}{start}-{tag}{}",
        layout::FILE_PREFIX,
        layout::FILE_SUFFIX
    )
}

fn is_hour_file(name: &str) -> bool {
    name.ends_with(&format!("-{HOUR_TAG}{}", layout::FILE_SUFFIX))
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// `slicetrace rollup DATA --to hour`: compacts every finished hour (before
/// the hour of `now_ns`) under `root`.
pub fn to_hour(root: &Path, now_ns: i64) -> Result<CompactReport, RollupError> {
    to_hour_at(&super::RollupRoot::Local(root.to_path_buf()), now_ns)
}

/// [`to_hour`] on a local directory or an object-store prefix. In a store
/// the steps are the same with objects: the hour file is one PUT (visible
/// whole or not at all, under a stable name), and only then are the minute
/// objects it holds deleted; a run cut off in between leaves minute objects
/// that readers skip and the next run deletes.
pub fn to_hour_at(root: &super::RollupRoot, now_ns: i64) -> Result<CompactReport, RollupError> {
    let current_hour = bucket_start(now_ns, HOUR_SECS);
    let mut rep = CompactReport::default();
    for d in read::list_at(root, None)? {
        compact_dir(&d, current_hour, &mut rep)?;
    }
    Ok(rep)
}

fn compact_dir(
    d: &read::NodeDir,
    current_hour: i64,
    rep: &mut CompactReport,
) -> Result<(), RollupError> {
    // Leftovers first: files an hour file already holds (minute files, or
    // hour files of an earlier layout folded into a day's file).
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut hour_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in &d.files {
        let n = name_of(f);
        if is_hour_file(&n) {
            held.extend(read::open_in(d, f)?.sources);
            hour_files.insert(n, f.clone());
        }
    }
    hour_files.retain(|n, f| {
        if held.contains(n) {
            match read::remove_in(d, f) {
                Ok(()) => rep.leftovers_removed += 1,
                Err(e) => tracing::warn!("{}: not removed: {e}", f.display()),
            }
            false
        } else {
            true
        }
    });
    // Minute files by the date of the one finished hour all their rows
    // lie in.
    let mut by_day: BTreeMap<i64, Vec<(PathBuf, Vec<RollupRecord>)>> = BTreeMap::new();
    for f in &d.files {
        let n = name_of(f);
        if is_hour_file(&n) {
            continue;
        }
        if held.contains(&n) {
            read::remove_in(d, f)?;
            rep.leftovers_removed += 1;
            continue;
        }
        let rows = rows_of(f, read::open_in(d, f)?, SketchSet::ALL)?;
        let hours: BTreeSet<i64> = rows
            .iter()
            .map(|r| bucket_start(r.key.bucket_ns, HOUR_SECS))
            .collect();
        match (hours.len(), hours.iter().next()) {
            (1, Some(&h)) if h < current_hour => by_day
                .entry(bucket_start(h, DAY_SECS))
                .or_default()
                .push((f.clone(), rows)),
            (0, _) => {
                // An empty file holds nothing: it goes with no hour.
                read::remove_in(d, f)?;
            }
            _ => rep.minute_files_kept += 1,
        }
    }
    for (day, files) in by_day {
        let name = hour_name(day, HOUR_TAG);
        let mut acc = Rollup::new(HOUR_SECS);
        let mut sources: Vec<String> = Vec::new();
        // The day's file, and any hour file of that date from before.
        let olds: Vec<(&String, &PathBuf)> = hour_files
            .iter()
            .filter(|(n, _)| {
                crate::source::name_start_ns(n).is_some_and(|s| bucket_start(s, DAY_SECS) == day)
            })
            .collect();
        for (n, old) in &olds {
            let o = read::open_in(d, old)?;
            sources.extend(o.sources.iter().cloned());
            if **n != name {
                sources.push((*n).clone());
            }
            for r in rows_of(old, o, SketchSet::ALL)? {
                acc.merge_row(&r);
            }
        }
        for (p, rows) in &files {
            for r in rows {
                rep.runs_folded += r.runs;
                acc.merge_row(r);
            }
            sources.push(name_of(p));
        }
        sources.sort();
        sources.dedup();
        let rows = acc.take_closed(i64::MAX);
        write_in(d, &name, &rows, &sources)?;
        rep.hour_files_written += 1;
        // The day's file is visible: only now may what it holds go.
        for (p, _) in &files {
            read::remove_in(d, p)?;
            rep.minute_files_compacted += 1;
        }
        for (n, old) in &olds {
            if **n != name {
                fs::remove_file(old).map_err(RollupError::io("remove", old))?;
            }
        }
    }
    Ok(())
}

fn created_by() -> &'static str {
    concat!("slicetrace ", env!("CARGO_PKG_VERSION"))
}

/// What `--from-raw` wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FromRawReport {
    /// Raw rows read.
    pub raw_rows: u64,
    /// Rollup files written.
    pub files_written: usize,
    /// Rollup rows written.
    pub rollup_rows: usize,
    /// Node hours left alone: they already have rollups.
    pub hours_skipped: usize,
}

/// `slicetrace rollup DATA --from-raw`: minute rollups from the raw rows
/// that `ctx` registers as `probes` (filtered by `where_sql`), written
/// under `root`.
pub async fn from_raw(
    ctx: &datafusion::prelude::SessionContext,
    where_sql: &str,
    root: &Path,
) -> Result<FromRawReport, RollupError> {
    use crate::scan;
    let sql = format!(
        "SELECT ts, node, gpu_uuid, gpu_index, gpu_name, kernel, shape, precision, gpu_processes, busy_count, \
         arrival, burst_seq, correct, event_inflated, throttle_reasons, sm_clock_mhz, \
         wall_ms, gpu_ms, queue_ms FROM probes WHERE {where_sql}"
    );
    let mut acc = Rollup::new(MINUTE_SECS);
    let mut rep = FromRawReport::default();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let ts = scan::ints(b, "ts")?;
        let (node, uuid, name) = (
            scan::strings(b, "node")?,
            scan::strings(b, "gpu_uuid")?,
            scan::string_array(b, "gpu_name")?,
        );
        let (kernel, shape, precision) = (
            scan::strings(b, "kernel")?,
            scan::strings(b, "shape")?,
            scan::strings(b, "precision")?,
        );
        let busy = scan::u32s(b, "busy_count")?;
        let (index, procs, seq, clock) = (
            scan::u32s(b, "gpu_index")?,
            scan::u32s(b, "gpu_processes")?,
            scan::u32s(b, "burst_seq")?,
            scan::u32s(b, "sm_clock_mhz")?,
        );
        let (arrival, correct, inflated) = (
            scan::bools(b, "arrival")?,
            scan::bools(b, "correct")?,
            scan::bools(b, "event_inflated")?,
        );
        let thr = scan::ints(b, "throttle_reasons")?;
        let (wall, gpu, queue) = (
            scan::floats(b, "wall_ms")?,
            scan::floats(b, "gpu_ms")?,
            scan::floats(b, "queue_ms")?,
        );
        let name = name.as_any().downcast_ref::<arrow::array::StringArray>();
        let num = |x: f64| (!x.is_nan()).then_some(x);
        for i in 0..b.num_rows() {
            let Some(t) = ts[i] else { continue };
            let Ok(k) = kernel[i].parse::<Kernel>() else {
                continue;
            };
            let r = ProbeRecord {
                ts_ns: t,
                node: node[i].clone(),
                gpu_uuid: uuid[i].clone(),
                gpu_index: index[i].unwrap_or(0),
                gpu_name: name
                    .filter(|a| arrow::array::Array::is_valid(*a, i))
                    .map(|a| a.value(i).to_string()),
                backend: Backend::default(),
                kernel: k,
                shape: shape[i].clone(),
                precision: precision[i].clone(),
                burst_seq: seq[i].unwrap_or(0),
                gpu_ms: num(gpu[i]),
                wall_ms: wall[i],
                queue_ms: num(queue[i]),
                correct: correct[i],
                device: DeviceFields {
                    sm_clock_mhz: clock[i],
                    throttle_reasons: thr[i].map(|x| x as u64),
                    gpu_processes: procs[i],
                    ..Default::default()
                },
                busy_count: busy[i],
                arrival: arrival[i],
                event_inflated: inflated[i],
                ..Default::default()
            };
            acc.add(&r);
            rep.raw_rows += 1;
        }
        Ok(())
    })
    .await?;
    // One file per node and hour.
    let mut groups: BTreeMap<(String, i64), Vec<RollupRecord>> = BTreeMap::new();
    for r in acc.take_closed(i64::MAX) {
        let hour = bucket_start(r.key.bucket_ns, HOUR_SECS);
        groups
            .entry((r.key.node.clone(), hour))
            .or_default()
            .push(r);
    }
    let table = root.join(layout::ROLLUPS);
    for ((node, hour), rows) in groups {
        let dir = table
            .join(layout::date_dir(&layout::date_value(hour)))
            .join(layout::node_dir(&node));
        let name = hour_name(hour, FROM_RAW_TAG);
        if has_other_rollups(&dir, hour, &name)? {
            rep.hours_skipped += 1;
            continue;
        }
        write_atomic(&dir, &name, &rows, &[], created_by())?;
        rep.files_written += 1;
        rep.rollup_rows += rows.len();
    }
    Ok(rep)
}

/// Whether `dir` holds rollups of `hour` other than `ours`: the agent's
/// files starting in it, or an hour file with rows of it.
fn has_other_rollups(dir: &Path, hour: i64, ours: &str) -> Result<bool, RollupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RollupError::io("list", dir)(e)),
    };
    for e in entries.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().to_string();
        if n == ours || !layout::is_file_name(&n) {
            continue;
        }
        let start = crate::source::name_start_ns(&n);
        if is_hour_file(&n)
            && start.is_some_and(|s| bucket_start(s, DAY_SECS) == bucket_start(hour, DAY_SECS))
        {
            // An hour file of the date (the day's, or one hour's from an
            // earlier layout): if it holds rows of the hour, the hour was
            // compacted; if it held our file, rewriting ours is harmless
            // (readers skip it), otherwise it has the runs.
            let p = dir.join(&n);
            let none = SketchSet {
                wall: false,
                gpu: false,
                queue: false,
                mcycles: false,
                event: false,
            };
            let rows = rows_of(&p, read::open(&p)?, none)?;
            if rows
                .iter()
                .any(|r| bucket_start(r.key.bucket_ns, HOUR_SECS) == hour)
            {
                return Ok(true);
            }
            continue;
        }
        if let Some(s) = start {
            if s >= hour && s < hour + HOUR_NS {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rollup::synth::{generate, RollupSynth};
    use slicetrace_schema::Sketch;

    /// Runs, and the wall sketch of everything, under `root`.
    fn totals(root: &Path) -> (u64, Sketch, usize) {
        let dirs = read::list(root, None).unwrap();
        let ((runs, wall), stats) = read::fold(
            &dirs,
            None,
            SketchSet::ALL,
            1,
            |acc: &mut (u64, Sketch), r: RollupRecord| {
                acc.0 += r.runs;
                acc.1.merge(&r.wall_ms);
            },
            |_, _| unreachable!("one thread"),
        )
        .unwrap();
        (runs, wall, stats.files_read)
    }

    #[test]
    fn finished_hours_go_into_one_file_per_node_and_date_folding_older_hour_files() {
        let tmp = tempfile::tempdir().unwrap();
        let day = 1_796_515_200_000_000_000; // 2026-12-06T00:00:00Z
        let s = RollupSynth {
            nodes: 2,
            gpus_per_node: 2,
            end_ns: day + 4 * HOUR_NS,
            span_secs: 4 * 3600,
            hours: false,
            file_secs: 900,
            arrivals_per_min: 300,
            draws: 20,
            seed: 5,
            threads: 1,
        };
        generate(tmp.path(), &s).unwrap();
        // An earlier build's layout: hour 01 of each node already in its
        // own hour file, its minute files gone.
        for d in read::list(tmp.path(), None).unwrap() {
            let mut acc = Rollup::new(HOUR_SECS);
            let mut sources = Vec::new();
            for f in &d.files {
                let start = crate::source::name_start_ns(&name_of(f)).unwrap();
                if bucket_start(start, HOUR_SECS) == day + HOUR_NS {
                    for r in rows_of(f, read::open(f).unwrap(), SketchSet::ALL).unwrap() {
                        acc.merge_row(&r);
                    }
                    sources.push(name_of(f));
                    fs::remove_file(f).unwrap();
                }
            }
            let rows = acc.take_closed(i64::MAX);
            write_atomic(
                &d.dir,
                &hour_name(day + HOUR_NS, HOUR_TAG),
                &rows,
                &sources,
                "test",
            )
            .unwrap();
        }
        let (runs, wall, _) = totals(tmp.path());
        // "Now" in hour 03: hours 00-02 are finished, 03 is not.
        let rep = to_hour(tmp.path(), day + 3 * HOUR_NS + 60_000_000_000).unwrap();
        assert_eq!(rep.hour_files_written, 2, "{rep:?}");
        assert_eq!(rep.minute_files_compacted, 2 * 2 * 4, "{rep:?}");
        assert_eq!(rep.minute_files_kept, 2 * 4, "{rep:?}");
        for d in read::list(tmp.path(), None).unwrap() {
            let hours: Vec<String> = d
                .files
                .iter()
                .map(|f| name_of(f))
                .filter(|n| is_hour_file(n))
                .collect();
            assert_eq!(hours, vec![hour_name(day, HOUR_TAG)], "{:?}", d.files);
        }
        let (runs_after, wall_after, files) = totals(tmp.path());
        assert_eq!(files, 2 * (1 + 4));
        assert_eq!(runs_after, runs);
        // Merging is exact: the same bins, the same quantiles.
        assert_eq!(wall_after.count(), wall.count());
        for q in [0.01, 0.5, 0.99, 1.0] {
            assert_eq!(wall_after.quantile(q), wall.quantile(q));
        }
        // The next hour joins the same file; then nothing is left to do.
        let rep = to_hour(tmp.path(), day + 5 * HOUR_NS).unwrap();
        assert_eq!((rep.hour_files_written, rep.minute_files_compacted), (2, 8));
        let rep = to_hour(tmp.path(), day + 5 * HOUR_NS).unwrap();
        assert_eq!((rep.hour_files_written, rep.minute_files_compacted), (0, 0));
        let (runs_after, _, files) = totals(tmp.path());
        assert_eq!((runs_after, files), (runs, 2));
    }
}
