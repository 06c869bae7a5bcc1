//! The clients: closed-loop users and an open-model scheduler, both over
//! keep-alive HTTP/1.1 connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::payload::Payload;
use super::{Plan, Recorder, NO_ANSWER};

type Sender = SendRequest<Full<Bytes>>;

/// What drives a connection: it ends when the connection closes, or once
/// its sender is dropped and no request is in flight.
type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// A fresh keep-alive connection, driven by a task of its own (for
/// requests sent from many tasks).
pub async fn connect(authority: &str) -> std::io::Result<Sender> {
    let (sender, conn) = dial(authority).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A fresh keep-alive connection and the future that drives it, for one
/// task to poll beside its own requests: no hop between tasks per request,
/// which keeps the load generator's CPU per request low.
async fn dial(authority: &str) -> std::io::Result<(Sender, Connection)> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)
}

/// Sends one request; its status, or [`NO_ANSWER`]. The connection is
/// returned if it can carry another request.
async fn send(
    mut sender: Sender,
    plan: &Plan,
    authority: &str,
    payload: Payload,
) -> (u16, Option<Sender>) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(plan.url.path())
        .header(HOST, authority);
    request = match payload.header_length {
        None => request.header(CONTENT_TYPE, "application/json"),
        Some(n) => request
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("inference-header-content-length", n),
    };
    let request = request
        .body(Full::new(payload.body))
        .expect("a valid request");
    let exchange = async {
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    };
    match tokio::time::timeout(plan.timeout, exchange).await {
        Ok(Some(status)) => {
            let reusable = !sender.is_closed();
            (status, reusable.then_some(sender))
        }
        _ => (NO_ANSWER, None),
    }
}

/// `users` closed loops, started `1 / spawn_rate` seconds apart.
pub async fn closed(
    plan: &Plan,
    authority: &str,
    users: usize,
    spawn_rate: f64,
    start: Instant,
    end: Instant,
    recorder: &Arc<Mutex<Recorder>>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..users.max(1) {
        let delay = if spawn_rate > 0.0 {
            Duration::from_secs_f64(user as f64 / spawn_rate)
        } else {
            Duration::ZERO
        };
        let (plan, authority, recorder, active) = (
            plan.clone(),
            authority.to_string(),
            recorder.clone(),
            active.clone(),
        );
        tasks.spawn(async move {
            tokio::time::sleep_until((start + delay).into()).await;
            active.fetch_add(1, Ordering::Relaxed);
            let mut next = user;
            while Instant::now() < end {
                let (sender, conn) = match dial(&authority).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        let now = Instant::now();
                        record(&recorder, now, now, NO_ANSWER, 0.0);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                // One task drives the connection and sends on it; dropping
                // the sender at the end lets the connection close.
                let requests = async {
                    let mut sender = Some(sender);
                    while let Some(s) = sender.take() {
                        if Instant::now() >= end {
                            break;
                        }
                        let body = plan.bodies[next % plan.bodies.len()].clone();
                        next += 1;
                        let sent = Instant::now();
                        let (status, back) = send(s, &plan, &authority, body).await;
                        record(&recorder, sent, Instant::now(), status, 0.0);
                        sender = back;
                    }
                };
                let _ = tokio::join!(conn, requests);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Requests on a schedule ramped from `rates.0` to `rates.1` per second
/// (the warm-up at `rates.0`), each latency measured from when it was due.
pub async fn open(
    plan: &Plan,
    authority: &str,
    rates: (f64, f64),
    max_in_flight: usize,
    start: Instant,
    end: Instant,
    recorder: &Arc<Mutex<Recorder>>,
) {
    let idle: Arc<Mutex<Vec<Sender>>> = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let measure_from = start + plan.warmup;
    let rate_at = |t: Instant| -> f64 {
        if t < measure_from {
            return rates.0.max(0.1);
        }
        let f =
            t.duration_since(measure_from).as_secs_f64() / plan.duration.as_secs_f64().max(1e-9);
        (rates.0 + (rates.1 - rates.0) * f.min(1.0)).max(0.1)
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut due = start;
    let mut n = 0usize;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        let rate = rate_at(due);
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            record(recorder, due, Instant::now(), NO_ANSWER, rate);
        } else {
            in_flight.fetch_add(1, Ordering::Relaxed);
            let body = plan.bodies[n % plan.bodies.len()].clone();
            let (plan, authority, recorder, idle, in_flight) = (
                plan.clone(),
                authority.to_string(),
                recorder.clone(),
                idle.clone(),
                in_flight.clone(),
            );
            tasks.spawn(async move {
                let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let sender = match pooled {
                    Some(s) => Ok(s),
                    None => connect(&authority).await,
                };
                let status = match sender {
                    Ok(sender) => {
                        let (status, back) = send(sender, &plan, &authority, body).await;
                        if let Some(s) = back {
                            idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                        }
                        status
                    }
                    Err(_) => NO_ANSWER,
                };
                record(&recorder, due, Instant::now(), status, rate);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
            // Reap finished tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        n += 1;
        due += Duration::from_secs_f64(1.0 / rate);
    }
    while tasks.join_next().await.is_some() {}
}

fn record(
    recorder: &Arc<Mutex<Recorder>>,
    sent: Instant,
    done: Instant,
    status: u16,
    offered: f64,
) {
    recorder
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(sent, done, status, offered);
}
