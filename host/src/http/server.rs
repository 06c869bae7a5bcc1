//! Accept loops: one per listener, HTTP/1.1 with keep-alive.
//!
//! Each connection runs on its own task. Open connections are capped
//! (`--max-connections`, shared by the public listeners; the admin listener
//! has its own small cap, so a flood cannot lock the operator out): at the
//! cap a loop stops
//! accepting until one closes, and further clients wait in the kernel's
//! backlog, so memory stays bounded by connections × `--max-body`. On
//! shutdown the loop stops accepting and every open connection is asked to
//! close after its in-flight request, bounded by a grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::api;
use super::app::{App, Target};
use super::call::Scope;
use super::error::ApiError;
use crate::shutdown::Shutdown;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` fires, then lets open connections
/// finish their in-flight requests for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    target: Target,
    shutdown: Shutdown,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        // Wait for a place before serving, and before accepting again.
        let places = match target {
            Target::Admin => &app.admin_connections,
            Target::Router | Target::Instance(_) => &app.connections,
        };
        let permit = tokio::select! {
            permit = places.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            _ = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let target = target.clone();
        let service = service_fn(move |req| dispatch(app.clone(), target.clone(), req));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

/// Sends a request to the admin routes or the public ones, by listener: the
/// two never see each other's requests.
async fn dispatch(
    app: Arc<App>,
    target: Target,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    match target {
        Target::Admin => {
            let response = super::admin::handle(&app, req).await;
            Ok(response.unwrap_or_else(ApiError::into_response))
        }
        Target::Router => public(app, Scope::Router, req).await,
        Target::Instance(instance) => public(app, Scope::Instance(instance), req).await,
    }
}

/// A public listener's request: the Open Inference Protocol under `/v2`,
/// hadr's own routes elsewhere.
async fn public(
    app: Arc<App>,
    scope: Scope,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let path = req.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        return Ok(super::v2::handle(&app, &scope, req).await);
    }
    api::handle(app, scope, req).await
}
