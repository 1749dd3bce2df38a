//! The fleet result as a table, JSON or CSV.

use slicetrace_schema::Contention;

use crate::output::{Cell, Format, Table};

use super::{FleetResult, State};

/// Renders the verdicts.
pub fn render(r: &FleetResult, format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into());
    }
    render_table(r)
}

/// Writes the verdicts as JSON to `w`: the text [`render`] returns for
/// [`Format::Json`], without building it in memory first (about 180 MB
/// for 80,000 GPUs; `w` should be buffered).
pub fn write_json<W: std::io::Write>(r: &FleetResult, w: W) -> std::io::Result<()> {
    serde_json::to_writer_pretty(w, r).map_err(std::io::Error::from)
}

fn render_table(r: &FleetResult) -> String {
    let mut t = Table::new([
        "node",
        "gpu",
        "state",
        "contention",
        "runs",
        "worst p99 wall ms",
        "reasons",
    ]);
    for g in &r.gpus {
        let runs: usize = g.kernels.iter().map(|k| k.window_runs).sum();
        let worst = g
            .kernels
            .iter()
            .filter_map(|k| k.wall_p99_ms)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let reasons: Vec<String> = g
            .kernels
            .iter()
            .flat_map(|k| k.reasons.iter().map(move |r| format!("{}: {r}", k.kernel)))
            .collect();
        t.rows.push(vec![
            Cell::Str(g.node.clone()),
            Cell::Str(g.gpu_uuid.clone()),
            Cell::Str(match (g.state, g.age_secs) {
                (State::Stale, Some(age)) => format!("stale ({})", fmt_age(age)),
                (s, _) => s.as_str().into(),
            }),
            Cell::Str(g.contention.as_str().into()),
            Cell::Int(runs as u64),
            Cell::Num(worst),
            Cell::Str(if reasons.is_empty() {
                "ok".into()
            } else {
                reasons.join("\n")
            }),
        ]);
    }
    let bad = r.gpus.iter().filter(|g| g.state != State::Healthy).count();
    let contended = r
        .gpus
        .iter()
        .filter(|g| g.contention != Contention::Ok)
        .count();
    let mut out = format!("window {} .. {}", r.window_start, r.window_end);
    match (&r.baseline_start, &r.baseline_end) {
        (Some(a), Some(b)) => out.push_str(&format!("; baseline {a} .. {b}\n")),
        _ => out.push_str("; no baseline period (per-SKU reference only)\n"),
    }
    out.push_str(&t.render(Format::Table));
    out.push_str(&format!("\n{}", r.source.line()));
    out.push_str(&format!(
        "\n{} of {} GPUs not healthy ({} unknown: too few runs in the window; {} stale: no run in the window); \
         {} contended or over-shared (a shared GPU, not a fault)\n",
        bad,
        r.gpus.len(),
        r.count(State::Unknown),
        r.count(State::Stale),
        contended
    ));
    for s in State::ALL {
        out.push_str(&format!("{:<10} {}\n", s.as_str(), r.count(s)));
    }
    if r.gate.missing_gpus > 0 {
        out.push_str(&format!(
            "{:<10} {} (--expect-gpus, never seen: counted as stale)\n",
            "missing", r.gate.missing_gpus
        ));
    }
    let sc = &r.scan;
    out.push_str(&format!(
        "files: {} listed in {} date partitions ({} partitions pruned), {} pruned by name, {} opened, \
         {} pruned by ts statistics, {} skipped, {} scanned; row groups: {} of {} skipped\n",
        sc.files_listed,
        sc.partitions_listed,
        sc.partitions_pruned,
        sc.files_pruned_by_name,
        sc.files_opened,
        sc.files_pruned_by_stats,
        sc.files_skipped,
        sc.files_scanned,
        sc.row_groups_skipped,
        sc.row_groups_total
    ));
    for f in &sc.skipped {
        out.push_str(&format!(
            "skipped unreadable file {}: {}\n",
            f.file, f.reason
        ));
    }
    let g = &r.gate;
    out.push_str(&if g.green {
        format!("fleet check: green (exit {})", g.exit_code)
    } else {
        format!(
            "fleet check: red (exit {}): {}",
            g.exit_code,
            g.reasons.join("; ")
        )
    });
    out
}

/// An age in seconds as `45s`, `12m`, `3h 5m` or `2d 4h`.
fn fmt_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}
