//! PNG charts of the harness's results: line charts ([`lines`]) and grouped bars ([`bars`]).
//!
//! Drawn with `plotters` on its bitmap backend. Text is rendered in pure Rust (`ab_glyph`)
//! with an embedded DejaVu Sans (`assets/DejaVuSans.ttf`, license beside it), so charts can be
//! drawn on a machine without system fonts, fontconfig or freetype.

use std::fmt::Display;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Size of every chart, in pixels.
const SIZE: (u32, u32) = (900, 560);
/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
/// DejaVu Sans 2.37, Bitstream Vera / Arev license (see `assets/DejaVuSans-LICENSE.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Colours by series / bar-label index (matplotlib's "tab10"), repeated past ten.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line on a chart: a label for the legend and its points (x, y).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's text for this line (an empty label leaves it out of the legend).
    pub label: String,
    /// The points, joined in the order given; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One group of bars: a category name (x axis) and one value per bar label.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    /// The category's name, written under its group on the x axis.
    pub category: String,
    /// `(bar label, value)` pairs, drawn left to right; a label keeps its colour in every group.
    pub values: Vec<(String, f64)>,
}

/// Draws a line chart with markers and a legend to `path` (PNG, 900x560).
/// y axis starts at 0; x and y ranges fit the data with a little headroom; empty data still draws axes.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    ensure_font()?;
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let (x_range, y_range) = line_ranges(finite.iter().flatten().copied());

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail(path))?;
    let mut chart = chart_builder(&root, title)
        .build_cartesian_2d(x_range.clone(), y_range.clone())
        .map_err(fail(path))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_num(*v))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(fail(path))?;

    for (i, (s, points)) in series.iter().zip(&finite).enumerate() {
        let colour = colour(i);
        let line = chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(fail(path))?;
        if !s.label.is_empty() {
            line.label(s.label.as_str()).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (22, 0)], colour.stroke_width(2))
                    + Circle::new((11, 0), 4, colour.filled())
            });
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(fail(path))?;
    }

    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    if labels.iter().any(|l| !l.is_empty()) {
        // What the legend should avoid: the lines, sampled along each segment.
        let mut occupied = Vec::new();
        for points in &finite {
            occupied.extend(points.iter().copied());
            for w in points.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                occupied.extend((1..16).map(|k| {
                    let t = f64::from(k) / 16.0;
                    (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
                }));
            }
        }
        let corner = legend_corner(
            &chart.plotting_area().dim_in_pixel(),
            &labels,
            |(x, y)| {
                (
                    (x - x_range.start) / (x_range.end - x_range.start),
                    (y - y_range.start) / (y_range.end - y_range.start),
                )
            },
            &occupied,
        );
        draw_legend(&mut chart, corner).map_err(fail(path))?;
    }
    root.present().map_err(fail(path))?;
    Ok(())
}

/// Draws grouped bars to `path` (PNG, 900x560), with a legend for the bar labels, and
/// optionally a dashed horizontal reference line per category ("target") drawn over each group.
///
/// `targets`, when given, holds one value per group, in order (a non-finite value draws no
/// line for that group); a length other than `groups.len()` is an error.
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[BarGroup],
    targets: Option<&[f64]>,
) -> Result<()> {
    if targets.is_some_and(|t| t.len() != groups.len()) {
        bail!(
            "chart {}: {} targets given for {} bar groups",
            path.display(),
            targets.map_or(0, <[f64]>::len),
            groups.len()
        );
    }
    ensure_font()?;

    // Bar labels in first-seen order: a label's index picks its colour in every group.
    let mut labels: Vec<&str> = Vec::new();
    for g in groups {
        for (label, _) in &g.values {
            if !labels.contains(&label.as_str()) {
                labels.push(label);
            }
        }
    }
    let values = groups.iter().flat_map(|g| g.values.iter().map(|(_, v)| *v));
    let y_range = zero_based_range(values.chain(targets.unwrap_or(&[]).iter().copied()));
    let n = groups.len().max(1) as f64;
    let x_range = CategoryAxis(groups.len());

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail(path))?;
    let mut chart = chart_builder(&root, title)
        .build_cartesian_2d(x_range, y_range.clone())
        .map_err(fail(path))?;
    let category = |v: &f64| {
        let i = v.floor();
        if i >= 0.0 {
            groups
                .get(i as usize)
                .map(|g| g.category.clone())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .x_label_style((FONT, 14))
        .x_label_formatter(&category)
        .y_label_formatter(&|v| fmt_num(*v))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(fail(path))?;

    // A bar: (group, position in group, bars in group, value).
    let bar_span = |gi: usize, j: usize, k: usize| {
        let w = 0.8 / k as f64;
        let x0 = gi as f64 + 0.1 + j as f64 * w;
        (x0 + w * 0.05, x0 + w * 0.95)
    };
    let plot_px = chart.plotting_area().dim_in_pixel();
    let mut occupied = Vec::new();
    for (li, label) in labels.iter().enumerate() {
        let colour = colour(li);
        let mut rects = Vec::new();
        let mut texts = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let k = g.values.len();
            for (j, (l, v)) in g.values.iter().enumerate() {
                if l != label || !v.is_finite() {
                    continue;
                }
                let (x0, x1) = bar_span(gi, j, k);
                rects.push(Rectangle::new([(x0, 0.0), (x1, *v)], colour.filled()));
                for s in 0..=4 {
                    let x = x0 + (x1 - x0) * f64::from(s) / 4.0;
                    occupied.extend((0..=10).map(|t| (x, v * f64::from(t) / 10.0)));
                }
                // The value above the bar, when the bar is wide enough to carry it.
                let text = fmt_num(*v);
                let bar_px = (x1 - x0) / n * f64::from(plot_px.0);
                if bar_px >= 7.5 * text.len() as f64 + 4.0 {
                    let pos = Pos::new(
                        HPos::Center,
                        if *v >= 0.0 { VPos::Bottom } else { VPos::Top },
                    );
                    let style = TextStyle::from((FONT, 12).into_font()).pos(pos);
                    texts.push(Text::new(text, ((x0 + x1) / 2.0, *v), style));
                }
            }
        }
        chart
            .draw_series(rects)
            .map_err(fail(path))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled()));
        chart.draw_series(texts).map_err(fail(path))?;
    }

    let target_colour = RGBColor(20, 20, 20);
    let mut legend_labels = labels.clone();
    let mut labelled = false;
    for (gi, t) in targets.unwrap_or(&[]).iter().enumerate() {
        if !t.is_finite() {
            continue;
        }
        let (x0, x1) = (gi as f64 + 0.04, gi as f64 + 0.96);
        occupied.extend((0..=20).map(|s| (x0 + (x1 - x0) * f64::from(s) / 20.0, *t)));
        let line = chart
            .draw_series(DashedLineSeries::new(
                [(x0, *t), (x1, *t)],
                8,
                5,
                target_colour.stroke_width(2),
            ))
            .map_err(fail(path))?;
        if !labelled {
            labelled = true;
            legend_labels.push("target");
            line.label("target").legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (7, 0)], target_colour.stroke_width(2))
                    + PathElement::new(vec![(11, 0), (18, 0)], target_colour.stroke_width(2))
            });
        }
    }

    if !legend_labels.is_empty() {
        let corner = legend_corner(
            &plot_px,
            &legend_labels,
            |(x, y)| (x / n, (y - y_range.start) / (y_range.end - y_range.start)),
            &occupied,
        );
        draw_legend(&mut chart, corner).map_err(fail(path))?;
    }
    root.present().map_err(fail(path))?;
    Ok(())
}

/// The x axis of a bar chart: `n` categories, category `i` spanning `i..i + 1`, with one
/// tick (and label) at the centre of each.
struct CategoryAxis(usize);

impl Ranged for CategoryAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let width = self.0.max(1) as f64;
        let pixels = f64::from(limit.1 - limit.0);
        limit.0 + (value / width * pixels).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0.max(1) as f64
    }
}

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the embedded chart font (DejaVuSans.ttf) could not be parsed")
    }
}

/// Maps a plotters error to one that names the chart file.
fn fail<E: Display>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing chart {}: {e}", path.display())
}

/// The colour of series or bar label number `i`.
fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The common frame: white margins, a title, room for tick labels and axis names.
fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, 24))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(78);
    builder
}

/// Draws the series legend in `corner`.
fn draw_legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    corner: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(corner)
        .margin(12)
        .legend_area_size(26)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
}

/// The plot corner where a legend for `labels` covers the fewest `occupied` points.
/// `normalise` maps data coordinates to `[0, 1]²` of the plotting area (y up).
fn legend_corner(
    plot_px: &(u32, u32),
    labels: &[&str],
    normalise: impl Fn((f64, f64)) -> (f64, f64),
    occupied: &[(f64, f64)],
) -> SeriesLabelPosition {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    let w = ((longest * 8.5 + 70.0) / f64::from(plot_px.0.max(1))).min(1.0);
    let h = ((labels.len() as f64 * 20.0 + 34.0) / f64::from(plot_px.1.max(1))).min(1.0);
    let corners = [
        (SeriesLabelPosition::UpperRight, (1.0 - w, 1.0 - h)),
        (SeriesLabelPosition::UpperLeft, (0.0, 1.0 - h)),
        (SeriesLabelPosition::LowerRight, (1.0 - w, 0.0)),
        (SeriesLabelPosition::LowerLeft, (0.0, 0.0)),
    ];
    let covered = |(x0, y0): (f64, f64)| {
        occupied
            .iter()
            .map(|&p| normalise(p))
            .filter(|&(x, y)| x >= x0 && x <= x0 + w && y >= y0 && y <= y0 + h)
            .count()
    };
    let mut best = (SeriesLabelPosition::UpperRight, usize::MAX);
    for (corner, origin) in corners {
        let n = covered(origin);
        if n < best.1 {
            best = (corner, n);
        }
    }
    best.0
}

/// x and y ranges for a line chart: x fits the data with 3% either side (not below 0 when
/// the data is not), y runs from 0 (or the lowest value, if negative) to 8% above the top.
fn line_ranges(points: impl Iterator<Item = (f64, f64)> + Clone) -> (Range<f64>, Range<f64>) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, _) in points.clone() {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let x = if lo > hi {
        0.0..1.0
    } else if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        let start = if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        start..hi + pad
    } else {
        let pad = (hi - lo) * 0.03;
        let start = if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        start..hi + pad
    };
    (x, zero_based_range(points.map(|(_, y)| y)))
}

/// A value range that includes 0 and every finite value, with 8% headroom away from 0.
fn zero_based_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo == hi {
        return 0.0..1.0;
    }
    let pad = (hi - lo) * 0.08;
    let lo = if lo < 0.0 { lo - pad } else { 0.0 };
    let hi = if hi > 0.0 { hi + pad } else { 0.0 };
    lo..hi
}

/// A short form of a number for tick and bar labels: `0`, `0.25`, `12.5`, `950`, `2.5k`, `1.2M`.
fn fmt_num(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    let a = v.abs();
    if a == 0.0 || !v.is_finite() {
        if v.is_nan() {
            "NaN".into()
        } else if a == 0.0 {
            "0".into()
        } else {
            format!("{v}")
        }
    } else if a >= 1e9 {
        trim(format!("{:.2}", v / 1e9)) + "G"
    } else if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e3 {
        trim(format!("{:.2}", v / 1e3)) + "k"
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else if a >= 0.001 {
        trim(format!("{v:.4}"))
    } else {
        format!("{v:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed when dropped (also on panic).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir()
                .join(format!("rescon-plot-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn assert_png(path: &Path, min_bytes: usize) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        assert!(
            bytes.len() > min_bytes,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
    }

    fn sample_series() -> Vec<Series> {
        let curve = |label: &str, f: fn(f64) -> f64| Series {
            label: label.to_string(),
            points: (0..=10)
                .map(|i| (f64::from(i) * 1000.0, f(f64::from(i))))
                .collect(),
        };
        vec![
            curve("no defence", |x| 9000.0 / (1.0 + x * x * 0.3)),
            curve("SYN cookies", |x| 9000.0 - x * 300.0),
            curve("rescon", |x| 9200.0 - x * 20.0),
        ]
    }

    fn sample_groups() -> Vec<BarGroup> {
        ["idle", "10k pps", "100k pps"]
            .iter()
            .enumerate()
            .map(|(i, c)| BarGroup {
                category: c.to_string(),
                values: vec![
                    ("baseline".into(), 1.2 + i as f64 * 3.0),
                    ("rescon".into(), 1.1 + i as f64 * 0.4),
                ],
            })
            .collect()
    }

    #[test]
    fn draws_line_and_bar_charts() {
        let dir = TempDir::new("charts");
        let line = dir.0.join("lines.png");
        lines(
            &line,
            "Goodput under SYN flood",
            "flood rate (pps)",
            "requests/s",
            &sample_series(),
        )
        .unwrap();
        assert_png(&line, 8 * 1024);

        let bar = dir.0.join("bars.png");
        bars(
            &bar,
            "p99 latency",
            "ms",
            &sample_groups(),
            Some(&[2.0, 4.0, 6.0]),
        )
        .unwrap();
        assert_png(&bar, 8 * 1024);
        let plain = dir.0.join("bars-plain.png");
        bars(&plain, "p99 latency", "ms", &sample_groups(), None).unwrap();
        assert_png(&plain, 8 * 1024);
    }

    #[test]
    fn draws_axes_for_empty_data() {
        let dir = TempDir::new("empty");
        let none = dir.0.join("no-series.png");
        lines(&none, "Nothing yet", "x", "y", &[]).unwrap();
        assert_png(&none, 3 * 1024);

        let empty = dir.0.join("empty-series.png");
        let series = [Series {
            label: "empty".into(),
            points: vec![],
        }];
        lines(&empty, "Empty series", "x", "y", &series).unwrap();
        assert_png(&empty, 3 * 1024);

        let no_bars = dir.0.join("no-bars.png");
        bars(&no_bars, "No bars", "ms", &[], Some(&[])).unwrap();
        assert_png(&no_bars, 3 * 1024);
    }

    #[test]
    fn rejects_targets_that_do_not_match_the_groups() {
        let dir = TempDir::new("mismatch");
        let path = dir.0.join("bars.png");
        let err = bars(&path, "t", "ms", &sample_groups(), Some(&[1.0])).unwrap_err();
        assert!(err.to_string().contains("bars.png"), "{err}");
    }

    #[test]
    fn reports_the_file_that_failed() {
        let dir = TempDir::new("fail");
        let path = dir.0.join("missing-dir").join("chart.png");
        let err = lines(&path, "t", "x", "y", &sample_series()).unwrap_err();
        assert!(err.to_string().contains("chart.png"), "{err}");
    }

    #[test]
    fn ranges_start_at_zero_with_headroom() {
        let (x, y) = line_ranges([(1.0, 5.0), (3.0, 10.0)].into_iter());
        assert!(x.start < 1.0 && x.start >= 0.0 && x.end > 3.0);
        assert_eq!(y.start, 0.0);
        assert!(y.end > 10.0 && y.end < 12.0);
        assert_eq!(line_ranges(std::iter::empty()), (0.0..1.0, 0.0..1.0));
        assert_eq!(fmt_num(2500.0), "2.5k");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(0.0), "0");
    }
}
