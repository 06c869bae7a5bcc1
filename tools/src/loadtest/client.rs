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
use super::{NoAnswer, Outcome, Plan, Recorder};

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

/// Sends one request; how it ended. The connection is returned if it can
/// carry another request.
async fn send(
    mut sender: Sender,
    plan: &Plan,
    authority: &str,
    payload: Payload,
) -> (Outcome, Option<Sender>) {
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
        // Waits for the connection to take a request: an error here is a
        // connection that closed before this request went out.
        sender.ready().await.map_err(|_| NoAnswer::Stale)?;
        let response = sender.try_send_request(request).await.map_err(|e| {
            // hyper gives the request back only if none of it was written.
            if e.message().is_some() {
                NoAnswer::Stale
            } else {
                why(e.into_error())
            }
        })?;
        let status = response.status().as_u16();
        response.into_body().collect().await.map_err(why)?;
        Ok(status)
    };
    match tokio::time::timeout(plan.timeout, exchange).await {
        Ok(Ok(status)) => {
            let reusable = !sender.is_closed();
            (Outcome::Answered(status), reusable.then_some(sender))
        }
        Ok(Err(why)) => (Outcome::NoAnswer(why), None),
        Err(_) => (Outcome::NoAnswer(NoAnswer::TimedOut), None),
    }
}

/// Why an exchange got no answer, from hyper's error: the connection
/// closing or being reset under it (hyper reports an answer cut short as
/// an incomplete message, or as an I/O error somewhere in its sources),
/// else a broken answer.
fn why(e: hyper::Error) -> NoAnswer {
    let cut = std::iter::successors(std::error::Error::source(&e), |s| s.source())
        .filter_map(|s| s.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        });
    if e.is_incomplete_message() || cut {
        NoAnswer::Closed
    } else {
        NoAnswer::Broken
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
            // A request to send again on a fresh connection, and since when
            // it waits: its kept-alive connection had closed before it went.
            let mut resend: Option<Instant> = None;
            while Instant::now() < end {
                let (sender, conn) = match dial(&authority).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        // A request waiting to be sent again fails here,
                        // once; otherwise the failed dial counts as one.
                        let now = Instant::now();
                        let sent = match resend.take() {
                            Some(since) => {
                                next += 1;
                                since
                            }
                            None => now,
                        };
                        let failed = Outcome::NoAnswer(NoAnswer::Connect);
                        record(&recorder, sent, now, failed, 0.0);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                // One task drives the connection and sends on it; dropping
                // the sender at the end lets the connection close.
                let requests = async {
                    let mut sender = Some(sender);
                    let mut fresh = true;
                    while let Some(s) = sender.take() {
                        if Instant::now() >= end {
                            break;
                        }
                        let body = plan.bodies[next % plan.bodies.len()].clone();
                        let sent = resend.take().unwrap_or_else(Instant::now);
                        let (outcome, back) = send(s, &plan, &authority, body).await;
                        if !fresh && outcome == Outcome::NoAnswer(NoAnswer::Stale) {
                            // The server never saw it: the next connection
                            // sends it (unless the run ends first).
                            resend = Some(sent);
                            break;
                        }
                        next += 1;
                        record(&recorder, sent, Instant::now(), outcome, 0.0);
                        sender = back;
                        fresh = false;
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
            let not_sent = Outcome::NoAnswer(NoAnswer::NotSent);
            record(recorder, due, Instant::now(), not_sent, rate);
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
                let outcome = pooled(&plan, &authority, &idle, body).await;
                record(&recorder, due, Instant::now(), outcome, rate);
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

/// One request of the open model, on an open kept-alive connection from
/// `idle` or else a fresh one, given back to `idle` after if it can carry
/// another; within the plan's timeout, whatever it takes.
async fn pooled(plan: &Plan, authority: &str, idle: &Mutex<Vec<Sender>>, body: Payload) -> Outcome {
    let attempt = async {
        let kept = take_open(idle);
        let reused = kept.is_some();
        let sender = match kept {
            Some(sender) => sender,
            None => connect(authority).await.map_err(|_| NoAnswer::Connect)?,
        };
        let (outcome, back) = send_again_if_stale(sender, reused, plan, authority, body).await;
        if let Some(sender) = back {
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
        }
        Ok(outcome)
    };
    match tokio::time::timeout(plan.timeout, attempt).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(why)) => Outcome::NoAnswer(why),
        Err(_) => Outcome::NoAnswer(NoAnswer::TimedOut),
    }
}

/// Sends `body` on `sender`. If that kept-alive connection (`reused`) had
/// closed before the request went out, the server never saw it: it is sent
/// once more, on a fresh connection, as HTTP clients do.
async fn send_again_if_stale(
    sender: Sender,
    reused: bool,
    plan: &Plan,
    authority: &str,
    body: Payload,
) -> (Outcome, Option<Sender>) {
    let (outcome, back) = send(sender, plan, authority, body.clone()).await;
    if !reused || outcome != Outcome::NoAnswer(NoAnswer::Stale) {
        return (outcome, back);
    }
    match connect(authority).await {
        Ok(fresh) => send(fresh, plan, authority, body).await,
        Err(_) => (Outcome::NoAnswer(NoAnswer::Connect), None),
    }
}

/// The most recently used kept-alive connection that is still open; closed
/// ones (the server's idle timeout) are dropped on the way.
fn take_open(idle: &Mutex<Vec<Sender>>) -> Option<Sender> {
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    std::iter::from_fn(|| idle.pop()).find(|sender| !sender.is_closed())
}

fn record(
    recorder: &Arc<Mutex<Recorder>>,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
    offered: f64,
) {
    recorder
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(sent, done, outcome, offered);
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use hyper::service::service_fn;
    use hyper::Response;
    use tokio::net::TcpListener;

    use super::*;
    use crate::loadtest::{run_plan, Model};

    /// A server answering `{}` to every request; each connection is closed
    /// `lifetime` after it was accepted, as a proxy closes kept-alive
    /// connections at its idle timeout.
    async fn server(lifetime: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = service_fn(|_| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer);
                tokio::spawn(tokio::time::timeout(lifetime, conn));
            }
        });
        addr
    }

    fn plan(addr: SocketAddr, model: Model, duration: Duration) -> Plan {
        Plan {
            url: format!("http://{addr}/predict").parse().unwrap(),
            bodies: vec![Bytes::from_static(b"{}").into()],
            model,
            duration,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(5),
        }
    }

    /// A kept-alive connection the server closed is the client's to replace,
    /// not a failure of the server. Connections live 300 ms and requests
    /// come 1 s apart, so every kept connection is closed when reused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_the_server_closed_fail_no_request() {
        let addr = server(Duration::from_millis(300)).await;
        let once_a_second = Model::Open {
            from: 1.0,
            to: 1.0,
            max_in_flight: 8,
        };
        let plan = plan(addr, once_a_second, Duration::from_millis(2500));
        let report = run_plan(&plan, None).await.unwrap();
        assert!(report.requests >= 3, "{report:?}");
        assert_eq!(report.failed, 0, "{:?}", report.no_answer);
    }

    /// A request a closed kept-alive connection never carried goes out again
    /// on a fresh connection; on a fresh connection it is not tried twice.
    #[tokio::test]
    async fn a_request_a_closed_kept_connection_never_sent_goes_on_a_fresh_one() {
        let addr = server(Duration::from_secs(60)).await;
        let authority = addr.to_string();
        let plan = plan(
            addr,
            Model::Closed {
                users: 1,
                spawn_rate: 0.0,
            },
            Duration::ZERO,
        );
        for (reused, expected) in [
            (true, Outcome::Answered(200)),
            (false, Outcome::NoAnswer(NoAnswer::Stale)),
        ] {
            // A connection whose driver is gone: closed before anything
            // was written on it.
            let (closed, driver) = dial(&authority).await.unwrap();
            drop(driver);
            let body = plan.bodies[0].clone();
            let (outcome, _) = send_again_if_stale(closed, reused, &plan, &authority, body).await;
            assert_eq!(outcome, expected, "reused: {reused}");
        }
    }
}
