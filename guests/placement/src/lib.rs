//! The article's predictor as a hadr guest.
//!
//! The article's Flask predictor (`predictors/predict1.py`) takes a list of
//! candidate records, turns them into a feature vector with a scikit-learn
//! `DictVectorizer`, asks a random forest for `predict_proba(X)[:, 1]`, and
//! answers `{"Placement_Probability": p, "Placement": p > 0.5}`. This guest
//! does the same inside the sandbox, so the host never runs model-specific
//! code:
//!
//! - `init` reads the vectoriser's vocabulary from the model file's own
//!   metadata (`hadr.dict_vectorizer`, written by `models/placement.py`), so
//!   a new model with a new vocabulary is deployed without a new guest.
//! - `predict` vectorises each record as `DictVectorizer.transform` does
//!   (strings one-hot as `key=value`, numbers as they are, unknown keys and
//!   values ignored, missing keys 0), runs the forest through wasi-nn, and
//!   answers with the article's fields.
//!
//! - `infer` (the Open Inference Protocol, through the host's `/v2` routes)
//!   takes either the model's own feature rows (`float_input`, FP32) or
//!   candidate records: a BYTES input named `records`, one JSON record per
//!   element, vectorised as `predict` does. It answers with the model's
//!   outputs (`label`, `probabilities`).
//!
//! It has no `chaos` export (see docs/guests.md): drills inject faults from
//! the host.

// wit-bindgen's generated wasi:nn bindings take many arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "batch-tensor-predictor-guest",
    path: "../../wit",
    generate_all,
});

#[path = "../../shared/alloc.rs"]
mod alloc;
#[path = "../../shared/batch.rs"]
mod batch;
mod records;
#[path = "../../shared/tensors.rs"]
mod tensors;

use std::cell::RefCell;

use hadr::predictor::types::{Datatype, ErrorKind, Tensor as Named};
use records::{Records, Vocabulary};
use wasi::nn::graph::Graph;
use wasi::nn::inference::GraphExecutionContext;
use wasi::nn::tensor::{Tensor, TensorType};

/// The metadata key holding the vectoriser's vocabulary.
const VECTORIZER_KEY: &str = "hadr.dict_vectorizer";
/// The metadata key naming the class whose probability is reported.
const POSITIVE_CLASS_KEY: &str = "hadr.positive_class";

/// What `init` sets up once and every `predict` uses.
struct Loaded {
    vocabulary: Vocabulary,
    /// The column of `probabilities` that is `Placement_Probability`.
    positive_class: usize,
    context: GraphExecutionContext,
    // Keeps the graph alive for as long as its execution context.
    _graph: Graph,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

struct Placement;

impl Guest for Placement {
    fn init(config: InstanceConfig) -> Result<(), PredictError> {
        let meta = |key: &str| {
            config
                .metadata
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let vocabulary = meta(VECTORIZER_KEY)
            .ok_or_else(|| {
                internal(format!(
                    "the model `{}` carries no `{VECTORIZER_KEY}` metadata: export it with models/placement.py",
                    config.model
                ))
            })
            .and_then(|json| Vocabulary::from_json(json).map_err(internal))?;
        let width = config.inputs.first().and_then(|i| i.shape.last().copied());
        if config.inputs.len() != 1 || width != Some(vocabulary.len() as i64) {
            return Err(internal(format!(
                "the vectoriser makes rows of {} features, but the model's inputs are {:?}",
                vocabulary.len(),
                config
                    .inputs
                    .iter()
                    .map(|i| (&i.name, &i.shape))
                    .collect::<Vec<_>>()
            )));
        }
        let positive_class = match meta(POSITIVE_CLASS_KEY) {
            None => 1,
            Some(v) => v.parse().map_err(|_| {
                internal(format!(
                    "`{POSITIVE_CLASS_KEY}` is {v:?}, not a class index"
                ))
            })?,
        };
        let (graph, context) = tensors::open(&config.model)?;
        LOADED.with(|l| {
            *l.borrow_mut() = Some(Loaded {
                vocabulary,
                positive_class,
                context,
                _graph: graph,
            })
        });
        Ok(())
    }

    fn predict(body: Vec<u8>) -> Result<Vec<u8>, PredictError> {
        let _call = alloc::call();
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.predict(&body),
            None => Err(internal("predict called before init".into())),
        })
    }
}

/// The BYTES input `infer` reads as candidate records.
const RECORDS_INPUT: &str = "records";

impl exports::hadr::predictor::batch::Guest for Placement {
    fn predict_batch(bodies: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, PredictError>> {
        let _call = alloc::call();
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.predict_batch(&bodies),
            None => bodies
                .iter()
                .map(|_| Err(internal("predict-batch called before init".into())))
                .collect(),
        })
    }
}

impl exports::hadr::predictor::tensors::Guest for Placement {
    fn infer(inputs: Vec<Named>) -> Result<Vec<Named>, PredictError> {
        let _call = alloc::call();
        LOADED.with(|l| match l.borrow().as_ref() {
            Some(loaded) => loaded.infer(inputs),
            None => Err(internal("infer called before init".into())),
        })
    }
}

impl Loaded {
    /// Feature rows go to the model as they are; records are vectorised.
    fn infer(&self, inputs: Vec<Named>) -> Result<Vec<Named>, PredictError> {
        let [input] = &inputs[..] else {
            return Err(tensors::invalid(format!(
                "give one input: the model's feature rows, or `{RECORDS_INPUT}` (BYTES, one JSON record each); the request has {}",
                inputs.len()
            )));
        };
        if input.datatype != Datatype::Bytes {
            let tensor = tensors::to_nn(input)?;
            return tensors::run(&self.context, vec![(input.name.clone(), tensor)]);
        }
        if input.name != RECORDS_INPUT {
            return Err(tensors::invalid(format!(
                "a BYTES input must be named `{RECORDS_INPUT}` (one JSON record per element), not `{}`",
                input.name
            )));
        }
        let records = element_records(&input.data, &self.vocabulary)?;
        tensors::run(
            &self.context,
            vec![(String::new(), self.rows(records.rows, &records.data))],
        )
    }

    fn predict(&self, body: &[u8]) -> Result<Vec<u8>, PredictError> {
        let records = self.parse(body)?;
        answer(&self.probabilities(records.rows, &records.data)?)
    }

    /// Scores the records of a merged batch in one call of the model (see
    /// [`batch::merged`]).
    fn predict_batch(&self, bodies: &[Vec<u8>]) -> Vec<Result<Vec<u8>, PredictError>> {
        let parsed = bodies.iter().map(|body| self.parse(body)).collect();
        batch::merged(
            parsed,
            |rows, data| self.probabilities(rows, data),
            |probabilities: &Vec<f32>, rows| answer(&probabilities[rows]),
        )
    }

    /// One body's candidate records, vectorised.
    fn parse(&self, body: &[u8]) -> Result<Records, PredictError> {
        Records::parse(body, &self.vocabulary).map_err(|e| match e {
            records::Error::Malformed(m) => error(ErrorKind::MalformedRequest, m),
            records::Error::Invalid(m) => error(ErrorKind::InvalidInput, m),
        })
    }

    /// Vectorised records (`rows` of them, row-major) as the model's
    /// `[rows, width]` f32 input.
    fn rows(&self, rows: usize, data: &[f32]) -> Tensor {
        let width = self.vocabulary.len();
        Tensor::new(
            &[rows as u32, width as u32],
            TensorType::Fp32,
            bytemuck::cast_slice(data),
        )
    }

    /// One model call: each record's probability of placement.
    fn probabilities(&self, rows: usize, data: &[f32]) -> Result<Vec<f32>, PredictError> {
        let outputs = self
            .context
            .compute(vec![(String::new(), self.rows(rows, data))])
            .map_err(|e| tensors::nn_error(ErrorKind::ModelFailure, "running the model", e))?;
        self.positive_probabilities(&outputs, rows)
    }

    /// `predict_proba(X)[:, positive_class]`, one per record.
    fn positive_probabilities(
        &self,
        outputs: &[(String, Tensor)],
        rows: usize,
    ) -> Result<Vec<f32>, PredictError> {
        let (_, tensor) = outputs
            .iter()
            .find(|(name, t)| name == "probabilities" && t.ty() == TensorType::Fp32)
            .ok_or_else(|| model_failure("the model gave no f32 `probabilities` output".into()))?;
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&tensor.data());
        let classes = values.len() / rows.max(1);
        if classes * rows != values.len() || self.positive_class >= classes {
            return Err(model_failure(format!(
                "the model gave {} probabilities for {rows} records; class {} was expected among them",
                values.len(),
                self.positive_class
            )));
        }
        Ok(values
            .chunks(classes)
            .map(|row| row[self.positive_class])
            .collect())
    }
}

impl batch::Rows for Records {
    fn rows(&self) -> usize {
        self.rows
    }

    fn values(&self) -> &[f32] {
        &self.data
    }
}

/// The article's answer: its two fields for one record (a record, or a list
/// of one, as the article's clients send); `predictions`, one per record, for
/// several. A probability that is not finite (another model deployed under
/// this guest) refuses the request: JSON has no number for it.
fn answer(probabilities: &[f32]) -> Result<Vec<u8>, PredictError> {
    if let Some(row) = probabilities.iter().position(|p| !p.is_finite()) {
        return Err(tensors::invalid(format!(
            "record {row}: the model's probability is {}, not a finite number, so there is no answer for it",
            probabilities[row]
        )));
    }
    #[derive(serde::Serialize)]
    struct Prediction {
        /// Written as the f64 it widens to exactly: the forest's
        /// probabilities are k/512, which the article's Flask server
        /// printed in full (0.943359375), where f32's shortest form is
        /// 0.9433594.
        #[serde(rename = "Placement_Probability")]
        probability: f64,
        #[serde(rename = "Placement")]
        placement: bool,
    }
    #[derive(serde::Serialize)]
    struct Many {
        predictions: Vec<Prediction>,
    }
    let mut predictions: Vec<Prediction> = probabilities
        .iter()
        .map(|&p| Prediction {
            probability: f64::from(p),
            placement: p > 0.5,
        })
        .collect();
    let written = match predictions.len() {
        1 => serde_json::to_vec(&predictions.remove(0)),
        _ => serde_json::to_vec(&Many { predictions }),
    };
    Ok(written.expect("serialising to a Vec cannot fail"))
}

/// The `records` input's elements, each exactly one JSON record, as
/// rows in element order: output row i answers element i, as the
/// protocol's clients read it (joined as one list, an element holding
/// two records or half of one would shift every row after it).
fn element_records(data: &[u8], vocabulary: &Vocabulary) -> Result<Records, PredictError> {
    let elements = bytes_elements(data, records::MAX_RECORDS)?;
    let mut all = Records {
        rows: 0,
        data: Vec::with_capacity(elements.len() * vocabulary.len()),
    };
    for (i, element) in elements.iter().enumerate() {
        let refused = |m: String| tensors::invalid(format!("`{RECORDS_INPUT}` element {i}: {m}"));
        let record = Records::parse(element, vocabulary).map_err(|e| match e {
            records::Error::Malformed(m) | records::Error::Invalid(m) => refused(m),
        })?;
        if record.rows != 1 {
            return Err(refused(format!(
                "holds {} records; give one JSON record per element",
                record.rows
            )));
        }
        all.rows += 1;
        all.data.extend_from_slice(&record.data);
    }
    Ok(all)
}

/// The elements of a BYTES tensor: each a 4-byte little-endian length,
/// then that many bytes; refused past `most` elements, counted as they are
/// read (collected first, a body of empty elements would take 8 bytes of
/// the sandbox's memory each before the cap was checked).
fn bytes_elements(mut data: &[u8], most: usize) -> Result<Vec<&[u8]>, PredictError> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        if elements.len() == most {
            return Err(tensors::invalid(format!(
                "`{RECORDS_INPUT}` has more than {most} elements; at most {most} records go in one request: send them in several"
            )));
        }
        let (len, tail) = data.split_first_chunk::<4>().ok_or_else(|| {
            tensors::invalid(format!("`{RECORDS_INPUT}` ends inside an element's length"))
        })?;
        let len = u32::from_le_bytes(*len) as usize;
        let element = tail
            .get(..len)
            .ok_or_else(|| tensors::invalid(format!("`{RECORDS_INPUT}` ends inside an element")))?;
        elements.push(element);
        data = &tail[len..];
    }
    Ok(elements)
}

fn error(kind: ErrorKind, message: String) -> PredictError {
    PredictError { kind, message }
}

fn internal(message: String) -> PredictError {
    error(ErrorKind::Internal, message)
}

fn model_failure(message: String) -> PredictError {
    error(ErrorKind::ModelFailure, message)
}

export!(Placement);

#[cfg(test)]
mod tests {
    use super::*;

    /// A BYTES tensor of these elements.
    fn bytes(elements: &[&str]) -> Vec<u8> {
        elements
            .iter()
            .flat_map(|e| (e.len() as u32).to_le_bytes().into_iter().chain(e.bytes()))
            .collect()
    }

    #[test]
    fn each_records_element_is_exactly_one_record() {
        let vocabulary =
            Vocabulary::from_json(r#"{"feature_names": ["age", "gender=M"], "separator": "="}"#)
                .unwrap();
        let r = element_records(
            &bytes(&[r#"{"age": 3}"#, r#"{"gender": "M"}"#]),
            &vocabulary,
        )
        .unwrap();
        assert_eq!((r.rows, r.data), (2, vec![3.0, 0.0, 0.0, 1.0]));
        // Joined as one list, each of these gave a row count other than the
        // element count, with a 200.
        for (elements, why) in [
            (&["{},{}"][..], "element 0: "),
            (&["", "{}"], "element 0: "),
            (&[r#"{"age": 3"#, r#""gender": "M"}"#], "element 0: "),
            (&["[{}, {}]"], "element 0: holds 2 records"),
            (&["{}", "", "{}"], "element 1: "),
        ] {
            let e = element_records(&bytes(elements), &vocabulary).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput);
            assert!(e.message.contains(why), "{elements:?}: {}", e.message);
        }
        let too_many = vec!["{}"; records::MAX_RECORDS + 1];
        let e = element_records(&bytes(&too_many), &vocabulary).unwrap_err();
        assert!(e.message.contains("send them in several"), "{}", e.message);
    }

    #[test]
    fn answers_carry_finite_probabilities_only() {
        let one: serde_json::Value = serde_json::from_slice(&answer(&[0.75]).unwrap()).unwrap();
        assert_eq!(
            one,
            serde_json::json!({"Placement_Probability": 0.75, "Placement": true})
        );
        let refused = answer(&[0.25, f32::NAN]).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::InvalidInput);
        assert!(refused.message.starts_with("record 1: "), "{refused:?}");
    }
}
