//! What a load test saw: every answer's status and latency, overall and in
//! a timeline of 100 ms buckets, and the first failure with the rate that
//! was offered when it happened.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The timeline's resolution.
pub const BUCKET: Duration = Duration::from_millis(100);

/// Status recorded for a request that got no HTTP answer (refused, reset,
/// timed out) or could not be sent because the client was at its limit;
/// [`NoAnswer`] says which.
pub const NO_ANSWER: u16 = 0;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Answered(u16),
    /// No HTTP answer.
    NoAnswer(NoAnswer),
}

impl Outcome {
    /// The status counted for it: [`NO_ANSWER`] without an answer.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Answered(status) => status,
            Outcome::NoAnswer(_) => NO_ANSWER,
        }
    }

    /// Why it got no answer, if it got none.
    pub fn no_answer(self) -> Option<NoAnswer> {
        match self {
            Outcome::Answered(_) => None,
            Outcome::NoAnswer(why) => Some(why),
        }
    }
}

/// Why a request got no HTTP answer: a failure an operator chases in
/// different places (the client, the network, the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoAnswer {
    /// The client was at its in-flight limit (open model): never sent.
    NotSent,
    /// No connection could be opened (refused, unreachable, out of ports).
    Connect,
    /// The connection had closed before the request was written on it. A
    /// request that finds a kept-alive connection so is sent once more, on
    /// a fresh one (the server never saw it): this counts when that fails
    /// too, or when the connection was fresh.
    Stale,
    /// The connection closed or was reset after the request was sent and
    /// before its answer was complete.
    Closed,
    /// Any other transport or protocol error (a malformed answer).
    Broken,
    /// No complete answer within the plan's timeout.
    TimedOut,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoAnswer::NotSent => "not sent (the client was at its in-flight limit)",
            NoAnswer::Connect => "could not connect",
            NoAnswer::Stale => "connection closed before the request was sent",
            NoAnswer::Closed => "connection closed before the answer",
            NoAnswer::Broken => "broken answer",
            NoAnswer::TimedOut => "timed out",
        })
    }
}

/// `why: count, …` for a report, in [`NoAnswer`]'s order (empty: none).
pub fn describe(no_answer: &BTreeMap<NoAnswer, u64>) -> String {
    let parts: Vec<String> = no_answer
        .iter()
        .map(|(why, n)| format!("{why}: {n}"))
        .collect();
    parts.join(", ")
}

/// One 100 ms bucket of the timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tick {
    /// Start of the bucket, seconds from the start of the run.
    pub t: f64,
    /// Answers that completed in it.
    pub answers: u64,
    /// Of those, 200s.
    pub ok: u64,
    /// Of those, anything else (and requests with no answer).
    pub failed: u64,
    /// 99th percentile latency of its answers, microseconds (0 if none).
    pub p99_us: u64,
    /// The rate offered then (open model: the schedule; closed: users active).
    pub offered: f64,
}

/// The first request that failed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FirstFailure {
    /// Seconds from the start of the run.
    pub at_s: f64,
    /// Its status (0: no answer).
    pub status: u16,
    /// Why it got no answer, if it got none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<NoAnswer>,
    /// The rate offered at that moment, requests per second (open model), or
    /// the answers per second measured over the second before it (closed).
    pub rps: f64,
}

struct Bucket {
    answers: u64,
    ok: u64,
    failed: u64,
    offered: f64,
    latency: Histogram<u64>,
}

/// Collects outcomes from every client task.
pub struct Recorder {
    start: Instant,
    measure_from: Instant,
    overall: Histogram<u64>,
    by_status: BTreeMap<u16, u64>,
    /// The requests counted under [`NO_ANSWER`], by why.
    no_answer: BTreeMap<NoAnswer, u64>,
    buckets: Vec<Bucket>,
    first_failure: Option<FirstFailure>,
}

impl Recorder {
    /// A recorder for a run starting at `start`, measuring after `warmup`.
    pub fn new(start: Instant, warmup: Duration) -> Self {
        Self {
            start,
            measure_from: start + warmup,
            overall: latency_histogram(3),
            by_status: BTreeMap::new(),
            no_answer: BTreeMap::new(),
            buckets: Vec::new(),
            first_failure: None,
        }
    }

    /// Records one outcome: a request meant to go out at `sent` (its
    /// scheduled time, in the open model) ended as `outcome` at `done`, with
    /// `offered` the rate being offered then.
    pub fn record(&mut self, sent: Instant, done: Instant, outcome: Outcome, offered: f64) {
        let status = outcome.status();
        let at = done.saturating_duration_since(self.start);
        let index = (at.as_millis() / BUCKET.as_millis()) as usize;
        while self.buckets.len() <= index {
            self.buckets.push(Bucket {
                answers: 0,
                ok: 0,
                failed: 0,
                offered: 0.0,
                latency: latency_histogram(2),
            });
        }
        let us = done.saturating_duration_since(sent).as_micros() as u64;
        let ok = status == 200;
        let bucket = &mut self.buckets[index];
        bucket.answers += 1;
        bucket.offered = offered;
        if ok {
            bucket.ok += 1;
        } else {
            bucket.failed += 1;
        }
        bucket.latency.saturating_record(us.max(1));
        if sent < self.measure_from {
            return;
        }
        self.overall.saturating_record(us.max(1));
        *self.by_status.entry(status).or_default() += 1;
        let no_answer = outcome.no_answer();
        if let Some(why) = no_answer {
            *self.no_answer.entry(why).or_default() += 1;
        }
        if !ok && self.first_failure.is_none() {
            let rps = if offered > 0.0 {
                offered
            } else {
                self.recent_rate(index)
            };
            self.first_failure = Some(FirstFailure {
                at_s: at.as_secs_f64(),
                status,
                no_answer,
                rps,
            });
        }
    }

    /// Answers per second over the ten buckets before `index`.
    fn recent_rate(&self, index: usize) -> f64 {
        let from = index.saturating_sub(10);
        let answers: u64 = self.buckets[from..index].iter().map(|b| b.answers).sum();
        let span = (index - from).max(1) as f64 * BUCKET.as_secs_f64();
        answers as f64 / span
    }

    /// Answers, 200s and failures so far, and the p99 of the last second.
    pub fn live(&self) -> (u64, u64, u64) {
        let answers = self.buckets.iter().map(|b| b.answers).sum();
        let ok = self.buckets.iter().map(|b| b.ok).sum();
        (answers, ok, answers - ok)
    }

    /// Latency quantile over everything measured, microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        self.overall.value_at_quantile(q)
    }

    /// Answers by status over the measured window.
    pub fn by_status(&self) -> &BTreeMap<u16, u64> {
        &self.by_status
    }

    /// The requests that got no answer in the measured window, by why.
    pub fn no_answer(&self) -> &BTreeMap<NoAnswer, u64> {
        &self.no_answer
    }

    /// The first failure in the measured window.
    pub fn first_failure(&self) -> Option<&FirstFailure> {
        self.first_failure.as_ref()
    }

    /// The timeline, one tick per 100 ms.
    pub fn timeline(&self) -> Vec<Tick> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| Tick {
                t: i as f64 * BUCKET.as_secs_f64(),
                answers: b.answers,
                ok: b.ok,
                failed: b.failed,
                p99_us: if b.answers == 0 {
                    0
                } else {
                    b.latency.value_at_quantile(0.99)
                },
                offered: b.offered,
            })
            .collect()
    }

    /// The highest rate of 200s over any whole second of the measured window.
    pub fn peak_goodput(&self) -> f64 {
        let per_second = (Duration::from_secs(1).as_millis() / BUCKET.as_millis()) as usize;
        let first = (self
            .measure_from
            .saturating_duration_since(self.start)
            .as_millis()
            / BUCKET.as_millis()) as usize;
        let ok: Vec<u64> = self.buckets.iter().skip(first).map(|b| b.ok).collect();
        ok.windows(per_second.min(ok.len().max(1)))
            .map(|w| w.iter().sum::<u64>() as f64 * per_second as f64 / w.len() as f64)
            .fold(0.0, f64::max)
    }
}

fn latency_histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, sigfig).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_carries_the_offered_rate_and_warmup_is_not_measured() {
        let start = Instant::now();
        let mut r = Recorder::new(start, Duration::from_secs(1));
        let at = |ms| start + Duration::from_millis(ms);
        r.record(at(100), at(110), Outcome::Answered(503), 50.0); // warm-up: not measured
        r.record(at(1100), at(1110), Outcome::Answered(200), 100.0);
        r.record(at(1200), at(1250), Outcome::Answered(503), 120.0);
        r.record(at(1300), at(1301), Outcome::Answered(200), 130.0);
        let first = r.first_failure().unwrap();
        assert_eq!(
            (first.status, first.rps, first.no_answer),
            (503, 120.0, None)
        );
        assert!((first.at_s - 1.25).abs() < 1e-9);
        assert_eq!(r.by_status().get(&200), Some(&2));
        assert_eq!(r.by_status().get(&503), Some(&1));
        let timeline = r.timeline();
        assert_eq!(timeline.len(), 14);
        assert_eq!(timeline[12].failed, 1);
        assert_eq!(r.live(), (4, 2, 2));
    }

    #[test]
    fn requests_without_an_answer_count_as_status_0_and_by_why() {
        let start = Instant::now();
        let mut r = Recorder::new(start, Duration::ZERO);
        let at = |ms| start + Duration::from_millis(ms);
        let closed = Outcome::NoAnswer(NoAnswer::Closed);
        r.record(at(0), at(5), Outcome::Answered(200), 0.0);
        r.record(at(10), at(20), closed, 0.0);
        r.record(at(30), at(40), Outcome::NoAnswer(NoAnswer::TimedOut), 0.0);
        r.record(at(50), at(60), closed, 0.0);
        assert_eq!(r.by_status().get(&NO_ANSWER), Some(&3));
        let why: Vec<_> = r.no_answer().iter().map(|(w, n)| (*w, *n)).collect();
        assert_eq!(why, [(NoAnswer::Closed, 2), (NoAnswer::TimedOut, 1)]);
        let first = r.first_failure().unwrap();
        assert_eq!(
            (first.status, first.no_answer),
            (NO_ANSWER, Some(NoAnswer::Closed))
        );
        let json = serde_json::to_value(first).unwrap();
        assert_eq!(json["no_answer"], "closed");
    }

    #[test]
    fn peak_goodput_is_the_best_whole_second() {
        let start = Instant::now();
        let mut r = Recorder::new(start, Duration::ZERO);
        for ms in (0..3000).step_by(10) {
            let n = if (1000..2000).contains(&ms) { 3 } else { 1 };
            for _ in 0..n {
                let t = start + Duration::from_millis(ms);
                r.record(t, t, Outcome::Answered(200), 0.0);
            }
        }
        assert!(
            (r.peak_goodput() - 300.0).abs() < 1e-9,
            "{}",
            r.peak_goodput()
        );
    }
}
