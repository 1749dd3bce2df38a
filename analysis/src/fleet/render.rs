//! The fleet result as a table, JSON or CSV.

use slicetrace_schema::Contention;

use crate::output::{Cell, Format, Table};

use super::{FleetResult, Verdict};

/// Renders the verdicts.
pub fn render(r: &FleetResult, format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into());
    }
    let mut t = Table::new([
        "node",
        "gpu",
        "health",
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
            Cell::Str(g.verdict.as_str().into()),
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
    let bad = r
        .gpus
        .iter()
        .filter(|g| g.verdict != Verdict::Healthy)
        .count();
    let unknown = r.count(Verdict::Unknown);
    let contended = r
        .gpus
        .iter()
        .filter(|g| g.contention != Contention::Ok)
        .count();
    format!(
        "window {} .. {}\n{}\n{} of {} GPUs not healthy ({} unknown: no or too few runs in the window); {} contended or over-shared (a shared GPU, not a fault)",
        r.window_start,
        r.window_end,
        t.render(Format::Table),
        bad,
        r.gpus.len(),
        unknown,
        contended
    )
}
