//! The drill's report: `report.md` (the article's comparison, measured),
//! `report.json` (everything, timelines included) and the charts.

use std::collections::BTreeMap;
use std::path::Path;

use super::{DrillError, DrillReport};
use crate::loadtest::NoAnswer;

/// The article's "RPS at failure" figures, for comparison.
pub const ARTICLE_RPS: [(&str, f64); 3] = [("single", 5.2), ("2-active", 8.6), ("3-active", 7.4)];

fn ms(s: f64) -> String {
    if s < 0.1 {
        "< 0.1 s".into()
    } else {
        format!("{s:.1} s")
    }
}

/// A table header: `first`, then one column per topology.
fn header(first: &str, r: &DrillReport) -> String {
    let names: Vec<&str> = r.topologies.iter().map(|t| t.name.as_str()).collect();
    format!(
        "| {first} | {} |\n|---|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    )
}

/// The report as Markdown.
pub fn markdown(r: &DrillReport) -> String {
    let mut out = format!(
        "# hadr drill, {}\n\nMachine: {}. The load generator runs on the same cores as the hosts.\n\nEach topology: a capacity ramp (open model, 100 → {:.0} req/s over {:.0} s), then steady load at {:.0}% of the measured capacity while a trap and then a hang are injected in an active instance ({:.0} s), then while the host is killed with SIGKILL and restarted on its state directory ({:.0} s).\n\n",
        r.date,
        r.machine,
        r.timing.ramp_to,
        r.timing.ramp.as_secs_f64(),
        r.share * 100.0,
        r.timing.faults.as_secs_f64(),
        r.timing.crash.as_secs_f64(),
    );
    out.push_str(&header("", r));
    let mut row = |label: &str, cell: &dyn Fn(&super::TopologyResult) -> String| {
        out.push_str(&format!("| {label} | "));
        out.push_str(
            &r.topologies
                .iter()
                .map(cell)
                .collect::<Vec<_>>()
                .join(" | "),
        );
        out.push_str(" |\n");
    };
    row("RPS at first failure (hadr)", &|t| match (
        &t.capacity.first_failure,
        t.rps_at_first_failure,
    ) {
        (Some(f), Some(rps)) if f.status == 0 => match f.no_answer {
            Some(NoAnswer::NotSent) | None => {
                format!("{rps:.0} (no answer: the load generator's own limit here)")
            }
            Some(why) => format!("{rps:.0} (no answer: {why})"),
        },
        (Some(f), Some(rps)) => format!("{rps:.0} ({})", f.status),
        _ => format!("none up to {:.0}", t.capacity.peak_goodput),
    });
    row("RPS at first failure (article, Flask)", &|t| {
        ARTICLE_RPS
            .iter()
            .find(|(n, _)| *n == t.name.trim_end_matches(" (fleet)"))
            .map(|(_, v)| format!("{v}"))
            .unwrap_or_else(|| "–".into())
    });
    row("chaos faults armed / fired", &|t| {
        format!("{} / {}", t.faults_armed, t.faults_fired)
    });
    row("peak goodput (req/s)", &|t| {
        format!("{:.0}", t.capacity.peak_goodput)
    });
    row(
        "standby promoted",
        &|t| match (t.promoted_at_rps, t.promoted_during_faults_s) {
            (Some(rps), _) => format!("in the ramp, at {rps:.0} req/s offered"),
            (None, Some(s)) => format!("{s:.1} s into the fault phase"),
            (None, None) => "–".into(),
        },
    );
    row("steady load during faults (req/s)", &|t| {
        format!("{:.0}", t.fault_rps)
    });
    row("**availability** (share of 200s, fault phases)", &|t| {
        format!("{:.3}%", t.availability * 100.0)
    });
    for kind in ["trap", "hang", "kill -9"] {
        row(
            &format!("failure impact: {kind} (failed requests while it lasted)"),
            &|t| {
                t.faults
                    .iter()
                    .find(|f| f.kind == kind)
                    .map(|f| match f.failed {
                        0 => "0".to_string(),
                        n => format!(
                            "{n} of {} ({:.1}%)",
                            f.requests,
                            100.0 * n as f64 / f.requests.max(1) as f64
                        ),
                    })
                    .unwrap_or_else(|| "–".into())
            },
        );
        row(&format!("recovery time: {kind}"), &|t| {
            t.faults
                .iter()
                .find(|f| f.kind == kind)
                .map(|f| ms(f.recovery_s))
                .unwrap_or_else(|| "–".into())
        });
    }
    row("restart after kill -9: ready in", &|t| {
        format!("{:.0} ms", t.restart_ready_ms)
    });
    row("p99 during instance faults", &|t| {
        format!("{:.1} ms", t.instance_faults.p99_us as f64 / 1e3)
    });
    row("requests without an answer in fault phases, why", &|t| {
        let mut why: BTreeMap<NoAnswer, u64> = BTreeMap::new();
        for phase in [&t.instance_faults, &t.host_crash] {
            for (w, n) in &phase.no_answer {
                *why.entry(*w).or_default() += n;
            }
        }
        if why.is_empty() {
            return "–".into();
        }
        crate::loadtest::describe(&why)
    });
    out.push_str("\nPeak load per instance during the ramp (the article's second table; `max_load` is 10):\n\n");
    out.push_str(&header("instance", r));
    let mut names: Vec<&String> = r
        .topologies
        .iter()
        .flat_map(|t| t.peak_load.keys())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        out.push_str(&format!("| {name} | "));
        out.push_str(
            &r.topologies
                .iter()
                .map(|t| {
                    t.peak_load
                        .get(name)
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "–".into())
                })
                .collect::<Vec<_>>()
                .join(" | "),
        );
        out.push_str(" |\n");
    }
    out.push_str("\n![throughput](throughput.svg)\n\n![latency](latency.svg)\n");
    out
}

/// Writes `report.md`, `report.json`, `throughput.svg` and `latency.svg`.
pub fn write(r: &DrillReport, dir: &Path) -> Result<(), DrillError> {
    let fail = |path: &Path, e: String| DrillError::Write(path.to_owned(), e);
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e.to_string()))?;
    let md = dir.join("report.md");
    std::fs::write(&md, markdown(r)).map_err(|e| fail(&md, e.to_string()))?;
    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(r).expect("a report serialises");
    std::fs::write(&json, text).map_err(|e| fail(&json, e.to_string()))?;
    super::charts::write(r, dir).map_err(|e| fail(dir, e.to_string()))?;
    Ok(())
}
