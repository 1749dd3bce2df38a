//! `slicetrace plot`: latency CDFs and a rolling-p99 timeline, with plotters.
//!
//! * `cdf`: the empirical CDF of `wall_ms` (solid) and `gpu_ms` (dashed), one
//!   colour per tenant count ([`crate::pred::TENANTS_SQL`]). The gap between a
//!   colour's two lines is the time spent waiting for a time slice. The x axis
//!   is logarithmic when latencies span more than 20×.
//! * `timeline`: rolling p99 of `wall_ms` over the last `--rolling-runs` runs,
//!   one line per node, GPU and kernel (at most six; narrow with `--where`),
//!   with the tenant count as a dashed step line on the right-hand axis.
//!
//! PNG text needs a font file, found at run time (`--font`, else DejaVu Sans
//! or Liberation Sans in the usual places); without one a PNG is refused with
//! a clear error. SVG never needs one: without a font the chart is drawn with
//! plotters and its text is written as plain SVG `<text>` elements.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::pred::TENANTS_SQL;
use crate::scan::{self, ScanError};
use crate::stats::{quantile_sorted, sort_values};

/// Which chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Kind {
    /// Latency CDF per tenant count and clock.
    #[default]
    Cdf,
    /// Rolling p99 over time with the tenant count.
    Timeline,
}

/// Plot options.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    /// Output file (`.svg` or `.png`).
    pub out: PathBuf,
    /// Which chart.
    pub kind: Kind,
    /// Runs per rolling window (timeline).
    pub rolling_runs: usize,
    /// Font for PNG text.
    pub font: Option<PathBuf>,
}

/// Errors raised while plotting.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Neither `.svg` nor `.png`.
    #[error("cannot plot to {0}: the file name must end in .svg or .png")]
    Extension(String),
    /// PNG without a font.
    #[error("no font for PNG text (tried {0}); pass --font FILE.ttf, install fonts-dejavu-core, or write .svg")]
    NoFont(String),
    /// The font file could not be read or parsed.
    #[error("failed to load font {0}")]
    BadFont(String),
    /// Nothing to draw.
    #[error("no rows to plot")]
    Empty,
    /// Reading data failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// plotters failed.
    #[error("failed to draw {path}: {msg}")]
    Draw {
        /// The output.
        path: String,
        /// plotters' message.
        msg: String,
    },
}

/// Fonts tried when `--font` is not given.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

/// Finds and registers a font as plotters' `sans-serif`. Returns whether one
/// was registered.
fn register_font(explicit: Option<&Path>) -> Result<bool, PlotError> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        // The tests set this to exercise the fontless SVG path.
        None if std::env::var_os("SLICETRACE_NO_SYSTEM_FONTS").is_some() => None,
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    let Some(path) = path else { return Ok(false) };
    let bytes = std::fs::read(&path).map_err(|_| PlotError::BadFont(path.display().to_string()))?;
    // plotters keeps fonts for the process lifetime; one font per run.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::BadFont(path.display().to_string()))?;
    Ok(true)
}

/// A line to draw.
struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    secondary: bool,
    points: Vec<(f64, f64)>,
}

/// A chart, independent of the backend.
struct Chart {
    title: String,
    x_desc: String,
    y_desc: String,
    y2_desc: Option<String>,
    x: (f64, f64),
    y: (f64, f64),
    y2: (f64, f64),
    x_log10: bool,
    series: Vec<Series>,
}

/// Text the fontless SVG path writes itself.
struct Label {
    x: i32,
    y: i32,
    anchor: &'static str,
    size: u32,
    text: String,
    rotate: bool,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn pad(lo: f64, hi: f64) -> (f64, f64) {
    if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let d = (hi - lo) * 0.03;
        (lo - d, hi + d)
    }
}

/// Axis numbers without trailing zeros ("5", "0.25", "3.16").
fn trim_num(v: f64) -> String {
    let s = crate::output::fmt_num(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn tick_fmt(v: f64, log10: bool) -> String {
    trim_num(if log10 { 10f64.powf(v) } else { v })
}

fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..=n)
        .map(|i| lo + (hi - lo) * i as f64 / n as f64)
        .collect()
}

fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &Chart,
    labels: Option<&mut Vec<Label>>,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let fontless = labels.is_some();
    let mut b = ChartBuilder::on(root);
    b.margin(20);
    if fontless {
        b.margin_top(50)
            .margin_left(80)
            .margin_bottom(60)
            .margin_right(if c.y2_desc.is_some() { 80 } else { 20 });
    } else {
        b.caption(&c.title, ("sans-serif", 22))
            .x_label_area_size(45)
            .y_label_area_size(70)
            .right_y_label_area_size(if c.y2_desc.is_some() { 60 } else { 0 });
    }
    let mut ch = b
        .build_cartesian_2d(c.x.0..c.x.1, c.y.0..c.y.1)
        .map_err(e)?
        .set_secondary_coord(c.x.0..c.x.1, c.y2.0..c.y2.1);
    let log = c.x_log10;
    if !fontless {
        ch.configure_mesh()
            .x_desc(&c.x_desc)
            .y_desc(&c.y_desc)
            .x_label_formatter(&|v| tick_fmt(*v, log))
            .y_label_formatter(&|v| trim_num(*v))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        if let Some(d) = &c.y2_desc {
            ch.configure_secondary_axes()
                .y_desc(d)
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(e)?;
        }
    } else {
        let grid = BLACK.mix(0.15);
        for x in ticks(c.x.0, c.x.1, 5) {
            ch.draw_series(LineSeries::new([(x, c.y.0), (x, c.y.1)], grid))
                .map_err(e)?;
        }
        for y in ticks(c.y.0, c.y.1, 5) {
            ch.draw_series(LineSeries::new([(c.x.0, y), (c.x.1, y)], grid))
                .map_err(e)?;
        }
        ch.draw_series(LineSeries::new(
            [
                (c.x.0, c.y.1),
                (c.x.0, c.y.0),
                (c.x.1, c.y.0),
                (c.x.1, c.y.1),
            ],
            BLACK,
        ))
        .map_err(e)?;
    }
    for s in &c.series {
        let style = s.color.stroke_width(2);
        let legend_color = s.color;
        let dashed = s.dashed;
        let anno = if s.secondary {
            if s.dashed {
                ch.draw_secondary_series(DashedLineSeries::new(
                    s.points.iter().copied(),
                    6,
                    4,
                    style,
                ))
                .map_err(e)?
            } else {
                ch.draw_secondary_series(LineSeries::new(s.points.iter().copied(), style))
                    .map_err(e)?
            }
        } else if s.dashed {
            ch.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))
                .map_err(e)?
        } else {
            ch.draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(e)?
        };
        if !fontless {
            anno.label(&s.label).legend(move |(x, y)| {
                let st = legend_color.stroke_width(2);
                if dashed {
                    PathElement::new(vec![(x, y), (x + 6, y), (x + 10, y), (x + 16, y)], st)
                } else {
                    PathElement::new(vec![(x, y), (x + 16, y)], st)
                }
            });
        }
    }
    if let Some(labels) = labels {
        let at = |x: f64, y: f64| ch.backend_coord(&(x, y));
        let (w, _) = root.dim_in_pixel();
        labels.push(Label {
            x: (w / 2) as i32,
            y: 30,
            anchor: "middle",
            size: 20,
            text: c.title.clone(),
            rotate: false,
        });
        for x in ticks(c.x.0, c.x.1, 5) {
            let (px, py) = at(x, c.y.0);
            labels.push(Label {
                x: px,
                y: py + 18,
                anchor: "middle",
                size: 12,
                text: tick_fmt(x, log),
                rotate: false,
            });
        }
        for y in ticks(c.y.0, c.y.1, 5) {
            let (px, py) = at(c.x.0, y);
            labels.push(Label {
                x: px - 6,
                y: py + 4,
                anchor: "end",
                size: 12,
                text: trim_num(y),
                rotate: false,
            });
        }
        let (x0, y0) = at(c.x.0, c.y.0);
        let (x1, y1) = at(c.x.1, c.y.1);
        labels.push(Label {
            x: (x0 + x1) / 2,
            y: y0 + 42,
            anchor: "middle",
            size: 14,
            text: c.x_desc.clone(),
            rotate: false,
        });
        labels.push(Label {
            x: x0 - 60,
            y: (y0 + y1) / 2,
            anchor: "middle",
            size: 14,
            text: c.y_desc.clone(),
            rotate: true,
        });
        if let Some(d) = &c.y2_desc {
            labels.push(Label {
                x: x1 + 50,
                y: (y0 + y1) / 2,
                anchor: "middle",
                size: 14,
                text: d.clone(),
                rotate: true,
            });
            for y in ticks(c.y2.0, c.y2.1, 5) {
                let py = y0 + ((y - c.y2.0) / (c.y2.1 - c.y2.0) * f64::from(y1 - y0)) as i32;
                labels.push(Label {
                    x: x1 + 6,
                    y: py + 4,
                    anchor: "start",
                    size: 12,
                    text: trim_num(y),
                    rotate: false,
                });
            }
        }
        for (i, s) in c.series.iter().enumerate() {
            let y = y1 + 16 + 16 * i as i32;
            labels.push(Label {
                x: x0 + 40,
                y,
                anchor: "start",
                size: 12,
                text: s.label.clone(),
                rotate: false,
            });
            root.draw(&PathElement::new(
                vec![(x0 + 10, y - 4), (x0 + 34, y - 4)],
                s.color.stroke_width(2),
            ))
            .map_err(e)?;
        }
    } else {
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render(c: &Chart, out: &Path, font: Option<&Path>) -> Result<(), PlotError> {
    let name = out.display().to_string();
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let draw_err = |msg: String| PlotError::Draw {
        path: name.clone(),
        msg,
    };
    let size = (1100, 700);
    match ext.as_deref() {
        Some("png") => {
            if !register_font(font)? {
                return Err(PlotError::NoFont(FONT_CANDIDATES.join(", ")));
            }
            let root = BitMapBackend::new(out, size).into_drawing_area();
            draw_chart(&root, c, None).map_err(draw_err)
        }
        Some("svg") => {
            let has_font = register_font(font)?;
            let mut svg = String::new();
            let mut labels = Vec::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw_chart(&root, c, (!has_font).then_some(&mut labels)).map_err(draw_err)?;
            }
            if !labels.is_empty() {
                let mut text = String::new();
                for l in &labels {
                    let rot = if l.rotate {
                        format!(" transform=\"rotate(-90 {} {})\"", l.x, l.y)
                    } else {
                        String::new()
                    };
                    text.push_str(&format!(
                        "<text x=\"{}\" y=\"{}\" text-anchor=\"{}\" font-family=\"sans-serif\" font-size=\"{}\"{rot}>{}</text>\n",
                        l.x, l.y, l.anchor, l.size, xml_escape(&l.text)
                    ));
                }
                if let Some(pos) = svg.rfind("</svg>") {
                    svg.insert_str(pos, &text);
                }
            }
            std::fs::write(out, svg).map_err(|e| draw_err(e.to_string()))
        }
        _ => Err(PlotError::Extension(name)),
    }
}

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

async fn cdf_chart(ctx: &SessionContext, filter: &str) -> Result<Chart, PlotError> {
    let sql =
        format!("SELECT wall_ms, gpu_ms, {TENANTS_SQL} AS tenants FROM probes WHERE {filter}");
    let mut by: BTreeMap<Option<u32>, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let (w, g, t) = (
            scan::floats(b, "wall_ms")?,
            scan::floats(b, "gpu_ms")?,
            scan::u32s(b, "tenants")?,
        );
        for i in 0..b.num_rows() {
            let e = by.entry(t[i]).or_default();
            e.0.push(w[i]);
            e.1.push(g[i]);
        }
        Ok(())
    })
    .await?;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut sorted = Vec::new();
    for (t, (mut w, mut g)) in by {
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
        sorted.push((t, w, g));
    }
    if !lo.is_finite() {
        return Err(PlotError::Empty);
    }
    let log = hi / lo > 20.0;
    let tx = |v: f64| if log { v.log10() } else { v };
    let mut series = Vec::new();
    for (i, (t, w, g)) in sorted.into_iter().enumerate() {
        let level = match t {
            Some(t) => format!("{t} tenants"),
            None => "tenants unknown".into(),
        };
        for (vals, clock, dashed) in [(w, "wall (host)", false), (g, "gpu (event)", true)] {
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
                color: color(i),
                dashed,
                secondary: false,
                points: thin(pts, 2000),
            });
        }
    }
    Ok(Chart {
        title:
            "Probe latency CDF by tenant count (solid: wall/host clock, dashed: gpu/event clock)"
                .into(),
        x_desc: if log {
            "latency, ms (log scale)".into()
        } else {
            "latency, ms".into()
        },
        y_desc: "fraction of runs ≤ x".into(),
        y2_desc: None,
        x: pad(tx(lo), tx(hi)),
        y: (0.0, 1.0),
        y2: (0.0, 1.0),
        x_log10: log,
        series,
    })
}

async fn timeline_chart(
    ctx: &SessionContext,
    filter: &str,
    window: usize,
) -> Result<Chart, PlotError> {
    let sql = format!(
        "SELECT node, gpu_uuid, kernel, ts, wall_ms, {TENANTS_SQL} AS tenants FROM probes WHERE {filter}"
    );
    type Rows = Vec<(i64, f64, Option<u32>)>;
    let mut by: BTreeMap<(String, String, String), Rows> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let (n, u, k) = (
            scan::strings(b, "node")?,
            scan::strings(b, "gpu_uuid")?,
            scan::strings(b, "kernel")?,
        );
        let (ts, w, t) = (
            scan::ints(b, "ts")?,
            scan::floats(b, "wall_ms")?,
            scan::u32s(b, "tenants")?,
        );
        for i in 0..b.num_rows() {
            if let Some(ts) = ts[i] {
                by.entry((n[i].clone(), u[i].clone(), k[i].clone()))
                    .or_default()
                    .push((ts, w[i], t[i]));
            }
        }
        Ok(())
    })
    .await?;
    if by.is_empty() {
        return Err(PlotError::Empty);
    }
    if by.len() > 6 {
        tracing::warn!(
            series = by.len(),
            "more than 6 node/gpu/kernel series; plotting the first 6 (narrow with --where)"
        );
    }
    let t0 = by
        .values()
        .flat_map(|v| v.iter().map(|r| r.0))
        .min()
        .unwrap_or(0);
    let hours = |ts: i64| (ts - t0) as f64 / 3.6e12;
    let window = window.max(2);
    let mut series = Vec::new();
    let (mut xmax, mut ymax, mut tmax) = (0.0f64, 0.0f64, 0u32);
    for (i, (key, mut rows)) in by.into_iter().take(6).enumerate() {
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
                p99.push((hours(rows[idx].0), v));
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
                        tenants.push((hours(r.0), f64::from(l)));
                    }
                }
                if last != Some(t) {
                    tenants.push((hours(r.0), f64::from(t)));
                }
                last = Some(t);
                tmax = tmax.max(t);
            }
        }
        if let (Some(l), Some(r)) = (last, rows.last()) {
            tenants.push((hours(r.0), f64::from(l)));
        }
        xmax = xmax.max(rows.last().map(|r| hours(r.0)).unwrap_or(0.0));
        let name = format!("{} {} {}", key.0, short_uuid(&key.1), key.2);
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
    Ok(Chart {
        title: format!("Rolling p99 of wall_ms over {window} runs, with tenant count"),
        x_desc: format!(
            "hours since {}",
            chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(t0)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        y_desc: "p99 wall, ms".into(),
        y2_desc: Some("tenants (dashed)".into()),
        x: pad(0.0, xmax),
        y: (0.0, ymax * 1.1 + 1e-9),
        y2: (0.0, f64::from(tmax) + 1.0),
        x_log10: false,
        series,
    })
}

fn short_uuid(u: &str) -> String {
    u.chars().take(12).collect()
}

/// Draws the chart `opts.kind` of the rows matching `filter` to `opts.out`.
pub async fn draw(ctx: &SessionContext, filter: &str, opts: &PlotOptions) -> Result<(), PlotError> {
    let ext = opts
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("svg") | Some("png")) {
        return Err(PlotError::Extension(opts.out.display().to_string()));
    }
    let chart = match opts.kind {
        Kind::Cdf => cdf_chart(ctx, filter).await?,
        Kind::Timeline => timeline_chart(ctx, filter, opts.rolling_runs).await?,
    };
    render(&chart, &opts.out, opts.font.as_deref())
}
