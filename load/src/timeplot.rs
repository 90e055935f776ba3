//! `mangaassist-load timeline`: a figure of run reports over time as one SVG: TTFT p99, chunk-gap
//! p99, the server's RSS or its CPU, one line per run, x in seconds since the run started.
//!
//! The points come from each report's `timeline` (one per second, written by `run` and
//! `scenario`). A report without one (an older version, or a run shorter than a second) is an
//! error naming the file.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::plot::{COLORS, PlotError, RunSpec, SIZE};

/// A figure of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Figure {
    /// TTFT p99 of the turns that ended each second, in ms.
    Ttft,
    /// Chunk-gap p99 of the turns that ended each second, in ms.
    Gap,
    /// The server's resident memory, in MiB.
    Rss,
    /// The server's CPU, in percent of one core.
    Cpu,
}

impl Figure {
    fn field(self) -> &'static str {
        match self {
            Figure::Ttft => "ttft_p99_ms",
            Figure::Gap => "gap_p99_ms",
            Figure::Rss => "rss_bytes",
            Figure::Cpu => "cpu_percent",
        }
    }

    fn scale(self) -> f64 {
        match self {
            Figure::Rss => 1.0 / (1024.0 * 1024.0),
            _ => 1.0,
        }
    }

    /// The y axis.
    pub fn y_desc(self) -> &'static str {
        match self {
            Figure::Ttft => "TTFT p99 (ms)",
            Figure::Gap => "chunk gap p99 (ms)",
            Figure::Rss => "server RSS (MiB)",
            Figure::Cpu => "server CPU (% of one core)",
        }
    }
}

/// One run's line.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend text.
    pub label: String,
    /// (seconds, value) points.
    pub points: Vec<(f64, f64)>,
}

/// Reads `spec`'s report and takes `figure` from its timeline.
pub fn load_line(spec: &RunSpec, figure: Figure) -> Result<Line, PlotError> {
    let text = std::fs::read_to_string(&spec.path).map_err(|source| PlotError::Read {
        path: spec.path.clone(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| PlotError::Json {
        path: spec.path.clone(),
        source,
    })?;
    let points: Vec<(f64, f64)> = v
        .get("timeline")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let t = p.get("t_secs")?.as_f64()?;
            let y = p.get(figure.field())?.as_f64()?;
            Some((t, y * figure.scale()))
        })
        .collect();
    if points.is_empty() {
        return Err(PlotError::Draw(format!(
            "{} has no `{}` in its timeline (a report from `run` or `scenario` of at least a \
             second; rss and cpu need --server-pid)",
            spec.path.display(),
            figure.field()
        )));
    }
    Ok(Line {
        label: spec.label.clone(),
        points,
    })
}

/// Draws `lines` as an SVG document.
pub fn render_svg(lines: &[Line], title: &str, figure: Figure) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, lines, title, figure).map_err(|e| PlotError::Draw(e.to_string()))?;
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(svg)
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    lines: &[Line],
    title: &str,
    figure: Figure,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc(figure.y_desc())
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Reads every run, draws the figure and writes it to `out`; returns the lines drawn.
///
/// Blocking file I/O: call it from `spawn_blocking` in async code.
pub fn run(
    runs: &[RunSpec],
    figure: Figure,
    title: Option<&str>,
    out: &Path,
) -> Result<Vec<Line>, PlotError> {
    let lines = runs
        .iter()
        .map(|spec| load_line(spec, figure))
        .collect::<Result<Vec<_>, _>>()?;
    let title = title.map_or_else(|| format!("{} over time", figure.y_desc()), str::to_owned);
    crate::plot::write_svg(out, &render_svg(&lines, &title, figure)?)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_run_s_timeline_and_names_a_report_without_one() {
        let dir = std::env::temp_dir().join(format!("mangaassist-timeplot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.json");
        std::fs::write(
            &a,
            r#"{"timeline": [
                {"t_secs": 1.0, "rss_bytes": 104857600, "ttft_p99_ms": 410.0},
                {"t_secs": 2.0, "rss_bytes": 115343360, "ttft_p99_ms": 415.5}
            ]}"#,
        )
        .unwrap();
        let spec = RunSpec {
            path: a.clone(),
            label: "steady".into(),
        };
        let line = load_line(&spec, Figure::Rss).unwrap();
        assert_eq!(line.points, vec![(1.0, 100.0), (2.0, 110.0)]);
        let out = dir.join("rss.svg");
        run(std::slice::from_ref(&spec), Figure::Rss, None, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("steady"), "{svg}");
        // No CPU in this report: named.
        let e = load_line(&spec, Figure::Cpu).unwrap_err().to_string();
        assert!(e.contains("a.json") && e.contains("cpu_percent"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
