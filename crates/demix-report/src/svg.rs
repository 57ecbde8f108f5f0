//! Small SVG plots for the report: line plots, scatter plots and grouped bar
//! charts, drawn as strings.
//!
//! The output is meant to be inlined in HTML: no scripts, no external
//! resources, no fonts beyond the viewer's generic `sans-serif`, and the same
//! input always gives the same bytes. Non-finite values are dropped; an empty
//! plot still draws its axes and says "no data".

use std::fmt::Write;

/// Series colours (Okabe-Ito, colour-blind safe; yellow left out for contrast).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#999999", "#000000",
];

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A named set of points.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }

    fn finite(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    }
}

/// A numeric axis: a range rounded out to "nice" tick steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub ticks: Vec<f64>,
}

/// A step of 1, 2 or 5 times a power of ten giving about `target` intervals.
pub fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

impl Axis {
    /// An axis covering `values` (non-finite ones ignored), optionally reaching 0.
    pub fn covering(values: impl IntoIterator<Item = f64>, include_zero: bool) -> Axis {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        if include_zero {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        Axis::new(lo, hi, 5)
    }

    /// An axis from `lo` to `hi` rounded out to steps giving about `target` ticks.
    pub fn new(lo: f64, hi: f64, target: usize) -> Axis {
        let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()).max(1e-300) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let step = nice_step(hi - lo, target);
        let min = (lo / step).floor() * step;
        let max = (hi / step).ceil() * step;
        let n = ((max - min) / step).round() as usize;
        let ticks = (0..=n)
            .map(|i| clean(min + i as f64 * step, step))
            .collect();
        Axis {
            min: clean(min, step),
            max: clean(max, step),
            step,
            ticks,
        }
    }

    /// Where `v` falls on the axis, 0 at `min` and 1 at `max`.
    pub fn frac(&self, v: f64) -> f64 {
        if self.max > self.min {
            (v - self.min) / (self.max - self.min)
        } else {
            0.5
        }
    }

    /// A tick label: SI suffixes for large numbers, as many decimals as the step needs.
    pub fn label(&self, v: f64) -> String {
        let big = self.min.abs().max(self.max.abs());
        let (scale, suffix) = if big >= 1e9 {
            (1e9, "G")
        } else if big >= 1e6 {
            (1e6, "M")
        } else if big >= 1e4 {
            (1e3, "k")
        } else {
            (1.0, "")
        };
        let step = self.step / scale;
        let decimals = if step >= 1.0 {
            0
        } else {
            ((-step.log10()).ceil() as usize).min(9)
        };
        let s = format!("{:.*}", decimals, v / scale);
        let s = if s
            .trim_start_matches('-')
            .chars()
            .all(|c| c == '0' || c == '.')
        {
            format!("{:.*}", decimals, 0.0)
        } else {
            s
        };
        format!("{s}{suffix}")
    }
}

/// Rounds away float noise (0.30000000000000004) at the step's precision.
fn clean(v: f64, step: f64) -> f64 {
    let digits = (-step.log10()).ceil().max(0.0) as i32 + 3;
    let p = 10f64.powi(digits.min(15));
    let r = (v * p).round() / p;
    if r == 0.0 { 0.0 } else { r }
}

/// Canvas and margins of one plot.
#[derive(Clone, Copy, Debug)]
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn new(legend: &[&str], bottom: f64) -> Frame {
        let legend_w = legend
            .iter()
            .map(|n| text_width(n, 12.0))
            .fold(0.0, f64::max);
        let right = if legend.is_empty() {
            20.0
        } else {
            legend_w.min(220.0) + 44.0
        };
        Frame {
            w: 720.0,
            h: 360.0,
            left: 70.0,
            right,
            top: 36.0,
            bottom,
        }
    }
    fn x0(&self) -> f64 {
        self.left
    }
    fn x1(&self) -> f64 {
        self.w - self.right
    }
    fn y0(&self) -> f64 {
        self.h - self.bottom
    }
    fn y1(&self) -> f64 {
        self.top
    }
    fn px(&self, a: &Axis, v: f64) -> f64 {
        self.x0() + a.frac(v) * (self.x1() - self.x0())
    }
    fn py(&self, a: &Axis, v: f64) -> f64 {
        self.y0() - a.frac(v) * (self.y0() - self.y1())
    }
}

/// A rough width of `s` in a sans-serif font of `size` px, for layout only.
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.58
}

fn open(out: &mut String, f: &Frame, title: &str) {
    let _ = write!(
        out,
        r##"<svg class="plot" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}" font-family="sans-serif" font-size="12"><title>{t}</title><rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/><text x="{cx:.1}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"##,
        w = f.w,
        h = f.h,
        t = escape(title),
        cx = f.w / 2.0,
    );
}

/// Grid, axis lines, tick labels and axis titles.
fn axes(out: &mut String, f: &Frame, x: Option<&Axis>, y: &Axis, x_label: &str, y_label: &str) {
    out.push_str(r##"<g stroke="#e3e3e3" stroke-width="1">"##);
    for &t in &y.ticks {
        let py = f.py(y, t);
        let _ = write!(
            out,
            r#"<line x1="{:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}"/>"#,
            f.x0(),
            f.x1()
        );
    }
    if let Some(x) = x {
        for &t in &x.ticks {
            let px = f.px(x, t);
            let _ = write!(
                out,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}"/>"#,
                f.y0(),
                f.y1()
            );
        }
    }
    out.push_str("</g>");
    let _ = write!(
        out,
        r##"<g stroke="#333333" stroke-width="1"><line x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y0:.1}"/><line x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{y1:.1}"/></g>"##,
        x0 = f.x0(),
        x1 = f.x1(),
        y0 = f.y0(),
        y1 = f.y1()
    );
    out.push_str(r##"<g fill="#333333">"##);
    for &t in &y.ticks {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            f.x0() - 6.0,
            f.py(y, t) + 4.0,
            escape(&y.label(t))
        );
    }
    if let Some(x) = x {
        for &t in &x.ticks {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                f.px(x, t),
                f.y0() + 18.0,
                escape(&x.label(t))
            );
        }
    }
    out.push_str("</g>");
    if !x_label.is_empty() {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (f.x0() + f.x1()) / 2.0,
            f.h - 8.0,
            escape(x_label)
        );
    }
    if !y_label.is_empty() {
        let (cx, cy) = (16.0, (f.y0() + f.y1()) / 2.0);
        let _ = write!(
            out,
            r#"<text x="{cx:.1}" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 {cx:.1} {cy:.1})">{}</text>"#,
            escape(y_label)
        );
    }
}

fn legend(out: &mut String, f: &Frame, names: &[&str]) {
    legend_with(out, f, names, false);
}

/// The legend; with `shapes`, each entry shows its series' marker.
fn legend_with(out: &mut String, f: &Frame, names: &[&str], shapes: bool) {
    if names.is_empty() {
        return;
    }
    let x = f.x1() + 14.0;
    for (i, n) in names.iter().enumerate() {
        let y = f.y1() + 6.0 + i as f64 * 18.0;
        if y > f.h - 10.0 {
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{:.1}">and {} more</text>"#,
                y + 9.0,
                names.len() - i
            );
            break;
        }
        if shapes {
            marker(out, i, x + 6.0, y + 6.0, color(i));
        } else {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{}"/>"#,
                color(i)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 18.0,
            y + 10.0,
            escape(&truncate(n, 32))
        );
    }
}

fn no_data(out: &mut String, f: &Frame) {
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#777777">no data</text>"##,
        (f.x0() + f.x1()) / 2.0,
        (f.y0() + f.y1()) / 2.0
    );
}

/// Marker shapes by series: circle, square, triangle, diamond, then again.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];

/// Series `i`'s marker centred on (cx, cy), filled with `fill`.
fn marker(out: &mut String, i: usize, cx: f64, cy: f64, fill: &str) {
    let r = 4.0;
    let _ = match SHAPES[i % SHAPES.len()] {
        "circle" => write!(
            out,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{fill}"/>"#
        ),
        "square" => write!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"#,
            cx - r * 0.85,
            cy - r * 0.85,
            r * 1.7,
            r * 1.7
        ),
        "triangle" => write!(
            out,
            r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{fill}"/>"#,
            cx,
            cy - r * 1.1,
            cx - r,
            cy + r * 0.8,
            cx + r,
            cy + r * 0.8
        ),
        _ => write!(
            out,
            r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{fill}"/>"#,
            cx,
            cy - r * 1.2,
            cx + r,
            cy,
            cx,
            cy + r * 1.2,
            cx - r,
            cy
        ),
    };
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// At most `n` points, evenly strided, always keeping the last.
fn thin(points: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    if points.len() <= n || n < 2 {
        return points;
    }
    let stride = points.len().div_ceil(n - 1);
    let last = *points.last().expect("non-empty");
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(stride).collect();
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// Lines through each series' points, in x order.
#[derive(Clone, Debug, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Points of one or more series, optionally with the y = x line and a note.
#[derive(Clone, Debug, Default)]
pub struct ScatterPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Draw y = x, with both axes on the same range.
    pub identity: bool,
    /// A line of text in the top-left corner of the plot area (e.g. the rho).
    pub annotation: Option<String>,
    /// Marked values: a ringed point, or a vertical line where only x is known.
    pub marks: Vec<Mark>,
    /// Show the legend even for one series (it is always shown for several).
    pub legend: bool,
}

/// A value to point out on a scatter plot (e.g. the chosen mixture).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mark {
    pub label: String,
    pub x: f64,
    /// `None`: only x is known, drawn as a dashed vertical line.
    pub y: Option<f64>,
}

/// Bars grouped by category, one bar per series in each group.
#[derive(Clone, Debug, Default)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// (name, one value per category; `None` or non-finite leaves a gap).
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Bars rise from 0 (shares, counts). Otherwise the axis is scaled to the
    /// values, so small differences between large numbers (losses) show, and
    /// the plot says where the axis starts.
    pub from_zero: bool,
}

impl LinePlot {
    pub fn svg(&self) -> String {
        let series: Vec<Series> = self
            .series
            .iter()
            .map(|s| {
                let mut p: Vec<(f64, f64)> = s.finite().collect();
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series::new(s.name.clone(), thin(p, 1000))
            })
            .collect();
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        let show_legend = series.len() > 1 || series.iter().any(|s| !s.name.is_empty());
        let f = Frame::new(if show_legend { &names } else { &[] }, 44.0);
        let x = Axis::covering(
            series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
            false,
        );
        let y = Axis::covering(
            series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
            false,
        );
        let mut out = String::new();
        open(&mut out, &f, &self.title);
        axes(&mut out, &f, Some(&x), &y, &self.x_label, &self.y_label);
        if series.iter().all(|s| s.points.is_empty()) {
            no_data(&mut out, &f);
        }
        for (i, s) in series.iter().enumerate() {
            match s.points.as_slice() {
                [] => {}
                [(px, py)] => {
                    let _ = write!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                        f.px(&x, *px),
                        f.py(&y, *py),
                        color(i)
                    );
                }
                pts => {
                    let _ = write!(
                        out,
                        r#"<polyline fill="none" stroke="{}" stroke-width="1.5" stroke-linejoin="round" points=""#,
                        color(i)
                    );
                    for (k, (px, py)) in pts.iter().enumerate() {
                        if k > 0 {
                            out.push(' ');
                        }
                        let _ = write!(out, "{:.1},{:.1}", f.px(&x, *px), f.py(&y, *py));
                    }
                    out.push_str(r#""/>"#);
                }
            }
        }
        if show_legend {
            legend(&mut out, &f, &names);
        }
        out.push_str("</svg>");
        out
    }
}

impl ScatterPlot {
    pub fn svg(&self) -> String {
        let series: Vec<Series> = self
            .series
            .iter()
            .map(|s| Series::new(s.name.clone(), s.finite().collect()))
            .collect();
        let marks: Vec<&Mark> = self
            .marks
            .iter()
            .filter(|m| m.x.is_finite() && m.y.is_none_or(f64::is_finite))
            .collect();
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        let show_legend = series.len() > 1 || (self.legend && !series.is_empty());
        let f = Frame::new(if show_legend { &names } else { &[] }, 44.0);
        let xs = || {
            series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .chain(marks.iter().map(|m| m.x))
        };
        let ys = || {
            series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .chain(marks.iter().filter_map(|m| m.y))
        };
        let (x, y) = if self.identity {
            let a = Axis::covering(xs().chain(ys()), false);
            (a.clone(), a)
        } else {
            (Axis::covering(xs(), false), Axis::covering(ys(), false))
        };
        let mut out = String::new();
        open(&mut out, &f, &self.title);
        axes(&mut out, &f, Some(&x), &y, &self.x_label, &self.y_label);
        let empty = series.iter().all(|s| s.points.is_empty());
        if empty && marks.is_empty() {
            no_data(&mut out, &f);
        }
        if self.identity && !empty {
            let _ = write!(
                out,
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888888" stroke-width="1" stroke-dasharray="5 4"><title>y = x</title></line>"##,
                f.px(&x, x.min),
                f.py(&y, y.min),
                f.px(&x, x.max),
                f.py(&y, y.max)
            );
        }
        for (i, s) in series.iter().enumerate() {
            let _ = write!(out, r#"<g fill-opacity="0.75">"#);
            for (px, py) in &s.points {
                marker(&mut out, i, f.px(&x, *px), f.py(&y, *py), color(i));
            }
            out.push_str("</g>");
        }
        for (k, m) in marks.iter().enumerate() {
            let px = f.px(&x, m.x);
            // Labels stack up from the bottom of the plot area, beside the
            // line on the side away from the y = x diagonal's points.
            let ly = f.y0() - 10.0 - k as f64 * 16.0;
            match m.y {
                Some(vy) => {
                    let py = f.py(&y, vy);
                    let _ = write!(
                        out,
                        r##"<circle cx="{px:.1}" cy="{py:.1}" r="8" fill="none" stroke="#000000" stroke-width="2"><title>{}</title></circle>"##,
                        escape(&m.label)
                    );
                }
                None => {
                    let _ = write!(
                        out,
                        r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#000000" stroke-width="1.5" stroke-dasharray="2 3"><title>{}</title></line>"##,
                        f.y0(),
                        f.y1(),
                        escape(&m.label)
                    );
                }
            }
            let right = px < (f.x0() + f.x1()) / 2.0;
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{ly:.1}" text-anchor="{}" font-size="12">{}</text>"#,
                if right { px + 6.0 } else { px - 6.0 },
                if right { "start" } else { "end" },
                escape(&m.label)
            );
        }
        if let Some(a) = &self.annotation {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="13">{}</text>"#,
                f.x0() + 10.0,
                f.y1() + 18.0,
                escape(a)
            );
        }
        if show_legend {
            legend_with(&mut out, &f, &names, true);
        }
        out.push_str("</svg>");
        out
    }
}

impl BarChart {
    pub fn svg(&self) -> String {
        let names: Vec<&str> = self.series.iter().map(|s| s.0.as_str()).collect();
        let show_legend = self.series.len() > 1;
        let longest = self
            .categories
            .iter()
            .map(|c| c.chars().count().min(24))
            .max()
            .unwrap_or(0);
        let rotate = self.categories.len() > 8 || longest * self.categories.len() > 70;
        let bottom = if rotate {
            30.0 + longest as f64 * 5.0
        } else {
            44.0
        };
        let f = Frame::new(if show_legend { &names } else { &[] }, bottom);
        let values = || {
            self.series
                .iter()
                .flat_map(|s| s.1.iter().flatten().copied())
                .filter(|v| v.is_finite())
        };
        let y = if self.from_zero {
            Axis::covering(values(), true)
        } else {
            // Room below the lowest bar, so it still shows.
            let (lo, hi) = values().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(v), h.max(v))
            });
            let pad = if hi > lo {
                (hi - lo) * 0.25
            } else {
                lo.abs() * 0.05
            };
            let mut a = Axis::covering(values().chain([lo - pad]), false);
            // An axis that would reach 0 anyway starts there.
            if a.min < 0.0 && lo >= 0.0 {
                a = Axis::covering(values(), true);
            }
            a
        };
        let mut out = String::new();
        open(&mut out, &f, &self.title);
        axes(&mut out, &f, None, &y, "", &self.y_label);
        if y.min != 0.0 && values().next().is_some() {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#555555">axis starts at {}, not 0</text>"##,
                f.x1(),
                f.y1() - 4.0,
                escape(&y.label(y.min))
            );
        }
        if self.categories.is_empty() || values().next().is_none() {
            no_data(&mut out, &f);
        }
        let n = self.categories.len().max(1) as f64;
        let group = (f.x1() - f.x0()) / n;
        let bar = group * 0.8 / self.series.len().max(1) as f64;
        // Bars rise from 0, or from the bottom of an axis that does not reach it.
        let zero = f.py(&y, 0.0f64.clamp(y.min, y.max));
        for (c, cat) in self.categories.iter().enumerate() {
            let gx = f.x0() + c as f64 * group;
            for (s, (name, vals)) in self.series.iter().enumerate() {
                let Some(v) = vals.get(c).copied().flatten().filter(|v| v.is_finite()) else {
                    continue;
                };
                let py = f.py(&y, v);
                let _ = write!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    gx + group * 0.1 + s as f64 * bar,
                    py.min(zero),
                    (bar - 1.0).max(1.0),
                    (zero - py).abs(),
                    color(s),
                    escape(&format!("{name}, {cat}")),
                    fmt_value(v)
                );
            }
            let (lx, ly) = (gx + group / 2.0, f.y0() + 16.0);
            if rotate {
                let _ = write!(
                    out,
                    r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-35 {lx:.1} {ly:.1})">{}</text>"#,
                    escape(&truncate(cat, 24))
                );
            } else {
                let _ = write!(
                    out,
                    r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle">{}</text>"#,
                    escape(&truncate(cat, 24))
                );
            }
        }
        if show_legend {
            legend(&mut out, &f, &names);
        }
        out.push_str("</svg>");
        out
    }
}

/// A value for a tooltip: four significant decimals, or an integer.
fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks tags nest and close, attributes are quoted, and text holds no raw
    /// `<` or `&` that is not an entity. Returns the element names in order.
    fn check_xml(s: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find(['<', '&']) {
            let (text, tail) = rest.split_at(i);
            assert!(!text.contains('>'), "raw `>` in text: {text}");
            if tail.starts_with('&') {
                let end = tail.find(';').expect("entity ends with ;");
                let ent = &tail[1..end];
                assert!(
                    ["amp", "lt", "gt", "quot", "#39"].contains(&ent),
                    "unknown entity &{ent};"
                );
                rest = &tail[end + 1..];
                continue;
            }
            let end = tail.find('>').expect("tag closes");
            let tag = &tail[1..end];
            assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
            // Attribute values are double-quoted: an even number of quotes.
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
                assert_eq!(open, name, "</{name}> closes <{open}>");
            } else {
                let name: String = tag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                assert!(!name.is_empty(), "bad tag <{tag}>");
                names.push(name.clone());
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &tail[end + 1..];
        }
        assert!(!rest.contains('>'), "raw `>` in text: {rest}");
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        names
    }

    #[test]
    fn escapes_text() {
        assert_eq!(
            escape(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;"
        );
        let p = LinePlot {
            title: "<script>alert('x')</script> & co".into(),
            x_label: "x < 1".into(),
            y_label: "\"y\"".into(),
            series: vec![Series::new("a&b", vec![(0.0, 1.0), (1.0, 2.0)])],
        };
        let s = p.svg();
        check_xml(&s);
        assert!(!s.contains("<script"));
        assert!(s.contains("&lt;script&gt;"));
        assert!(s.contains("a&amp;b"));
    }

    #[test]
    fn axes_cover_the_data_with_nice_ticks() {
        let a = Axis::new(0.13, 0.87, 5);
        assert!(a.min <= 0.13 && a.max >= 0.87, "{a:?}");
        assert_eq!((a.min, a.max, a.step), (0.1, 0.9, 0.1));
        let a = Axis::new(0.0, 0.95, 5);
        assert_eq!(a.ticks, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(a.label(0.4), "0.4");
        let t = Axis::covering([0.0, 65536.0], false);
        assert_eq!((t.min, t.max, t.step), (0.0, 70000.0, 10000.0));
        assert_eq!(t.label(20000.0), "20k");
        let g = Axis::covering([1.5e9, 5e10], true);
        assert_eq!(g.min, 0.0);
        assert_eq!(g.label(g.ticks[1]), "10G");
        // Negative ranges, and a range of one value.
        let n = Axis::new(-3.2, -1.1, 5);
        assert!(n.min <= -3.2 && n.max >= -1.1);
        assert!(n.ticks.windows(2).all(|w| w[0] < w[1]));
        let one = Axis::covering([2.0, 2.0], false);
        assert!(one.min < 2.0 && one.max > 2.0, "{one:?}");
        let zero = Axis::covering([0.0], false);
        assert!(zero.min < 0.0 && zero.max > 0.0);
        // No finite data: a unit axis.
        let none = Axis::covering([f64::NAN, f64::INFINITY], false);
        assert_eq!((none.min, none.max), (0.0, 1.0));
        // Ticks are clean decimals and stay within a handful.
        let a = Axis::new(0.1, 0.7, 5);
        assert!(a.ticks.iter().all(|t| format!("{t}").len() <= 4), "{a:?}");
        assert!((3..=11).contains(&a.ticks.len()));
        assert_eq!(Axis::new(-1.0, 1.0, 4).label(0.0), "0.0");
    }

    #[test]
    fn line_plot_draws_series_and_legend() {
        let p = LinePlot {
            title: "Training loss".into(),
            x_label: "tokens".into(),
            y_label: "loss".into(),
            series: vec![
                Series::new(
                    "base",
                    (0..50)
                        .map(|i| (i as f64 * 1000.0, 5.0 - i as f64 * 0.05))
                        .collect(),
                ),
                Series::new(
                    "chosen",
                    vec![(3000.0, 4.0), (1000.0, 4.5), (f64::NAN, 1.0)],
                ),
                Series::new("single", vec![(10.0, 4.2)]),
            ],
        };
        let s = p.svg();
        let names = check_xml(&s);
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2);
        assert_eq!(names.iter().filter(|n| *n == "circle").count(), 1);
        assert!(s.contains(">base<") && s.contains(">chosen<") && s.contains(">single<"));
        assert!(s.contains(">tokens<") && s.contains(">loss<"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        // Coordinates stay inside the canvas.
        for pts in s.split("points=\"").skip(1) {
            for xy in pts.split('"').next().unwrap().split(' ') {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=720.0).contains(&x) && (0.0..=360.0).contains(&y));
            }
        }
        // Long series are thinned.
        let long = LinePlot {
            series: vec![Series::new(
                "",
                (0..10_000)
                    .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                    .collect(),
            )],
            ..LinePlot::default()
        };
        let s = long.svg();
        check_xml(&s);
        let n = s
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .count();
        assert!(n <= 1001, "{n} points");
    }

    #[test]
    fn empty_plots_still_draw() {
        for s in [
            LinePlot::default().svg(),
            LinePlot {
                series: vec![Series::new("a", vec![])],
                ..LinePlot::default()
            }
            .svg(),
            ScatterPlot {
                identity: true,
                ..ScatterPlot::default()
            }
            .svg(),
            BarChart::default().svg(),
            BarChart {
                categories: vec!["a".into()],
                series: vec![("s".into(), vec![None])],
                ..BarChart::default()
            }
            .svg(),
        ] {
            check_xml(&s);
            assert!(s.contains("no data"), "{s}");
            assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        }
    }

    #[test]
    fn scatter_shares_axes_with_the_identity_line() {
        let p = ScatterPlot {
            title: "math".into(),
            x_label: "predicted".into(),
            y_label: "measured".into(),
            series: vec![Series::new(
                "proxies",
                vec![(1.0, 1.2), (2.0, 1.9), (3.0, 3.3)],
            )],
            identity: true,
            annotation: Some("Spearman ρ = 1.00 (n = 3)".into()),
            marks: vec![Mark {
                label: "chosen".into(),
                x: 5.0,
                y: None,
            }],
            legend: false,
        };
        let s = p.svg();
        let names = check_xml(&s);
        assert_eq!(names.iter().filter(|n| *n == "circle").count(), 3);
        assert!(s.contains("stroke-dasharray"), "y = x line");
        assert!(s.contains("Spearman ρ = 1.00 (n = 3)"));
        assert!(!s.contains("no data"));
        // The mark widens the axes to reach it, and is labelled.
        assert!(s.contains(">chosen</text>") && s.contains(r#"stroke-dasharray="2 3""#));
        assert!(s.contains(">5</text>") || s.contains(">5.0</text>"), "{s}");
        // Series get their own shapes, shown in the legend.
        let rounds = ScatterPlot {
            series: vec![
                Series::new("round 2", vec![(1.0, 1.0)]),
                Series::new("round 3", vec![(2.0, 2.0)]),
            ],
            ..ScatterPlot::default()
        };
        let s = rounds.svg();
        let names = check_xml(&s);
        assert_eq!(
            names.iter().filter(|n| *n == "circle").count(),
            2,
            "point and swatch"
        );
        assert_eq!(
            names.iter().filter(|n| *n == "rect").count(),
            1 + 2,
            "background, point, swatch"
        );
        assert!(s.contains(">round 2<") && s.contains(">round 3<"));
    }

    #[test]
    fn loss_bars_are_scaled_to_the_values_and_say_so() {
        let b = BarChart {
            title: "loss".into(),
            y_label: "loss (nats/token)".into(),
            categories: vec!["a".into(), "b".into()],
            series: vec![("m".into(), vec![Some(3.1), Some(3.3)])],
            from_zero: false,
        };
        let s = b.svg();
        check_xml(&s);
        let start = s
            .split("axis starts at ")
            .nth(1)
            .expect("says where")
            .split(',')
            .next()
            .unwrap();
        let start: f64 = start.parse().unwrap();
        assert!(start > 2.5 && start < 3.1, "{start}");
        // Each bar keeps some height.
        for h in s
            .split("height=\"")
            .skip(2)
            .map(|x| x.split('"').next().unwrap())
        {
            assert!(h.parse::<f64>().unwrap() > 5.0, "{h}");
        }
        // Shares start at 0 and say nothing.
        let z = BarChart {
            from_zero: true,
            ..b
        };
        assert!(!z.svg().contains("axis starts at"));
    }

    #[test]
    fn bar_chart_groups_bars() {
        let b = BarChart {
            title: "Mixture".into(),
            y_label: "weight".into(),
            categories: vec!["sotu".into(), "math".into(), "chat".into()],
            series: vec![
                ("chosen".into(), vec![Some(0.5), Some(0.3), Some(0.2)]),
                ("uniform".into(), vec![Some(1.0 / 3.0); 3]),
            ],
            from_zero: true,
        };
        let s = b.svg();
        let names = check_xml(&s);
        // One background rect, six bars, two legend swatches.
        assert_eq!(names.iter().filter(|n| *n == "rect").count(), 1 + 6 + 2);
        assert!(s.contains("chosen, math: 0.3000"));
        assert!(s.contains(">sotu<") && s.contains(">uniform<"));
        // Negative values hang below zero; many categories get rotated labels.
        let many = BarChart {
            categories: (0..12).map(|i| format!("domain-{i}")).collect(),
            series: vec![("d".into(), (0..12).map(|i| Some(i as f64 - 5.0)).collect())],
            ..BarChart::default()
        };
        let s = many.svg();
        check_xml(&s);
        assert!(s.contains("rotate(-35"));
    }
}
