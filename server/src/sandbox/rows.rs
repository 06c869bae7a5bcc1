//! The host's half of `hadr:predictor/rows`: `/predict` bodies parsed and
//! answers written natively, with the same predict-core code a row guest
//! runs inside its sandbox, for a guest that exports `predict-rows`.
//!
//! The JSON is then parsed and written natively instead of in WebAssembly
//! (Cranelift's code), so for the generic guest this path is the cheaper
//! one. The rows reach the guest as a wasi-nn tensor the host made (which it
//! may read, or hand straight to `compute`), and it hands back the model's
//! own output tensors, which the host takes out of the sandbox's resource
//! table: neither crosses the guest's memory unless the guest reads it. The
//! guest still decides every answer's values and labels.

use std::ops::Range;

use predict_core::{BadAnswer, Batch, Labels, RequestError, Written};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::Tensor;

use crate::bindings::hadr::predictor::types::{ErrorKind, PredictError};
use crate::bindings::rows::exports::hadr::predictor::rows::Scores as Handed;
use crate::sandbox::nn::tensors::{GuestTensors, Unhanded};
use crate::sandbox::nn::tract_backend::{from_le_bytes, le_bytes};

/// A guest's scores for the rows it was sent, read from the tensors it
/// handed over and checked to fit them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scores {
    /// `width` values per row, row-major.
    pub(crate) values: Vec<f32>,
    pub(crate) width: usize,
    /// Whether the values are class probabilities (argmax labels them).
    pub(crate) classifier: bool,
    /// The model's own label of each row.
    pub(crate) labels: Option<Vec<i64>>,
}

/// Reads one body into rows of `features` values, refusing it as the guest
/// would (the same parser, the same messages).
pub(crate) fn parse(body: &[u8], features: usize) -> Result<Batch, PredictError> {
    predict_core::parse_request(body, features).map_err(|e| match e {
        RequestError::Malformed(message) => PredictError {
            kind: ErrorKind::MalformedRequest,
            message,
        },
        RequestError::Invalid(message) => PredictError {
            kind: ErrorKind::InvalidInput,
            message,
        },
    })
}

/// The most bytes of JSON one answered value takes (`-1.2345678e-12,`):
/// with it, an answer's size is bounded before it is written.
pub(crate) const JSON_BYTES_PER_VALUE: usize = 16;

/// The wasi-nn tensor of `batch`'s rows that `predict-rows` takes, in the
/// sandbox's resource table, held to the guest's tensor cap like one it made
/// itself (a guest that keeps them instead of computing on them is stopped
/// there).
pub(crate) fn hand(
    table: &mut ResourceTable,
    tensors: &mut GuestTensors,
    batch: &Batch,
) -> Result<Resource<Tensor>, Unhanded> {
    let tensor = Tensor {
        dimensions: vec![batch.rows as u32, batch.features as u32],
        ty: TensorType::Fp32,
        data: le_bytes(&batch.data, f32::to_le_bytes),
    };
    tensors.push(table, tensor)
}

/// Why the tensors a guest handed over are no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unread {
    /// The request is refused, and the sandbox kept (a merged batch runs
    /// its requests alone): the model's values are not whole rows (the
    /// model failed, worded as the guest's own `predict` words it), or they
    /// are whole rows but more than an answer may hold (too many rows for
    /// the model's outputs: the request's fault).
    #[error("{}", .0.message)]
    Refused(PredictError),
    /// The guest broke `rows`' contract: its sandbox is replaced.
    #[error(transparent)]
    Bad(#[from] BadAnswer),
}

/// Takes the tensors the guest handed over out of its resource table (each
/// of them, whatever else fails, so that none is left behind) and reads
/// them as scores for `rows` rows.
pub(crate) fn take(
    table: &mut ResourceTable,
    handed: Handed,
    rows: usize,
    max_values: usize,
) -> Result<Scores, Unread> {
    let gone = |e| {
        Unread::Bad(BadAnswer(format!(
            "the guest's predict-rows answered a tensor the host cannot take: {e}"
        )))
    };
    let values = table.delete(handed.values);
    let labels = handed.labels.map(|l| table.delete(l)).transpose();
    read(
        values.map_err(gone)?,
        labels.map_err(gone)?,
        handed.classifier,
        rows,
        max_values,
    )
}

/// Scores for `rows` rows from a guest's tensors: `values` must be `fp32`,
/// no more than `max_values` of them, and `labels`, if given, `i64` (else
/// the guest's fault); values that are not whole rows are the model's
/// failure; labels are used when they hold one per row.
fn read(
    values: Tensor,
    labels: Option<Tensor>,
    classifier: bool,
    rows: usize,
    max_values: usize,
) -> Result<Scores, Unread> {
    let bad = |what: String| {
        Err(Unread::Bad(BadAnswer(format!(
            "the guest's predict-rows answered {what}"
        ))))
    };
    if values.ty != TensorType::Fp32 || !values.data.len().is_multiple_of(4) {
        return bad(format!(
            "values of type {:?} in {} bytes, not fp32",
            values.ty,
            values.data.len()
        ));
    }
    if let Some(l) = labels.as_ref().filter(|l| l.ty != TensorType::I64) {
        return bad(format!("labels of type {:?}, not i64", l.ty));
    }
    let count = values.data.len() / 4;
    if rows == 0 || count == 0 || !count.is_multiple_of(rows) {
        // The words of the guest's own `predict` for the same outputs.
        return Err(Unread::Refused(PredictError {
            kind: ErrorKind::ModelFailure,
            message: format!("the model gave {count} values for {rows} rows"),
        }));
    }
    if count > max_values {
        let width = count / rows;
        if width > max_values {
            // Fewer rows would not help: the guest's answer is too large whatever is asked.
            return bad(format!(
                "{width} values a row, more than the {max_values} an answer may hold"
            ));
        }
        return Err(Unread::Refused(PredictError {
            kind: ErrorKind::InvalidInput,
            message: format!(
                "the answer to these {rows} rows would hold {count} values, more than the {max_values} an answer may hold (--max-memory / {JSON_BYTES_PER_VALUE}): send fewer rows a request"
            ),
        }));
    }
    let labels = match labels {
        None => None,
        Some(l) if l.data.len() != rows * 8 => None,
        Some(l) => Some(from_le_bytes(&l.data, i64::from_le_bytes)),
    };
    Ok(Scores {
        values: from_le_bytes(&values.data, f32::from_le_bytes),
        width: count / rows,
        classifier,
        labels,
    })
}

/// The JSON answer for rows `rows` of checked `scores`: what the guest's own
/// `predict` writes for them, and refuses as it does (outputs that are not
/// finite: the request's fault, not the sandbox's).
pub(crate) fn answer(scores: &Scores, rows: Range<usize>) -> Result<Written, PredictError> {
    let width = scores.width;
    let values = &scores.values[rows.start * width..rows.end * width];
    let labels = match (&scores.labels, scores.classifier) {
        (Some(labels), _) => Labels::Given(&labels[rows]),
        (None, true) => Labels::Argmax,
        (None, false) => Labels::Omitted,
    };
    predict_core::write_answer(values, width, labels).map_err(|e| PredictError {
        kind: ErrorKind::InvalidInput,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(values: Vec<f32>, width: usize, labels: Option<Vec<i64>>) -> Scores {
        Scores {
            values,
            width,
            classifier: true,
            labels,
        }
    }

    fn tensor<T: Copy>(ty: TensorType, elements: &[T], to_le: fn(T) -> Vec<u8>) -> Tensor {
        Tensor {
            dimensions: vec![elements.len() as u32],
            ty,
            data: elements.iter().flat_map(|e| to_le(*e)).collect(),
        }
    }

    fn floats(values: &[f32]) -> Tensor {
        tensor(TensorType::Fp32, values, |v| v.to_le_bytes().to_vec())
    }

    fn longs(values: &[i64]) -> Tensor {
        tensor(TensorType::I64, values, |v| v.to_le_bytes().to_vec())
    }

    #[test]
    fn bodies_are_refused_as_the_guest_refuses_them() {
        let malformed = parse(b"{\"inputs\": [[1, 2]", 2).unwrap_err();
        assert_eq!(malformed.kind, ErrorKind::MalformedRequest, "{malformed:?}");
        let invalid = parse(b"{\"inputs\": [[1, 2, 3]]}", 2).unwrap_err();
        assert_eq!(invalid.kind, ErrorKind::InvalidInput, "{invalid:?}");
        let rows = parse(b"{\"inputs\": [[1, 2], [3, 4]]}", 2).unwrap();
        assert_eq!((rows.rows, rows.data), (2, vec![1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn tensors_are_read_as_whole_rows_of_scores() {
        let read_two = |values, labels| read(values, labels, true, 2, 4);
        let fits = read_two(floats(&[0.1, 0.9, 0.8, 0.2]), Some(longs(&[1, 0]))).unwrap();
        assert_eq!(fits, scores(vec![0.1, 0.9, 0.8, 0.2], 2, Some(vec![1, 0])));
        // Labels that are not one per row are not labels: argmax answers.
        let other = read_two(floats(&[0.1, 0.9, 0.8, 0.2]), Some(longs(&[1]))).unwrap();
        assert_eq!(other.labels, None);
    }

    #[test]
    fn tensors_that_do_not_fit_their_rows_are_a_bad_answer() {
        let read_two = |values, labels| match read(values, labels, true, 2, 4) {
            Err(Unread::Bad(bad)) => bad.0,
            other => panic!("{other:?}"),
        };
        // Values that are not whole rows are the model's failure, worded as
        // the guest's own `predict` words it.
        for (values, count) in [(floats(&[0.1, 0.9, 0.8]), 3), (floats(&[]), 0)] {
            match read(values, None, true, 2, 4) {
                Err(Unread::Refused(e)) => {
                    assert_eq!(e.kind, ErrorKind::ModelFailure);
                    assert_eq!(
                        e.message,
                        format!("the model gave {count} values for 2 rows")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // Whole rows, too many for an answer: the request's fault...
        match read(floats(&[0.1, 0.9, 0.8, 0.2]), None, true, 2, 3) {
            Err(Unread::Refused(e)) => {
                assert_eq!(e.kind, ErrorKind::InvalidInput);
                assert!(e
                    .message
                    .contains("2 rows would hold 4 values, more than the 3"));
            }
            other => panic!("{other:?}"),
        }
        // ... unless one row's answer is over it already: the guest's.
        match read(floats(&[0.1, 0.9, 0.8, 0.2]), None, true, 2, 1) {
            Err(Unread::Bad(bad)) => assert!(bad.0.contains("2 values a row"), "{bad}"),
            other => panic!("{other:?}"),
        }
        assert!(read(floats(&[0.1]), None, true, 0, 4).is_err());
        let doubles = Tensor {
            ty: TensorType::Fp64,
            ..floats(&[0.1, 0.9])
        };
        assert!(read_two(doubles, None).contains("not fp32"));
        let ragged = Tensor {
            data: vec![0; 6],
            ..floats(&[])
        };
        assert!(read_two(ragged, None).contains("not fp32"));
        let labels = Tensor {
            ty: TensorType::I32,
            ..longs(&[1, 0])
        };
        assert!(read_two(floats(&[0.1, 0.9]), Some(labels)).contains("not i64"));
    }

    #[test]
    fn rows_are_handed_as_one_tensor_held_to_the_guests_cap() {
        let mut table = ResourceTable::new();
        let mut tensors = GuestTensors::new(40);
        let rows = parse(b"{\"inputs\": [[1, 2], [3, 4]]}", 2).unwrap();
        let first = hand(&mut table, &mut tensors, &rows).unwrap();
        let tensor = table.get(&first).unwrap();
        assert_eq!(
            (&tensor.dimensions[..], tensor.ty),
            (&[2, 2][..], TensorType::Fp32)
        );
        let values: Vec<f32> = tensor
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
        // A guest that keeps what it is handed is refused past its cap...
        hand(&mut table, &mut tensors, &rows).unwrap();
        let kept = hand(&mut table, &mut tensors, &rows).unwrap_err();
        assert!(matches!(kept, Unhanded::OverCap(_)), "{kept}");
        // ... and one that lets them go (`compute` takes them) is not.
        table.delete(first).unwrap();
        hand(&mut table, &mut tensors, &rows).unwrap();
    }

    #[test]
    fn every_handed_tensor_leaves_the_table_even_when_one_is_bad() {
        let mut table = ResourceTable::new();
        let values = table
            .push(Tensor {
                ty: TensorType::U8,
                ..floats(&[0.5])
            })
            .unwrap();
        let labels = table.push(longs(&[3])).unwrap();
        let (values_rep, labels_rep) = (values.rep(), labels.rep());
        let handed = Handed {
            values,
            classifier: false,
            labels: Some(labels),
        };
        assert!(take(&mut table, handed, 1, 10).is_err());
        for rep in [values_rep, labels_rep] {
            assert!(table
                .get(&wasmtime::component::Resource::<Tensor>::new_own(rep))
                .is_err());
        }
        let values = table.push(floats(&[0.25, 0.75])).unwrap();
        let handed = Handed {
            values,
            classifier: true,
            labels: None,
        };
        assert_eq!(
            take(&mut table, handed, 1, 10).unwrap(),
            scores(vec![0.25, 0.75], 2, None)
        );
    }

    #[test]
    fn each_request_of_a_merged_call_gets_its_own_rows() {
        let merged = scores(vec![0.1, 0.9, 0.8, 0.2, 0.3, 0.7], 2, None);
        let second: serde_json::Value =
            serde_json::from_slice(answer(&merged, 1..3).unwrap().as_bytes()).unwrap();
        assert_eq!(
            second,
            serde_json::json!({"outputs": [[0.8, 0.2], [0.3, 0.7]], "labels": [0, 1]})
        );
        let given = scores(vec![0.1, 0.9], 2, Some(vec![7]));
        let own: serde_json::Value =
            serde_json::from_slice(answer(&given, 0..1).unwrap().as_bytes()).unwrap();
        assert_eq!(own["labels"], serde_json::json!([7]));
        let regression = Scores {
            classifier: false,
            ..scores(vec![1.5], 1, None)
        };
        let plain: serde_json::Value =
            serde_json::from_slice(answer(&regression, 0..1).unwrap().as_bytes()).unwrap();
        assert_eq!(plain, serde_json::json!({"outputs": [[1.5]]}));
    }

    #[test]
    fn outputs_that_are_not_finite_refuse_only_their_own_request() {
        let merged = scores(vec![0.1, 0.9, f32::NAN, 0.2, 0.3, 0.7], 2, None);
        let refused = answer(&merged, 1..2).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::InvalidInput, "{refused:?}");
        assert!(refused.message.starts_with("row 0: "), "{refused:?}");
        assert!(answer(&merged, 0..1).is_ok());
        assert!(answer(&merged, 2..3).is_ok());
    }
}
