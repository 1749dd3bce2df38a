use super::*;
use crate::serve::live::{GpuEntry, KernelHealth, Quantiles};
use slicetrace_schema::{BaselineSource, Kernel, Reason};
use slicetrace_schema::{Contention, Verdict};

fn live() -> LiveState {
    let st = LiveState::default();
    st.set_node("n1");
    let q = Quantiles {
        p50: Some(0.5),
        p99: Some(2.0),
    };
    st.register_gpu(
        "GPU-\"x\"\\",
        GpuEntry {
            index: 0,
            name: Some("NVIDIA H100 80GB HBM3".into()),
            backend: "cuda".into(),
            down: None,
            probe_failing: None,
            down_reason: None,
            critical_xid: None,
        },
    );
    st.kernels.write().expect("lock").insert(
        ("GPU-\"x\"\\".into(), Kernel::Fft),
        KernelHealth {
            gpu_index: 0,
            verdict: Verdict::Degraded,
            reason: "r".into(),
            health_reason: Reason::EventSlow,
            health_source: Some(BaselineSource::Sku),
            wall: q,
            gpu: q,
            queue: Quantiles::default(),
            baseline_p99_ms: Some(0.15),
            inflation: Some(1.7),
            samples: 9,
            correctness_failures_total: 1,
            contention: Some(Contention::Contended),
            contention_reason: Reason::WaitOverBaseline,
            contention_detail: "3 tenants".into(),
            contention_source: Some(BaselineSource::Sku),
            wall_baseline: Some((BaselineSource::Sku, Some(0.08), Some(0.15))),
            gpu_baseline: None,
            event_baseline_p99_ms: None,
        },
    );
    st
}

#[test]
fn accept_header_picks_the_format() {
    assert_eq!(Format::negotiate(None), Format::Text);
    assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
    assert_eq!(
        Format::negotiate(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )),
        Format::OpenMetrics
    );
}

#[test]
fn classic_and_openmetrics_differ_only_where_the_formats_do() {
    let (st, c) = (live(), Counters::default());
    let text = render_format(&st, &c, Format::Text);
    let om = render_format(&st, &c, Format::OpenMetrics);
    // Latency in seconds, as a summary; a missing quantile is left out.
    assert!(
        text.contains("# TYPE slicetrace_probe_latency_seconds summary\n"),
        "{text}"
    );
    assert!(text.contains(r#"slicetrace_probe_latency_seconds{node="n1",gpu_uuid="GPU-\"x\"\\",gpu_index="0",kernel="fft",clock="wall",quantile="0.99"} 0.002"#), "{text}");
    assert!(!text.contains("clock=\"queue\""), "{text}");
    // Counters: classic names the family with `_total`, OpenMetrics without.
    let runs = r#"slicetrace_probe_runs_total{node="n1",gpu_uuid="GPU-\"x\"\\"} 0"#;
    assert!(
        text.contains(&format!(
            "# TYPE slicetrace_probe_runs_total counter\n{runs}\n"
        )),
        "{text}"
    );
    assert!(
        om.contains(&format!("# TYPE slicetrace_probe_runs counter\n{runs}\n")),
        "{om}"
    );
    assert!(
        om.contains("# UNIT slicetrace_probe_latency_seconds seconds\n") && om.ends_with("# EOF\n")
    );
    assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
    // No pod count known: the family is absent, not zero.
    assert!(!text.contains("slicetrace_gpu_pods"), "{text}");
}

#[test]
fn every_series_carries_node_and_the_new_families_their_labels() {
    let (st, c) = (live(), Counters::default());
    st.record_self_test("GPU-\"x\"\\", Kernel::Gemm, false);
    let text = render_format(&st, &c, Format::Text);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains("{node=\"n1\""), "no node label: {line}");
    }
    for want in [
        r#"slicetrace_agent_info{node="n1",version=""#,
        r#"slicetrace_gpu_info{node="n1",gpu_uuid="GPU-\"x\"\\",gpu_index="0",gpu_name="NVIDIA H100 80GB HBM3",backend="cuda"} 1"#,
        r#"slicetrace_backend_up{node="n1",gpu_uuid="GPU-\"x\"\\",backend="cuda"} 1"#,
        r#"slicetrace_gpu_contention{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",state="contended"} 1"#,
        r#"slicetrace_gpu_verdict_reason{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",dimension="health",reason="event_slow"} 1"#,
        r#"slicetrace_gpu_verdict_reason{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",dimension="contention",reason="wait_over_baseline"} 1"#,
        r#"slicetrace_baseline_seconds{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="fft",clock="wall",quantile="0.99",source="sku"} 0.00015"#,
        r#"slicetrace_self_test_passed{node="n1",gpu_uuid="GPU-\"x\"\\",kernel="gemm"} 0"#,
        r#"slicetrace_gpu_verdict{node="n1",gpu_uuid="GPU-\"x\"\\",gpu_index="0",kernel="fft",verdict="unknown"} 0"#,
        r#"slicetrace_ready{node="n1"} 0"#,
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    // Every family rendered is in the table, with its declared labels.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split('{').next().unwrap_or_default();
        let doc = METRICS
            .iter()
            .find(|d| d.sample_name() == name)
            .unwrap_or_else(|| panic!("{name} not in METRICS"));
        let keys: Vec<&str> = line
            .split('{')
            .nth(1)
            .unwrap_or_default()
            .split("\",")
            .filter_map(|kv| kv.split_once("=\"").map(|x| x.0))
            .collect();
        assert_eq!(keys, doc.labels, "{line}");
    }
}

/// Each internal event moves every family it declares, and every
/// counter family is fed by some event: a counter without a row in
/// [`METRICS`] (or a row nothing counts) fails here.
#[test]
fn every_internal_event_counts_into_a_metrics_row() {
    use crate::internal_events::*;
    let err = std::io::Error::other("disk full");
    let path = std::path::Path::new("/x.parquet");
    type Emit<'a> = Box<dyn Fn(&Counters) + 'a>;
    let emit: Vec<(&str, Emit)> = vec![
        (
            "ProbeRunsCompleted",
            Box::new(|c| {
                ProbeRunsCompleted {
                    gpu_uuid: "GPU-1",
                    runs: 2,
                }
                .emit(c)
            }),
        ),
        (
            "ProbeCycleCompleted",
            Box::new(|c| ProbeCycleCompleted.emit(c)),
        ),
        (
            "ProbeRunFailed",
            Box::new(|c| {
                ProbeRunFailed {
                    gpu_uuid: "GPU-1",
                    failures: 1,
                    error: "e",
                }
                .emit(c)
            }),
        ),
        (
            "CorrectnessCheckFailed",
            Box::new(|c| CorrectnessCheckFailed { gpu_uuid: "GPU-1" }.emit(c)),
        ),
        (
            "TelemetrySampleFailed",
            Box::new(|c| {
                TelemetrySampleFailed {
                    gpu_uuid: "GPU-1",
                    error: &err,
                }
                .emit(c)
            }),
        ),
        (
            "ProbeThreadCpuUsed",
            Box::new(|c| {
                ProbeThreadCpuUsed {
                    gpu_uuid: "GPU-1",
                    stage: crate::internal_events::Stage::Telemetry,
                    cpu: std::time::Duration::from_micros(250),
                }
                .emit(c)
            }),
        ),
        (
            "ProbeRunHung",
            Box::new(|c| {
                crate::internal_events::ProbeRunHung {
                    gpu_uuid: "GPU-1",
                    deadline: std::time::Duration::from_secs(2),
                }
                .emit(c)
            }),
        ),
        (
            "GpuOpenFailed",
            Box::new(|c| {
                crate::internal_events::GpuOpenFailed {
                    gpu_uuid: "GPU-1",
                    attempts: 1,
                    error: "no device",
                    retry_in: std::time::Duration::from_secs(1),
                }
                .emit(c)
            }),
        ),
        (
            "XidReported",
            Box::new(|c| {
                crate::internal_events::XidReported {
                    gpu_uuid: "GPU-1",
                    code: 79,
                    critical: true,
                }
                .emit(c)
            }),
        ),
        (
            "ParkedBackendReleased",
            Box::new(|c| {
                crate::internal_events::ParkedBackendReleased {
                    gpu_uuid: "GPU-1",
                    parked: std::time::Duration::from_secs(30),
                }
                .emit(c)
            }),
        ),
        (
            "DriverReleased",
            Box::new(|c| crate::internal_events::DriverReleased { why: "upgrade" }.emit(c)),
        ),
        (
            "DriverAnswered",
            Box::new(|c| {
                for v in ["580.1", "999.1"] {
                    crate::internal_events::DriverAnswered {
                        version: Some(v),
                        after_release: true,
                    }
                    .emit(c)
                }
            }),
        ),
        (
            "SinkQueueFull",
            Box::new(|c| {
                for sink in [
                    QueueOwner::Parquet,
                    QueueOwner::Otlp,
                    QueueOwner::Health,
                    QueueOwner::Summary,
                ] {
                    SinkQueueFull { sink, records: 3 }.emit(c);
                }
            }),
        ),
        (
            "OtlpSpansExported",
            Box::new(|c| OtlpSpansExported { spans: 2 }.emit(c)),
        ),
        (
            "OtlpExportFailed",
            Box::new(|c| {
                OtlpExportFailed {
                    spans: 2,
                    elapsed_ms: 1,
                    error: "e",
                }
                .emit(c)
            }),
        ),
        (
            "OtlpSpansDropped",
            Box::new(|c| {
                OtlpSpansDropped {
                    dropped: 2,
                    why: Some("queue full"),
                }
                .emit(c)
            }),
        ),
        (
            "SpansSampledOut",
            Box::new(|c| SpansSampledOut { runs: 2, health: 1 }.emit(c)),
        ),
        (
            "SpanForced",
            Box::new(|c| {
                SpanForced {
                    reason: ForcedReason::WaitOverP99,
                }
                .emit(c)
            }),
        ),
        ("ForcedSpanCapped", Box::new(|c| ForcedSpanCapped.emit(c))),
        (
            "ParquetFileRotated",
            Box::new(|c| ParquetFileRotated { rows: 2 }.emit(c)),
        ),
        (
            "ParquetWriteFailed",
            Box::new(|c| {
                ParquetWriteFailed {
                    table: "probes",
                    rows_lost: 2,
                    error: &err,
                }
                .emit(c)
            }),
        ),
        (
            "ParquetTmpRecovered",
            Box::new(|c| ParquetTmpRecovered { path }.emit(c)),
        ),
        (
            "ParquetTmpRemoved",
            Box::new(|c| ParquetTmpRemoved { path }.emit(c)),
        ),
        (
            "ParquetRetentionDeleted",
            Box::new(|c| {
                ParquetRetentionDeleted {
                    path,
                    too_old: true,
                    too_big: false,
                }
                .emit(c)
            }),
        ),
        (
            "OccupancyRefreshFailed",
            Box::new(|c| OccupancyRefreshFailed.emit(c)),
        ),
        (
            "OccupancyRelisted",
            Box::new(|c| OccupancyRelisted { node: "n1" }.emit(c)),
        ),
    ];
    let names: Vec<&str> = EVENTS.iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        emit.iter().map(|e| e.0).collect::<Vec<_>>(),
        "emit every event of EVENTS here"
    );
    let value = |text: &str, family: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for ((event, families), (_, emit)) in EVENTS.iter().zip(&emit) {
        let c = Counters::default();
        emit(&c);
        let text = render_format(&live(), &c, Format::Text);
        for f in *families {
            let doc =
                metric_doc(f).unwrap_or_else(|| panic!("{event} counts {f}: no row in METRICS"));
            assert_eq!(doc.kind, Kind::Counter, "{event}: {f}");
            assert!(
                value(&text, &doc.sample_name()) > 0.0,
                "{event} did not move {f}:\n{text}"
            );
        }
    }
    for d in METRICS.iter().filter(|d| d.kind == Kind::Counter) {
        // Rendered from the health window, per kernel; the shipper's are
        // its own counters (slicetrace_ship::ShipStats), read at scrape time.
        if d.name == "slicetrace_correctness_failures" || d.name.starts_with("slicetrace_ship_") {
            continue;
        }
        assert!(
            EVENTS.iter().any(|(_, f)| f.contains(&d.name)),
            "{} is fed by no internal event",
            d.name
        );
    }
}

/// The exit summary's full queue used to count on no agent counter, so
/// the rows missing from the tail table left no trace on `/metrics`. Each
/// outlet's drops land on its own family only; probe events the health
/// evaluator's full queue drops count there too (the summary takes none).
#[test]
fn a_full_summary_queue_counts_on_its_own_family_in_metrics() {
    use crate::internal_events::QueueOwner;
    use crate::topology::{task_queue, Fanout, Outlet};
    use slicetrace_schema::ProbeRecord;
    let c = Arc::new(Counters::default());
    let (s, _srx) = task_queue(1);
    let (h, _hrx) = task_queue(1);
    let f = Fanout::new(c.clone())
        .with(Outlet::new("summary", s, QueueOwner::Summary))
        .with(Outlet::new("health", h, QueueOwner::Health).with_events());
    let row = ProbeRecord {
        kernel: Kernel::Fft,
        arrival: Some(true),
        wall_ms: 1.0,
        ..Default::default()
    };
    f.send_probes(vec![row.clone()]);
    f.send_probes(vec![row.clone(), row]);
    f.event(crate::topology::ProbeEvent::ProbeRecovered {
        gpu_uuid: "GPU-1".into(),
    });
    assert_eq!(f.dropped("summary"), Some(2));
    assert_eq!(f.dropped("health"), Some(3));
    let text = render_format(&live(), &c, Format::Text);
    for want in [
        "# HELP slicetrace_tail_table_queue_drops_total Rows the exit summary's full queue dropped (the tail table printed at exit misses them).\n\
         # TYPE slicetrace_tail_table_queue_drops_total counter\n\
         slicetrace_tail_table_queue_drops_total{node=\"n1\"} 2\n",
        "slicetrace_health_queue_drops_total{node=\"n1\"} 3\n",
        "slicetrace_parquet_rows_dropped_total{node=\"n1\"} 0\n",
        "slicetrace_otlp_spans_dropped_total{node=\"n1\"} 0\n",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
}

#[test]
fn the_table_has_unique_names_node_first_and_help() {
    let mut seen = std::collections::HashSet::new();
    for d in METRICS {
        assert!(seen.insert(d.name), "duplicate {}", d.name);
        assert_eq!(d.labels.first(), Some(&"node"), "{}", d.name);
        assert!(d.name.starts_with("slicetrace_") && !d.help.is_empty());
        assert!(!d.name.ends_with("_total"), "{}", d.name);
        // promtool's lint (`check metrics`) rejects a name that holds a
        // metric type as a word, even where promtool is not installed.
        for t in ["counter", "gauge", "histogram", "summary", "untyped"] {
            let word = format!("_{t}_");
            assert!(
                !d.name.contains(&word) && !d.name.ends_with(&word[..word.len() - 1]),
                "{} holds the type word {t}",
                d.name
            );
        }
    }
}

/// The shipper's counters reach `/metrics` from its live stats: a real
/// shipper (over object_store's in-memory store) ships one file and is
/// stopped; an agent that does not ship serves no `slicetrace_ship_*`.
#[test]
fn shipping_counters_are_served_only_when_shipping() {
    let c = Counters::default();
    let st = live();
    let text = render_format(&st, &c, Format::Text);
    assert!(!text.contains("slicetrace_ship_"), "{text}");

    let data = tempfile::tempdir().expect("tmp");
    let rel = "probes/date=2026-01-01/node=n1/part-20260101T000000Z-a.parquet";
    let path = data.path().join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, vec![7u8; 1000]).expect("write");
    let cfg = slicetrace_ship::ShipConfig {
        enabled: true,
        destination: Some("s3://bkt/fleet/".into()),
        // The in-memory store's ETags are not MD5s.
        verify_etag_md5: false,
        scan_interval_ms: 3_600_000,
        ..Default::default()
    };
    let shipper = slicetrace_ship::Shipper::with_store(
        cfg,
        data.path(),
        std::sync::Arc::new(object_store::memory::InMemory::new()),
    )
    .expect("shipper");
    st.ship.set(shipper.stats()).expect("set once");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // One pass, then the last pass at stop, then it returns.
    let snap = rt.block_on(shipper.run_then_flush(async {
        Some(tokio::time::Instant::now() + std::time::Duration::from_secs(10))
    }));
    assert_eq!(snap.files_uploaded, 1, "{snap:?}");
    let text = render_format(&st, &c, Format::Text);
    for want in [
        "# TYPE slicetrace_ship_files_uploaded_total counter\n\
         slicetrace_ship_files_uploaded_total{node=\"n1\"} 1\n",
        "slicetrace_ship_uploaded_bytes_total{node=\"n1\"} 1000\n",
        "slicetrace_ship_files_waiting{node=\"n1\"} 0\n",
        "slicetrace_ship_waiting_bytes{node=\"n1\"} 0\n",
        "slicetrace_ship_failed_attempts_total{node=\"n1\"} 0\n",
        "slicetrace_ship_files_dropped_total{node=\"n1\",reason=\"backlog_full\"} 0\n",
        "slicetrace_ship_files_dropped_total{node=\"n1\",reason=\"max_age\"} 0\n",
        "slicetrace_ship_files_dropped_total{node=\"n1\",reason=\"vanished\"} 0\n",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    // Nothing waits: the age is absent, not 0.
    assert!(
        !text.contains("slicetrace_ship_oldest_waiting_age_seconds{"),
        "{text}"
    );
}
