//! Axis ranges and ticks: 1-2-5 steps on linear axes, decades on log axes,
//! whole hours, minutes or seconds on time axes, and [`Ticked`], the axis
//! type that draws exactly those ticks.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::Ranged;

use super::{Chart, XAxis};

pub(super) fn pad(lo: f64, hi: f64) -> (f64, f64) {
    if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let d = (hi - lo) * 0.03;
        (lo - d, hi + d)
    }
}

/// Axis numbers without trailing zeros ("5", "0.25", "3.16").
pub(super) fn trim_num(v: f64) -> String {
    let s = crate::output::fmt_num(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

pub(super) fn tick_fmt(v: f64, axis: XAxis) -> String {
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
pub(super) fn nice_linear(lo: f64, hi: f64) -> Vec<f64> {
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
pub(super) fn int_ticks(lo: f64, hi: f64) -> Vec<f64> {
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
pub(super) struct Ticked {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) ticks: Vec<f64>,
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

pub(super) fn x_ticks(c: &Chart) -> Vec<f64> {
    match c.x_axis {
        XAxis::Linear => nice_linear(c.x.0, c.x.1),
        XAxis::Log10 => log_125(c.x.0, c.x.1),
        XAxis::Time { .. } => time_ticks(c.x.0, c.x.1),
    }
}
