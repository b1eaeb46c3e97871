//! `--svg`: a stacked bar of cold-start phases per system, and the freeze and thaw latency
//! distributions (CDFs) per system.

use std::path::Path;

use plotters::prelude::*;

use super::stats::Row;
use super::Raw;

const PHASES: [&str; 6] = ["cgroup", "setup", "exec", "listen", "initialize", "respond"];
const SYSTEMS: [&str; 5] = ["fcsup", "plain", "sigstop", "crun", "runc"];

fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

type Err = Box<dyn std::error::Error>;

/// Writes both charts to `path`.
pub fn write(path: &Path, rows: &[Row], raw: &Raw) -> Result<(), Err> {
    let root = SVGBackend::new(path, (1100, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(480);
    let (left, right) = bottom.split_horizontally(550);
    cold_start_bars(&top, rows)?;
    cdf(&left, raw, "freeze")?;
    cdf(&right, raw, "thaw")?;
    root.present()?;
    Ok(())
}

fn p50(rows: &[Row], system: &str, metric: &str) -> Option<f64> {
    rows.iter().find(|r| r.system == system && r.metric == metric && r.workload == "native").map(|r| r.p50 / 1000.0)
}

fn cold_start_bars(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, rows: &[Row]) -> Result<(), Err> {
    let systems: Vec<&str> = SYSTEMS.iter().copied().filter(|s| p50(rows, s, "cold_start").is_some()).collect();
    let ymax = systems.iter().filter_map(|s| p50(rows, s, "cold_start")).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("Cold start of the native fixture to its first response (p50, ms)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..systems.len() as f64, 0f64..ymax)?;
    let names = systems.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(systems.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "x runs over 0..systems.len(): small, non-negative")]
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 {
                names.get(i).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()?;
    for (i, system) in systems.iter().enumerate() {
        let x0 = i as f64 + 0.2;
        let x1 = i as f64 + 0.8;
        if *system == "fcsup" {
            let mut y = 0.0;
            for (k, phase) in PHASES.iter().enumerate() {
                let h = p50(rows, "fcsup", &format!("cold_start.{phase}")).unwrap_or(0.0);
                let c = colour(k);
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x0, y), (x1, y + h)], c.filled())))?
                    .label(format!("fcsup: {phase}"))
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
                y += h;
            }
        } else {
            let h = p50(rows, system, "cold_start").unwrap_or(0.0);
            chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, h)], colour(7).mix(0.6).filled())))?;
        }
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

fn cdf(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, raw: &Raw, metric: &str) -> Result<(), Err> {
    let mut series = Vec::new();
    for system in SYSTEMS {
        for workload in ["1 busy thread", "50 busy threads"] {
            if let Some(v) = raw.get(system, metric, workload) {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                series.push((format!("{system}, {workload}"), v));
            }
        }
    }
    let lo = series.iter().filter_map(|(_, v)| v.first()).fold(f64::MAX, |a, b| a.min(*b)).clamp(1.0, 1e6) * 0.8;
    let hi = series.iter().filter_map(|(_, v)| v.last()).fold(10.0f64, |a, b| a.max(*b)) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{metric}: latency until confirmed (CDF)"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
    chart.configure_mesh().x_desc("µs (log)").y_desc("fraction").draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let n = v.len() as f64;
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(v.iter().enumerate().map(|(k, x)| (*x, (k + 1) as f64 / n)), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}
