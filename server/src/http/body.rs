//! Reading a request body within a byte limit and a time limit: the one way
//! every listener reads bodies.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Request, StatusCode};

use super::error::ApiError;

/// How long a client may take to send its request body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A body limit and the flag that sets it (named in the 413 answer).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Largest body, in bytes.
    pub bytes: usize,
    /// The option an operator changes it with, e.g. `--max-body`.
    pub flag: &'static str,
}

/// Reads the whole body, refusing (413) anything over the limit before
/// reading it when `Content-Length` says so, and as soon as it passes the
/// limit otherwise; a body slower than [`BODY_TIMEOUT`] gets 408. A body in
/// a coding hadr does not decode is refused once read (see [`check_codings`]).
pub async fn read(req: Request<Incoming>, limit: Limit) -> Result<Bytes, ApiError> {
    let coded = check_codings(req.headers()).err();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.bytes as u64) {
        return Err(too_large(limit));
    }
    let collect = Limited::new(req.into_body(), limit.bytes).collect();
    let Some(read) = crate::bounded(BODY_TIMEOUT, collect).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        ));
    };
    match (read, coded) {
        (Ok(_), Some(refused)) => Err(refused),
        (Ok(collected), None) => Ok(collected.to_bytes()),
        (Err(e), _) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        (Err(e), _) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Refuses a body hadr would otherwise take for garbled JSON: a content
/// coding (`gzip`, …: 415 with `Accept-Encoding: identity`, RFC 9110
/// §15.5.16), or a transfer coding before `chunked`, which hyper lets
/// through with only the chunking undone (501, as RFC 9112 §6.1 asks of a
/// server that does not know a coding; hyper itself refuses other layouts).
/// The body, within the limit, is read first: answering with it unread
/// means closing the connection, and a close with unread bytes makes the
/// kernel reset it, so the client might never see the answer.
fn check_codings(headers: &HeaderMap) -> Result<(), ApiError> {
    let codings = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
    };
    if let Some(coding) = codings(CONTENT_ENCODING).find(|c| !c.eq_ignore_ascii_case("identity")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("the body is `{coding}`-encoded (Content-Encoding); send it uncompressed"),
        ));
    }
    if let Some(coding) = codings(TRANSFER_ENCODING).find(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_encoding",
            format!("the body has transfer coding `{coding}`; hadr takes `chunked` only"),
        ));
    }
    Ok(())
}

/// `error`, to be answered once `req`'s body is read (within `limit`),
/// for a request refused before its body mattered (no such route, a wrong
/// method, an unknown model): answered with the body unread, the connection
/// would close, and closing a socket with unread bytes resets it, so the
/// client could lose the answer. A body the limit does not take is left
/// unread, and the connection closes after the answer; so is one the client
/// holds back for `Expect: 100-continue` (nothing is in flight to reset, and
/// reading it would ask for the upload only to drop it).
pub async fn refuse(req: Request<Incoming>, limit: Limit, error: ApiError) -> ApiError {
    let waits_to_send = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_to_send {
        return error.body_unread();
    }
    match read(req, limit).await {
        Ok(_) => error,
        Err(_) => error.body_unread(),
    }
}

fn too_large(limit: Limit) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than the limit of {} bytes ({})",
            limit.bytes, limit.flag
        ),
    )
    .body_unread()
}
