//! Acceptance: a `--quick` drill of the three topologies writes its report
//! and charts, its numbers are consistent with each other and with what the
//! hosts counted, and 2-active and 3-active lose no request to an instance
//! trap.

mod common;

use std::process::Command;

use common::{repo, TempDir};

/// The two drills measure capacity: they must not share the cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[ignore = "full suite: runs the drill against hadr-host processes"]
fn a_quick_drill_reports_consistent_numbers() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("drill");
    let out = dir.0.join("report");
    drill(&out, &[]);
    check(&out, false);
}

/// The same drill with each topology as a fleet: one process per entry on
/// its own loopback address behind a real HAProxy. Killing a whole host
/// with SIGKILL under load fails nothing where the topology has another.
#[test]
#[ignore = "full suite: runs the drill against hadr-host processes"]
fn a_quick_fleet_drill_loses_nothing_to_a_host_kill_with_redundancy() {
    assert!(
        hadr_tools::fleet::local::haproxy_exe().is_some(),
        "HAProxy is not installed: apt-get install -y haproxy (scripts/test does it as root)"
    );
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("fleet-drill");
    let out = dir.0.join("report");
    drill(&out, &["--fleet"]);
    check(&out, true);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for t in report["topologies"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        assert_eq!(t["fleet"], true);
        let kill = t["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "kill -9")
            .unwrap();
        if name != "single (fleet)" {
            assert_eq!(
                kill["failed"], 0,
                "{name} lost requests to a host kill: {kill}"
            );
        }
    }
}

/// Runs a quick drill of the article's three topologies into `out`.
fn drill(out: &std::path::Path, extra: &[&str]) {
    let topologies: Vec<_> = ["single", "2-active", "3-active"]
        .iter()
        .map(|n| repo().join(format!("topologies/{n}.json")))
        .collect();
    let status = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .arg("drill")
        .args(&topologies)
        .args(extra)
        .arg("--quick")
        // A quarter of the measured capacity during the faults: the capacity
        // ramp can end at the load generator's own limit, and on a loaded
        // machine half of that leaves no headroom, so overload (not the
        // trap) would fail requests in the trap's window.
        .args(["--share", "0.25"])
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The report's numbers agree with each other and with the hosts' counts.
fn check(out: &std::path::Path, fleet: bool) {
    for chart in ["throughput.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{chart} is not a chart"
        );
        assert!(
            svg.contains("2-active") && svg.contains("kill -9"),
            "{chart} lacks its legend or marks"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(md.contains("| 2-active (fleet) |"), fleet, "{md}");
    assert!(
        md.contains("RPS at first failure (article, Flask) | 5.2 | 8.6 | 7.4"),
        "{md}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let results = report["topologies"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for t in results {
        let name = t["name"].as_str().unwrap();
        for phase in ["capacity", "instance_faults", "host_crash"] {
            let p = &t[phase];
            let (requests, ok, failed) = (
                p["requests"].as_u64().unwrap(),
                p["ok"].as_u64().unwrap(),
                p["failed"].as_u64().unwrap(),
            );
            assert_eq!(ok + failed, requests, "{name} {phase}");
            let by_status: u64 = p["by_status"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(by_status, requests, "{name} {phase}: status counts");
        }
        // The fault phases have no warm-up: the timeline holds every outcome.
        let faults = &t["instance_faults"];
        let timeline_failed: u64 = faults["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["failed"].as_u64().unwrap())
            .sum();
        assert_eq!(
            timeline_failed,
            faults["failed"].as_u64().unwrap(),
            "{name}: failures"
        );
        // Every success was served by exactly one instance, as /topology counted.
        let served: u64 = t["served_during_faults"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            served,
            faults["ok"].as_u64().unwrap(),
            "{name}: served counts against successes"
        );
        let trap = t["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "trap")
            .unwrap();
        if !name.starts_with("single") {
            assert_eq!(
                trap["failed"], 0,
                "{name} lost requests to a single instance trap: {trap}"
            );
        }
        assert!(
            trap["window_requests"].as_u64().unwrap() > 0,
            "{name}: no load during the trap"
        );
        let availability = t["availability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&availability));
        eprintln!(
            "{name}: first failure at {:?} req/s, availability {:.3}%, trap {}/{}",
            t["rps_at_first_failure"],
            availability * 100.0,
            trap["failed"],
            trap["window_requests"]
        );
    }
}
