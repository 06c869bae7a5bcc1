//! A closed-loop HTTP load generator: `connections` keep-alive connections,
//! each sending the next request as soon as the last answer arrives, for a
//! fixed time. Latencies go into an HDR histogram.
//!
//! It drives hadr and the native baseline alike, so the two are measured by
//! the same client in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// What to send, where, how hard and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Full URL, e.g. `http://127.0.0.1:8000/predict`.
    pub url: Uri,
    /// The JSON body of every request.
    pub body: Bytes,
    /// Concurrent connections (closed loop: one request in flight each).
    pub connections: usize,
    /// How long to measure.
    pub duration: Duration,
    /// How long to send before measuring (not recorded).
    pub warmup: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Requests answered during the measured window.
    pub requests: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Answers by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Connection-level failures (refused, reset).
    pub transport_errors: u64,
    /// Measured window in seconds.
    pub seconds: f64,
    /// Answers per second.
    pub rps: f64,
    /// 200 answers per second.
    pub goodput: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL has no host or port.
    #[error("the URL {0} needs a host and port, e.g. http://127.0.0.1:8000/predict")]
    Url(Uri),
    /// Nothing answered at the address.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
}

struct Tally {
    histogram: Histogram<u64>,
    by_status: BTreeMap<u16, u64>,
    transport_errors: u64,
}

/// Runs the load and reports what it measured.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    let authority = spec
        .url
        .authority()
        .ok_or_else(|| LoadError::Url(spec.url.clone()))?
        .to_string();
    // Fail fast if nothing listens.
    TcpStream::connect(&authority)
        .await
        .map_err(|e| LoadError::Connect(authority.clone(), e))?;
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.connections.max(1) {
        let spec = spec.clone();
        let authority = authority.clone();
        tasks.spawn(async move { connection(&spec, &authority, measure_from, end).await });
    }
    let mut total = Tally {
        histogram: new_histogram(),
        by_status: BTreeMap::new(),
        transport_errors: 0,
    };
    while let Some(Ok(t)) = tasks.join_next().await {
        total
            .histogram
            .add(&t.histogram)
            .expect("same histogram bounds");
        for (status, n) in t.by_status {
            *total.by_status.entry(status).or_default() += n;
        }
        total.transport_errors += t.transport_errors;
    }
    let seconds = spec.duration.as_secs_f64();
    let requests: u64 = total.by_status.values().sum();
    let ok = total.by_status.get(&200).copied().unwrap_or(0);
    let h = &total.histogram;
    Ok(LoadReport {
        requests,
        ok,
        by_status: total.by_status,
        transport_errors: total.transport_errors,
        seconds,
        rps: requests as f64 / seconds,
        goodput: ok as f64 / seconds,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One closed-loop connection; reconnects after a transport error.
async fn connection(
    spec: &LoadSpec,
    authority: &str,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally {
        histogram: new_histogram(),
        by_status: BTreeMap::new(),
        transport_errors: 0,
    };
    while Instant::now() < end {
        let Ok(mut sender) = connect(authority).await else {
            tally.transport_errors += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        while Instant::now() < end {
            let request = Request::builder()
                .method(Method::POST)
                .uri(spec.url.path())
                .header(HOST, authority)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(spec.body.clone()))
                .expect("a valid request");
            let sent = Instant::now();
            let outcome = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.into_body().collect().await.map(|_| status)
                }
                Err(e) => Err(e),
            };
            let done = Instant::now();
            let measured = sent >= measure_from && done <= end;
            match outcome {
                Ok(status) => {
                    if measured {
                        let us = done.duration_since(sent).as_micros() as u64;
                        tally.histogram.saturating_record(us.max(1));
                        *tally.by_status.entry(status).or_default() += 1;
                    }
                    if sender.is_closed() {
                        break;
                    }
                }
                Err(_) => {
                    if measured {
                        tally.transport_errors += 1;
                    }
                    break;
                }
            }
        }
    }
    tally
}

async fn connect(authority: &str) -> std::io::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
