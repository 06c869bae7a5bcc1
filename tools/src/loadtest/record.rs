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
/// timed out) or could not be sent because the client was at its limit.
pub const NO_ANSWER: u16 = 0;

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
            buckets: Vec::new(),
            first_failure: None,
        }
    }

    /// Records one outcome: a request meant to go out at `sent` (its
    /// scheduled time, in the open model) answered `status` at `done`, with
    /// `offered` the rate being offered then.
    pub fn record(&mut self, sent: Instant, done: Instant, status: u16, offered: f64) {
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
        if !ok && self.first_failure.is_none() {
            let rps = if offered > 0.0 {
                offered
            } else {
                self.recent_rate(index)
            };
            self.first_failure = Some(FirstFailure {
                at_s: at.as_secs_f64(),
                status,
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
        r.record(at(100), at(110), 503, 50.0); // warm-up: not measured
        r.record(at(1100), at(1110), 200, 100.0);
        r.record(at(1200), at(1250), 503, 120.0);
        r.record(at(1300), at(1301), 200, 130.0);
        let first = r.first_failure().unwrap();
        assert_eq!((first.status, first.rps), (503, 120.0));
        assert!((first.at_s - 1.25).abs() < 1e-9);
        assert_eq!(r.by_status().get(&200), Some(&2));
        assert_eq!(r.by_status().get(&503), Some(&1));
        let timeline = r.timeline();
        assert_eq!(timeline.len(), 14);
        assert_eq!(timeline[12].failed, 1);
        assert_eq!(r.live(), (4, 2, 2));
    }

    #[test]
    fn peak_goodput_is_the_best_whole_second() {
        let start = Instant::now();
        let mut r = Recorder::new(start, Duration::ZERO);
        for ms in (0..3000).step_by(10) {
            let n = if (1000..2000).contains(&ms) { 3 } else { 1 };
            for _ in 0..n {
                let t = start + Duration::from_millis(ms);
                r.record(t, t, 200, 0.0);
            }
        }
        assert!(
            (r.peak_goodput() - 300.0).abs() < 1e-9,
            "{}",
            r.peak_goodput()
        );
    }
}
