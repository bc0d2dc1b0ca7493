//! Figures for evaluation and training (plotters; every figure as PNG and SVG): reward-vs-cost scatter per
//! policy, score histograms, and metric curves. PNG text needs a TrueType font: `SAFELOOP_PLOT_FONT`, else DejaVu
//! Sans or Liberation Sans from the usual system paths; without one the plots are skipped with a note (the numbers
//! are still written).

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SAFELOOP_PLOT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                    "/usr/share/fonts/TTF/DejaVuSans.ttf",
                    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                    "/Library/Fonts/Arial.ttf",
                ]
                .map(PathBuf::from),
            )
            .collect();
        for c in candidates {
            if let Ok(bytes) = std::fs::read(&c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn no_font_note(stem: &Path) {
    eprintln!(
        "plots: no TrueType font found (set SAFELOOP_PLOT_FONT); skipped {}",
        stem.display()
    );
}

/// Draws `$body` (with the drawing area bound to `$area`) into `stem.svg` and, when a font is available,
/// `stem.png`; evaluates to the files written.
macro_rules! render_both {
    ($stem:expr, $size:expr, |$area:ident| $body:expr) => {{
        let stem: &Path = $stem;
        let mut out = Vec::new();
        if !font_ready() {
            // Both backends measure text with the registered font.
            no_font_note(stem);
            return Ok(out);
        }
        let svg = stem.with_extension("svg");
        {
            let $area = SVGBackend::new(&svg, $size).into_drawing_area();
            $area.fill(&WHITE)?;
            let r: Result<()> = (|| $body)();
            r?;
            $area
                .present()
                .with_context(|| format!("writing {}", svg.display()))?;
        }
        out.push(svg.clone());
        let png = stem.with_extension("png");
        {
            let $area = BitMapBackend::new(&png, $size).into_drawing_area();
            $area.fill(&WHITE)?;
            let r: Result<()> = (|| $body)();
            r?;
            $area
                .present()
                .with_context(|| format!("writing {}", png.display()))?;
        }
        out.push(png);
        Ok(out)
    }};
}

fn bounds(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

/// One labelled point set.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

macro_rules! scatter_body {
    ($area:expr, $title:expr, $xl:expr, $yl:expr, $series:expr, $lines:expr) => {{
        let (x0, x1) = bounds($series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = bounds($series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on($area)
            .caption($title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart.configure_mesh().x_desc($xl).y_desc($yl).draw()?;
        for (i, s) in $series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            if $lines {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?;
            }
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, c.mix(0.6).filled())),
                )?
                .label(s.name.clone())
                .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }};
}

/// A scatter plot (`lines`: also join each series' points in order, for curves).
pub fn scatter(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    lines: bool,
) -> Result<Vec<PathBuf>> {
    render_both!(stem, (900, 650), |area| scatter_body!(
        &area, title, x_label, y_label, series, lines
    ))
}

macro_rules! hist_body {
    ($area:expr, $title:expr, $xl:expr, $series:expr, $bins:expr) => {{
        let (x0, x1) = bounds($series.iter().flat_map(|(_, v)| v.iter().copied()));
        let width = (x1 - x0) / $bins as f64;
        let counts: Vec<Vec<usize>> = $series
            .iter()
            .map(|(_, v)| {
                let mut c = vec![0usize; $bins];
                for &x in v.iter().filter(|x| x.is_finite()) {
                    c[(((x - x0) / width) as usize).min($bins - 1)] += 1;
                }
                c
            })
            .collect();
        let ymax = counts.iter().flatten().copied().max().unwrap_or(1) as f64 * 1.1;
        let mut chart = ChartBuilder::on($area)
            .caption($title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, 0.0..ymax)?;
        chart
            .configure_mesh()
            .x_desc($xl)
            .y_desc("responses")
            .draw()?;
        for (i, ((name, _), c)) in $series.iter().zip(&counts).enumerate() {
            let col = COLORS[i % COLORS.len()];
            chart
                .draw_series(c.iter().enumerate().map(|(b, &n)| {
                    let l = x0 + b as f64 * width;
                    Rectangle::new([(l, 0.0), (l + width, n as f64)], col.mix(0.35).filled())
                }))?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 10, y + 4)], col.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }};
}

/// Overlaid histograms of several value sets.
pub fn histogram(
    stem: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
    bins: usize,
) -> Result<Vec<PathBuf>> {
    let bins = bins.max(1);
    render_both!(stem, (900, 600), |area| hist_body!(
        &area, title, x_label, series, bins
    ))
}

/// `safeloop-train plot`: columns of a CSV file as lines (PNG and SVG), e.g. the RSS curve
/// scripts/soak.sh samples.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// CSV file with a header row.
    #[arg(long)]
    pub csv: PathBuf,
    /// The x column.
    #[arg(long)]
    pub x: String,
    /// The y columns (one line each).
    #[arg(long, num_args = 1.., required = true)]
    pub y: Vec<String>,
    #[arg(long, default_value = "")]
    pub title: String,
    #[arg(long)]
    pub x_label: Option<String>,
    #[arg(long)]
    pub y_label: Option<String>,
    /// Output path without extension (STEM.png and STEM.svg are written).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn plot_csv(a: &PlotArgs) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(&a.csv).with_context(|| format!("reading {}", a.csv.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .with_context(|| format!("{}: empty", a.csv.display()))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no column `{name}` (has {header:?})", a.csv.display()))
    };
    let xi = col(&a.x)?;
    let yis = a.y.iter().map(|y| col(y)).collect::<Result<Vec<_>>>()?;
    let rows: Vec<Vec<f64>> = lines
        .enumerate()
        .map(|(i, l)| {
            l.split(',')
                .map(|v| v.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .with_context(|| format!("{}: row {} is not numbers", a.csv.display(), i + 2))
        })
        .collect::<Result<_>>()?;
    let series: Vec<Series> =
        a.y.iter()
            .zip(&yis)
            .map(|(name, &yi)| Series {
                name: name.clone(),
                points: rows
                    .iter()
                    .filter_map(|r| Some((*r.get(xi)?, *r.get(yi)?)))
                    .collect(),
            })
            .collect();
    let files = scatter(
        &a.out,
        &a.title,
        a.x_label.as_deref().unwrap_or(&a.x),
        a.y_label.as_deref().unwrap_or(""),
        &series,
        true,
    )?;
    Ok(serde_json::json!({"rows": rows.len(), "files": files}))
}
