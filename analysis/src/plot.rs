//! `slicetrace plot`: latency CDFs and a rolling-p99 timeline, with plotters.
//! Both draw the arrival runs unless `--all-runs` (the caller's `WHERE`
//! clause), and say which in their titles.
//!
//! * `cdf`: one panel per kernel (kernels differ by orders of magnitude, and
//!   one curve over both describes neither). In each, the empirical CDF of
//!   `wall_ms` (solid) and `gpu_ms` (dashed), one colour per value of `--by`
//!   (default: the tenant count, [`crate::pred::TENANTS_SQL`]). The gap
//!   between a colour's two lines is the time spent waiting for a time
//!   slice. The x axis is logarithmic, with ticks at 1-2-5 values, when a
//!   panel's latencies span more than 8×.
//! * `timeline`: rolling p99 of `wall_ms` over the last `--rolling-runs` runs,
//!   one line per value of `--by` (default node, GPU and kernel; at most six,
//!   narrow with `--where`), against wall-clock time (UTC), with the tenant
//!   count as a dashed step line on the right-hand axis.
//!
//! Legends draw each line with its own dash pattern.
//!
//! PNG text needs a font file, found at run time (`--font`, else DejaVu Sans
//! or Liberation Sans in the usual places); without one a PNG is refused with
//! a clear error. SVG never needs one: without a font the chart is drawn with
//! plotters and its text is written as plain SVG `<text>` elements.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::scan::{self, KeyColumn, KeyVal, ScanError};
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
    /// Grouping columns (one line per value); `None` for the kind's default.
    pub by: Option<Vec<String>>,
    /// Which runs are drawn, for the titles (e.g. "arrival runs: 1200 of 9000").
    pub runs_note: String,
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

/// How x values print.
#[derive(Debug, Clone, Copy, PartialEq)]
enum XAxis {
    /// Plain numbers.
    Linear,
    /// The values are log10 of the numbers shown.
    Log10,
    /// Seconds since the epoch, shown as UTC time (with the date when the
    /// span is longer than a day).
    Time { with_date: bool },
}

/// A chart (one panel), independent of the backend.
struct Chart {
    title: String,
    x_desc: String,
    y_desc: String,
    y2_desc: Option<String>,
    x: (f64, f64),
    y: (f64, f64),
    y2: (f64, f64),
    x_axis: XAxis,
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

fn tick_fmt(v: f64, axis: XAxis) -> String {
    match axis {
        XAxis::Linear => trim_num(v),
        XAxis::Log10 => trim_num(10f64.powf(v)),
        XAxis::Time { with_date } => {
            let t =
                chrono::DateTime::<chrono::Utc>::from_timestamp_millis((v * 1e3).round() as i64)
                    .unwrap_or_default();
            if with_date {
                t.format("%m-%d %H:%M").to_string()
            } else {
                t.format("%H:%M:%S").to_string()
            }
        }
    }
}

/// Ticks at 1, 2 and 5 times powers of ten, in `[lo, hi]` (linear values).
fn nice_linear(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return vec![lo];
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|st| span / st <= 7.0)
        .unwrap_or(10.0 * mag);
    let mut out = Vec::new();
    let mut k = (lo / step).ceil();
    while k * step <= hi + step * 1e-9 {
        // Round off binary noise so labels read 0.1, not 0.30000000000000004.
        let v = (k * step / mag * 1e6).round() / 1e6 * mag;
        out.push(v);
        k += 1.0;
    }
    out
}

/// Whole-number ticks in `[lo, hi]` (tenant counts).
fn int_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = nice_linear(lo, hi);
    t.retain(|v| v.fract() == 0.0);
    t
}

/// Ticks at 1-2-5 values (…, 0.1, 0.2, 0.5, 1, 2, 5, …) for an axis whose
/// coordinates are log10 of the values; fewer (1-5, then powers of ten) when
/// the span is wide. Returned as log10 coordinates.
fn log_125(lo: f64, hi: f64) -> Vec<f64> {
    let (d0, d1) = (lo.floor() as i32, hi.ceil() as i32);
    for mantissas in [&[1.0, 2.0, 5.0][..], &[1.0, 5.0][..], &[1.0][..]] {
        let out: Vec<f64> = (d0..=d1)
            .flat_map(|d| mantissas.iter().map(move |m| (m * 10f64.powi(d)).log10()))
            .filter(|v| *v >= lo - 1e-9 && *v <= hi + 1e-9)
            .collect();
        if out.len() <= 10 {
            return out;
        }
    }
    Vec::new()
}

/// Ticks on round wall-clock times (epoch seconds).
fn time_ticks(lo: f64, hi: f64) -> Vec<f64> {
    const STEPS: [f64; 19] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0, 172_800.0,
    ];
    let span = hi - lo;
    let step = STEPS
        .iter()
        .copied()
        .find(|st| span / st <= 7.0)
        .unwrap_or_else(|| (span / 7.0 / 86400.0).ceil() * 86400.0);
    let mut out = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi {
        out.push(t);
        t += step;
    }
    out
}

/// A linear f64 axis whose ticks are exactly the given values (plotters
/// picks its own otherwise: 3.16 on a log axis, 13:07:41 on a time axis).
#[derive(Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        if self.hi == self.lo {
            return (limit.0 + limit.1) / 2;
        }
        let frac = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f64::from(limit.1 - limit.0) * frac).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn x_ticks(c: &Chart) -> Vec<f64> {
    match c.x_axis {
        XAxis::Linear => nice_linear(c.x.0, c.x.1),
        XAxis::Log10 => log_125(c.x.0, c.x.1),
        XAxis::Time { .. } => time_ticks(c.x.0, c.x.1),
    }
}

/// Dash pattern of a legend sample, as three segments of a 24-px line
/// (relative to the sample's left end), so solid and dashed lines differ.
fn legend_segments(dashed: bool) -> [((i32, i32), (i32, i32)); 3] {
    if dashed {
        [((0, 0), (6, 0)), ((9, 0), (15, 0)), ((18, 0), (24, 0))]
    } else {
        [((0, 0), (8, 0)), ((8, 0), (16, 0)), ((16, 0), (24, 0))]
    }
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
    let xt = x_ticks(c);
    let mut ch = b
        .build_cartesian_2d(
            Ticked {
                lo: c.x.0,
                hi: c.x.1,
                ticks: xt.clone(),
            },
            c.y.0..c.y.1,
        )
        .map_err(e)?
        .set_secondary_coord(
            c.x.0..c.x.1,
            Ticked {
                lo: c.y2.0,
                hi: c.y2.1,
                ticks: int_ticks(c.y2.0, c.y2.1),
            },
        );
    let axis = c.x_axis;
    if !fontless {
        ch.configure_mesh()
            .x_desc(&c.x_desc)
            .y_desc(&c.y_desc)
            .x_label_formatter(&|v| tick_fmt(*v, axis))
            .y_label_formatter(&|v| trim_num(*v))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        if let Some(d) = &c.y2_desc {
            ch.configure_secondary_axes()
                .y_desc(d)
                .x_labels(0)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(e)?;
        }
    } else {
        let grid = BLACK.mix(0.15);
        for &x in &xt {
            ch.draw_series(LineSeries::new([(x, c.y.0), (x, c.y.1)], grid))
                .map_err(e)?;
        }
        for y in nice_linear(c.y.0, c.y.1) {
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
                let [a, b, cc] = legend_segments(dashed);
                EmptyElement::at((x - 4, y))
                    + PathElement::new(vec![a.0, a.1], st)
                    + PathElement::new(vec![b.0, b.1], st)
                    + PathElement::new(vec![cc.0, cc.1], st)
            });
        }
    }
    if let Some(labels) = labels {
        let at = |x: f64, y: f64| ch.backend_coord(&(x, y));
        let (w, _) = root.dim_in_pixel();
        let (bx, by) = root.get_base_pixel();
        labels.push(Label {
            x: bx + (w / 2) as i32,
            y: by + 30,
            anchor: "middle",
            size: 20,
            text: c.title.clone(),
            rotate: false,
        });
        for &x in &xt {
            let (px, py) = at(x, c.y.0);
            labels.push(Label {
                x: px,
                y: py + 18,
                anchor: "middle",
                size: 12,
                text: tick_fmt(x, axis),
                rotate: false,
            });
        }
        for y in nice_linear(c.y.0, c.y.1) {
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
            for y in int_ticks(c.y2.0, c.y2.1) {
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
            // `root.draw` takes coordinates relative to this panel.
            let (lx, ly) = (x0 - bx + 10, y - by - 4);
            for (a, b) in legend_segments(s.dashed) {
                root.draw(&PathElement::new(
                    vec![(lx + a.0, ly), (lx + b.0, ly)],
                    s.color.stroke_width(2),
                ))
                .map_err(e)?;
            }
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
    Ok(())
}

/// Draws the panels side by side on `root` and presents it.
fn draw_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    charts: &[Chart],
    mut labels: Option<&mut Vec<Label>>,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let areas = root.split_evenly((1, charts.len().max(1)));
    for (area, c) in areas.iter().zip(charts) {
        draw_chart(area, c, labels.as_deref_mut())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render(charts: &[Chart], out: &Path, font: Option<&Path>) -> Result<(), PlotError> {
    let name = out.display().to_string();
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let draw_err = |msg: String| PlotError::Draw {
        path: name.clone(),
        msg,
    };
    let size = ((800 * charts.len() as u32).max(1100), 700);
    match ext.as_deref() {
        Some("png") => {
            if !register_font(font)? {
                return Err(PlotError::NoFont(FONT_CANDIDATES.join(", ")));
            }
            let root = BitMapBackend::new(out, size).into_drawing_area();
            draw_panels(&root, charts, None).map_err(draw_err)
        }
        Some("svg") => {
            let has_font = register_font(font)?;
            let mut svg = String::new();
            let mut labels = Vec::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw_panels(&root, charts, (!has_font).then_some(&mut labels)).map_err(draw_err)?;
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

async fn cdf_charts(
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

async fn timeline_chart(
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
    let charts = match opts.kind {
        Kind::Cdf => {
            let by = opts.by.clone().unwrap_or_else(|| vec!["tenants".into()]);
            cdf_charts(ctx, filter, &by, &opts.runs_note).await?
        }
        Kind::Timeline => {
            let by = opts
                .by
                .clone()
                .unwrap_or_else(|| ["node", "gpu_uuid", "kernel"].map(String::from).to_vec());
            vec![timeline_chart(ctx, filter, &by, opts.rolling_runs, &opts.runs_note).await?]
        }
    };
    render(&charts, &opts.out, opts.font.as_deref())
}
