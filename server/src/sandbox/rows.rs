//! The host's half of `hadr:predictor/rows`: `/predict` bodies parsed and
//! answers written natively, with the same predict-core code a row guest
//! runs inside its sandbox, for a guest that exports `predict-rows`.
//!
//! The JSON is then parsed and written natively instead of in WebAssembly
//! (Cranelift's code), so for the generic guest this path is the cheaper
//! one; the guest still sees every row and decides every answer's values and
//! labels.

use std::ops::Range;

use predict_core::{BadAnswer, Batch, Labels, RequestError, Written};

use crate::bindings::hadr::predictor::types::{ErrorKind, PredictError};
use crate::bindings::rows::exports::hadr::predictor::rows::Scores;

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

/// Checks the guest's scores for `rows` rows: whole rows of values, no more
/// than `max_values` of them, and a label per row when it gives labels. A
/// failed check is the guest's fault: its sandbox is replaced.
pub(crate) fn check(scores: &Scores, rows: usize, max_values: usize) -> Result<(), BadAnswer> {
    let width = scores.width as usize;
    let values = scores.values.len();
    let labels_fit = scores.labels.as_ref().is_none_or(|l| l.len() == rows);
    if width == 0 || values != rows * width || !labels_fit {
        return Err(BadAnswer(format!(
            "the guest's predict-rows answered {values} values of width {} and {:?} labels for {rows} rows",
            scores.width,
            scores.labels.as_ref().map(Vec::len)
        )));
    }
    if values > max_values {
        return Err(BadAnswer(format!(
            "the guest's predict-rows answered {values} values, more than the {max_values} an answer may hold"
        )));
    }
    Ok(())
}

/// The JSON answer for rows `rows` of checked `scores`: what the guest's own
/// `predict` writes for them, and refuses as it does (outputs that are not
/// finite: the request's fault, not the sandbox's).
pub(crate) fn answer(scores: &Scores, rows: Range<usize>) -> Result<Written, PredictError> {
    let width = scores.width as usize;
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

    fn scores(values: Vec<f32>, width: u32, labels: Option<Vec<i64>>) -> Scores {
        Scores {
            values,
            width,
            classifier: true,
            labels,
        }
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
    fn scores_that_do_not_fit_their_rows_are_a_bad_answer() {
        let fits = scores(vec![0.1, 0.9, 0.8, 0.2], 2, None);
        assert!(check(&fits, 2, 4).is_ok());
        assert!(
            check(&fits, 2, 3).is_err(),
            "more values than an answer may hold"
        );
        assert!(check(&scores(vec![0.1, 0.9, 0.8], 2, None), 2, 100).is_err());
        assert!(check(&scores(vec![], 0, None), 0, 100).is_err());
        assert!(check(&scores(vec![0.1, 0.9], 2, Some(vec![1, 0])), 1, 100).is_err());
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
