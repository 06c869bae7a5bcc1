//! Failures as HTTP answers: a status and `{"error", "message"}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::bindings::hadr::predictor::types::ErrorKind;
use crate::instance::CallError;

/// An error answer: status, machine-readable code and a message for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code.
    pub code: &'static str,
    /// What was wrong and what was expected.
    pub message: String,
    /// For 405: the method the route takes.
    pub allow: Option<&'static str>,
    /// The request's body was left unread, so its connection cannot carry
    /// another request: the answer says `Connection: close`.
    pub close: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
            close: false,
        }
    }

    /// The same answer, refused before the body was read (see [`Self::close`]).
    pub fn body_unread(self) -> Self {
        Self {
            close: true,
            ..self
        }
    }

    /// 405 with `Allow`.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this route takes {allow} only"),
            )
        }
    }

    /// 503 with `Retry-After`: nothing can take the request now.
    pub fn saturated() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_capacity",
            "every instance is at its load threshold (or has no working sandbox) and no standby with room is left; retry later",
        )
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = self.to_json();
        self.with_body(body)
    }

    /// The body of [`Self::into_response`]: `{"error": code, "message": message}`.
    pub(super) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: self.code,
            message: &self.message,
        })
        .expect("serialising an error cannot fail")
    }

    /// The response in the Open Inference Protocol's shape,
    /// `{"error": "<message>"}`, with the same status and headers.
    pub fn into_v2_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(&serde_json::json!({ "error": self.message }))
            .expect("serialising an error cannot fail");
        self.with_body(body)
    }

    fn with_body(self, body: Vec<u8>) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            // RFC 9110 §12.5.3: the codings a body may have.
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let (status, code) = status_and_code(&e);
        Self::new(status, code, e.summary())
    }
}

/// How a failed call is answered: a fault that happened twice is answered
/// as its second occurrence.
fn status_and_code(e: &CallError) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        CallError::Rejected(p) => match p.kind {
            ErrorKind::MalformedRequest => (S::BAD_REQUEST, "malformed_request"),
            ErrorKind::InvalidInput => (S::UNPROCESSABLE_ENTITY, "invalid_input"),
            ErrorKind::ModelFailure => (S::INTERNAL_SERVER_ERROR, "model_failure"),
            ErrorKind::Internal => (S::INTERNAL_SERVER_ERROR, "guest_error"),
        },
        CallError::Trap(_) => (S::INTERNAL_SERVER_ERROR, "instance_fault"),
        CallError::Deadline(_) | CallError::Unresponsive(_) => {
            (S::GATEWAY_TIMEOUT, "deadline_exceeded")
        }
        CallError::Instantiate(_) | CallError::Init(_) => {
            (S::INTERNAL_SERVER_ERROR, "instance_unavailable")
        }
        CallError::NotDrillable(_) => (S::CONFLICT, "not_drillable"),
        CallError::AlreadyArmed(_) => (S::CONFLICT, "fault_armed"),
        CallError::NoTensors => (S::NOT_IMPLEMENTED, "not_implemented"),
        CallError::Queued(_) => (S::SERVICE_UNAVAILABLE, "queue_timeout"),
        CallError::VersionGone(_) => (S::NOT_FOUND, "unknown_version"),
        CallError::BadAnswer(_) => (S::INTERNAL_SERVER_ERROR, "guest_error"),
        CallError::FaultedTwice { fault, .. } => status_and_code(fault),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fault_twice_is_answered_as_its_second_fault() {
        let twice = |fault| CallError::FaultedTwice {
            instance: "p1".into(),
            fault: Box::new(fault),
        };
        let e = ApiError::from(twice(CallError::Deadline(Duration::from_millis(20))));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
        );
        let e = ApiError::from(twice(CallError::Trap(
            "wasm trap: unreachable\nbacktrace".into(),
        )));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "instance_fault")
        );
        // The client is told the reason, not the guest's backtrace.
        assert_eq!(
            e.message,
            "the request failed on instance p1's canary and again on its version in force, \
             so it is not retried again: the instance trapped: wasm trap: unreachable"
        );
    }
}
