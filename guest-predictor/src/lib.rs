//! hadr's predictor guest.
//!
//! One instance serves one topology entry. The host calls `init` once with the
//! instance's name, its model's wasi-nn graph name and feature count; the guest
//! loads the graph by name and keeps one execution context for its lifetime.
//! Each `predict` then parses the JSON body (with `predict-core`, the same
//! code the native baseline runs), hands one `[rows, features]` f32 tensor to
//! wasi-nn, and writes the probabilities and argmax labels back as JSON.
//!
//! The guest can reach nothing but wasi:nn: the host gives it no directories,
//! no environment, no sockets.

wit_bindgen::generate!({
    world: "predictor-guest",
    path: "../wit",
    generate_all,
});

use std::cell::{Cell, RefCell};

use exports::hadr::predictor::chaos::Fault;
use hadr::predictor::types::ErrorKind;
use wasi::nn::errors::Error as NnError;
use wasi::nn::graph::{self, Graph};
use wasi::nn::inference::GraphExecutionContext;
use wasi::nn::tensor::{Tensor, TensorType};

/// What `init` sets up once and every `predict` uses.
struct Loaded {
    config: InstanceConfig,
    context: GraphExecutionContext,
    // Keeps the graph alive for as long as its execution context.
    _graph: Graph,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
    static ARMED: Cell<Option<Fault>> = const { Cell::new(None) };
}

struct Predictor;

impl Guest for Predictor {
    fn init(config: InstanceConfig) -> Result<(), PredictError> {
        let graph = graph::load_by_name(&config.model)
            .map_err(|e| nn_error(ErrorKind::Internal, "loading the model", e))?;
        let context = graph
            .init_execution_context()
            .map_err(|e| nn_error(ErrorKind::Internal, "creating an execution context", e))?;
        LOADED.with(|l| {
            *l.borrow_mut() = Some(Loaded {
                config,
                context,
                _graph: graph,
            })
        });
        Ok(())
    }

    fn rename(instance: String) {
        LOADED.with(|l| {
            if let Some(loaded) = l.borrow_mut().as_mut() {
                loaded.config.instance = instance;
            }
        });
    }

    fn predict(body: Vec<u8>) -> Result<Vec<u8>, PredictError> {
        if let Some(fault) = ARMED.with(Cell::take) {
            fail(fault);
        }
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.predict(&body),
            None => Err(error(
                ErrorKind::Internal,
                "predict called before init".into(),
            )),
        })
    }
}

impl Loaded {
    fn predict(&self, body: &[u8]) -> Result<Vec<u8>, PredictError> {
        let features = self.config.features as usize;
        let batch = predict_core::parse_request(body, features).map_err(|e| match e {
            predict_core::RequestError::Malformed(m) => error(ErrorKind::MalformedRequest, m),
            predict_core::RequestError::Invalid(m) => error(ErrorKind::InvalidInput, m),
        })?;
        #[cfg(feature = "faulty")]
        if batch.data.iter().map(|v| *v as i64).sum::<i64>() % 3 == 0 {
            core::arch::wasm32::unreachable();
        }
        // wasm is little-endian, as wasi-nn's tensor bytes are: no conversion.
        let input = Tensor::new(
            &[batch.rows as u32, features as u32],
            TensorType::Fp32,
            bytemuck::cast_slice(&batch.data),
        );
        let outputs = self
            .context
            .compute(vec![(String::new(), input)])
            .map_err(|e| nn_error(ErrorKind::ModelFailure, "running the model", e))?;
        let (probabilities, classes) = probabilities(outputs, batch.rows)?;
        let origin = predict_core::Origin {
            model: &self.config.model,
            instance: &self.config.instance,
            version: &self.config.version,
        };
        Ok(predict_core::write_response(
            origin,
            &probabilities,
            classes,
        ))
    }
}

/// Picks the class probabilities among the model's outputs: the one named
/// `probabilities` (scikit-learn exports), else the first f32 output. Labels
/// are recomputed as the argmax, since some exported classifiers' own `label`
/// output cannot be trusted.
fn probabilities(
    outputs: Vec<(String, Tensor)>,
    rows: usize,
) -> Result<(Vec<f32>, usize), PredictError> {
    let tensor = outputs
        .iter()
        .find(|(name, t)| name == "probabilities" && t.ty() == TensorType::Fp32)
        .or_else(|| outputs.iter().find(|(_, t)| t.ty() == TensorType::Fp32))
        .map(|(_, t)| t)
        .ok_or_else(|| {
            error(
                ErrorKind::ModelFailure,
                "the model gave no f32 output to read probabilities from".into(),
            )
        })?;
    let data = tensor.data();
    let values: Vec<f32> = match bytemuck::try_cast_slice(&data) {
        Ok(aligned) => aligned.to_vec(),
        Err(_) => bytemuck::pod_collect_to_vec(&data),
    };
    if rows == 0 || !values.len().is_multiple_of(rows) {
        return Err(error(
            ErrorKind::ModelFailure,
            format!("the model gave {} values for {rows} rows", values.len()),
        ));
    }
    let classes = values.len() / rows;
    Ok((values, classes))
}

fn error(kind: ErrorKind, message: String) -> PredictError {
    PredictError { kind, message }
}

fn nn_error(kind: ErrorKind, doing: &str, e: NnError) -> PredictError {
    error(
        kind,
        format!("wasi-nn failed {doing}: {:?}: {}", e.code(), e.data()),
    )
}

impl exports::hadr::predictor::chaos::Guest for Predictor {
    fn arm(fault: Fault) {
        ARMED.with(|a| a.set(Some(fault)));
    }
}

/// Fails the way a broken guest would: it never returns.
fn fail(fault: Fault) -> ! {
    match fault {
        Fault::Trap => core::arch::wasm32::unreachable(),
        Fault::Hang => loop {
            std::hint::black_box(());
        },
        Fault::Oom => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
    }
}

export!(Predictor);
