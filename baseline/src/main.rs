//! The native baseline: hadr's predictor without WebAssembly.
//!
//! Same request and response code as the guest (`predict-core`), same tract
//! model, same hyper HTTP/1 server settings, but each request runs the model
//! directly on its own task. Benchmarks put hadr next to this in the same run
//! to measure what the sandbox costs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::Factoid;

/// The allocator hadr-host uses, so that the ratio measures the sandbox,
/// not the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serve one ONNX model over HTTP natively (no sandbox), for comparison with hadr.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The ONNX model ([batch, features] f32 input, probabilities output).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits.onnx"))]
    model: PathBuf,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Answer every `POST /predict` with the answer to a row of zeros,
    /// computed once at start, without parsing the body or running the
    /// model: the HTTP floor, the most any server on this HTTP stack can
    /// answer on these cores. Benchmarks run it to bound what is reachable.
    #[arg(long)]
    http_floor: bool,
}

struct Model {
    /// With `--http-floor`: the one answer given to every request.
    fixed: Option<Vec<u8>>,
    plan: Arc<TypedRunnableModel>,
    features: usize,
    probabilities: usize,
    name: String,
}

fn load(path: &PathBuf) -> anyhow::Result<Model> {
    let mut model = hadr_trees::onnx()
        .with_ignore_value_info(true)
        .model_for_path(path)
        .with_context(|| format!("loading {}", path.display()))?;
    let features = model
        .input_fact(0)?
        .shape
        .dims()
        .last()
        .and_then(|d| d.concretize())
        .and_then(|d| d.to_usize().ok())
        .context("the model's input needs a fixed feature count")?;
    let batch = model.symbols.sym("batch");
    model.set_input_fact(0, f32::fact(&[batch.to_dim(), features.to_dim()]).into())?;
    let typed = model.into_optimized()?;
    let outputs = typed.output_outlets()?.to_vec();
    let probabilities = outputs
        .iter()
        .position(|o| typed.outlet_label(*o) == Some("probabilities"))
        .unwrap_or(outputs.len() - 1);
    Ok(Model {
        fixed: None,
        plan: typed.into_runnable()?,
        features,
        probabilities,
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

fn predict(model: &Model, body: &[u8]) -> Result<Vec<u8>, (StatusCode, String)> {
    let batch = predict_core::parse_request(body, model.features).map_err(|e| match e {
        predict_core::RequestError::Malformed(m) => (StatusCode::BAD_REQUEST, m),
        predict_core::RequestError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
    })?;
    let fail = |e: TractError| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    let input = Tensor::from_shape(&[batch.rows, batch.features], &batch.data).map_err(fail)?;
    let outputs = model.plan.run(tvec!(input.into()));
    // As hadr does after each run: tract's kernels leave the vector
    // registers dirty, which slows every SSE instruction after them.
    hadr_trees::clean_vector_state();
    let outputs = outputs.map_err(fail)?;
    let probabilities = outputs[model.probabilities]
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(fail)?;
    let answer = predict_core::write_answer(
        probabilities,
        probabilities.len() / batch.rows,
        predict_core::Labels::Argmax,
    )
    .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    // The same work as the host adding who answered to an answer it wrote.
    let origin = predict_core::Origin {
        model: &model.name,
        instance: "native",
        version: "native",
    };
    Ok(answer.with_origin(origin))
}

/// The model's answer to `body`, or with `--http-floor` the fixed one.
fn answer(model: &Model, body: &[u8]) -> Result<Vec<u8>, (StatusCode, String)> {
    match &model.fixed {
        Some(fixed) => Ok(fixed.clone()),
        None => predict(model, body),
    }
}

async fn handle(
    model: Arc<Model>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if req.method() == Method::POST && req.uri().path() == "/predict" {
        match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(body) => match answer(&model, &body.to_bytes()) {
                Ok(out) => (StatusCode::OK, out),
                Err((status, message)) => (status, error_body(&message)),
            },
            Err(e) => (StatusCode::PAYLOAD_TOO_LARGE, error_body(&e.to_string())),
        }
    } else {
        (StatusCode::NOT_FOUND, error_body("POST /predict only"))
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"error": "error", "message": message}))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut model = load(&args.model)?;
    if args.http_floor {
        let zeros = serde_json::json!({ "inputs": [vec![0.0; model.features]] });
        let fixed = predict(&model, zeros.to_string().as_bytes())
            .map_err(|(_, message)| anyhow::anyhow!("answering a row of zeros: {message}"))?;
        model.fixed = Some(fixed);
    }
    let model = Arc::new(model);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build()?.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        let what = if args.http_floor {
            " (HTTP floor: no model)"
        } else {
            ""
        };
        println!(
            "native baseline ready: http://{}{what}",
            listener.local_addr()?
        );
        let mut http = http1::Builder::new();
        http.keep_alive(true);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let model = model.clone();
            let conn = http.serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| handle(model.clone(), req)),
            );
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    })
}
