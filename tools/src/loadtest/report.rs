//! A load test's report as a terminal table or Markdown, and the article's
//! second table (per-instance load and served counts) read from the
//! target's `/topology`.

use comfy_table::{presets, Table};
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use serde::Serialize;

use super::{LoadReport, Model};

/// One instance as `/topology` showed it (after a run: see [`since`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceRow {
    /// Its name.
    pub instance: String,
    /// active, standby or promoted.
    pub role: String,
    /// The article's `status`.
    pub status: bool,
    /// In-flight load when read.
    pub load: u64,
    /// Predictions answered: the host's total, or a test's share ([`since`]).
    pub served: u64,
    /// Failed calls.
    pub failed: u64,
    /// Traps.
    pub traps: u64,
}

/// Reads `/topology` beside `url`; empty when the target has none.
pub async fn instances(url: &Uri) -> Vec<InstanceRow> {
    let Some(value) = topology(url).await else {
        return Vec::new();
    };
    let Some(map) = value.as_object() else {
        return Vec::new();
    };
    map.iter()
        .map(|(name, i)| InstanceRow {
            instance: name.clone(),
            role: i["role"].as_str().unwrap_or("").to_string(),
            status: i["status"].as_bool().unwrap_or(false),
            load: i["load"].as_u64().unwrap_or(0),
            served: i["served"].as_u64().unwrap_or(0),
            failed: i["failed"].as_u64().unwrap_or(0),
            traps: i["traps"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// What happened between two readings: `after`'s counters less `before`'s
/// for the same instance (the host's totals include earlier traffic).
pub fn since(before: &[InstanceRow], after: Vec<InstanceRow>) -> Vec<InstanceRow> {
    after
        .into_iter()
        .map(|mut row| {
            if let Some(b) = before.iter().find(|b| b.instance == row.instance) {
                row.served = row.served.saturating_sub(b.served);
                row.failed = row.failed.saturating_sub(b.failed);
                row.traps = row.traps.saturating_sub(b.traps);
            }
            row
        })
        .collect()
}

/// `GET /topology` at `url`'s host, as JSON.
pub async fn topology(url: &Uri) -> Option<serde_json::Value> {
    let authority = url.authority()?.as_str().to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/topology")
        .header(hyper::header::HOST, &authority)
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

fn model(m: &Model) -> String {
    match *m {
        Model::Closed { users, spawn_rate } if spawn_rate > 0.0 => {
            format!("closed: {users} users, {spawn_rate}/s spawn rate")
        }
        Model::Closed { users, .. } => format!("closed: {users} users"),
        Model::Open { from, to, .. } => format!("open: {from:.0} → {to:.0} req/s"),
    }
}

/// The summary rows: (what, value).
fn rows(r: &LoadReport) -> Vec<(String, String)> {
    let first = match &r.first_failure {
        Some(f) => format!(
            "{:.0} req/s (status {}, at {:.1} s)",
            f.rps,
            match (f.status, f.no_answer) {
                (0, Some(why)) => format!("no answer: {why}"),
                (0, None) => "no answer".to_string(),
                (status, _) => status.to_string(),
            },
            f.at_s
        ),
        None => "none".into(),
    };
    let statuses = r
        .by_status
        .iter()
        .map(|(s, n)| {
            format!(
                "{}: {n}",
                if *s == 0 {
                    "no answer".into()
                } else {
                    s.to_string()
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let no_answer = super::describe(&r.no_answer);
    let mut rows = vec![
        ("load".into(), model(&r.model)),
        ("measured".into(), format!("{:.1} s", r.seconds)),
        (
            "requests".into(),
            format!("{} ({} ok, {} failed)", r.requests, r.ok, r.failed),
        ),
        (
            "throughput".into(),
            format!("{:.0} req/s, goodput {:.0}/s", r.rps, r.goodput),
        ),
        ("peak goodput".into(), format!("{:.0}/s", r.peak_goodput)),
        ("RPS at first failure".into(), first),
        (
            "latency p50 / p90 / p99 / p99.9".into(),
            format!(
                "{} / {} / {} / {} µs",
                r.p50_us, r.p90_us, r.p99_us, r.p999_us
            ),
        ),
        ("status codes".into(), statuses),
    ];
    if !no_answer.is_empty() {
        rows.push(("no answer, why".into(), no_answer));
    }
    rows
}

/// The report as terminal tables.
pub fn terminal(r: &LoadReport) -> String {
    let mut summary = Table::new();
    summary.load_style(presets::UTF8_FULL_CONDENSED);
    for (k, v) in rows(r) {
        summary.add_row(vec![k, v]);
    }
    let mut out = summary.to_string();
    if !r.instances.is_empty() {
        let mut t = Table::new();
        t.load_style(presets::UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "instance", "role", "status", "load", "served", "failed", "traps",
        ]);
        for i in &r.instances {
            t.add_row(vec![
                i.instance.clone(),
                i.role.clone(),
                i.status.to_string(),
                i.load.to_string(),
                i.served.to_string(),
                i.failed.to_string(),
                i.traps.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.to_string());
    }
    out
}

/// The report as Markdown.
pub fn markdown(r: &LoadReport) -> String {
    let mut out = String::from("| | |\n|---|---|\n");
    for (k, v) in rows(r) {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    if !r.instances.is_empty() {
        out.push_str("\n| instance | role | status | load | served | failed | traps |\n|---|---|---|---|---|---|---|\n");
        for i in &r.instances {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                i.instance, i.role, i.status, i.load, i.served, i.failed, i.traps
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, served: u64, failed: u64, traps: u64) -> InstanceRow {
        InstanceRow {
            instance: instance.into(),
            role: "active".into(),
            status: true,
            load: 0,
            served,
            failed,
            traps,
        }
    }

    #[test]
    fn a_tests_share_is_the_counters_growth_during_it() {
        let before = [row("predict1", 78_388, 3, 2)];
        let after = vec![row("predict1", 143_978, 4, 2), row("predict2", 10, 0, 0)];
        assert_eq!(
            since(&before, after),
            [row("predict1", 65_590, 1, 0), row("predict2", 10, 0, 0)]
        );
    }
}
