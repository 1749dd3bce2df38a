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
//!
//! One job per file: `charts.rs` queries the rows and builds the charts,
//! `axis.rs` picks their ticks, `render.rs` draws them to SVG or PNG.

use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use plotters::prelude::RGBColor;
use plotters::style::FontStyle;

use crate::scan::ScanError;

mod axis;
mod charts;
mod render;

use charts::{cdf_charts, timeline_chart};
use render::render;

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

/// One series of a timeline drawn from precomputed points (the rollups'
/// per-bucket p99s, [`crate::rollup::timeline`]).
#[derive(Debug, Clone)]
pub struct TimelineSeries {
    /// Legend label.
    pub label: String,
    /// (seconds since the epoch, p99 of wall_ms).
    pub p99: Vec<(f64, f64)>,
    /// (seconds since the epoch, tenant count).
    pub tenants: Vec<(f64, f64)>,
}

/// Draws a timeline of per-bucket p99s to `opts.out` (`note` goes in the title).
pub fn draw_timeline(
    input: &[TimelineSeries],
    opts: &PlotOptions,
    note: &str,
) -> Result<(), PlotError> {
    let ext = opts
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("svg") | Some("png")) {
        return Err(PlotError::Extension(opts.out.display().to_string()));
    }
    if input.iter().all(|s| s.p99.is_empty()) {
        return Err(PlotError::Empty);
    }
    let (mut xmin, mut xmax, mut ymax, mut tmax) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0.0f64);
    let mut series = Vec::new();
    for (i, s) in input.iter().enumerate() {
        for &(x, y) in &s.p99 {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymax = ymax.max(y);
        }
        for &(_, t) in &s.tenants {
            tmax = tmax.max(t);
        }
        series.push(Series {
            label: format!("{}: p99 wall", s.label),
            color: render::color(i),
            dashed: false,
            secondary: false,
            points: s.p99.clone(),
        });
        if !s.tenants.is_empty() {
            series.push(Series {
                label: format!("{}: tenants", s.label),
                color: render::color(i),
                dashed: true,
                secondary: true,
                points: s.tenants.clone(),
            });
        }
    }
    let date = |t: f64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis((t * 1e3) as i64)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let with_date = date(xmin) != date(xmax);
    let chart = Chart {
        title: format!("p99 of wall_ms per rollup bucket, with tenant count ({note})"),
        x_desc: if with_date {
            format!("time (UTC), {} .. {}", date(xmin), date(xmax))
        } else {
            format!("time (UTC) on {}", date(xmin))
        },
        y_desc: "p99 wall, ms".into(),
        y2_desc: Some("tenants (dashed)".into()),
        x: axis::pad(xmin, xmax),
        y: (0.0, ymax * 1.1 + 1e-9),
        y2: (0.0, tmax + 1.0),
        x_axis: XAxis::Time { with_date },
        series,
    };
    render(&[chart], &opts.out, opts.font.as_deref())
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
