//! The comparison chart of `fapi-bench compare`, as SVG (plotters' SVG backend; text is written as
//! SVG text, so no font library is needed to draw it).

use std::path::Path;

use plotters::prelude::*;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

const LATENCY: RGBColor = RGBColor(52, 101, 164);
const CPU: RGBColor = RGBColor(204, 102, 0);
const LINES: [RGBColor; 4] = [
    RGBColor(0, 0, 0),
    RGBColor(52, 101, 164),
    RGBColor(78, 154, 6),
    RGBColor(117, 80, 123),
];
const PYTHON: RGBColor = RGBColor(204, 0, 0);

/// Left: per-request latency and CPU of each client as a ratio to plain reqwest (`bars`: name,
/// latency ratio, CPU ratio). Right: items/s against concurrency (`series`: name, (concurrency,
/// items/s)), with the reference Python client's sequential rate as a line.
pub fn draw(
    path: &Path,
    bars: &[(String, f64, f64)],
    series: &[(String, Vec<(usize, f64)>)],
    python_rate: Option<f64>,
) -> Result {
    let root = SVGBackend::new(path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    per_request(&left, bars)?;
    throughput(&right, series, python_rate)?;
    root.present()?;
    Ok(())
}

fn per_request<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[(String, f64, f64)],
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let n = bars.len() as f64;
    let max = bars.iter().map(|b| b.1.max(b.2)).fold(1.2, f64::max);
    // Log scale: the reference client is tens of times the baseline, the others within 3x.
    let lo = 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Per request, small responses, one connection (1.0 = plain reqwest mTLS)",
            ("sans-serif", 17),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(8)
        .build_cartesian_2d((lo..max * 2.2).log_scale(), 0f64..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(0)
        .x_desc("ratio to plain reqwest mTLS in the same run, log scale (lower is better)")
        .x_label_formatter(&|v| format!("{v}x"))
        .draw()?;
    for (i, (name, wall, cpu)) in bars.iter().enumerate() {
        let y = n - 1.0 - i as f64;
        chart.draw_series([Text::new(
            name.clone(),
            (lo * 1.02, y + 0.97),
            ("sans-serif", 13).into_font().color(&BLACK),
        )])?;
        // Two bars per client: latency above, CPU below; the first client's bars name the legend.
        for (v, bottom, color, label) in [
            (*wall, y + 0.42, LATENCY, "latency per request"),
            (*cpu, y + 0.10, CPU, "client CPU per request"),
        ] {
            let top = bottom + 0.26;
            let bar =
                chart.draw_series([Rectangle::new([(lo, bottom), (v, top)], color.filled())])?;
            if i == 0 {
                bar.label(label).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
            }
            chart.draw_series([Text::new(
                format!("{v:.2}x"),
                (v * 1.03, top),
                ("sans-serif", 12).into_font().color(&BLACK),
            )])?;
        }
    }
    // The 1.0 line and the 1.1 target.
    chart.draw_series(LineSeries::new(
        [(1.0, 0.0), (1.0, n)],
        BLACK.stroke_width(1),
    ))?;
    chart.draw_series(DashedLineSeries::new(
        [(1.1, 0.0), (1.1, n)],
        4,
        4,
        RED.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    series: &[(String, Vec<(usize, f64)>)],
    python_rate: Option<f64>,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let concs: Vec<usize> = series
        .first()
        .map(|s| s.1.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(python_rate.unwrap_or(0.0), f64::max);
    let last = concs.len().saturating_sub(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput, small items (items/s)", ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        // Headroom above the lines for the legend.
        .build_cartesian_2d(-0.2f64..last + 0.2, 0f64..top * 1.5)?;
    let labels = concs.clone();
    chart
        .configure_mesh()
        .x_labels(concs.len() * 4)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .light_line_style(WHITE)
        .x_desc("concurrency (in-flight requests)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (k, (name, pts)) in series.iter().enumerate() {
        let color = LINES[k % LINES.len()];
        let xy: Vec<(f64, f64)> = pts
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, p.1))
            .collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    if let Some(py) = python_rate {
        chart
            .draw_series(DashedLineSeries::new(
                [(-0.2, py), (last + 0.2, py)],
                6,
                4,
                PYTHON.stroke_width(2),
            ))?
            .label(format!(
                "reference Python FAPISession, sequential ({py:.0}/s)"
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], PYTHON.stroke_width(2)));
        chart.draw_series(DashedLineSeries::new(
            [(-0.2, py * 20.0), (last + 0.2, py * 20.0)],
            2,
            4,
            PYTHON.stroke_width(1),
        ))?;
        chart.draw_series([Text::new(
            "20x the reference (target)".to_string(),
            (0.0, py * 20.0),
            ("sans-serif", 12).into_font().color(&PYTHON),
        )])?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}
