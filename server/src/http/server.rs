//! Accept loops: one per listener, HTTP/1.1 with keep-alive.
//!
//! Each connection runs on its own task, admitted by its listener group's
//! [`Admission`](super::admission::Admission): the public listeners share
//! `--max-connections` (fitted under the open-file limit at start), the admin
//! listener has its own small cap, and each client address may hold at most
//! `--max-connections-per-client` of a group's places. At the cap a loop
//! waits for a place before it accepts again: clients wait in the kernel's
//! backlog, so memory stays bounded by connections × `--max-body`.
//!
//! A connection ends when its client completes no request headers for
//! `--header-timeout` (idle keep-alive included: see [`super::heads`] for
//! why hadr counts instead of using hyper's timer), or reads nothing of an
//! answer for `--write-timeout`. hyper answers one request at a time and
//! reads ahead at most its read buffer, so pipelining cannot queue unbounded
//! work. A refused admin request (401) closes its connection, and at the
//! admin cap a newcomer closes the oldest connection that never carried an
//! authorized request (see [`super::admission`]). On shutdown
//! the loop stops accepting and every open connection is asked to close
//! after its in-flight request, bounded by a grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::admission::{Admission, Place, WriteDeadline};
use super::api;
use super::app::{Connections, Service};
use super::error::ApiError;
use super::heads::Heads;
use super::unparsed::Explained;
use crate::shutdown::Shutdown;

/// Serves `listener` until `shutdown` fires, then lets open connections
/// finish their in-flight requests for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    connections: Connections,
    service: Service,
    shutdown: Shutdown,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // No timer: hyper's header timeout would be on by default with one
    // (30 s); `Heads` does that job.
    http.keep_alive(true);
    let admission: &Arc<Admission> = &connections.admission;
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and
                    // say so at most once a second.
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_warning = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Some(share) = admission.share_evicting(client.ip()).await else {
            tracing::debug!(%client, "connection closed: its address holds its share of connections");
            continue;
        };
        // At the cap, wait for a place before serving, and before accepting
        // again: further clients wait in the kernel's backlog.
        let place = tokio::select! {
            place = admission.place(share) => place,
            _ = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let heads = Arc::new(Heads::default());
        let io = TokioIo::new(Explained::new(WriteDeadline::new(
            stream,
            connections.write_timeout,
            heads.clone(),
        )));
        let service = service.clone();
        let handler = {
            let heads = heads.clone();
            let proof = place.proof();
            service_fn(move |mut req| {
                let in_flight = heads.begin();
                if let Some(proof) = &proof {
                    req.extensions_mut().insert(proof.clone());
                }
                let answer = dispatch(service.clone(), req);
                async move {
                    let _in_flight = in_flight; // until the answer is ready
                    answer.await
                }
            })
        };
        // The connection runs on a task of its own and a watchdog closes it:
        // the connection's task wakes at every read and write, and polling
        // the idle timer (and, on the admin listener, the eviction notice)
        // there too cost every request; the watchdog wakes only when one of
        // them fires or the connection ends.
        let serving = tokio::spawn(graceful.watch(http.serve_connection(io, handler)));
        let watchdog = Watchdog {
            serving,
            heads,
            place,
            header_timeout: connections.header_timeout,
            client,
        };
        tokio::spawn(watchdog.run());
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

/// Closes one connection from beside it ([`Watchdog::run`]).
struct Watchdog {
    /// The connection's task (drained on shutdown by hyper-util's
    /// `GracefulShutdown`).
    serving: tokio::task::JoinHandle<hyper::Result<()>>,
    /// Its requests' progress: closed after `header_timeout` without any.
    heads: Arc<Heads>,
    /// Its admission place: given back once the connection is closed, so
    /// the cap counts open sockets.
    place: Place,
    /// `--header-timeout`.
    header_timeout: Duration,
    /// Who it serves, for the logs.
    client: std::net::SocketAddr,
}

impl Watchdog {
    /// Waits for the connection to end. Closes it (aborts its task) when its
    /// client sent no request headers for `header_timeout` or a newcomer at
    /// the cap evicted it.
    ///
    /// The checks run beside the connection, not between its polls: a
    /// request whose headers complete (or that proves its connection) in
    /// the instant between a check and the abort is dropped with the
    /// connection, as one that came just after would find it closed.
    async fn run(mut self) {
        let (header_timeout, client) = (self.header_timeout, self.client);
        let ended = tokio::select! {
            biased;
            ended = &mut self.serving => Some(ended),
            () = self.heads.idle(header_timeout) => {
                tracing::debug!(%client, "connection closed: no request headers for {header_timeout:?}");
                None
            }
            () = self.place.evicted() => {
                tracing::debug!(%client, "connection closed: a newcomer at the cap took the place it held without authorizing");
                None
            }
        };
        let ended = match ended {
            Some(ended) => ended,
            None => {
                self.serving.abort();
                (&mut self.serving).await
            }
        };
        match ended {
            Ok(Err(e)) => tracing::debug!(%client, error = %e, "connection ended with an error"),
            Err(e) if e.is_panic() => {
                tracing::error!(%client, error = %e, "a connection's task panicked")
            }
            Ok(Ok(())) | Err(_) => {}
        }
    }
}

/// Sends a request to its listener's app: the admin and public routes never
/// see each other's requests.
async fn dispatch(
    service: Service,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    // HEAD is GET without the body (RFC 9110 9.3.2), which balancers and
    // probes use: routed as GET, and hyper, which parsed a HEAD, sends the
    // headers only.
    if req.method() == hyper::Method::HEAD {
        *req.method_mut() = hyper::Method::GET;
    }
    if let Err(refused) = check_framing(&req) {
        return Ok(refused.body_unread().into_response());
    }
    match service {
        Service::Admin(app) => {
            let response = Box::pin(super::admin::handle(&app, req)).await;
            let mut response = response.unwrap_or_else(ApiError::into_response);
            if response.status() == hyper::StatusCode::UNAUTHORIZED {
                // Whoever lacks the token gets one answer per connection: it
                // cannot keep an operator's place with pipelined requests.
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok(response)
        }
        Service::Public(app, scope) => {
            // The Open Inference Protocol under `/v2`, hadr's own routes elsewhere.
            let path = req.uri().path();
            if path == "/v2" || path.starts_with("/v2/") {
                // Boxed, like the admin app: inline, its future would set
                // the size of every request's, which is moved per request.
                return Ok(Box::pin(super::v2::handle(&app, &scope, req)).await);
            }
            api::handle(app, scope, req).await
        }
    }
}

/// Refuses a request hyper lets through that RFC 9112 says a server must
/// refuse (400, and the connection closed: its framing is in doubt): an
/// HTTP/1.1 request without exactly one `Host` (§3.2), or a body chunked
/// more than once (§6.1), which a proxy in front may frame differently
/// (request smuggling).
fn check_framing(req: &hyper::Request<hyper::body::Incoming>) -> Result<(), ApiError> {
    let refuse = |message: &str| {
        Err(ApiError::new(
            hyper::StatusCode::BAD_REQUEST,
            "malformed_request",
            message,
        ))
    };
    let hosts = req.headers().get_all(hyper::header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == hyper::Version::HTTP_11) {
        return refuse(
            "a request carries one Host header, which HTTP/1.1 requires (RFC 9112 §3.2)",
        );
    }
    let chunked = req
        .headers()
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .filter(|c| c.trim().eq_ignore_ascii_case("chunked"))
        .count();
    if chunked > 1 {
        return refuse("the body is chunked more than once (RFC 9112 §6.1)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The size of the future `f` returns.
    fn future_size<F>(_: &impl Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A request's future is moved (memcpy'd) at every level of async fns
    /// above the sandbox call, and rustc keeps an async fn's arguments both
    /// in its caller's state and its own (rust-lang/rust#62958).
    /// `api::handle`'s was 5,192 bytes before the sandbox call and the rare
    /// paths were boxed, 4,072 with only the rare paths boxed, 2,496 then.
    /// hyper moves each request's future once more, into its connection's
    /// state: the admin and `/v2` handlers are boxed so that they do not set
    /// its size. With `/v2` inline it was 3,864 bytes; now it is
    /// `api::handle`'s and `dispatch`'s arguments, 3,272.
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "sized in release, the test suite's profile"
    )]
    fn a_request_future_stays_small() {
        let size = future_size(&|| super::api::handle(unreachable(), unreachable(), unreachable()));
        assert!(size <= 3072, "api::handle's future is {size} bytes");
        let size = future_size(&|| super::dispatch(unreachable(), unreachable()));
        assert!(size <= 3072 + 512, "dispatch's future is {size} bytes");
    }

    /// A value of any type, for a closure that is sized and never called.
    fn unreachable<T>() -> T {
        unreachable!("only the closure's return type is used")
    }
}
