//! Drawing [`Chart`]s with plotters, side by side, to PNG or SVG; without a
//! font, SVG text is written as plain `<text>` elements.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{int_ticks, nice_linear, tick_fmt, trim_num, x_ticks, Ticked};
use super::{register_font, Chart, Label, PlotError, FONT_CANDIDATES};

pub(super) fn color(i: usize) -> RGBColor {
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

pub(super) fn render(charts: &[Chart], out: &Path, font: Option<&Path>) -> Result<(), PlotError> {
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
