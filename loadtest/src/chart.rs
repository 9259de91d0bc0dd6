//! SVG charts of a report: throughput over time and latency percentiles, for eyeballing runs.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::Report;
use crate::stats::Percentiles;

/// Draws `report` into an SVG file: the top panel is per-second throughput (acks, deliveries,
/// connects), the bottom one the latency percentiles (send→deliver and send→ack).
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(400);
    throughput(report, &top).map_err(|e| anyhow!("chart: {e:?}"))?;
    latency(report, &bottom).map_err(|e| anyhow!("chart: {e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// One throughput line: its name, colour and which counter of a sample it plots.
type Series = (&'static str, RGBColor, fn(&crate::live::Sample) -> u64);

fn throughput(report: &Report, area: &Area) -> DrawResult {
    let t = &report.timeline;
    let x_max = t.last().map(|s| s.t_s).unwrap_or(1.0).max(1.0);
    let y_max = t
        .iter()
        .map(|s| s.acked.max(s.deliveries).max(s.connects))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("Kaiwa {}: throughput per second", report.scenario),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()?;
    let series: [Series; 3] = [
        ("deliveries/s", BLUE, |s| s.deliveries),
        ("acks/s", RED, |s| s.acked),
        ("connects/s", GREEN, |s| s.connects),
    ];
    for (name, color, get) in series {
        if t.iter().all(|s| get(s) == 0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                t.iter().map(|s| (s.t_s, get(s) as f64)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

fn points(p: &Percentiles) -> Vec<(f64, f64)> {
    // x: "nines" (p50 = 0.3, p90 = 1, p99 = 2, p99.9 = 3, max = 4).
    vec![
        (0.301, p.p50_ms),
        (1.0, p.p90_ms),
        (2.0, p.p99_ms),
        (3.0, p.p999_ms),
        (4.0, p.max_ms),
    ]
}

fn latency(report: &Report, area: &Area) -> DrawResult {
    let curves = [
        ("send→deliver", &report.delivery_latency, BLUE),
        ("send→ack", &report.ack_latency, RED),
    ];
    let y_max = curves
        .iter()
        .map(|(_, p, _)| p.max_ms)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency percentiles (ms); x: p50, p90, p99, p99.9, max",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4.2f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p50".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            3 => "p99.9".into(),
            _ => "max".into(),
        })
        .y_desc("ms")
        .draw()?;
    for (name, p, color) in curves {
        if p.count == 0 {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points(p), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points(p)
                .into_iter()
                .map(|xy| Circle::new(xy, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
