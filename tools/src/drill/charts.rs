//! The drill's pictures, as SVG files drawn with `plotters`: one line per
//! topology over the drill's phases laid end to end, fault moments marked.
//!
//! - `throughput.svg`: successful answers per second, and failures per
//!   second (dashed), in 100 ms buckets scaled to per-second rates;
//! - `latency.svg`: the p99 latency of each bucket, in milliseconds, on a
//!   log scale.

use std::path::Path;

use plotters::prelude::*;

use super::{DrillReport, TopologyResult};
use crate::loadtest::{Tick, BUCKET};

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// One topology's drill as a single timeline: (ticks, fault times in seconds).
fn series(t: &TopologyResult) -> Series {
    let mut ticks = Vec::new();
    let mut faults = Vec::new();
    let mut offset = 0.0;
    let phase_faults = [
        (&t.capacity.timeline, Vec::new()),
        (
            &t.instance_faults.timeline,
            t.faults
                .iter()
                .filter(|f| f.kind != "kill -9")
                .collect::<Vec<_>>(),
        ),
        (
            &t.host_crash.timeline,
            t.faults
                .iter()
                .filter(|f| f.kind == "kill -9")
                .collect::<Vec<_>>(),
        ),
    ];
    for (timeline, phase_faults) in phase_faults {
        for tick in timeline.iter() {
            ticks.push(Tick {
                t: tick.t + offset,
                ..tick.clone()
            });
        }
        for f in phase_faults {
            faults.push((f.at_s + offset, f.kind.clone()));
        }
        offset += timeline.len() as f64 * BUCKET.as_secs_f64();
    }
    (ticks, faults)
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// One topology's timeline, and its faults (when, which).
type Series = (Vec<Tick>, Vec<(f64, String)>);

/// Both charts' x axis: seconds through the drill's phases.
const X_DESC: &str = "seconds (capacity ramp | trap, hang | kill -9)";

/// Each topology's name, colour and series, in report order.
fn lines<'a>(
    report: &'a DrillReport,
    all: &'a [Series],
) -> impl Iterator<Item = (String, RGBColor, &'a Series)> {
    report
        .topologies
        .iter()
        .zip(all)
        .enumerate()
        .map(|(k, (t, series))| (t.name.clone(), COLORS[k % COLORS.len()], series))
}

/// The legend, boxed, in the chart's corner.
fn legend_box<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Drawn
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Writes `throughput.svg` and `latency.svg` into `dir`.
pub fn write(report: &DrillReport, dir: &Path) -> Drawn {
    let all: Vec<_> = report.topologies.iter().map(series).collect();
    let per_second = 1.0 / BUCKET.as_secs_f64();
    let x_max = all
        .iter()
        .flat_map(|(ticks, _)| ticks.last().map(|t| t.t))
        .fold(1.0, f64::max);
    let y_max = all
        .iter()
        .flat_map(|(ticks, _)| ticks.iter().map(|t| t.answers as f64 * per_second))
        .fold(10.0, f64::max);
    {
        let path = dir.join("throughput.svg");
        let root = SVGBackend::new(&path, (1000, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = frame(
            &root,
            "hadr drill: answers per second (solid: 200, dashed: failed)",
        )
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)?;
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc("requests / s")
            .draw()?;
        for (name, color, (ticks, faults)) in lines(report, &all) {
            chart
                .draw_series(LineSeries::new(
                    ticks.iter().map(|x| (x.t, x.ok as f64 * per_second)),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(key(color));
            chart.draw_series(DashedLineSeries::new(
                ticks.iter().map(|x| (x.t, x.failed as f64 * per_second)),
                4,
                3,
                color.stroke_width(1),
            ))?;
            mark_faults(&mut chart, faults, (0.0, y_max), y_max, color)?;
        }
        legend_box(&mut chart)?;
        root.present()?;
    }
    {
        let path = dir.join("latency.svg");
        let root = SVGBackend::new(&path, (1000, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let y_top = all
            .iter()
            .flat_map(|(ticks, _)| ticks.iter().map(|t| t.p99_us as f64 / 1e3))
            .fold(1.0, f64::max);
        let mut chart = frame(&root, "hadr drill: p99 latency per 100 ms")
            .build_cartesian_2d(0f64..x_max, (0.01f64..y_top * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc("p99 ms (log)")
            .draw()?;
        for (name, color, (ticks, faults)) in lines(report, &all) {
            chart
                .draw_series(LineSeries::new(
                    ticks
                        .iter()
                        .filter(|x| x.answers > 0)
                        .map(|x| (x.t, (x.p99_us as f64 / 1e3).max(0.01))),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(key(color));
            mark_faults(&mut chart, faults, (0.01, y_top * 1.5), y_top, color)?;
        }
        legend_box(&mut chart)?;
        root.present()?;
    }
    Ok(())
}

/// Both charts' frame: caption, margins, label areas.
fn frame<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64);
    builder
}

/// A topology's legend key: a short line in its colour.
fn key(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// A vertical line from `span.0` to `span.1` at each fault, named at `label_y`.
fn mark_faults<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    faults: &[(f64, String)],
    span: (f64, f64),
    label_y: f64,
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (at, kind) in faults {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*at, span.0), (*at, span.1)],
            color.mix(0.5).stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            kind.clone(),
            (*at, label_y),
            ("sans-serif", 12).into_font().color(&color),
        )))?;
    }
    Ok(())
}
