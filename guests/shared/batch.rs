//! Merged batches for both guests (`hadr:predictor/batch`): the rows of
//! every body a guest can read run as one model call and the answer is
//! split again. Both guests include this one file (`#[path]`), each
//! compiling it against its own bindings.

use std::ops::Range;

use crate::hadr::predictor::types::PredictError;

/// One request's rows, as a guest parsed them.
pub trait Rows {
    /// How many rows.
    fn rows(&self) -> usize;
    /// Their values, row-major.
    fn values(&self) -> &[f32];
}

/// Answers each parsed body in order: a body the guest refused fails alone;
/// the others share one `run` of all their rows, each answered from its own
/// `rows` of it; if that merged run fails, each body runs on its own, so
/// one input the model cannot take fails only its own request. `answer` may
/// refuse a body's rows too (outputs it cannot write): that body alone.
pub fn merged<R: Rows, S>(
    parsed: Vec<Result<R, PredictError>>,
    run: impl Fn(usize, &[f32]) -> Result<S, PredictError>,
    answer: impl Fn(&S, Range<usize>) -> Result<Vec<u8>, PredictError>,
) -> Vec<Result<Vec<u8>, PredictError>> {
    let readable: Vec<&R> = parsed.iter().flatten().collect();
    let merged = match readable[..] {
        [] | [_] => None,
        _ => {
            let rows = readable.iter().map(|r| r.rows()).sum();
            let values: Vec<f32> = readable.iter().flat_map(|r| r.values()).copied().collect();
            run(rows, &values).ok()
        }
    };
    let mut first = 0;
    parsed
        .into_iter()
        .map(|body| {
            let body = body?;
            let rows = first..first + body.rows();
            first = rows.end;
            match &merged {
                Some(all) => answer(all, rows),
                None => answer(&run(body.rows(), body.values())?, 0..body.rows()),
            }
        })
        .collect()
}
