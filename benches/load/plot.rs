//! The SVG plot of the latency distributions: one figure, one panel per measured quantity
//! side by side, and in each panel one CDF per target.
//!
//! Owns the figure's look: its size, the colour of each target, the log-scaled latency axis
//! and its ticks, the p50 and p99 guide lines, the legend and the caption. It never computes a
//! distribution: the caller hands it each target's points already cumulated, so the plot
//! cannot disagree with the report's percentiles. It never leaves a half-written file: the
//! SVG is rendered in memory and written in one call.
//!
//! Text needs no font crate and no system font: with plotters' `ttf` and `ab_glyph` features
//! off, plotters sizes text with a fixed per-character estimate (its `naive` font), and the
//! SVG carries `<text>` elements that the viewer draws in its own sans-serif font. The label
//! areas below are therefore sized with room to spare rather than measured.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One target's distribution: points (value in microseconds, cumulative fraction in 0..=1),
/// sorted by value, fraction non-decreasing; the last point's fraction is 1.
#[derive(Debug, Clone)]
pub struct Curve {
    pub name: String,
    pub points: Vec<(u64, f64)>,
}

/// One panel: a title, what its fractions count (for the y axis: "deliveries", "events"),
/// and its curves (one per target, in legend order).
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    pub title: &'a str,
    pub counted: &'a str,
    pub curves: &'a [Curve],
}

/// Width of one panel, in pixels: two panels make a 1200 px figure, wide enough for a
/// decade of latency per ~100 px and narrow enough for a laptop screen or a README.
const PANEL_WIDTH_PX: u32 = 600;

/// Height of the figure, in pixels, caption included.
const FIGURE_HEIGHT_PX: u32 = 480;

/// The curves' colours, by curve index, cycled past the end: the Okabe-Ito palette, told apart
/// with the common forms of colour blindness, without its yellow (too pale on white) and its
/// black (the axes' colour), and with Paul Tol's wine as a seventh.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(136, 34, 85),   // wine
];

/// Colour of the p50 and p99 guide lines and their labels: darker than the grid, lighter than
/// any curve, so a guide is never mistaken for a target.
const GUIDE_COLOUR: RGBColor = RGBColor(120, 120, 120);

/// Colour of the minor grid lines (the unlabelled multiples of a decade, see `ticks_ms`).
const GRID_LIGHT_COLOUR: RGBColor = RGBColor(235, 235, 235);

/// Colour of the major grid lines (at the labelled ticks).
const GRID_BOLD_COLOUR: RGBColor = RGBColor(200, 200, 200);

/// The guide lines drawn across every panel: the fraction and its label.
const GUIDES: [(f64, &str); 2] = [(0.5, "p50"), (0.99, "p99")];

/// Width of a curve's line, in pixels.
const CURVE_STROKE_PX: u32 = 2;

/// Dash and gap lengths of a guide line, in pixels.
const GUIDE_DASH_PX: i32 = 6;

/// Text sizes in plotters' units; the SVG's `font-size` is the size / 1.24, in pixels.
const CAPTION_TEXT_SIZE: f64 = 24.0;
const TITLE_TEXT_SIZE: f64 = 20.0;
const LABEL_TEXT_SIZE: f64 = 16.0;

/// Space around each panel's chart, in pixels.
const PANEL_MARGIN_PX: u32 = 12;

/// Height of the x axis' tick labels and description, in pixels.
const X_LABEL_AREA_PX: u32 = 50;

/// Width of the y axis' tick labels ("100") and rotated description, in pixels.
const Y_LABEL_AREA_PX: u32 = 60;

/// Length of the colour swatch before a legend entry, in pixels.
const LEGEND_SWATCH_PX: i32 = 20;

/// Smallest value plotted, in microseconds: a 0 µs delivery (below the clock's resolution)
/// has no logarithm and is drawn at 1 µs.
const VALUE_US_MIN: u64 = 1;

/// How far the x range reaches past the extreme values, as a factor, before it is widened to
/// the next 1-2-5 value: keeps the extreme points off the frame.
const X_PAD_FACTOR: f64 = 1.1;

/// The x range of a panel without a single point, in milliseconds.
const EMPTY_RANGE_MS: (f64, f64) = (0.1, 100.0);

/// Writes an SVG with the panels side by side (one row), each a CDF: x = latency in ms on a log
/// scale, y = percent of the panel's deliveries or events at or below it (0 to 100), one coloured line per curve
/// (the same colour for the same curve index in every panel), dashed guide lines at p50 and
/// p99, a legend with the curve names, and `caption` as the figure's title (e.g. "1,000
/// subscribers, 100 events of 100 B, 2-vCPU VM").
///
/// A curve without points draws no line but keeps its colour and its legend entry, named
/// "`name` (no data)", so a target that delivered nothing is still seen to be missing. A panel
/// without a single point (no curves, or only empty ones) draws its axes over the default range
/// 0.1 to 100 ms with "no data" written across it.
///
/// # Errors
/// With no panels at all, nothing is written and the error says so; when the file cannot be
/// written, the error names the path and the cause.
///
/// # Panics
/// When a curve breaks its contract (values out of order, a fraction outside 0..=1 or
/// decreasing, a last fraction other than 1): only a bug in the caller can do that.
pub fn write_svg(path: &Path, caption: &str, panels: &[Panel]) -> Result<(), String> {
    if panels.is_empty() {
        return Err(format!("no panels to plot into {}", path.display()));
    }
    for panel in panels {
        for curve in panel.curves {
            check_curve(curve);
        }
    }
    let svg = render(caption, panels)
        .map_err(|e| format!("cannot render the plot for {}: {e}", path.display()))?;
    std::fs::write(path, svg)
        .map_err(|e| format!("cannot write the plot to {}: {e}", path.display()))
}

/// Asserts the contract documented on `Curve`.
fn check_curve(curve: &Curve) {
    for pair in curve.points.windows(2) {
        let ((value_a, fraction_a), (value_b, fraction_b)) = (pair[0], pair[1]);
        assert!(
            value_a <= value_b && fraction_a <= fraction_b,
            "curve {:?}: point {:?} is followed by {:?}",
            curve.name,
            pair[0],
            pair[1]
        );
    }
    for &(_, fraction) in &curve.points {
        assert!(
            (0.0..=1.0).contains(&fraction),
            "curve {:?}: fraction {fraction} is outside 0..=1",
            curve.name
        );
    }
    if let Some(&(_, last)) = curve.points.last() {
        assert!(
            (last - 1.0).abs() < 1e-9,
            "curve {:?}: the last fraction is {last}, not 1",
            curve.name
        );
    }
}

/// The whole figure as SVG text.
fn render(caption: &str, panels: &[Panel]) -> Result<String, String> {
    let count = u32::try_from(panels.len()).map_err(|_| "too many panels".to_owned())?;
    let size = (PANEL_WIDTH_PX.saturating_mul(count), FIGURE_HEIGHT_PX);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let body = root
            .titled(caption, ("sans-serif", CAPTION_TEXT_SIZE))
            .map_err(|e| e.to_string())?;
        for (area, panel) in body.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One panel's axes, guides, curves and legend.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>> {
    let span_ms = span_ms(panel.curves);
    let (lo_ms, hi_ms) = match span_ms {
        Some((min_ms, max_ms)) => (
            nice_floor(min_ms / X_PAD_FACTOR),
            nice_ceil(max_ms * X_PAD_FACTOR),
        ),
        None => EMPTY_RANGE_MS,
    };
    let (bold_ms, light_ms) = ticks_ms(lo_ms, hi_ms);
    let x_axis = (lo_ms..hi_ms)
        .log_scale()
        .with_key_points(bold_ms)
        .with_light_points(light_ms);
    let y_desc = format!("{} at or below (%)", panel.counted);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", TITLE_TEXT_SIZE))
        .margin(PANEL_MARGIN_PX)
        .x_label_area_size(X_LABEL_AREA_PX)
        .y_label_area_size(Y_LABEL_AREA_PX)
        .build_cartesian_2d(x_axis, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|ms| format_ms(*ms))
        .y_labels(11)
        .y_label_formatter(&|fraction| format!("{:.0}", fraction * 100.0))
        .y_max_light_lines(1)
        .label_style(("sans-serif", LABEL_TEXT_SIZE))
        .axis_desc_style(("sans-serif", LABEL_TEXT_SIZE))
        .bold_line_style(GRID_BOLD_COLOUR)
        .light_line_style(GRID_LIGHT_COLOUR)
        .draw()?;

    let guide_text = TextStyle::from(("sans-serif", LABEL_TEXT_SIZE).into_font())
        .color(&GUIDE_COLOUR)
        .pos(Pos::new(HPos::Left, VPos::Top));
    for (fraction, label) in GUIDES {
        chart.plotting_area().draw(&DashedPathElement::new(
            [(lo_ms, fraction), (hi_ms, fraction)],
            GUIDE_DASH_PX,
            GUIDE_DASH_PX,
            GUIDE_COLOUR,
        ))?;
        // Below the line at the left edge: the CDFs are still at 0 there, whatever the data.
        chart.plotting_area().draw(
            &(EmptyElement::at((lo_ms, fraction)) + Text::new(label, (4, 3), guide_text.clone())),
        )?;
    }

    for (index, curve) in panel.curves.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let label = if curve.points.is_empty() {
            format!("{} (no data)", curve.name)
        } else {
            curve.name.clone()
        };
        chart
            .draw_series(LineSeries::new(
                curve_points_ms(curve),
                colour.stroke_width(CURVE_STROKE_PX),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 2), (x + LEGEND_SWATCH_PX, y + 2)], colour.filled())
            });
    }
    if !panel.curves.is_empty() {
        // Lower right: a CDF has reached its top by the right edge, so that corner is empty.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .margin(10)
            .legend_area_size(LEGEND_SWATCH_PX + 6)
            .label_font(("sans-serif", LABEL_TEXT_SIZE))
            .background_style(WHITE.mix(0.9))
            .border_style(GRID_BOLD_COLOUR)
            .draw()?;
    }
    if span_ms.is_none() {
        // Between the guides, clear of their lines and labels.
        let centre_ms = (lo_ms * hi_ms).sqrt();
        chart.plotting_area().draw(&Text::new(
            "no data",
            (centre_ms, 0.75),
            ("sans-serif", TITLE_TEXT_SIZE)
                .into_font()
                .color(&GUIDE_COLOUR)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// The smallest and largest value of a panel's curves, in milliseconds; `None` without points.
fn span_ms(curves: &[Curve]) -> Option<(f64, f64)> {
    let mut values_us = curves.iter().flat_map(|curve| &curve.points).map(|p| p.0);
    let first_us = values_us.next()?;
    let (min_us, max_us) = values_us.fold((first_us, first_us), |(min, max), value| {
        (min.min(value), max.max(value))
    });
    Some((to_ms(min_us), to_ms(max_us)))
}

/// A curve's points in plot coordinates, starting from fraction 0 at its first value, so that
/// each line rises from the bottom of the panel like the step it stands for.
fn curve_points_ms(curve: &Curve) -> Vec<(f64, f64)> {
    let mut points_ms = Vec::with_capacity(curve.points.len() + 1);
    if let Some(&(first_us, fraction)) = curve.points.first() {
        if fraction > 0.0 {
            points_ms.push((to_ms(first_us), 0.0));
        }
    }
    points_ms.extend(
        curve
            .points
            .iter()
            .map(|&(value_us, fraction)| (to_ms(value_us), fraction)),
    );
    points_ms
}

/// A value in microseconds as milliseconds, clamped to `VALUE_US_MIN`.
fn to_ms(value_us: u64) -> f64 {
    value_us.max(VALUE_US_MIN) as f64 / 1000.0
}

/// `mantissa` x 10^`exponent`, as the nearest f64 to the decimal (0.3, not 0.30000000000000004).
fn decimal(mantissa: u32, exponent: i32) -> f64 {
    format!("{mantissa}e{exponent}")
        .parse()
        .expect("a mantissa and an exponent make a float literal")
}

/// The 1-2-5 values (…, 0.5, 1, 2, 5, 10, …) that can bound a range.
fn nice_values(around: f64) -> impl Iterator<Item = f64> {
    let exponent = around.log10().floor() as i32;
    (exponent - 1..=exponent + 1)
        .flat_map(|exponent| [1, 2, 5].map(|mantissa| decimal(mantissa, exponent)))
}

/// The largest 1-2-5 value at or below `value`.
fn nice_floor(value: f64) -> f64 {
    nice_values(value)
        .filter(|&nice| nice <= value)
        .last()
        .expect("the decade below holds a smaller value")
}

/// The smallest 1-2-5 value at or above `value`.
fn nice_ceil(value: f64) -> f64 {
    nice_values(value)
        .find(|&nice| nice >= value)
        .expect("the decade above holds a larger value")
}

/// The labelled ticks and the minor grid lines of a range, in milliseconds. Up to one decade,
/// every integer multiple of the decade is labelled; up to three decades, the 1-2-5 multiples,
/// with minor lines at the other integer multiples; beyond, the decades, with minor lines at
/// the 2 and 5 multiples only, so that six decades do not turn the grid grey.
fn ticks_ms(lo_ms: f64, hi_ms: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi_ms / lo_ms).log10();
    let (labelled, minor): (&[u32], &[u32]) = if decades <= 1.0 + 1e-9 {
        (&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[])
    } else if decades <= 3.0 + 1e-9 {
        (&[1, 2, 5], &[3, 4, 6, 7, 8, 9])
    } else {
        (&[1], &[2, 5])
    };
    let within = |value: f64| value >= lo_ms * (1.0 - 1e-9) && value <= hi_ms * (1.0 + 1e-9);
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for exponent in lo_ms.log10().floor() as i32..=hi_ms.log10().ceil() as i32 {
        for mantissa in 1..=9 {
            let value = decimal(mantissa, exponent);
            if !within(value) {
                continue;
            }
            if labelled.contains(&mantissa) {
                bold.push(value);
            } else if minor.contains(&mantissa) {
                light.push(value);
            }
        }
    }
    (bold, light)
}

/// A tick value in milliseconds with as many decimals as it needs: "0.05", "0.3", "2", "100".
fn format_ms(ms: f64) -> String {
    let decimals = (-(ms.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{ms:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique file name under the temp directory for one test.
    fn temp_path(test: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("corecast-plot-{test}-{}.svg", std::process::id()))
    }

    /// A log-logistic distribution (close to log-normal, with a closed-form quantile) around
    /// `median_us`, as `count` CDF points.
    fn synthetic(name: &str, median_us: f64, count: u32) -> Curve {
        let points = (1..=count)
            .map(|i| {
                let fraction = f64::from(i) / f64::from(count);
                let middle = (f64::from(i) - 0.5) / f64::from(count);
                let value_us = median_us * (middle / (1.0 - middle)).powf(0.25);
                (value_us.round() as u64, fraction)
            })
            .collect();
        Curve {
            name: name.to_owned(),
            points,
        }
    }

    /// The `<polyline>` elements drawn in the given curve colour.
    fn polylines_in(svg: &str, colour: RGBColor) -> usize {
        let stroke = format!(
            "stroke=\"#{:02X}{:02X}{:02X}\"",
            colour.0, colour.1, colour.2
        );
        svg.split('<')
            .filter(|tag| tag.starts_with("polyline") && tag.contains(&stroke))
            .count()
    }

    /// The contents of the `<text>` elements, which the SVG backend puts on lines of their own.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| {
                let (_, rest) = element.split_once('>')?;
                let (content, _) = rest.split_once("</text>")?;
                Some(content.trim())
            })
            .collect()
    }

    /// Renders `panels` through `write_svg` and returns the file's text.
    fn render_to_file(test: &str, caption: &str, panels: &[Panel]) -> String {
        let path = temp_path(test);
        write_svg(&path, caption, panels).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        svg
    }

    #[test]
    fn two_panels_of_two_curves_draw_four_lines_with_names_and_caption() {
        let latency = [
            synthetic("corecast", 5_000.0, 100),
            synthetic("floor-write", 8_000.0, 100),
        ];
        let completion = [
            synthetic("corecast", 9_000.0, 100),
            synthetic("floor-write", 12_000.0, 100),
        ];
        let caption = "1,000 subscribers, 100 events of 100 B, 2-vCPU VM";
        let svg = render_to_file(
            "two-panels",
            caption,
            &[
                Panel {
                    title: "delivery latency",
                    counted: "deliveries",
                    curves: &latency,
                },
                Panel {
                    title: "fan-out completion",
                    counted: "deliveries",
                    curves: &completion,
                },
            ],
        );
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("width=\"1200\" height=\"480\""));
        for text in [
            caption,
            "corecast",
            "floor-write",
            "delivery latency",
            "fan-out completion",
            "p50",
            "p99",
        ] {
            assert!(texts(&svg).contains(&text), "{text} missing");
        }
        // One line per curve, in the colour of its index in both panels; the axes, ticks, grid
        // and guides are drawn in black and greys.
        let curve_lines: usize = PALETTE.iter().map(|&c| polylines_in(&svg, c)).sum();
        assert_eq!(curve_lines, 4);
        assert_eq!(polylines_in(&svg, PALETTE[0]), 2);
        assert_eq!(polylines_in(&svg, PALETTE[1]), 2);
    }

    #[test]
    fn an_unwritable_path_is_named_in_the_error() {
        let path = std::env::temp_dir()
            .join(format!("corecast-plot-missing-{}", std::process::id()))
            .join("plot.svg");
        let curves = [synthetic("corecast", 5_000.0, 10)];
        let panels = [Panel {
            title: "delivery latency",
            counted: "deliveries",
            curves: &curves,
        }];
        let error = write_svg(&path, "caption", &panels).unwrap_err();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("No such file"), "{error}");
    }

    #[test]
    fn no_panels_is_an_error_and_writes_nothing() {
        let path = temp_path("no-panels");
        let error = write_svg(&path, "caption", &[]).unwrap_err();
        assert!(error.contains("no panels"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(!path.exists());
    }

    #[test]
    fn a_panel_without_points_draws_empty_axes_saying_no_data() {
        let empty = [Curve {
            name: "corecast".to_owned(),
            points: Vec::new(),
        }];
        let svg = render_to_file(
            "no-data",
            "caption",
            &[
                Panel {
                    title: "no curves",
                    counted: "deliveries",
                    curves: &[],
                },
                Panel {
                    title: "empty curve",
                    counted: "deliveries",
                    curves: &empty,
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("width=\"1200\""));
        let texts = texts(&svg);
        assert_eq!(texts.iter().filter(|&&text| text == "no data").count(), 2);
        assert!(texts.contains(&"corecast (no data)"));
        // The default range's ticks are labelled.
        for tick in ["0.1", "1", "10", "100"] {
            assert!(texts.contains(&tick), "tick {tick} missing");
        }
        assert_eq!(polylines_in(&svg, PALETTE[0]), 0);
    }

    #[test]
    fn an_empty_curve_keeps_its_colour_and_legend_entry() {
        let curves = [
            Curve {
                name: "silent".to_owned(),
                points: Vec::new(),
            },
            synthetic("corecast", 5_000.0, 20),
        ];
        let svg = render_to_file(
            "empty-curve",
            "caption",
            &[Panel {
                title: "delivery latency",
                counted: "deliveries",
                curves: &curves,
            }],
        );
        assert!(svg.contains("width=\"600\""));
        let texts = texts(&svg);
        assert!(texts.contains(&"silent (no data)"));
        assert!(texts.contains(&"corecast"));
        assert!(!texts.contains(&"no data"));
        assert_eq!(polylines_in(&svg, PALETTE[0]), 0);
        assert_eq!(polylines_in(&svg, PALETTE[1]), 1);
    }

    #[test]
    fn colours_cycle_past_the_palette() {
        let curves: Vec<Curve> = (0..PALETTE.len() + 1)
            .map(|i| synthetic(&format!("target-{i}"), 1_000.0 * (i + 1) as f64, 10))
            .collect();
        let svg = render_to_file(
            "cycle",
            "caption",
            &[Panel {
                title: "delivery latency",
                counted: "deliveries",
                curves: &curves,
            }],
        );
        assert_eq!(polylines_in(&svg, PALETTE[0]), 2);
        assert_eq!(polylines_in(&svg, PALETTE[1]), 1);
    }

    #[test]
    fn zero_microseconds_is_drawn_at_one() {
        let curves = [Curve {
            name: "loopback".to_owned(),
            points: vec![(0, 0.5), (3, 0.9), (40, 1.0)],
        }];
        let svg = render_to_file(
            "zero",
            "caption",
            &[Panel {
                title: "delivery latency",
                counted: "deliveries",
                curves: &curves,
            }],
        );
        assert_eq!(polylines_in(&svg, PALETTE[0]), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(
            curve_points_ms(&curves[0]),
            vec![(0.001, 0.0), (0.001, 0.5), (0.003, 0.9), (0.04, 1.0)]
        );
        // 1 µs / 1.1 rounds down to 0.5 µs, 40 µs x 1.1 up to 50 µs.
        assert_eq!(span_ms(&curves), Some((0.001, 0.04)));
        assert_eq!(nice_floor(0.001 / X_PAD_FACTOR), 0.0005);
        assert_eq!(nice_ceil(0.04 * X_PAD_FACTOR), 0.05);
    }

    #[test]
    fn ticks_are_readable_milliseconds() {
        let (bold, light) = ticks_ms(0.1, 100.0);
        let labels: Vec<String> = bold.iter().map(|&ms| format_ms(ms)).collect();
        assert_eq!(
            labels,
            ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"]
        );
        assert_eq!(light.len(), 3 * 6);
        assert_eq!(light[..6], [0.3, 0.4, 0.6, 0.7, 0.8, 0.9]);
        let (bold, light) = ticks_ms(2.0, 20.0);
        let labels: Vec<String> = bold.iter().map(|&ms| format_ms(ms)).collect();
        assert_eq!(labels, ["2", "3", "4", "5", "6", "7", "8", "9", "10", "20"]);
        assert!(light.is_empty());
        let (bold, light) = ticks_ms(0.001, 1000.0);
        let labels: Vec<String> = bold.iter().map(|&ms| format_ms(ms)).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10", "100", "1000"]);
        assert_eq!(light.len(), 2 * 6);
    }

    #[test]
    #[should_panic(expected = "is followed by")]
    fn an_unsorted_curve_is_a_bug() {
        let curves = [Curve {
            name: "corecast".to_owned(),
            points: vec![(5, 0.5), (4, 1.0)],
        }];
        let panels = [Panel {
            title: "delivery latency",
            counted: "deliveries",
            curves: &curves,
        }];
        let _ = write_svg(&temp_path("unsorted"), "caption", &panels);
    }
}
