//! The predictor's request and response formats, shared by the WebAssembly
//! guest (`guests/predictor/`) and the native baseline (`baseline/`), so the
//! two do exactly the same work around the model and a benchmark between them
//! measures the sandbox, not two different parsers.
//!
//! A request is `{"inputs": [[f32, ...], ...]}`: one or more rows, all of the
//! model's feature count. [`parse_request`] reads it straight into one flat
//! row-major `Vec<f32>` (no per-row allocation) and says precisely what was
//! wrong when it cannot: [`RequestError::Malformed`] for bytes that are not
//! JSON (HTTP 400), [`RequestError::Invalid`] for JSON that does not fit the
//! model (HTTP 422). [`write_response`] shapes the answer, and [`with_origin`]
//! is how the host says who answered.

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

/// Where a response's `labels` come from.
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// The argmax of each row of outputs (class probabilities).
    Argmax,
    /// One label per row, as the model gave them.
    Given(&'a [i64]),
    /// None: the outputs are not class scores (a regression).
    Omitted,
}

/// Writes `{"outputs": [[...] per row], "labels": [...]}` where `outputs`
/// holds `width` values per input row and `labels` (unless omitted) one label
/// per row. The host adds `model`, `instance` and `version` (see
/// [`with_origin`]). Outputs JSON cannot carry are refused: see [`NotFinite`].
pub fn write_response(
    outputs: &[f32],
    width: usize,
    labels: Labels<'_>,
) -> Result<Vec<u8>, NotFinite> {
    write_answer(outputs, width, labels).map(Written::into_bytes)
}

/// A model output that is NaN or infinite: JSON has no number for it (serde
/// would write `null`), and its row's argmax label would be meaningless.
/// Finite inputs far outside what the model was trained on overflow like
/// this, so the request is answered 422, not 200 with a wrong label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NotFinite {
    /// The row of the answer, from 0.
    pub row: usize,
    /// The output's index within its row.
    pub column: usize,
    /// What the model gave.
    pub value: f32,
}

impl fmt::Display for NotFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { row, column, value } = self;
        write!(
            f,
            "row {row}: the model's output {column} is {value}, not a finite number, so there is \
             no answer for it; inputs far outside the range the model was trained on overflow it"
        )
    }
}

impl std::error::Error for NotFinite {}

/// An answer [`write_answer`] wrote: one JSON object that holds `outputs`
/// and none of the origin fields. The host adds them with
/// [`Written::with_origin`] without reading the answer again, as
/// [`with_origin`] must for JSON a guest wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written(Vec<u8>);

impl Written {
    /// The answer with `"model"`, `"instance"` and `"version"` first.
    pub fn with_origin(&self, origin: Origin<'_>) -> Vec<u8> {
        debug_assert_eq!(self.0.first(), Some(&b'{'), "a written answer is an object");
        splice_origin(origin, &self.0[1..], false)
    }

    /// The answer as it was written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The answer's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// [`write_response`], typed as an answer the host can add the origin to
/// without checking it.
pub fn write_answer(
    outputs: &[f32],
    width: usize,
    labels: Labels<'_>,
) -> Result<Written, NotFinite> {
    #[derive(Serialize)]
    struct Response<'a> {
        outputs: Rows<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        labels: Option<LabelRows<'a>>,
    }
    let width = width.max(1);
    if let Some(at) = outputs.iter().position(|v| !v.is_finite()) {
        return Err(NotFinite {
            row: at / width,
            column: at % width,
            value: outputs[at],
        });
    }
    let labels = match labels {
        Labels::Argmax => Some(LabelRows::Argmax(outputs, width)),
        Labels::Given(given) => Some(LabelRows::Given(given)),
        Labels::Omitted => None,
    };
    let response = Response {
        outputs: Rows(outputs, width),
        labels,
    };
    let mut out = Vec::with_capacity(32 + outputs.len() * 14);
    serde_json::to_writer(&mut out, &response).expect("serialising to a Vec cannot fail");
    Ok(Written(out))
}

/// Who answered: the host writes it into every answer.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Model (graph) name.
    pub model: &'a str,
    /// Topology instance name.
    pub instance: &'a str,
    /// Deployment version.
    pub version: &'a str,
}

/// Why a guest's answer cannot be sent as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnswer(pub String);

impl fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadAnswer {}

/// The fields the host writes into every answer.
const ORIGIN_FIELDS: [&str; 3] = ["model", "instance", "version"];

/// Puts `"model"`, `"instance"` and `"version"` first in a guest's answer.
/// The answer must be one JSON object that does not write those fields
/// itself: it is checked in one pass that allocates nothing (values are
/// skipped, not built), then copied once. Guests write only what they
/// compute; the host says who computed it.
pub fn with_origin(origin: Origin<'_>, body: &[u8]) -> Result<Vec<u8>, BadAnswer> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let empty = de
        .deserialize_map(AnswerCheck)
        .and_then(|empty| de.end().map(|()| empty))
        .map_err(|e| BadAnswer(format!("the guest's answer is not one JSON object: {e}")))?;
    let open = body
        .iter()
        .position(|&b| b == b'{')
        .expect("a checked object starts with `{`");
    Ok(splice_origin(origin, &body[open + 1..], empty))
}

/// `{`, the origin fields, then `rest`: an object's members after its `{`
/// and its closing `}` (`empty`: no members).
fn splice_origin(origin: Origin<'_>, rest: &[u8], empty: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len() + 64);
    out.push(b'{');
    for (key, value) in
        ORIGIN_FIELDS
            .into_iter()
            .zip([origin.model, origin.instance, origin.version])
    {
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).expect("writing to a Vec cannot fail");
        out.push(b':');
        serde_json::to_writer(&mut out, value).expect("writing to a Vec cannot fail");
    }
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// Checks a guest's answer: an object not writing the origin fields.
/// Yields whether it is empty.
struct AnswerCheck;

impl<'de> Visitor<'de> for AnswerCheck {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut empty = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if ORIGIN_FIELDS.contains(&key.as_ref()) {
                return Err(de::Error::custom(format_args!(
                    "it writes `{key}`, which the host writes"
                )));
            }
            map.next_value::<de::IgnoredAny>()?;
            empty = false;
        }
        Ok(empty)
    }
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

enum LabelRows<'a> {
    Argmax(&'a [f32], usize),
    Given(&'a [i64]),
}

impl Serialize for LabelRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LabelRows::Argmax(values, width) => {
                let mut seq = s.serialize_seq(Some(values.len() / width))?;
                for row in values.chunks(*width) {
                    seq.serialize_element(&argmax(row))?;
                }
                seq.end()
            }
            LabelRows::Given(labels) => labels.serialize(s),
        }
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
        let body = write_response(&[0.1, 0.9, 0.7, 0.3], 2, Labels::Argmax).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["labels"], serde_json::json!([1, 0]));
        assert_eq!(v["outputs"][1][0].as_f64().unwrap() as f32, 0.7);
    }

    #[test]
    fn labels_can_be_the_models_own_or_none() {
        let given = write_response(&[0.1, 0.9], 2, Labels::Given(&[7])).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&given).unwrap();
        assert_eq!(v["labels"], serde_json::json!([7]));
        let regression = write_response(&[1.5, 2.5], 1, Labels::Omitted).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&regression).unwrap();
        assert_eq!(v, serde_json::json!({"outputs": [[1.5], [2.5]]}));
    }

    #[test]
    fn outputs_json_cannot_carry_are_refused_with_their_place() {
        for (outputs, width, at) in [
            (&[0.1f32, f32::NAN, 0.7, 0.3][..], 2, (0, 1)),
            (&[0.1, 0.9, f32::INFINITY, 0.3], 2, (1, 0)),
            (&[1.5, f32::NEG_INFINITY], 1, (1, 0)),
        ] {
            for labels in [Labels::Argmax, Labels::Omitted] {
                let refused = write_response(outputs, width, labels).unwrap_err();
                assert_eq!((refused.row, refused.column), at, "{refused}");
                assert!(refused.to_string().contains("not a finite number"));
            }
        }
        // The largest finite f32 is an answer (in JSON, 3.4028235e38).
        let edge = write_response(&[f32::MAX, f32::MIN], 2, Labels::Argmax).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&edge).unwrap();
        assert_eq!(v["labels"], serde_json::json!([0]));
    }

    #[test]
    fn origin_goes_first_in_any_object() {
        let origin = Origin {
            model: "m",
            instance: "p\"1",
            version: "v1",
        };
        for (body, rest) in [
            (&b"{\"a\":1}"[..], serde_json::json!({"a": 1})),
            (b"  { }", serde_json::json!({})),
            (b"{}", serde_json::json!({})),
        ] {
            let out = with_origin(origin, body).unwrap();
            assert!(out.starts_with(br#"{"model":"m","instance":"p\"1","version":"v1""#));
            let mut v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            for k in ["model", "instance", "version"] {
                v.as_object_mut().unwrap().remove(k);
            }
            assert_eq!(v, rest);
        }
        for (body, why) in [
            (&b"[1]"[..], "invalid type"),
            (b"", "EOF"),
            (b"  ", "EOF"),
            (b"\"x\"", "invalid type"),
            (b"{", "EOF"),
            (b"{\"a\":", "EOF"),
            (b"{} {}", "trailing"),
            (b"{\"a\": 1, \"version\": \"mine\"}", "writes `version`"),
        ] {
            let Err(BadAnswer(message)) = with_origin(origin, body) else {
                panic!("{:?} was accepted", String::from_utf8_lossy(body));
            };
            assert!(message.contains(why), "{message}");
        }
    }

    #[test]
    fn a_written_answer_takes_its_origin_as_a_checked_one_does() {
        let origin = Origin {
            model: "digits",
            instance: "p\\1",
            version: "v\"2",
        };
        for (outputs, width, labels) in [
            (&[0.1f32, 0.9, 0.7, 0.3][..], 2, Labels::Argmax),
            (&[0.25, 0.75], 2, Labels::Given(&[-3])),
            (&[1.5, -2.5e-12], 1, Labels::Omitted),
            (&[], 1, Labels::Omitted),
        ] {
            let written = write_answer(outputs, width, labels).unwrap();
            let checked = with_origin(origin, written.as_bytes()).unwrap();
            assert_eq!(
                String::from_utf8(written.with_origin(origin)).unwrap(),
                String::from_utf8(checked).unwrap()
            );
        }
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.5, 0.5]), 0);
        assert_eq!(argmax(&[0.1, 0.2, 0.7]), 2);
        assert_eq!(argmax(&[]), 0);
    }
}

/// Property tests: any body parses to a batch that keeps the documented
/// guarantees, or is refused with a message; nothing panics.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn check(body: &[u8], features: usize) {
        match parse_request(body, features) {
            Ok(batch) => {
                assert!(batch.rows >= 1);
                assert_eq!(batch.features, features);
                assert_eq!(batch.data.len(), batch.rows * features);
                assert!(batch.data.iter().all(|v| v.is_finite()));
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }

    /// A JSON value that is often a request, or nearly one.
    fn requestish() -> impl Strategy<Value = serde_json::Value> {
        let number = prop_oneof![
            any::<f64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(serde_json::json!("1.0")),
            Just(serde_json::Value::Null),
        ];
        let row = proptest::collection::vec(number, 0..6).prop_map(serde_json::Value::from);
        let rows = proptest::collection::vec(row, 0..5).prop_map(serde_json::Value::from);
        let key = prop_oneof![Just("inputs"), Just("input"), Just("rows")];
        (key, rows, any::<bool>()).prop_map(|(key, rows, extra)| {
            let mut m = serde_json::Map::new();
            m.insert(key.to_string(), rows);
            if extra {
                m.insert("extra".into(), serde_json::Value::Bool(true));
            }
            serde_json::Value::Object(m)
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused(body in proptest::collection::vec(any::<u8>(), 0..256),
                                          features in 1usize..8) {
            check(&body, features);
        }

        #[test]
        fn requestish_json_parses_or_is_refused(value in requestish(), features in 1usize..6,
                                                cut in proptest::option::of(0usize..200)) {
            let mut body = serde_json::to_vec(&value).unwrap();
            if let Some(cut) = cut {
                body.truncate(cut);
            }
            check(&body, features);
        }
    }
}
