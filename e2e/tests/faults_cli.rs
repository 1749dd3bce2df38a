//! Bad input to every `slicetrace` subcommand. `analysis/tests/errors.rs`
//! checks `report` on each bad file beside a good one; this adds the other
//! subcommands (compare, fleet, sql, plot), a bad file on its own, and a
//! directory with nothing in it at all. Each must be one clear error naming
//! the file or directory, exit code 2, and never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use slicetrace_e2e::{bin, run_with_timeout};
use slicetrace_schema::{probes_batch, Backend, DeviceFields, Kernel, ProbeRecord};

fn records(n: usize) -> Vec<ProbeRecord> {
    let t0 = 1_767_225_600_000_000_000i64; // 2026-01-01T00:00:00Z
    (0..n)
        .map(|i| ProbeRecord {
            ts_ns: t0 + i as i64 * 100_000_000,
            node: "node-00".into(),
            gpu_uuid: "GPU-0".into(),
            backend: Backend::Cpu,
            kernel: if i % 2 == 0 {
                Kernel::Fft
            } else {
                Kernel::Gemm
            },
            shape: "n=256".into(),
            precision: "fp32".into(),
            flops: 1e6,
            cycle: i as u64 / 2,
            burst_seq: 1,
            // Every run an arrival (the agent's Poisson mode): the commands
            // count arrival runs by default.
            arrival: Some(true),
            gpu_ms: Some(1.0 + (i % 7) as f64 * 0.01),
            wall_ms: 1.2 + (i % 11) as f64 * 0.01,
            queue_ms: Some(0.2),
            correct: Some(true),
            device: DeviceFields {
                gpu_processes: Some((i / 2 % 2) as u32),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

fn write(path: &Path, batch: &arrow::record_batch::RecordBatch, kv: Option<(&str, &str)>) {
    let props = kv.map(|(k, v)| {
        parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                k.to_string(),
                v.to_string(),
            )]))
            .build()
    });
    let f = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), props).expect("writer");
    w.write(batch).expect("write");
    w.close().expect("close");
}

fn partition(root: &Path) -> PathBuf {
    let d = root.join("probes/date=2026-01-01/node=node-00");
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn good_file(path: &Path) {
    write(path, &probes_batch(&records(200)).expect("batch"), None);
}

/// Writes one bad file at the given path.
type MakeBad = Box<dyn Fn(&Path)>;

/// The bad inputs: (name, writer of the one file in the partition).
fn bad_inputs() -> Vec<(&'static str, MakeBad)> {
    vec![
        (
            "truncated",
            Box::new(|p: &Path| {
                let tmp = p.with_extension("full");
                good_file(&tmp);
                let bytes = std::fs::read(&tmp).expect("read");
                std::fs::remove_file(&tmp).expect("rm");
                std::fs::write(p, &bytes[..bytes.len() / 2]).expect("write");
            }),
        ),
        (
            "text",
            Box::new(|p: &Path| std::fs::write(p, "not parquet at all\n").expect("write")),
        ),
        (
            "zero-bytes",
            Box::new(|p: &Path| std::fs::write(p, "").expect("write")),
        ),
        (
            "foreign",
            Box::new(|p: &Path| {
                let schema = Arc::new(arrow::datatypes::Schema::new(vec![
                    arrow::datatypes::Field::new(
                        "temperature",
                        arrow::datatypes::DataType::Float64,
                        false,
                    ),
                ]));
                let col = Arc::new(arrow::array::Float64Array::from(vec![20.5, 21.0]));
                let b =
                    arrow::record_batch::RecordBatch::try_new(schema, vec![col]).expect("batch");
                write(p, &b, None);
            }),
        ),
        (
            "future",
            Box::new(|p: &Path| {
                let b = probes_batch(&records(20)).expect("batch");
                let schema = Arc::new(
                    b.schema()
                        .as_ref()
                        .clone()
                        .with_metadata(Default::default()),
                );
                let b = arrow::record_batch::RecordBatch::try_new(schema, b.columns().to_vec())
                    .expect("batch");
                write(p, &b, Some((slicetrace_schema::SCHEMA_VERSION_KEY, "99")));
            }),
        ),
    ]
}

/// Every subcommand that reads the data, with its extra arguments.
fn subcommands(out: &Path) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["report"]),
        s(&[
            "compare",
            "--baseline",
            "kernel = 'fft'",
            "--against",
            "kernel = 'gemm'",
        ]),
        s(&["compare", "--split-by-occupancy"]),
        // fleet's window ends now by default and it skips unreadable
        // files unless --strict (exit 4): judge the fixtures' hour, strictly.
        s(&["fleet", "--until", "2026-01-01T00:30:00Z", "--strict"]),
        s(&["sql", "SELECT count(*) FROM probes"]),
        vec![
            "plot".into(),
            "--out".into(),
            out.join("cdf.svg").display().to_string(),
        ],
    ]
}

fn slicetrace(sub: &[String], data: &Path) -> Output {
    let mut c = Command::new(bin("slicetrace"));
    c.arg(&sub[0]).arg(data).args(&sub[1..]);
    run_with_timeout(c, Duration::from_secs(120))
}

fn assert_usage_error(o: &Output, what: &str, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{what}: panic: {e}"
    );
    assert_eq!(o.status.code(), Some(2), "{what}: stderr {e}");
    assert!(e.starts_with("error: "), "{what}: {e}");
    assert!(e.contains(needle), "{what}: {needle:?} not named in {e}");
}

#[test]
fn every_subcommand_rejects_each_bad_file_naming_it_with_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, make) in bad_inputs() {
        for alone in [true, false] {
            let root = tmp
                .path()
                .join(format!("{name}-{}", if alone { "alone" } else { "mixed" }));
            let part = partition(&root);
            if !alone {
                good_file(&part.join("part-1-good.parquet"));
            }
            let file = format!("part-2-{name}.parquet");
            make(&part.join(&file));
            for sub in subcommands(tmp.path()) {
                let o = slicetrace(&sub, &root);
                assert_usage_error(
                    &o,
                    &format!(
                        "{name} ({}) {sub:?}",
                        if alone { "alone" } else { "beside a good file" }
                    ),
                    &file,
                );
            }
        }
    }
    assert!(
        !tmp.path().join("cdf.svg").exists(),
        "plot wrote output from bad input"
    );
}

#[test]
fn every_subcommand_rejects_an_empty_directory_naming_it_with_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bare = tmp.path().join("bare-empty-dir");
    std::fs::create_dir_all(&bare).expect("mkdir");
    let with_probes = tmp.path().join("empty-probes");
    std::fs::create_dir_all(with_probes.join("probes/date=2026-01-01/node=n")).expect("mkdir");
    for (dir, needle) in [(&bare, "bare-empty-dir"), (&with_probes, "empty-probes")] {
        for sub in subcommands(tmp.path()) {
            let o = slicetrace(&sub, dir);
            if sub[0] == "fleet" && dir == &with_probes {
                // fleet reads only its window's partitions: a window with
                // no file is a red check (the agents or the shipping
                // stopped), not bad input.
                let out = String::from_utf8_lossy(&o.stdout);
                assert_eq!(o.status.code(), Some(1), "{sub:?}: {out}");
                assert!(out.contains("no GPU has a run"), "{sub:?}: {out}");
                continue;
            }
            assert_usage_error(&o, &format!("{} {sub:?}", dir.display()), needle);
        }
    }
}

#[test]
fn burst_runs_alone_are_refused_naming_all_runs_and_read_with_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("bursts");
    let rows: Vec<ProbeRecord> = records(200)
        .into_iter()
        .map(|r| ProbeRecord {
            arrival: Some(false),
            ..r
        })
        .collect();
    write(
        &partition(&root).join("part-1-bursts.parquet"),
        &probes_batch(&rows).expect("batch"),
        None,
    );
    for sub in subcommands(tmp.path()) {
        let o = slicetrace(&sub, &root);
        if sub[0] == "sql" {
            // sql is raw: every run counts.
            assert_eq!(o.status.code(), Some(0), "{sub:?}");
            continue;
        }
        assert_usage_error(&o, &format!("{sub:?}"), "--all-runs");
        let mut all = sub.clone();
        all.push("--all-runs".into());
        let o = slicetrace(&all, &root);
        let ok =
            matches!(o.status.code(), Some(0)) || (sub[0] == "fleet" && o.status.code() == Some(1));
        assert!(
            ok,
            "{all:?}: {:?} {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_good_file_still_works_for_every_subcommand() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("good");
    good_file(&partition(&root).join("part-1-good.parquet"));
    for sub in subcommands(tmp.path()) {
        let o = slicetrace(&sub, &root);
        // fleet exits 1 when a GPU is not healthy; anything else must be 0.
        let ok =
            matches!(o.status.code(), Some(0)) || (sub[0] == "fleet" && o.status.code() == Some(1));
        assert!(
            ok,
            "{sub:?}: {:?} {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
