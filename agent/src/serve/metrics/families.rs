//! The samples of every family, read at scrape time from [`LiveState`] and
//! [`Counters`] (no second copy of any value).

use std::collections::BTreeMap;

use slicetrace_schema::Dimension;

use crate::internal_events::{Counters, GpuCounters};
use crate::serve::live::LiveState;
use slicetrace_schema::{Contention, Verdict};

/// Samples of one family: label values in the order of its doc's labels
/// after `node` (which the renderer adds).
pub(super) type Samples = BTreeMap<&'static str, Vec<(Vec<String>, f64)>>;

fn push(out: &mut Samples, name: &'static str, labels: Vec<String>, v: f64) {
    out.entry(name).or_default().push((labels, v));
}

fn one(b: bool) -> f64 {
    f64::from(u8::from(b))
}

pub(super) fn families(live: &LiveState, counters: &Counters) -> Samples {
    let mut out = Samples::new();
    push(
        &mut out,
        "slicetrace_agent_info",
        vec![env!("CARGO_PKG_VERSION").into()],
        1.0,
    );
    let gpus = live.gpus.read().map(|g| g.clone()).unwrap_or_default();
    for (uuid, g) in &gpus {
        push(
            &mut out,
            "slicetrace_gpu_info",
            vec![
                uuid.clone(),
                g.index.to_string(),
                g.name.clone().unwrap_or_default(),
                g.backend.clone(),
            ],
            1.0,
        );
        push(
            &mut out,
            "slicetrace_backend_up",
            vec![uuid.clone(), g.backend.clone()],
            one(g.up()),
        );
        push(
            &mut out,
            "slicetrace_gpu_probing",
            vec![
                uuid.clone(),
                g.down_reason().map_or("none", |r| r.as_str()).into(),
            ],
            one(g.down.is_none()),
        );
    }
    let fallback = live
        .backend_fallback
        .read()
        .map(|f| f.is_some())
        .unwrap_or(false);
    push(
        &mut out,
        "slicetrace_backend_fallback",
        vec![],
        one(fallback),
    );
    push(
        &mut out,
        "slicetrace_ready",
        vec![],
        one(live.not_ready().is_empty()),
    );
    if let Ok(k) = live.kernels.read() {
        for ((uuid, kernel), h) in k.iter() {
            let idx = h.gpu_index.to_string();
            let kernel = kernel.as_str();
            let base = || vec![uuid.clone(), idx.clone(), kernel.to_string()];
            for (clock, q) in [("wall", h.wall), ("gpu", h.gpu), ("queue", h.queue)] {
                for (quantile, v) in [("0.5", q.p50), ("0.99", q.p99)] {
                    if let Some(v) = v {
                        let mut l = base();
                        l.extend([clock.to_string(), quantile.to_string()]);
                        push(&mut out, "slicetrace_probe_latency_seconds", l, v / 1000.0);
                    }
                }
            }
            for v in Verdict::ALL {
                let mut l = base();
                l.push(v.as_str().into());
                push(&mut out, "slicetrace_gpu_verdict", l, one(h.verdict == v));
            }
            if let Some(c) = h.contention {
                for s in Contention::ALL {
                    push(
                        &mut out,
                        "slicetrace_gpu_contention",
                        vec![uuid.clone(), kernel.to_string(), s.as_str().into()],
                        one(c == s),
                    );
                }
            }
            for (dim, r) in [
                (Dimension::Health, h.health_reason),
                (Dimension::Contention, h.contention_reason),
            ] {
                push(
                    &mut out,
                    "slicetrace_gpu_verdict_reason",
                    vec![
                        uuid.clone(),
                        kernel.to_string(),
                        dim.as_str().into(),
                        r.as_str().into(),
                    ],
                    1.0,
                );
            }
            let mut baselines: Vec<(&str, &str, &str, f64)> = Vec::new();
            if let Some((src, p50, p99)) = h.wall_baseline {
                for (q, v) in [("0.5", p50), ("0.99", p99)] {
                    if let Some(v) = v {
                        baselines.push(("wall", q, src.as_str(), v));
                    }
                }
            }
            if let Some((p50, p99)) = h.gpu_baseline {
                for (q, v) in [("0.5", p50), ("0.99", p99)] {
                    if let Some(v) = v {
                        baselines.push(("gpu", q, "learned", v));
                    }
                }
            }
            for (clock, q, src, v) in baselines {
                push(
                    &mut out,
                    "slicetrace_baseline_seconds",
                    vec![
                        uuid.clone(),
                        kernel.to_string(),
                        clock.into(),
                        q.into(),
                        src.into(),
                    ],
                    v / 1000.0,
                );
            }
            if let Some(i) = h.inflation {
                push(&mut out, "slicetrace_p99_inflation", base(), i);
            }
            push(
                &mut out,
                "slicetrace_window_samples",
                base(),
                h.samples as f64,
            );
            push(
                &mut out,
                "slicetrace_correctness_failures",
                base(),
                h.correctness_failures_total as f64,
            );
        }
    }
    if let Ok(t) = live.self_tests.read() {
        for ((uuid, kernel), passed) in t.iter() {
            push(
                &mut out,
                "slicetrace_self_test_passed",
                vec![uuid.clone(), kernel.to_string()],
                one(*passed),
            );
        }
    }
    if let Ok(m) = live.tenant_wait_share.read() {
        for (u, v) in m.iter() {
            for (who, share) in v {
                push(
                    &mut out,
                    "slicetrace_tenant_wait_share",
                    vec![u.clone(), who.clone()],
                    *share,
                );
            }
        }
    }
    if let Ok(m) = live.pod_count.read() {
        for (u, c) in m.iter() {
            if let Some(c) = c {
                push(
                    &mut out,
                    "slicetrace_gpu_pods",
                    vec![u.clone()],
                    f64::from(*c),
                );
            }
        }
    }
    // Per-GPU counters: every probed GPU has its series from start (0).
    let per_gpu = counters
        .per_gpu
        .read()
        .map(|m| m.clone())
        .unwrap_or_default();
    let mut uuids: Vec<&String> = gpus.keys().chain(per_gpu.keys()).collect();
    uuids.sort();
    uuids.dedup();
    let g = Counters::get;
    for uuid in uuids {
        let c = per_gpu.get(uuid);
        let v = |f: fn(&GpuCounters) -> &std::sync::atomic::AtomicU64| {
            c.map_or(0.0, |c| g(f(c)) as f64)
        };
        push(
            &mut out,
            "slicetrace_probe_runs",
            vec![uuid.clone()],
            v(|c| &c.probe_runs),
        );
        push(
            &mut out,
            "slicetrace_probe_errors",
            vec![uuid.clone()],
            v(|c| &c.probe_errors),
        );
        push(
            &mut out,
            "slicetrace_telemetry_errors",
            vec![uuid.clone()],
            v(|c| &c.telemetry_errors),
        );
        push(
            &mut out,
            "slicetrace_probe_hangs",
            vec![uuid.clone()],
            v(|c| &c.probe_hangs),
        );
        push(
            &mut out,
            "slicetrace_gpu_open_failures",
            vec![uuid.clone()],
            v(|c| &c.open_failures),
        );
        push(
            &mut out,
            "slicetrace_probe_backends_parked",
            vec![uuid.clone()],
            v(|c| &c.backends_parked),
        );
        push(
            &mut out,
            "slicetrace_probe_backends_released",
            vec![uuid.clone()],
            v(|c| &c.backends_released),
        );
        let xids = c
            .and_then(|c| c.xids.lock().ok().map(|m| m.clone()))
            .unwrap_or_default();
        for (code, n) in xids {
            push(
                &mut out,
                "slicetrace_xid_errors",
                vec![uuid.clone(), code.to_string()],
                n as f64,
            );
        }
        for stage in crate::internal_events::Stage::ALL {
            let ns = c.map_or(0, |c| g(&c.probe_thread_cpu_ns[stage.index()]));
            push(
                &mut out,
                "slicetrace_probe_thread_cpu_seconds",
                vec![uuid.clone(), stage.as_str().to_string()],
                ns as f64 / 1e9,
            );
        }
    }
    if let Some(o) = live.occupancy.get() {
        let st = o.status();
        if st.has_pod_resources {
            push(
                &mut out,
                "slicetrace_occupancy_source_up",
                vec!["pod_resources".into()],
                one(st.pod_resources_ok),
            );
        }
        if st.has_kube_api {
            push(
                &mut out,
                "slicetrace_occupancy_source_up",
                vec!["kube_api".into()],
                one(st.kube_api_ok),
            );
        }
        if let Some(age) = st.last_sync_age_ms {
            push(
                &mut out,
                "slicetrace_occupancy_sync_age_seconds",
                vec![],
                age as f64 / 1000.0,
            );
        }
    }
    let g = Counters::get;
    for (kind, v) in [
        ("run", g(&counters.otlp_unsampled_runs)),
        ("health", g(&counters.otlp_unsampled_health)),
    ] {
        push(
            &mut out,
            "slicetrace_otlp_unsampled",
            vec![kind.into()],
            v as f64,
        );
    }
    for r in crate::internal_events::ForcedReason::ALL {
        let v = match r {
            crate::internal_events::ForcedReason::WaitOverP99 => &counters.otlp_forced_wait,
            crate::internal_events::ForcedReason::StateChanged => &counters.otlp_forced_state,
        };
        push(
            &mut out,
            "slicetrace_otlp_forced",
            vec![r.as_str().into()],
            g(v) as f64,
        );
    }
    if let Some(stats) = live.ship.get() {
        ship_families(&mut out, &stats.snapshot());
    }
    let c = counters;
    let node_wide: [(&'static str, u64); 18] = [
        ("slicetrace_otlp_forced_capped", g(&c.otlp_forced_capped)),
        ("slicetrace_probe_cycles", g(&c.probe_cycles)),
        ("slicetrace_otlp_spans_exported", g(&c.otlp_spans_exported)),
        ("slicetrace_otlp_spans_dropped", g(&c.otlp_spans_dropped)),
        ("slicetrace_otlp_export_errors", g(&c.otlp_export_errors)),
        (
            "slicetrace_parquet_rows_written",
            g(&c.parquet_rows_written),
        ),
        (
            "slicetrace_parquet_files_rotated",
            g(&c.parquet_files_rotated),
        ),
        (
            "slicetrace_parquet_write_errors",
            g(&c.parquet_write_errors),
        ),
        (
            "slicetrace_parquet_rows_dropped",
            g(&c.parquet_rows_dropped) + g(&c.sink_queue_drops_parquet),
        ),
        (
            "slicetrace_parquet_tmp_recovered",
            g(&c.parquet_tmp_recovered),
        ),
        ("slicetrace_parquet_tmp_removed", g(&c.parquet_tmp_removed)),
        (
            "slicetrace_parquet_retention_deleted",
            g(&c.parquet_retention_deleted),
        ),
        ("slicetrace_occupancy_errors", g(&c.occupancy_errors)),
        ("slicetrace_occupancy_relists", g(&c.occupancy_relists)),
        ("slicetrace_driver_releases", g(&c.driver_releases)),
        ("slicetrace_driver_changes", g(&c.driver_changes)),
        (
            "slicetrace_health_queue_drops",
            g(&c.sink_queue_drops_health),
        ),
        (
            "slicetrace_tail_table_queue_drops",
            g(&c.sink_queue_drops_summary),
        ),
    ];
    for (name, v) in node_wide {
        push(&mut out, name, vec![], v as f64);
    }
    if let Some(version) = c.driver_version.lock().ok().and_then(|v| v.clone()) {
        push(&mut out, "slicetrace_driver_info", vec![version], 1.0);
    }
    out
}

/// The shipper's counters (only when shipping is on: an agent that does not
/// ship serves no `slicetrace_ship_*` series, so the stall alert cannot
/// fire on it).
fn ship_families(out: &mut Samples, s: &slicetrace_ship::ShipSnapshot) {
    use slicetrace_ship::DropReason;
    for (name, v) in [
        ("slicetrace_ship_files_waiting", s.files_waiting),
        ("slicetrace_ship_waiting_bytes", s.bytes_waiting),
        ("slicetrace_ship_files_uploaded", s.files_uploaded),
        ("slicetrace_ship_uploaded_bytes", s.bytes_uploaded),
        ("slicetrace_ship_failed_attempts", s.failed_attempts),
        ("slicetrace_ship_verify_mismatches", s.verify_mismatches),
        ("slicetrace_ship_scans", s.scans),
    ] {
        push(out, name, vec![], v as f64);
    }
    if let Some(age) = s.oldest_waiting_age_secs {
        push(
            out,
            "slicetrace_ship_oldest_waiting_age_seconds",
            vec![],
            age,
        );
    }
    for r in DropReason::ALL {
        push(
            out,
            "slicetrace_ship_files_dropped",
            vec![r.as_str().to_string()],
            s.dropped.get(r) as f64,
        );
    }
}
