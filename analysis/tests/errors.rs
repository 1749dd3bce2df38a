//! Bad input to the CLI: every bad file is named with its reason and exit
//! 2; an unknown column or a wrong directory is one line that says what to
//! do.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use slicetrace_analysis::synth::{self, SynthSpec};
use slicetrace_schema::{probes_batch, probes_schema, ProbeRecord};

use support::*;

#[test]
fn errors_name_the_file_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert_error(
        &slicetrace(&["report", missing.to_str().unwrap()]),
        &["does not exist", "nope"],
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("probes")).unwrap();
    assert_error(
        &slicetrace(&["report", empty.to_str().unwrap()]),
        &["empty table", "empty/probes"],
    );

    let case = |name: &str, write: &dyn Fn(&Path)| {
        let d = tmp.path().join(name);
        one_good_file(&d);
        let bad = d.join("probes/date=2026-01-02/node=node-00");
        std::fs::create_dir_all(&bad).unwrap();
        write(&bad.join(format!("part-2-{name}.parquet")));
        slicetrace(&["report", d.to_str().unwrap()])
    };
    let o = case("text", &|p| {
        std::fs::write(p, "this is not parquet, just text\n").unwrap()
    });
    assert_error(&o, &["part-2-text.parquet", "not a Parquet file"]);

    let o = case("trunc", &|p| {
        let good = std::fs::read(one_good_file(&tmp.path().join("src"))).unwrap();
        std::fs::write(p, &good[..good.len() / 2]).unwrap();
    });
    assert_error(&o, &["part-2-trunc.parquet", "truncated"]);

    let o = case("foreign", &|p| {
        let full = probes_schema();
        let keep: Vec<usize> = (0..full.fields().len())
            .filter(|&i| full.field(i).name() != "wall_ms")
            .collect();
        let spec = SynthSpec {
            rows: 10,
            nodes: 1,
            ..Default::default()
        };
        let batch = probes_batch(&synth::node_rows(&spec, 0, 10))
            .unwrap()
            .project(&keep)
            .unwrap();
        let f = std::fs::File::create(p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    });
    assert_error(
        &o,
        &[
            "part-2-foreign.parquet",
            "missing required column \"wall_ms\"",
        ],
    );

    let o = case("newer", &|p| {
        let spec = SynthSpec {
            rows: 10,
            nodes: 1,
            ..Default::default()
        };
        let batch = probes_batch(&synth::node_rows(&spec, 0, 10)).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                slicetrace_schema::SCHEMA_VERSION_KEY.to_string(),
                "99".to_string(),
            )]))
            .build();
        let schema = Arc::new(
            batch
                .schema()
                .as_ref()
                .clone()
                .with_metadata(Default::default()),
        );
        let batch =
            arrow::array::RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap();
        let f = std::fs::File::create(p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    });
    assert_error(&o, &["part-2-newer.parquet", "schema version 99 is newer"]);

    // Bad SQL is a usage error too, and in-progress .tmp files are ignored.
    let d = tmp.path().join("tmpfiles");
    let good = one_good_file(&d);
    std::fs::write(good.with_extension("parquet.tmp"), "half written").unwrap();
    let o = slicetrace(&["report", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_error(
        &slicetrace(&["report", d.to_str().unwrap(), "--where", "no_such_col = 1"]),
        &["no_such_col"],
    );
    assert_error(
        &slicetrace(&["sql", d.to_str().unwrap(), "SELEC nonsense"]),
        &["invalid query"],
    );
    let o = slicetrace(&["report", d.to_str().unwrap(), "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn an_unknown_column_is_one_line_with_the_nearest_names() {
    let tmp = tempfile::tempdir().unwrap();
    one_good_file(tmp.path());
    let d = tmp.path().to_str().unwrap();
    for (args, name, near) in [
        (
            vec!["report", d, "--where", "wal_ms > 1"],
            "wal_ms",
            "wall_ms",
        ),
        (
            vec!["report", d, "--by", "kernel,tenant"],
            "tenant",
            "tenants",
        ),
        (
            vec!["compare", d, "--split-by-occupancy", "--where", "nod = 'x'"],
            "nod",
            "node",
        ),
        (
            vec!["plot", d, "--out", "/tmp/never.svg", "--by", "kernal"],
            "kernal",
            "kernel",
        ),
        (
            vec!["sql", d, "SELECT gpu_uid FROM probes"],
            "gpu_uid",
            "gpu_uuid",
        ),
    ] {
        let o = slicetrace(&args);
        assert_error(&o, &[&format!("unknown column \"{name}\""), near]);
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
        assert!(!e.contains("SELECT") || args[0] == "sql", "{e}");
        assert!(!e.contains("Valid fields"), "{e}");
    }
}

#[test]
fn a_wrong_directory_says_what_is_missing_not_that_a_filter_matched_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("not-the-data");
    std::fs::create_dir_all(wrong.join("logs")).unwrap();
    std::fs::write(wrong.join("logs/agent.log"), "hello\n").unwrap();
    let o = slicetrace(&["report", wrong.to_str().unwrap()]);
    assert_error(&o, &["no probes Parquet files under", "not-the-data"]);
    assert!(!stderr(&o).contains("match"), "{}", stderr(&o));
    // Files only an older agent's burst runs: no arrivals, and the error
    // says so and names --all-runs.
    let bursts = tmp.path().join("bursts");
    let d = bursts.join("probes/date=2026-01-01/node=node-00");
    std::fs::create_dir_all(&d).unwrap();
    let rows: Vec<ProbeRecord> = synth::node_rows(
        &SynthSpec {
            rows: 50,
            nodes: 1,
            ..Default::default()
        },
        0,
        50,
    )
    .into_iter()
    .map(|r| ProbeRecord { burst_seq: 3, ..r })
    .collect();
    synth::write_file_without(&d.join("part-1.parquet"), &rows, &synth::LATER_COLUMNS).unwrap();
    let b = bursts.to_str().unwrap();
    let o = slicetrace(&["report", b]);
    assert_error(
        &o,
        &["none of the 50 runs", "is an arrival run", "--all-runs"],
    );
    assert!(!stderr(&o).contains("match"), "{}", stderr(&o));
    let o = slicetrace(&[
        "report",
        b,
        "--all-runs",
        "--by",
        "kernel",
        "--format",
        "json",
    ]);
    assert_eq!(json(&o).as_array().unwrap().len(), 2);
    // A filter that keeps nothing says so, with the filter.
    let o = slicetrace(&["report", b, "--where", "node = 'nope'"]);
    assert_error(&o, &["no rows in", "match --where node = 'nope'"]);
    // A directory of non-Parquet subdirectories beside real data still reads
    // only the data: files outside the date=/node= layout are read too.
    let flat = tmp.path().join("flat");
    std::fs::create_dir_all(flat.join("a/b")).unwrap();
    std::fs::create_dir_all(flat.join("health")).unwrap();
    std::fs::write(flat.join("health/h.parquet"), "not parquet").unwrap();
    let spec = SynthSpec {
        rows: 30,
        nodes: 1,
        ..Default::default()
    };
    synth::write_file(&flat.join("a/b/x.parquet"), &synth::node_rows(&spec, 0, 30)).unwrap();
    synth::write_file(&flat.join("y.parquet"), &synth::node_rows(&spec, 0, 30)).unwrap();
    assert_eq!(probe_rows(flat.to_str().unwrap()), 60);
}
