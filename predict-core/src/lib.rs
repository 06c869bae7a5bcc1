//! The predictor's request and response formats, shared by the WebAssembly
//! guest (`guest-predictor/`) and the native baseline (`baseline/`), so the
//! two do exactly the same work around the model and a benchmark between them
//! measures the sandbox, not two different parsers.
//!
//! A request is `{"inputs": [[f32, ...], ...]}`: one or more rows, all of the
//! model's feature count. [`parse_request`] reads it straight into one flat
//! row-major `Vec<f32>` (no per-row allocation) and says precisely what was
//! wrong when it cannot: [`RequestError::Malformed`] for bytes that are not
//! JSON (HTTP 400), [`RequestError::Invalid`] for JSON that does not fit the
//! model (HTTP 422). [`write_response`] shapes the answer.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::fmt;

/// A parsed request: `rows` rows of `features` values each, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Number of rows.
    pub rows: usize,
    /// Values per row.
    pub features: usize,
    /// `rows * features` finite values.
    pub data: Vec<f32>,
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON at all (syntax error, truncated body): HTTP 400.
    Malformed(String),
    /// JSON of the wrong shape or values for this model: HTTP 422.
    Invalid(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(m) | RequestError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RequestError {}

/// Parses `{"inputs": [[...], ...]}` for a model taking `features` values per row.
///
/// Guarantees on success: at least one row, every row exactly `features`
/// long, every value finite as an `f32`.
pub fn parse_request(body: &[u8], features: usize) -> Result<Batch, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut batch = Batch {
        rows: 0,
        features,
        data: Vec::new(),
    };
    let outcome = RequestSeed { batch: &mut batch }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match outcome {
        Ok(()) => Ok(batch),
        Err(e) => Err(classify(e)),
    }
}

fn classify(e: serde_json::Error) -> RequestError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => RequestError::Invalid(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            RequestError::Malformed(format!("request body is not valid JSON: {e}"))
        }
    }
}

struct RequestSeed<'a> {
    batch: &'a mut Batch,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "an object {{\"inputs\": [[{} numbers], ...]}}",
            self.batch.features
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "inputs" {
                return Err(de::Error::custom(format_args!(
                    "unknown field `{key}`, the request takes only `inputs`"
                )));
            }
            if seen {
                return Err(de::Error::custom("field `inputs` given twice"));
            }
            seen = true;
            map.next_value_seed(RowsSeed {
                batch: &mut *self.batch,
            })?;
        }
        if !seen {
            return Err(de::Error::custom(format_args!(
                "missing field `inputs`: expected {{\"inputs\": [[{} numbers], ...]}}",
                self.batch.features
            )));
        }
        Ok(())
    }
}

struct RowsSeed<'a> {
    batch: &'a mut Batch,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "`inputs` as a list of rows of {} numbers",
            self.batch.features
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let features = self.batch.features;
        if let Some(n) = seq.size_hint() {
            self.batch.data.reserve(n.saturating_mul(features));
        }
        while seq
            .next_element_seed(RowSeed {
                batch: &mut *self.batch,
            })?
            .is_some()
        {
            self.batch.rows += 1;
        }
        if self.batch.rows == 0 {
            return Err(de::Error::custom(format_args!(
                "`inputs` is empty: give at least one row of {features} numbers"
            )));
        }
        Ok(())
    }
}

struct RowSeed<'a> {
    batch: &'a mut Batch,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "row {} as a list of {} numbers",
            self.batch.rows, self.batch.features
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Batch {
            rows,
            features,
            data,
        } = self.batch;
        let start = data.len();
        while let Some(v) = seq.next_element::<f64>()? {
            let col = data.len() - start;
            if col >= *features {
                return Err(de::Error::custom(format_args!(
                    "row {rows} has more than {features} values; the model takes {features} features per row"
                )));
            }
            let x = v as f32;
            if !x.is_finite() {
                return Err(de::Error::custom(format_args!(
                    "row {rows}, value {col} ({v}) is not a finite 32-bit float"
                )));
            }
            data.push(x);
        }
        let got = data.len() - start;
        if got != *features {
            return Err(de::Error::custom(format_args!(
                "row {rows} has {got} values; the model takes {features} features per row"
            )));
        }
        Ok(())
    }
}

/// Index of the largest value (the first on a tie); 0 for an empty row.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Who answered: written into every response.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Model (graph) name.
    pub model: &'a str,
    /// Topology instance name.
    pub instance: &'a str,
    /// Deployment version.
    pub version: &'a str,
}

/// Writes `{"model", "instance", "version", "outputs", "labels"}` where
/// `outputs` holds one row of `classes` probabilities per input row and
/// `labels` the argmax of each row.
pub fn write_response(origin: Origin<'_>, probabilities: &[f32], classes: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Response<'a> {
        model: &'a str,
        instance: &'a str,
        version: &'a str,
        outputs: Rows<'a>,
        labels: Labels<'a>,
    }
    let classes = classes.max(1);
    let response = Response {
        model: origin.model,
        instance: origin.instance,
        version: origin.version,
        outputs: Rows(probabilities, classes),
        labels: Labels(probabilities, classes),
    };
    let mut out = Vec::with_capacity(96 + probabilities.len() * 14);
    serde_json::to_writer(&mut out, &response).expect("serialising to a Vec cannot fail");
    out
}

struct Rows<'a>(&'a [f32], usize);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len() / self.1))?;
        for row in self.0.chunks(self.1) {
            seq.serialize_element(row)?;
        }
        seq.end()
    }
}

struct Labels<'a>(&'a [f32], usize);

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len() / self.1))?;
        for row in self.0.chunks(self.1) {
            seq.serialize_element(&argmax(row))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str, features: usize) -> String {
        match parse_request(body.as_bytes(), features) {
            Err(RequestError::Invalid(m)) => m,
            other => panic!("expected Invalid for {body}, got {other:?}"),
        }
    }

    #[test]
    fn parses_rows_into_one_flat_buffer() {
        let b = parse_request(br#"{"inputs": [[1, 2.5, -3], [4, 5, 6e2]]}"#, 3).unwrap();
        assert_eq!(b.rows, 2);
        assert_eq!(b.data, vec![1.0, 2.5, -3.0, 4.0, 5.0, 600.0]);
    }

    #[test]
    fn not_json_is_malformed() {
        for body in [
            "",
            "{",
            "{\"inputs\": [[1]]",
            "nope",
            "{\"inputs\": [[NaN]]}",
        ] {
            assert!(
                matches!(
                    parse_request(body.as_bytes(), 1),
                    Err(RequestError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn wrong_shapes_name_what_was_expected() {
        assert!(invalid(r#"{"inputs": [[1, 2]]}"#, 3).contains("has 2 values; the model takes 3"));
        assert!(invalid(r#"{"inputs": [[1, 2, 3, 4]]}"#, 3).contains("more than 3"));
        assert!(invalid(r#"{"inputs": [[1, 2, 3], [1]]}"#, 3).contains("row 1 has 1 values"));
        assert!(invalid(r#"{"inputs": []}"#, 3).contains("empty"));
        assert!(invalid(r#"{"inputs": [1, 2, 3]}"#, 3).contains("row 0"));
        assert!(invalid(r#"{"inputs": [["a", 2, 3]]}"#, 3).contains("invalid type"));
        assert!(invalid(r#"{"input": [[1, 2, 3]]}"#, 3).contains("unknown field `input`"));
        assert!(invalid(r#"{}"#, 3).contains("missing field `inputs`"));
        assert!(invalid(r#"[1]"#, 3).contains("an object"));
    }

    #[test]
    fn values_beyond_f32_are_refused() {
        assert!(invalid(r#"{"inputs": [[1e300]]}"#, 1).contains("not a finite"));
    }

    #[test]
    fn response_has_one_output_row_and_label_per_input_row() {
        let origin = Origin {
            model: "m",
            instance: "p1",
            version: "v1",
        };
        let body = write_response(origin, &[0.1, 0.9, 0.7, 0.3], 2);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["labels"], serde_json::json!([1, 0]));
        assert_eq!(v["outputs"][1][0].as_f64().unwrap() as f32, 0.7);
        assert_eq!(v["instance"], "p1");
        assert_eq!(v["version"], "v1");
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.5, 0.5]), 0);
        assert_eq!(argmax(&[0.1, 0.2, 0.7]), 2);
        assert_eq!(argmax(&[]), 0);
    }
}
