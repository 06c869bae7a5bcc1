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

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hadr_server::rollout::{DeployRequest, ModelRef, Targets};
use hadr_server::topology::example_beside;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host could not be reached.
    #[error("cannot reach the admin listener at {url}: {message} (is hadr-host serve running, and is --admin right?)")]
    Unreachable {
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
            ClientError::Unreachable { .. } => false,
        }
    }
}

/// A connection target and credentials for the admin listener.
pub struct AdminClient {
    /// e.g. `http://127.0.0.1:8001`.
    pub url: Uri,
    /// The bearer token.
    pub token: String,
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
        let unreachable = |message: String| ClientError::Unreachable {
            url: self.url.to_string(),
            message,
        };
        let authority = self
            .url
            .authority()
            .ok_or_else(|| ClientError::Input(format!("--admin {} has no host:port", self.url)))?
            .clone();
        let stream = TcpStream::connect(authority.as_str())
            .await
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
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
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
}

fn read_json(path: &Path) -> Result<serde_json::Value, ClientError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Input(format!("{} is not JSON: {e}", path.display())))
}
