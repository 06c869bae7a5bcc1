//! hadr's generic predictor guest: rows of numbers in, the model's outputs
//! out.
//!
//! The host calls `init` once per sandbox with the model's wasi-nn graph name
//! and its declared inputs and outputs; the guest loads the graph by name and
//! keeps one execution context for its lifetime. Each `predict` then parses
//! the JSON body (with `predict-core`, the same code the native baseline
//! runs), hands one `[rows, features]` f32 tensor to wasi-nn, and writes the
//! scores and labels back as JSON. The host adds who answered.
//!
//! Since its `predict` reads exactly predict-core's row format, it also
//! exports `rows`: the host then parses `/predict` bodies natively with that
//! same code and calls `predict-rows` with the rows as a wasi-nn tensor,
//! which this guest hands straight to `compute`, and writes the output
//! tensors it gets back as the same JSON. On that path no JSON is parsed or
//! written in WebAssembly, and neither rows nor scores are copied through
//! the guest's memory.
//!
//! It also exports the optional `chaos` interface, so drills can make it
//! fail for real, inside the sandbox.
//!
//! The guest can reach nothing but wasi:nn: the host gives it no directories,
//! no environment, no sockets.

// wit-bindgen's generated wasi:nn bindings take many arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "drillable-predictor-guest",
    path: "../../wit",
    generate_all,
});

#[path = "../../shared/alloc.rs"]
mod alloc;
#[path = "../../shared/batch.rs"]
mod batch;
#[path = "../../shared/tensors.rs"]
mod tensors;

use std::cell::{Cell, RefCell};

use exports::hadr::predictor::chaos::Fault;
use exports::hadr::predictor::rows::Scores as RowScores;
use hadr::predictor::types::{ErrorKind, Tensor as Named, TensorInfo};
use wasi::nn::graph::Graph;
use wasi::nn::inference::GraphExecutionContext;
use wasi::nn::tensor::{Tensor, TensorType};

/// What `init` sets up once and every `predict` uses.
struct Loaded {
    /// Values per input row: the last dimension of the model's input.
    features: usize,
    /// Each output's element type, as `init` was told: asking a tensor
    /// its type is a host call, and the types never change.
    output_types: Vec<(String, TensorType)>,
    /// Which outputs answer, by position, when `init` was told every
    /// output's name and type: then a call looks nothing up by name.
    picked: Option<Picked>,
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
        #[cfg(feature = "faulty")]
        refuse_to_start_in_window(&config.metadata)?;
        let features = row_width(&config.inputs)?;
        // A name two outputs share (unlabelled outputs of one node) says
        // nothing of which is which: those are asked.
        let unique = |name: &str| config.outputs.iter().filter(|o| o.name == name).count() == 1;
        let output_types: Vec<_> = config
            .outputs
            .iter()
            .filter(|o| unique(&o.name))
            .filter_map(|o| Some((o.name.clone(), onnx_type(&o.datatype)?)))
            .collect();
        let picked = (output_types.len() == config.outputs.len())
            .then(|| {
                let outputs: Vec<_> = output_types.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                Picked::from(&outputs)
            })
            .flatten();
        let (graph, context) = tensors::open(&config.model)?;
        LOADED.with(|l| {
            *l.borrow_mut() = Some(Loaded {
                features,
                output_types,
                picked,
                context,
                _graph: graph,
            })
        });
        Ok(())
    }

    fn predict(body: Vec<u8>) -> Result<Vec<u8>, PredictError> {
        let _call = alloc::call();
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

/// The wasi-nn type of an ONNX element type name (`None`: ask the tensor).
fn onnx_type(datatype: &str) -> Option<TensorType> {
    Some(match datatype {
        "float" => TensorType::Fp32,
        "int64" => TensorType::I64,
        "double" => TensorType::Fp64,
        "int32" => TensorType::I32,
        _ => return None,
    })
}

/// The feature count of a model with one `[batch, features]` input.
fn row_width(inputs: &[TensorInfo]) -> Result<usize, PredictError> {
    match inputs {
        [input] => match input.shape[..] {
            [_, features] if features > 0 => Ok(features as usize),
            _ => Err(error(
                ErrorKind::Internal,
                format!(
                    "this guest serves models with one [batch, features] input; `{}` has shape {:?}",
                    input.name, input.shape
                ),
            )),
        },
        _ => Err(error(
            ErrorKind::Internal,
            format!(
                "this guest serves models with one input; this one has {}",
                inputs.len()
            ),
        )),
    }
}

impl Loaded {
    fn predict(&self, body: &[u8]) -> Result<Vec<u8>, PredictError> {
        let batch = self.parse(body)?;
        let scores = self.run(batch.rows, &batch.data)?;
        scores.answer(0..batch.rows)
    }

    /// Runs the bodies of a merged batch as one model call (see
    /// [`batch::merged`]).
    fn predict_batch(&self, bodies: &[Vec<u8>]) -> Vec<Result<Vec<u8>, PredictError>> {
        let parsed = bodies.iter().map(|body| self.parse(body)).collect();
        batch::merged(parsed, |rows, data| self.run(rows, data), Scores::answer)
    }

    /// Reads one request body into rows (and, in the `faulty` fixture,
    /// commits the fault its sentinels ask for).
    fn parse(&self, body: &[u8]) -> Result<predict_core::Batch, PredictError> {
        let batch = predict_core::parse_request(body, self.features).map_err(|e| match e {
            predict_core::RequestError::Malformed(m) => error(ErrorKind::MalformedRequest, m),
            predict_core::RequestError::Invalid(m) => error(ErrorKind::InvalidInput, m),
        })?;
        self.look_at(&batch.data);
        Ok(batch)
    }

    /// The guest's look at the rows before the model runs them, wherever
    /// they were parsed: in the `faulty` fixture, each row may be a query
    /// of death.
    fn look_at(&self, _values: &[f32]) {
        #[cfg(feature = "faulty")]
        for row in _values.chunks(self.features) {
            // A query of death that hangs, whatever the deadline.
            if row[0] == HANG_SENTINEL {
                fail(Fault::Hang);
            }
            if row[0] == SLOW_SENTINEL {
                busy_for(std::time::Duration::from_millis(300));
            }
            if row[0] == BLOCK_SENTINEL {
                block_outside_wasm();
            }
            if row.iter().map(|v| *v as i64).sum::<i64>() % 3 == 0 {
                trap();
            }
        }
    }

    /// Rows the host parsed (`rows`), as the `[rows, features]` tensor it
    /// made: the same look and model call as [`Loaded::predict`], answered
    /// with the model's own output tensors for the host to write.
    fn predict_rows(&self, input: Tensor, rows: usize) -> Result<RowScores, PredictError> {
        // Only the `faulty` fixture reads the rows: a host call and a copy.
        #[cfg(feature = "faulty")]
        self.look_at(&bytemuck::pod_collect_to_vec::<u8, f32>(&input.data()));
        let outputs = self.compute(input)?;
        let picked = self.picked(&outputs)?;
        let mut tensors: Vec<Option<Tensor>> = outputs.into_iter().map(|(_, t)| Some(t)).collect();
        // One i64 output is handed over as it is (the host checks that it
        // holds a label per row); of several, the first that does.
        let labels = match &picked.labels[..] {
            [one] => tensors[*one].take(),
            several => several
                .iter()
                .find(|&&i| tensors[i].as_ref().is_some_and(|t| elements(t) == rows))
                .and_then(|&i| tensors[i].take()),
        };
        Ok(RowScores {
            values: tensors[picked.scores]
                .take()
                .expect("each output is taken once"),
            classifier: picked.classifier,
            labels,
        })
    }

    /// One model call on `rows` rows, answered from the outputs it picks.
    fn run(&self, rows: usize, data: &[f32]) -> Result<Scores, PredictError> {
        // wasm is little-endian, as wasi-nn's tensor bytes are: no conversion.
        let input = Tensor::new(
            &[rows as u32, self.features as u32],
            TensorType::Fp32,
            bytemuck::cast_slice(data),
        );
        let outputs = self.compute(input)?;
        self.picked(&outputs)?.scores(&outputs, rows)
    }

    /// One model call: every output wasi-nn gives.
    fn compute(&self, input: Tensor) -> Result<Vec<(String, Tensor)>, PredictError> {
        self.context
            .compute(vec![(String::new(), input)])
            .map_err(|e| tensors::nn_error(ErrorKind::ModelFailure, "running the model", e))
    }

    /// Which of `outputs` answer.
    fn picked(
        &self,
        outputs: &[(String, Tensor)],
    ) -> Result<std::borrow::Cow<'_, Picked>, PredictError> {
        match &self.picked {
            // wasi-nn returns the outputs in the order `init` was told them.
            Some(picked) if picked.outputs == outputs.len() => {
                Ok(std::borrow::Cow::Borrowed(picked))
            }
            _ => Picked::ask(outputs, &self.output_types).map(std::borrow::Cow::Owned),
        }
    }
}

/// A tensor's element count (a call into the host).
fn elements(tensor: &Tensor) -> usize {
    tensor.dimensions().iter().map(|d| *d as usize).product()
}

/// Which outputs answer, by position: the output named `probabilities`
/// (scikit-learn and LightGBM exports), else the first f32 output (a
/// regressor's values); and the model's own integer labels, from the first
/// i64 output that gives one per row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Picked {
    /// How many outputs the model gives.
    outputs: usize,
    /// The output whose values answer.
    scores: usize,
    /// Whether those are class probabilities (argmax gives the label).
    classifier: bool,
    /// The i64 outputs, in order: where labels may be.
    labels: Vec<usize>,
}

impl Picked {
    /// Picks from `outputs`, asking each output's type when `init` was not
    /// told it (`known` gives those it was, by output name).
    fn ask(
        outputs: &[(String, Tensor)],
        known: &[(String, TensorType)],
    ) -> Result<Self, PredictError> {
        // Each `ty` is a call into the host: ask each at most once.
        let typed: Vec<(&str, TensorType)> = outputs
            .iter()
            .map(|(name, t)| {
                let ty = known
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or_else(|| t.ty(), |(_, ty)| *ty);
                (name.as_str(), ty)
            })
            .collect();
        Picked::from(&typed).ok_or_else(|| {
            error(
                ErrorKind::ModelFailure,
                "the model gave no f32 output to answer with".into(),
            )
        })
    }

    /// From each output's name and type; `None` when no output is f32.
    fn from(outputs: &[(&str, TensorType)]) -> Option<Self> {
        let probabilities = outputs
            .iter()
            .position(|(name, ty)| *name == "probabilities" && *ty == TensorType::Fp32);
        let scores =
            probabilities.or_else(|| outputs.iter().position(|(_, ty)| *ty == TensorType::Fp32))?;
        Some(Self {
            outputs: outputs.len(),
            scores,
            classifier: probabilities.is_some(),
            labels: (0..outputs.len())
                .filter(|&i| outputs[i].1 == TensorType::I64)
                .collect(),
        })
    }

    /// The scores and labels of one call's `outputs` (each `data` is a call
    /// into the host: only those needed are asked).
    fn scores(&self, outputs: &[(String, Tensor)], rows: usize) -> Result<Scores, PredictError> {
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&outputs[self.scores].1.data());
        if rows == 0 || values.is_empty() || !values.len().is_multiple_of(rows) {
            return Err(error(
                ErrorKind::ModelFailure,
                format!("the model gave {} values for {rows} rows", values.len()),
            ));
        }
        let labels = self
            .labels
            .iter()
            .map(|&i| outputs[i].1.data())
            .find(|data| data.len() == rows * 8)
            .map(|data| bytemuck::pod_collect_to_vec(&data));
        Ok(Scores {
            width: values.len() / rows,
            values,
            classifier: self.classifier,
            labels,
        })
    }
}

impl batch::Rows for predict_core::Batch {
    fn rows(&self) -> usize {
        self.rows
    }

    fn values(&self) -> &[f32] {
        &self.data
    }
}

/// What the answer reports of a model's outputs.
struct Scores {
    /// The scores: `width` per row.
    values: Vec<f32>,
    width: usize,
    /// Whether they are class probabilities (argmax gives the label).
    classifier: bool,
    /// The model's own labels, one integer per row, if it gives them.
    labels: Option<Vec<i64>>,
}

impl Scores {
    /// The JSON answer for rows `rows` of the call; outputs JSON cannot
    /// carry (NaN, infinities) refuse the request, as the host's writer does.
    fn answer(&self, rows: std::ops::Range<usize>) -> Result<Vec<u8>, PredictError> {
        let values = &self.values[rows.start * self.width..rows.end * self.width];
        let given = self
            .labels
            .as_deref()
            .map(|labels| predict_core::Labels::Given(&labels[rows]));
        let labels = given.unwrap_or(if self.classifier {
            predict_core::Labels::Argmax
        } else {
            predict_core::Labels::Omitted
        });
        predict_core::write_response(values, self.width, labels)
            .map_err(|e| error(ErrorKind::InvalidInput, e.to_string()))
    }
}

fn error(kind: ErrorKind, message: String) -> PredictError {
    PredictError { kind, message }
}

impl exports::hadr::predictor::tensors::Guest for Predictor {
    fn infer(inputs: Vec<Named>) -> Result<Vec<Named>, PredictError> {
        let _call = alloc::call();
        if let Some(fault) = ARMED.with(Cell::take) {
            fail(fault);
        }
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.infer(inputs),
            None => Err(error(
                ErrorKind::Internal,
                "infer called before init".into(),
            )),
        })
    }
}

impl Loaded {
    /// The model's one input, as the host checked and converted it, straight
    /// to wasi-nn; every output back.
    fn infer(&self, inputs: Vec<Named>) -> Result<Vec<Named>, PredictError> {
        let [input] = &inputs[..] else {
            return Err(tensors::invalid(format!(
                "this model takes one input; the request has {}",
                inputs.len()
            )));
        };
        #[cfg(feature = "faulty")]
        if input.datatype == hadr::predictor::types::Datatype::Fp32 {
            self.look_at(&bytemuck::pod_collect_to_vec::<u8, f32>(&input.data));
        }
        let tensor = tensors::to_nn(input)?;
        tensors::run(&self.context, vec![(input.name.clone(), tensor)])
    }
}

impl exports::hadr::predictor::batch::Guest for Predictor {
    fn predict_batch(bodies: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, PredictError>> {
        let _call = alloc::call();
        if let Some(fault) = ARMED.with(Cell::take) {
            fail(fault);
        }
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.predict_batch(&bodies),
            None => bodies
                .iter()
                .map(|_| {
                    Err(error(
                        ErrorKind::Internal,
                        "predict-batch called before init".into(),
                    ))
                })
                .collect(),
        })
    }
}

impl exports::hadr::predictor::rows::Guest for Predictor {
    fn predict_rows(input: Tensor, rows: u32) -> Result<RowScores, PredictError> {
        let _call = alloc::call();
        if let Some(fault) = ARMED.with(Cell::take) {
            fail(fault);
        }
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.predict_rows(input, rows as usize),
            None => Err(error(
                ErrorKind::Internal,
                "predict-rows called before init".into(),
            )),
        })
    }
}

impl exports::hadr::predictor::chaos::Guest for Predictor {
    fn arm(fault: Fault) {
        ARMED.with(|a| a.set(Some(fault)));
    }
}

/// The `faulty` fixture spins forever on a row whose first value is this.
#[cfg(feature = "faulty")]
const HANG_SENTINEL: f32 = -7.0;

/// ... and blocks in a WASI host call (a sleep: `poll` on a monotonic clock)
/// on a row whose first value is this: outside WebAssembly, where epoch
/// deadlines cannot reach it.
#[cfg(feature = "faulty")]
const BLOCK_SENTINEL: f32 = -8.0;

/// ... and computes for 300 ms before it answers normally on a row whose
/// first value is this: a long call that succeeds.
#[cfg(feature = "faulty")]
const SLOW_SENTINEL: f32 = -9.0;

/// ... and refuses to start (`init` fails) while the wall clock is inside
/// the window its model's metadata names, `hadr.faulty.refuse-init` =
/// `"FROM..UNTIL"` in Unix milliseconds: sandboxes built then fail, as in a
/// host short of memory, and those built before or after work.
#[cfg(feature = "faulty")]
fn refuse_to_start_in_window(metadata: &[(String, String)]) -> Result<(), PredictError> {
    let window = metadata
        .iter()
        .find(|(key, _)| key == "hadr.faulty.refuse-init")
        .and_then(|(_, value)| value.split_once(".."))
        .and_then(|(from, until)| Some(from.parse::<u128>().ok()?..until.parse().ok()?));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    match window {
        Some(window) if window.contains(&now) => Err(error(
            ErrorKind::Internal,
            format!(
                "the faulty fixture refuses to start until {} ms",
                window.end
            ),
        )),
        _ => Ok(()),
    }
}

/// Spins in WebAssembly (reading the clock) for `how_long` of wall time.
#[cfg(feature = "faulty")]
fn busy_for(how_long: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < how_long {
        std::hint::black_box(());
    }
}

#[cfg(feature = "faulty")]
fn block_outside_wasm() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Executes `unreachable`: a wasm trap (an abort when built natively, for
/// unit tests).
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Fails the way a broken guest would: it never returns.
fn fail(fault: Fault) -> ! {
    match fault {
        Fault::Trap => trap(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_answer_before_any_other_f32_output() {
        let outputs = [
            ("variable", TensorType::Fp32),
            ("label", TensorType::I64),
            ("probabilities", TensorType::Fp32),
            ("other", TensorType::I64),
        ];
        let picked = Picked::from(&outputs).unwrap();
        assert_eq!(
            picked,
            Picked {
                outputs: 4,
                scores: 2,
                classifier: true,
                labels: vec![1, 3],
            }
        );
    }

    #[test]
    fn without_probabilities_the_first_f32_output_answers_as_values() {
        let outputs = [
            ("label", TensorType::I64),
            ("variable", TensorType::Fp32),
            ("b", TensorType::Fp32),
        ];
        let picked = Picked::from(&outputs).unwrap();
        assert_eq!(
            (picked.scores, picked.classifier, picked.labels),
            (1, false, vec![0])
        );
        // `probabilities` of another type is not taken for them.
        let outputs = [
            ("probabilities", TensorType::Fp64),
            ("variable", TensorType::Fp32),
        ];
        let picked = Picked::from(&outputs).unwrap();
        assert_eq!((picked.scores, picked.classifier), (1, false));
    }

    #[test]
    fn a_model_without_an_f32_output_has_nothing_to_answer_with() {
        assert_eq!(
            Picked::from(&[("label", TensorType::I64), ("d", TensorType::Fp64)]),
            None
        );
        assert_eq!(Picked::from(&[]), None);
    }
}
