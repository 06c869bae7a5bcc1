//! The client side of the admin listener: what `hadr-host deploy` and
//! `hadr-host rollback` send.
//!
//! A deploy uploads the module and model as content-addressed blobs
//! (`PUT /admin/blobs/<sha256>`; the host checks the digest), then posts
//! one [`DeployRequest`] naming them by digest.
//!
//! May use: `hadr_server`'s admin request types and the example beside a
//! model (`topology::example_beside`); no other tool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hadr_server::rollout::{DeployRequest, ModelRef, Targets};
use hadr_server::topology::example_beside;

/// How long connecting to an admin listener may take: a host that has not
/// accepted by then is not coming.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole admin call may take by default: a deploy uploads,
/// compiles and smoke-tests before it answers.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host could not be reached: nothing was sent.
    #[error("cannot reach the admin listener at {url}: {message}; nothing was sent, so it is as it was (is hadr-host serve running, and is --admin right?)")]
    Unreachable {
        /// The admin URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The request was sent but no whole answer came back: the host may
    /// have carried it out, or not.
    #[error("the admin listener at {url} was sent the request but gave no complete answer: {message}; its state is unknown (it may have switched): check its GET /admin/deployments before retrying")]
    Unanswered {
        /// The admin URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The host answered with an error.
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The host's explanation.
        message: String,
    },
    /// A local file could not be read or is wrong.
    #[error("{0}")]
    Input(String),
}

impl ClientError {
    /// Whether the operator's request was at fault (a 4xx, or a bad file).
    pub fn is_operator_error(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => status.is_client_error(),
            ClientError::Input(_) => true,
            ClientError::Unreachable { .. } | ClientError::Unanswered { .. } => false,
        }
    }
}

/// A connection target and credentials for the admin listener.
pub struct AdminClient {
    /// e.g. `http://127.0.0.1:8001`.
    pub url: Uri,
    /// The bearer token.
    pub token: String,
    /// How long one call may take, from connecting to the answer's last
    /// byte ([`CALL_TIMEOUT`] unless told).
    pub timeout: Duration,
}

/// What to deploy, as the command line gives it.
pub struct DeployPlan {
    /// A guest module file.
    pub module: Option<PathBuf>,
    /// A model: the name it is served as and its file.
    pub model: Option<(String, PathBuf)>,
    /// Which instances.
    pub to: Targets,
    /// Canary share in percent.
    pub canary: Option<u8>,
    /// A request body for the smoke test.
    pub example: Option<PathBuf>,
    /// A canary's error-rate threshold.
    pub max_error_rate: Option<f64>,
    /// A canary's minimum calls before the threshold applies.
    pub min_calls: Option<u64>,
}

impl AdminClient {
    /// Uploads what `plan` names, then asks for the deploy.
    pub async fn deploy(&self, plan: &DeployPlan) -> Result<serde_json::Value, ClientError> {
        let module = match &plan.module {
            Some(path) => Some(self.upload(path).await?),
            None => None,
        };
        let model = match &plan.model {
            Some((name, path)) => Some(ModelRef {
                name: name.clone(),
                digest: self.upload(path).await?,
            }),
            None => None,
        };
        let example = match (&plan.example, &plan.model) {
            (Some(path), _) => Some(read_json(path)?),
            (None, Some((_, model))) => {
                example_beside(model).and_then(|b| serde_json::from_slice(&b).ok())
            }
            (None, None) => None,
        };
        let request = DeployRequest {
            module,
            model,
            to: plan.to.clone(),
            canary: plan.canary,
            example,
            max_error_rate: plan.max_error_rate,
            min_calls: plan.min_calls,
        };
        let body = serde_json::to_vec(&request).expect("a request serialises");
        self.call(Method::POST, "/admin/deploy", body.into()).await
    }

    /// `POST` to an admin route with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_vec(&body).expect("JSON serialises");
        self.call(Method::POST, path, body.into()).await
    }

    /// `GET` an admin route (`/admin/deployments`).
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// Uploads a file as a blob; returns its digest.
    async fn upload(&self, path: &Path) -> Result<String, ClientError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", path.display())))?;
        let digest = hadr_state::blobs::digest(&bytes);
        self.call(Method::PUT, &format!("/admin/blobs/{digest}"), bytes.into())
            .await?;
        Ok(digest)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<serde_json::Value, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let url = || self.url.to_string();
        let unreachable = |message: String| ClientError::Unreachable {
            url: url(),
            message,
        };
        let authority = self
            .url
            .authority()
            .ok_or_else(|| ClientError::Input(format!("--admin {} has no host:port", self.url)))?
            .clone();
        let connect = CONNECT_TIMEOUT.min(self.timeout);
        let stream = tokio::time::timeout(connect, TcpStream::connect(authority.as_str()))
            .await
            .map_err(|_| unreachable(format!("no connection within {connect:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(body))
            .map_err(|e| ClientError::Input(e.to_string()))?;
        // From here on the host may have the request: a failure is no
        // longer "cannot reach".
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            Ok::<_, hyper::Error>((status, response.into_body().collect().await?.to_bytes()))
        };
        let unanswered = |message: String| ClientError::Unanswered {
            url: url(),
            message,
        };
        let (status, bytes) = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| unanswered(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| unanswered(e.to_string()))?;
        answer(status, &bytes)
    }
}

/// An admin answer as JSON, or the host's refusal.
fn answer(status: StatusCode, bytes: &[u8]) -> Result<serde_json::Value, ClientError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into()));
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(ClientError::Refused { status, message })
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, ClientError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Input(format!("{} is not JSON: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn client(addr: std::net::SocketAddr, timeout: Duration) -> AdminClient {
        AdminClient {
            url: format!("http://{addr}").parse().unwrap(),
            token: "t".into(),
            timeout,
        }
    }

    /// Fails the test instead of hanging it when a call is not bounded.
    async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call was not bounded")
    }

    /// A listener that takes one connection, reads up to `bytes` of it (or
    /// until the client stops) and hangs up without a word.
    async fn stand_in(bytes: u64) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = tokio::io::copy(&mut stream.take(bytes), &mut tokio::io::sink()).await;
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_host_that_never_answers_is_given_up_on_with_its_state_unknown() {
        // Reads everything, never answers.
        let (addr, silent) = stand_in(256 << 10).await;
        let timeout = Duration::from_millis(300);
        let e = bounded(client(addr, timeout).get("/admin/deployments"))
            .await
            .unwrap_err();
        silent.abort();
        assert!(matches!(e, ClientError::Unanswered { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("its state is unknown"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_no_unreachable_host() {
        // Reads the request's first bytes, then hangs up without answering.
        let (addr, closing) = stand_in(16).await;
        let e = bounded(client(addr, CALL_TIMEOUT).post("/admin/rollback", serde_json::json!({})))
            .await
            .unwrap_err();
        closing.await.unwrap();
        assert!(matches!(e, ClientError::Unanswered { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_and_nothing_was_sent() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = bounded(client(addr, CALL_TIMEOUT).get("/admin/deployments"))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("nothing was sent"), "{e}");
    }
}
