//! From rows to [`Chart`]s: the CDF panels (one per kernel) and the
//! rolling-p99 timeline, one line per value of `--by`.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;

use super::axis::pad;
use super::render::color;
use super::{Chart, PlotError, Series, XAxis};
use crate::scan::{self, KeyColumn, KeyVal};
use crate::stats::{quantile_sorted, sort_values};

/// Keeps at most `max` points, evenly spaced, always with the last one.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let step = points.len() as f64 / max as f64;
    let mut out: Vec<(f64, f64)> = (0..max)
        .map(|i| points[(i as f64 * step) as usize])
        .collect();
    if let Some(last) = points.last() {
        out.push(*last);
    }
    out
}

/// A CDF panel gets a log x axis when its latencies span more than this
/// factor: then a quiet GPU's curve is not squashed against the y axis by
/// the waits beside tenants.
const LOG_SPAN: f64 = 8.0;

/// Text of one group for a legend: "3 tenants", "tenants unknown", or
/// `col=value` pairs.
fn group_label(by: &[String], key: &[KeyVal]) -> String {
    if let ([col], [v]) = (by, key) {
        if col == "tenants" {
            return match v {
                KeyVal::Null => "tenants unknown".into(),
                KeyVal::Int(1) => "1 tenant".into(),
                v => format!("{} tenants", v.label()),
            };
        }
    }
    by.iter()
        .zip(key)
        .map(|(c, v)| match (c.as_str(), v) {
            ("gpu_uuid", KeyVal::Text(u)) => short_uuid(u),
            ("node" | "kernel", v) => v.label(),
            (c, v) => format!("{c}={}", v.label()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn select_list(cols: &[&str], by: &[String]) -> String {
    let mut all: Vec<String> = by.iter().map(|c| format!("\"{c}\"")).collect();
    for c in cols {
        if !by.iter().any(|b| b == c) {
            all.push((*c).to_string());
        }
    }
    all.join(", ")
}

type CdfGroups = BTreeMap<Vec<KeyVal>, (Vec<f64>, Vec<f64>)>;

pub(super) async fn cdf_charts(
    ctx: &SessionContext,
    filter: &str,
    by: &[String],
    note: &str,
) -> Result<Vec<Chart>, PlotError> {
    let sql = format!(
        "SELECT {} FROM probes WHERE {filter}",
        select_list(&["kernel", "wall_ms", "gpu_ms"], by)
    );
    let mut facets: BTreeMap<String, CdfGroups> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let kernel = scan::strings(b, "kernel")?;
        let keys: Vec<KeyColumn> = by
            .iter()
            .map(|c| KeyColumn::new(b, c))
            .collect::<Result<_, _>>()?;
        let (w, g) = (scan::floats(b, "wall_ms")?, scan::floats(b, "gpu_ms")?);
        for i in 0..b.num_rows() {
            let key: Vec<KeyVal> = keys.iter().map(|k| k.get(i)).collect();
            let e = facets
                .entry(kernel[i].clone())
                .or_default()
                .entry(key)
                .or_default();
            e.0.push(w[i]);
            e.1.push(g[i]);
        }
        Ok(())
    })
    .await?;
    // One colour per group, the same in every panel.
    let mut colours: BTreeMap<Vec<KeyVal>, usize> = BTreeMap::new();
    for groups in facets.values() {
        for k in groups.keys() {
            let n = colours.len();
            colours.entry(k.clone()).or_insert(n);
        }
    }
    let by_text = if by.is_empty() {
        "all runs together".to_string()
    } else {
        format!("by {}", by.join(", "))
    };
    let mut charts = Vec::new();
    for (kernel, groups) in facets {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut sorted = Vec::new();
        for (key, (mut w, mut g)) in groups {
            sort_values(&mut w);
            sort_values(&mut g);
            g.retain(|v| *v > 0.0);
            w.retain(|v| *v > 0.0);
            for v in [w.first(), w.last(), g.first(), g.last()]
                .into_iter()
                .flatten()
            {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
            sorted.push((key, w, g));
        }
        if !lo.is_finite() {
            continue;
        }
        let log = hi / lo > LOG_SPAN;
        let tx = |v: f64| if log { v.log10() } else { v };
        let mut series = Vec::new();
        for (key, w, g) in sorted {
            let level = group_label(by, &key);
            let colour = color(colours.get(&key).copied().unwrap_or(0));
            for (vals, clock, dashed) in [(w, "wall", false), (g, "gpu", true)] {
                if vals.is_empty() {
                    continue;
                }
                let n = vals.len() as f64;
                let pts: Vec<(f64, f64)> = vals
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (tx(*v), (k + 1) as f64 / n))
                    .collect();
                series.push(Series {
                    label: format!("{level}, {clock} (n={})", vals.len()),
                    color: colour,
                    dashed,
                    secondary: false,
                    points: thin(pts, 2000),
                });
            }
        }
        let (x0, x1) = if log {
            // Pad to the nearest 1-2-5 values so the ends carry a tick.
            (lo.log10() - 0.02, hi.log10() + 0.02)
        } else {
            pad(lo, hi)
        };
        charts.push(Chart {
            title: format!("{kernel}: latency CDF {by_text} ({note})"),
            x_desc: if log {
                "latency, ms (log scale); solid: wall (host clock), dashed: gpu (event clock)"
                    .into()
            } else {
                "latency, ms; solid: wall (host clock), dashed: gpu (event clock)".into()
            },
            y_desc: "fraction of runs ≤ x".into(),
            y2_desc: None,
            x: (x0, x1),
            y: (0.0, 1.0),
            y2: (0.0, 1.0),
            x_axis: if log { XAxis::Log10 } else { XAxis::Linear },
            series,
        });
    }
    if charts.is_empty() {
        return Err(PlotError::Empty);
    }
    Ok(charts)
}

pub(super) async fn timeline_chart(
    ctx: &SessionContext,
    filter: &str,
    by: &[String],
    window: usize,
    note: &str,
) -> Result<Chart, PlotError> {
    let sql = format!(
        "SELECT {} FROM probes WHERE {filter}",
        select_list(&["ts", "wall_ms", "tenants"], by)
    );
    type Rows = Vec<(i64, f64, Option<u32>)>;
    let mut groups: BTreeMap<Vec<KeyVal>, Rows> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let keys: Vec<KeyColumn> = by
            .iter()
            .map(|c| KeyColumn::new(b, c))
            .collect::<Result<_, _>>()?;
        let (ts, w, t) = (
            scan::ints(b, "ts")?,
            scan::floats(b, "wall_ms")?,
            scan::u32s(b, "tenants")?,
        );
        for i in 0..b.num_rows() {
            if let Some(ts) = ts[i] {
                groups
                    .entry(keys.iter().map(|k| k.get(i)).collect())
                    .or_default()
                    .push((ts, w[i], t[i]));
            }
        }
        Ok(())
    })
    .await?;
    if groups.is_empty() {
        return Err(PlotError::Empty);
    }
    if groups.len() > 6 {
        tracing::warn!(
            series = groups.len(),
            "more than 6 series; plotting the first 6 (narrow with --where or --by)"
        );
    }
    let secs = |ts: i64| ts as f64 / 1e9;
    let window = window.max(2);
    let mut series = Vec::new();
    let (mut xmin, mut xmax, mut ymax, mut tmax) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0u32);
    for (i, (key, mut rows)) in groups.into_iter().take(6).enumerate() {
        rows.sort_by_key(|r| r.0);
        let n = rows.len();
        let stride = (n / 1500).max(1);
        let mut p99 = Vec::new();
        let mut buf = Vec::with_capacity(window);
        let mut idx = window.min(n).saturating_sub(1);
        while idx < n {
            let lo = (idx + 1).saturating_sub(window);
            buf.clear();
            buf.extend(rows[lo..=idx].iter().map(|r| r.1));
            if let Some(v) = quantile_sorted(sort_values(&mut buf), 0.99) {
                p99.push((secs(rows[idx].0), v));
                ymax = ymax.max(v);
            }
            idx += stride;
        }
        let mut tenants = Vec::new();
        let mut last: Option<u32> = None;
        for r in &rows {
            if let Some(t) = r.2 {
                if let Some(l) = last {
                    if l != t {
                        tenants.push((secs(r.0), f64::from(l)));
                    }
                }
                if last != Some(t) {
                    tenants.push((secs(r.0), f64::from(t)));
                }
                last = Some(t);
                tmax = tmax.max(t);
            }
        }
        if let (Some(l), Some(r)) = (last, rows.last()) {
            tenants.push((secs(r.0), f64::from(l)));
        }
        if let (Some(f), Some(l)) = (rows.first(), rows.last()) {
            xmin = xmin.min(secs(f.0));
            xmax = xmax.max(secs(l.0));
        }
        let name = group_label(by, &key);
        series.push(Series {
            label: format!("{name}: rolling p99 wall"),
            color: color(i),
            dashed: false,
            secondary: false,
            points: p99,
        });
        if !tenants.is_empty() {
            series.push(Series {
                label: format!("{name}: tenants"),
                color: color(i),
                dashed: true,
                secondary: true,
                points: tenants,
            });
        }
    }
    let date = |t: f64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis((t * 1e3) as i64)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let with_date = date(xmin) != date(xmax);
    Ok(Chart {
        title: format!("Rolling p99 of wall_ms over {window} runs, with tenant count ({note})"),
        x_desc: if with_date {
            format!("time (UTC), {} .. {}", date(xmin), date(xmax))
        } else {
            format!("time (UTC) on {}", date(xmin))
        },
        y_desc: "p99 wall, ms".into(),
        y2_desc: Some("tenants (dashed)".into()),
        x: pad(xmin, xmax),
        y: (0.0, ymax * 1.1 + 1e-9),
        y2: (0.0, f64::from(tmax) + 1.0),
        x_axis: XAxis::Time { with_date },
        series,
    })
}

fn short_uuid(u: &str) -> String {
    u.chars().take(12).collect()
}
