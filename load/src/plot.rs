//! The `plot` subcommand: percentile curves of several runs, side by side, as one SVG.
//!
//! Input: run reports written by `mangaassist-load run --json` ([`crate::report::RunReport`]),
//! each with a label ([`RunSpec`]). From each it reads one curve, `latency_ms.<metric>_percentiles`
//! ([`PercentileMs`] at [`crate::stats::PERCENTILES`]), checks it ([`load_series`]), and draws one
//! line per run ([`render_svg`]): x is the percentile on a "nines" axis ([`nines`]: 90, 99, 99.9
//! are equally spaced), y the value in milliseconds on a log10 axis, so a 25 ms median and a
//! 5 s stall fit one chart. The legend sits under the plot, one row per run with its p99, so it
//! never hides a curve.
//!
//! Output: the SVG file (parent directories created). Plotters' SVG backend only: text is left to
//! the viewer's fonts, nothing here loads one.
//!
//! Failure policy: every problem is a [`PlotError`] naming the file and what to do; nothing is
//! written unless every input is valid.

use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::PercentileMs;

/// Chart size in pixels (width, height of the plot; the legend strip is added below).
pub(crate) const SIZE: (u32, u32) = (1000, 600);

/// Height of one legend row, in pixels.
const LEGEND_ROW: u32 = 24;

/// Smallest value drawn, in ms: the histograms' 1 µs floor (a log axis cannot show 0).
const MIN_MS: f64 = 0.001;

/// Where the x axis ends when no curve goes further.
const DEFAULT_X_MAX: f64 = 99.999;

/// Labelled x ticks: percentiles whose place on the nines axis is marked.
const X_TICKS: [f64; 7] = [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999];

/// Light x grid lines between the labelled ticks.
const X_LIGHT: [f64; 7] = [25.0, 75.0, 95.0, 99.5, 99.95, 99.995, 99.9995];

/// Above this many decades on the y axis, only powers of ten are labelled (not 1-2-5).
const MAX_DECADES_1_2_5: i32 = 5;

/// Line colours, in order (Okabe-Ito: tell apart with colour-vision deficiency and in grey).
pub(crate) const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// An input file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An input file is not JSON.
    #[error("{} is not JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// An input is JSON, but not the report of a `run`.
    #[error(
        "{} is not a `run` report (scenario: {found}); plot reads files written by \
         `mangaassist-load run --json`", path.display()
    )]
    NotARun {
        /// The file.
        path: PathBuf,
        /// Its `scenario` field, or what stood there.
        found: String,
    },
    /// A run report from a version that did not write percentile curves.
    #[error(
        "{} has no latency_ms.{field}: it was written by an older mangaassist-load; \
         re-run with this version of mangaassist-load", path.display()
    )]
    NoCurve {
        /// The file.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
    },
    /// The curve is there but does not make sense.
    #[error("{}: latency_ms.{field} is malformed: {why}", path.display())]
    BadCurve {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The run recorded nothing of this metric (e.g. no turn streamed two tokens).
    #[error("{} recorded no {what} (latency_ms.{field} is empty); nothing to draw", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was asked for, in words.
        what: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Plotters failed (only possible on an internal layout error).
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// The SVG could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Which distribution to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Gaps between consecutive `token` frames of a turn (`chunk_gap_percentiles`).
    ChunkGap,
    /// Send of `user_message` to the first `token` (`ttft_percentiles`).
    Ttft,
}

impl Metric {
    /// The field under `latency_ms` holding the curve.
    pub fn field(self) -> &'static str {
        match self {
            Metric::ChunkGap => "chunk_gap_percentiles",
            Metric::Ttft => "ttft_percentiles",
        }
    }

    /// What it is, in words.
    fn what(self) -> &'static str {
        match self {
            Metric::ChunkGap => "chunk gaps",
            Metric::Ttft => "TTFT",
        }
    }

    /// The y axis title.
    fn y_desc(self) -> &'static str {
        match self {
            Metric::ChunkGap => "gap between tokens, ms (log scale)",
            Metric::Ttft => "time to first token, ms (log scale)",
        }
    }

    /// The chart title when none is given.
    pub fn default_title(self) -> &'static str {
        match self {
            Metric::ChunkGap => "Client-observed chunk gaps by percentile",
            Metric::Ttft => "Client-observed time to first token by percentile",
        }
    }
}

/// One input on the command line: `RUN.json=LABEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The run report.
    pub path: PathBuf,
    /// Its name in the legend.
    pub label: String,
}

/// Parses `RUN.json=LABEL`, split at the first `=`; without `=`, the label is the file name
/// without its extension.
pub fn parse_run_spec(s: &str) -> Result<RunSpec, String> {
    let (path, label) = match s.split_once('=') {
        Some((path, label)) => (path, label.trim().to_owned()),
        None => {
            let stem = Path::new(s)
                .file_stem()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            (s, stem)
        }
    };
    if path.is_empty() {
        return Err(format!(
            "`{s}`: expected RUN.json=LABEL (the file is missing)"
        ));
    }
    if label.is_empty() {
        return Err(format!(
            "`{s}`: expected RUN.json=LABEL (the label is empty)"
        ));
    }
    Ok(RunSpec {
        path: PathBuf::from(path),
        label,
    })
}

/// Where percentile `p` (0 to 100) sits on the nines axis: `-log10(1 - p/100)`.
///
/// 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3; 100 (the maximum) is infinitely far, so it is not drawn.
pub fn nines(p: f64) -> f64 {
    let tail = 1.0 - p / 100.0;
    if tail <= 0.0 {
        f64::INFINITY
    } else {
        // `+ 0.0` turns the -0.0 of p = 0 into 0.0.
        -tail.log10() + 0.0
    }
}

/// The x axis: percentiles 0 to `max` (below 100), placed by [`nines`].
#[derive(Debug, Clone, Copy)]
struct NinesAxis {
    /// The last percentile shown, at the right edge.
    max: f64,
}

impl Ranged for NinesAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, p: &f64, limit: (i32, i32)) -> i32 {
        let span = nines(self.max);
        let frac = if span > 0.0 {
            nines(p.min(self.max)) / span
        } else {
            0.0
        };
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let points: &[f64] = if hint.weight().allow_light_points() {
            &X_LIGHT
        } else {
            &X_TICKS
        };
        points
            .iter()
            .copied()
            .filter(|&p| p <= self.max + 1e-9)
            .collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.max
    }
}

/// A percentile's label: `"99.9"`, `"50"`, `"0"`.
fn percentile_label(p: f64) -> String {
    trim_decimals(&format!("{p:.3}"))
}

/// Drops trailing zeros (and a trailing dot) of a decimal: `"25.000"` -> `"25"`.
fn trim_decimals(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s.to_owned()
    }
}

/// A y tick label: `"0.5 ms"`, `"25 ms"`, `"2 s"`.
fn tick_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", trim_decimals(&format!("{:.3}", ms / 1000.0)))
    } else {
        format!("{} ms", trim_decimals(&format!("{ms:.3}")))
    }
}

/// A value for the legend, about three significant figures: `"26.4 ms"`, `"5.02 s"`.
pub fn value_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// One run's curve, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its legend label.
    pub label: String,
    /// The curve, percentiles rising.
    pub points: Vec<PercentileMs>,
}

impl Series {
    /// The value at p99, when the curve has that point.
    pub fn p99(&self) -> Option<f64> {
        self.points
            .iter()
            .find(|pt| (pt.p - 99.0).abs() < 1e-9)
            .map(|pt| pt.ms)
    }

    /// Its legend entry: `"preflight, 5 s enrichment: p99 26.4 ms"`.
    pub fn legend(&self) -> String {
        match self.p99() {
            Some(ms) => format!("{}: p99 {}", self.label, value_label(ms)),
            None => self.label.clone(),
        }
    }

    /// The points as drawn: (percentile, ms), the maximum left out (it has no place on the
    /// nines axis).
    fn xy(&self) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter(|pt| pt.p < 100.0)
            .map(|pt| (pt.p, pt.ms.max(MIN_MS)))
            .collect()
    }
}

/// Reads the `metric` curve of the run report `spec.path`.
pub fn load_series(spec: &RunSpec, metric: Metric) -> Result<Series, PlotError> {
    let path = &spec.path;
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| PlotError::Json {
            path: path.clone(),
            source,
        })?;
    match json.get("scenario") {
        Some(serde_json::Value::String(s)) if s == "run" => {}
        other => {
            return Err(PlotError::NotARun {
                path: path.clone(),
                found: other.map_or_else(|| "missing".to_owned(), ToString::to_string),
            });
        }
    }
    let field = metric.field();
    let Some(curve) = json.get("latency_ms").and_then(|l| l.get(field)) else {
        return Err(PlotError::NoCurve {
            path: path.clone(),
            field,
        });
    };
    let bad = |why: String| PlotError::BadCurve {
        path: path.clone(),
        field,
        why,
    };
    let points: Vec<PercentileMs> =
        serde_json::from_value(curve.clone()).map_err(|e| bad(e.to_string()))?;
    if points.is_empty() {
        return Err(PlotError::Empty {
            path: path.clone(),
            what: metric.what(),
            field,
        });
    }
    for pair in points.windows(2) {
        if pair[1].p <= pair[0].p {
            return Err(bad(format!(
                "percentiles not rising ({} then {})",
                pair[0].p, pair[1].p
            )));
        }
    }
    if let Some(pt) = points
        .iter()
        .find(|pt| !(0.0..=100.0).contains(&pt.p) || !pt.ms.is_finite() || pt.ms < 0.0)
    {
        return Err(bad(format!("bad point p={} ms={}", pt.p, pt.ms)));
    }
    if points.iter().all(|pt| pt.p >= 100.0) {
        return Err(bad("only the maximum, no percentile to draw".to_owned()));
    }
    Ok(Series {
        label: spec.label.clone(),
        points,
    })
}

/// The y axis bounds: whole decades around every value drawn.
fn y_bounds(series: &[Series]) -> (f64, f64) {
    let values = series.iter().flat_map(Series::xy).map(|(_, ms)| ms);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || hi <= 0.0 {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// Labelled y ticks between `lo` and `hi` (whole decades): 1-2-5 in each decade, or only the
/// decades when there are many; and the light grid lines, 1..9 in each decade.
fn y_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let first = lo.log10().round() as i32;
    let last = hi.log10().round() as i32;
    let steps: &[f64] = if last - first > MAX_DECADES_1_2_5 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut bold = Vec::new();
    let mut light = Vec::new();
    for e in first..=last {
        let decade = 10f64.powi(e);
        bold.extend(
            steps
                .iter()
                .map(|k| k * decade)
                .filter(|v| *v <= hi * 1.0001),
        );
        light.extend(
            (1..10)
                .map(|k| f64::from(k) * decade)
                .filter(|v| *v <= hi * 1.0001),
        );
    }
    (bold, light)
}

/// Draws `series` as an SVG document: one line per run, legend below.
pub fn render_svg(series: &[Series], title: &str, metric: Metric) -> Result<String, PlotError> {
    let mut svg = String::new();
    let legend_height = 16 + LEGEND_ROW * u32::try_from(series.len()).unwrap_or(u32::MAX / 64);
    {
        let root =
            SVGBackend::with_string(&mut svg, (SIZE.0, SIZE.1 + legend_height)).into_drawing_area();
        draw(&root, series, title, metric).map_err(|e| PlotError::Draw(e.to_string()))?;
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(svg)
}

/// The drawing itself, on `root`.
fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    series: &[Series],
    title: &str,
    metric: Metric,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let (plot_area, legend_area) = root.split_vertically(SIZE.1);

    let x_max = series
        .iter()
        .flat_map(Series::xy)
        .map(|(x, _)| x)
        .fold(DEFAULT_X_MAX, f64::max);
    let (y_lo, y_hi) = y_bounds(series);
    let (y_bold, y_light) = y_ticks(y_lo, y_hi);

    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(56)
        .y_label_area_size(88)
        .build_cartesian_2d(
            NinesAxis { max: x_max },
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(y_bold)
                .with_light_points(y_light),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile (nines scale: each step is ten times rarer)")
        .y_desc(metric.y_desc())
        .x_label_formatter(&|p| percentile_label(*p))
        .y_label_formatter(&|y| tick_label(*y))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;

    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let xy = s.xy();
        chart.draw_series(LineSeries::new(xy.iter().copied(), color.stroke_width(2)))?;
        chart.draw_series(
            xy.iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }

    let font =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let row = i32::try_from(i).unwrap_or(i32::MAX / 64);
        let y = 8 + LEGEND_ROW as i32 / 2 + row * LEGEND_ROW as i32;
        let x = 110;
        legend_area.draw(&PathElement::new(
            vec![(x, y), (x + 32, y)],
            color.stroke_width(3),
        ))?;
        legend_area.draw(&Circle::new((x + 16, y), 3, color.filled()))?;
        legend_area.draw(&Text::new(s.legend(), (x + 42, y), font.clone()))?;
    }
    Ok(())
}

/// What to plot, from the command line.
#[derive(Debug, Clone)]
pub struct PlotRequest {
    /// The runs, in legend order.
    pub runs: Vec<RunSpec>,
    /// The SVG to write.
    pub out: PathBuf,
    /// The chart title; [`Metric::default_title`] when `None`.
    pub title: Option<String>,
    /// Which distribution.
    pub metric: Metric,
}

/// Reads every run, draws the chart and writes it to `req.out`; returns the series drawn.
///
/// Blocking file I/O and CPU work: call it from `spawn_blocking` in async code.
pub fn run(req: &PlotRequest) -> Result<Vec<Series>, PlotError> {
    let series = req
        .runs
        .iter()
        .map(|spec| load_series(spec, req.metric))
        .collect::<Result<Vec<_>, _>>()?;
    let title = req
        .title
        .as_deref()
        .unwrap_or_else(|| req.metric.default_title());
    write_svg(&req.out, &render_svg(&series, title, req.metric)?)?;
    Ok(series)
}

/// Writes `svg` to `out`, creating missing parent directories.
pub fn write_svg(out: &std::path::Path, svg: &str) -> Result<(), PlotError> {
    let write_err = |source| PlotError::Write {
        path: out.to_owned(),
        source,
    };
    if let Some(dir) = out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    std::fs::write(out, svg).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::{CommandLine, RunReport};
    use crate::rss::RssSource;
    use crate::scenario::run::{RunConfig, RunOutcome, RunRss};
    use crate::stats::RunStats;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "mangaassist-load-{tag}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The JSON report of a synthetic run whose gaps are `gaps_ms`, written to `dir/name`.
    fn write_run(dir: &Path, name: &str, gaps_ms: &[u64]) -> PathBuf {
        let cfg = RunConfig {
            upstream: crate::scenario::run::Upstream::WebSocket,
            url: "ws://127.0.0.1:8080/ws".into(),
            credentials: crate::credentials::Credentials::None,
            sessions: 1,
            turns: 1,
            ramp: Duration::ZERO,
            think: Duration::ZERO,
            max: Duration::from_secs(60),
            turn_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            progress: false,
            stall_threshold: None,
            send_for: None,
            repeat: false,
        };
        let mut stats = RunStats::new().unwrap();
        for &g in gaps_ms {
            stats.gap.record(Duration::from_millis(g));
            stats.ttft.record(Duration::from_millis(g * 10));
        }
        let out = RunOutcome {
            stats,
            elapsed: Duration::from_secs(1),
            stopped_by_max: false,
            rss: RunRss {
                before: Err("test".into()),
                after: Err("test".into()),
                peak: None,
            },
            timeline: Vec::new(),
        };
        let report = RunReport::new(
            CommandLine::from_args(vec!["test".into()]),
            0,
            &cfg,
            &RssSource::Unavailable("test".into()),
            None,
            &out,
        );
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        path
    }

    fn spec(path: &Path, label: &str) -> RunSpec {
        RunSpec {
            path: path.to_owned(),
            label: label.into(),
        }
    }

    #[test]
    fn nines_axis_spaces_each_nine_equally() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert_eq!(nines(0.0), 0.0);
        assert!(nines(0.0).is_sign_positive());
        assert!(close(nines(50.0), 2f64.log10()));
        assert!(close(nines(90.0), 1.0));
        assert!(close(nines(99.0), 2.0));
        assert!(close(nines(99.9), 3.0));
        assert!(close(nines(99.99), 4.0));
        assert!(close(nines(99.999), 5.0));
        assert!(nines(100.0).is_infinite());
        // The axis places ticks by it: 90, 99, 99.9, 99.99, 99.999 one fifth of the width apart.
        let axis = NinesAxis { max: 99.999 };
        let px = |p: f64| axis.map(&p, (0, 1000));
        assert_eq!(
            [0.0, 90.0, 99.0, 99.9, 99.99, 99.999].map(px),
            [0, 200, 400, 600, 800, 1000]
        );
        assert_eq!(px(50.0), 60);
        assert_eq!(px(100.0), 1000, "clamped to the edge");
        assert_eq!(percentile_label(99.9), "99.9");
        assert_eq!(percentile_label(50.0), "50");
        assert_eq!(percentile_label(0.0), "0");
    }

    #[test]
    fn labels_and_ticks_read_well() {
        assert_eq!(value_label(26.4), "26.4 ms");
        assert_eq!(value_label(5020.0), "5.02 s");
        assert_eq!(value_label(250.4), "250 ms");
        assert_eq!(value_label(0.5), "0.50 ms");
        assert_eq!(tick_label(20.0), "20 ms");
        assert_eq!(tick_label(0.5), "0.5 ms");
        assert_eq!(tick_label(2000.0), "2 s");
        let (bold, light) = y_ticks(10.0, 10_000.0);
        assert_eq!(bold.len(), 10, "{bold:?}"); // 10 20 50 100 200 500 1k 2k 5k 10k
        assert_eq!(light.len(), 28, "{light:?}");
        let (bold, _) = y_ticks(0.001, 100_000.0);
        assert_eq!(bold.len(), 9, "many decades: powers of ten only");
        let s = Series {
            label: "a".into(),
            points: vec![
                PercentileMs { p: 50.0, ms: 24.0 },
                PercentileMs {
                    p: 100.0,
                    ms: 9000.0,
                },
            ],
        };
        assert_eq!(y_bounds(&[s]), (10.0, 100.0), "the maximum is not drawn");
    }

    #[test]
    fn run_specs_parse() {
        assert_eq!(
            parse_run_spec("runs/inline.json=inline, 5 s enrichment"),
            Ok(RunSpec {
                path: "runs/inline.json".into(),
                label: "inline, 5 s enrichment".into()
            })
        );
        assert_eq!(
            parse_run_spec("runs/base.json").map(|s| s.label),
            Ok("base".into())
        );
        assert_eq!(
            parse_run_spec("a.json=mode=inline").map(|s| s.label),
            Ok("mode=inline".into())
        );
        assert!(parse_run_spec("=label").is_err());
        assert!(parse_run_spec("a.json=").is_err());
    }

    #[test]
    fn plots_two_runs_to_svg() {
        let dir = TempDir::new("plot");
        let fast: Vec<u64> = (0..1000).map(|i| 20 + i % 10).collect();
        let mut slow = fast.clone();
        slow.extend([
            3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 11_000, 12_000,
        ]);
        let a = write_run(&dir.0, "a.json", &fast);
        let b = write_run(&dir.0, "b.json", &slow);
        let out = dir.0.join("img/nested/chunk-gaps.svg");
        let req = PlotRequest {
            runs: vec![
                spec(&a, "preflight, 5 s enrichment"),
                spec(&b, "inline & 5 s enrichment"),
            ],
            out: out.clone(),
            title: Some("Chunk gaps, 1,000 sessions".into()),
            metric: Metric::ChunkGap,
        };
        let series = run(&req).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].legend(), "preflight, 5 s enrichment: p99 29.0 ms");
        assert!(series[1].legend().ends_with("s"), "{}", series[1].legend());

        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("preflight, 5 s enrichment: p99 29.0 ms"));
        assert!(
            svg.contains("inline &amp; 5 s enrichment: p99"),
            "text is escaped"
        );
        assert!(svg.contains("Chunk gaps, 1,000 sessions"));
        assert!(svg.contains("percentile (nines scale"));
        // Plotters writes each text on its own line.
        assert!(svg.contains("\n99.9\n"), "nines tick labels");
        assert!(svg.contains("\n10 s\n"), "log y axis reaches the slow tail");
        // One curve (13 points: the maximum is not drawn) per run, in its own colour.
        for color in ["#0072B2", "#D55E00"] {
            let curves = svg
                .lines()
                .filter(|l| l.contains(&format!("stroke=\"{color}\" stroke-width=\"2\"")))
                .collect::<Vec<_>>();
            assert_eq!(curves.len(), 1, "{color}: {curves:?}");
            let points = curves[0].split("points=\"").nth(1).unwrap();
            let points = points.split('"').next().unwrap();
            assert_eq!(points.split_whitespace().count(), 13, "{points}");
        }

        // The TTFT curve is in the same files.
        let ttft = PlotRequest {
            metric: Metric::Ttft,
            title: None,
            out: dir.0.join("ttft.svg"),
            ..req
        };
        run(&ttft).unwrap();
        let svg = std::fs::read_to_string(dir.0.join("ttft.svg")).unwrap();
        assert!(svg.contains(Metric::Ttft.default_title()));
    }

    #[test]
    fn bad_inputs_say_what_to_do() {
        let dir = TempDir::new("plot-bad");
        let out = dir.0.join("x.svg");
        let fail = |path: &Path| {
            run(&PlotRequest {
                runs: vec![spec(path, "x")],
                out: out.clone(),
                title: None,
                metric: Metric::ChunkGap,
            })
            .unwrap_err()
            .to_string()
        };

        let missing = dir.0.join("missing.json");
        let e = fail(&missing);
        assert!(
            e.starts_with("cannot read") && e.contains("missing.json"),
            "{e}"
        );

        let old = dir.0.join("old.json");
        std::fs::write(
            &old,
            r#"{"scenario":"run","latency_ms":{"chunk_gap":{"count":3}}}"#,
        )
        .unwrap();
        let e = fail(&old);
        assert!(
            e.contains("re-run with this version of mangaassist-load"),
            "{e}"
        );
        assert!(
            e.contains("chunk_gap_percentiles") && e.contains("old.json"),
            "{e}"
        );

        let idle = dir.0.join("idle.json");
        std::fs::write(&idle, r#"{"scenario":"idle"}"#).unwrap();
        assert!(fail(&idle).contains("not a `run` report"));

        let text = dir.0.join("text.json");
        std::fs::write(&text, "not json").unwrap();
        assert!(fail(&text).contains("is not JSON"));

        let empty = write_run(&dir.0, "empty.json", &[]);
        let e = fail(&empty);
        assert!(e.contains("recorded no chunk gaps"), "{e}");

        let unsorted = dir.0.join("unsorted.json");
        std::fs::write(
            &unsorted,
            r#"{"scenario":"run","latency_ms":{"chunk_gap_percentiles":[{"p":50,"ms":1},{"p":10,"ms":1}]}}"#,
        )
        .unwrap();
        assert!(fail(&unsorted).contains("not rising"));
        assert!(!out.exists(), "nothing written on error");
    }
}
