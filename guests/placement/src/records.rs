//! Candidate records to feature rows, as scikit-learn's `DictVectorizer`
//! (1.2) transforms them: a string value adds 1 to the column `key=value`, a
//! list of strings does so for each, a number (or a boolean, as 1 or 0:
//! Python's booleans are numbers) adds itself to the column `key`; keys and
//! values the vocabulary does not know are ignored, and a missing key leaves
//! its columns at 0. Where scikit-learn raises, the field is refused by name:
//! an object, a list holding anything but strings, or `null` under a key the
//! vocabulary has. A key given twice in one record is refused too (Python's
//! JSON reader would silently keep the last).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Why a body could not be turned into rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not JSON (HTTP 400).
    Malformed(String),
    /// JSON, but not records this model takes (HTTP 422).
    Invalid(String),
}

/// The vectoriser's columns: `feature_names_` in column order.
pub struct Vocabulary {
    columns: HashMap<String, usize>,
    separator: String,
}

impl Vocabulary {
    /// Reads `{"feature_names": [...], "separator": "="}`.
    pub fn from_json(json: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Saved {
            feature_names: Vec<String>,
            separator: String,
        }
        let saved: Saved = serde_json::from_str(json)
            .map_err(|e| format!("the model's vectoriser metadata is unreadable: {e}"))?;
        if saved.feature_names.is_empty() {
            return Err("the model's vectoriser has no features".into());
        }
        let count = saved.feature_names.len();
        let columns: HashMap<String, usize> = saved
            .feature_names
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name, i))
            .collect();
        if columns.len() != count {
            // A column index would then point past the row.
            return Err("the model's vectoriser names a feature twice".into());
        }
        Ok(Self {
            columns,
            separator: saved.separator,
        })
    }

    /// Columns per row.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }
}

/// Most records one request may hold: each is a row of the vocabulary's
/// width in the sandbox's memory (84 bytes for the article's 21 columns),
/// and a 1 MiB body of `{}`s holds 350,000, which ran the guest out of its
/// memory (a trap, counted against the instance) instead of being refused.
/// A merged batch of 32 such requests still fits in the default 64 MiB.
pub const MAX_RECORDS: usize = 4096;

/// Parsed records: `rows` rows of the vocabulary's width, row-major.
#[derive(Debug)]
pub struct Records {
    /// How many records.
    pub rows: usize,
    /// `rows * width` values.
    pub data: Vec<f32>,
}

impl Records {
    /// Reads one record (`{...}`) or a list of them (`[{...}, ...]`).
    pub fn parse(body: &[u8], vocabulary: &Vocabulary) -> Result<Self, Error> {
        let mut records = Records {
            rows: 0,
            data: Vec::new(),
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = BodySeed {
            vocabulary,
            records: &mut records,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        match parsed {
            Ok(()) => Ok(records),
            Err(e) if e.is_data() => Err(Error::Invalid(e.to_string())),
            Err(e) => Err(Error::Malformed(format!(
                "request body is not valid JSON: {e}"
            ))),
        }
    }
}

struct BodySeed<'a> {
    vocabulary: &'a Vocabulary,
    records: &'a mut Records,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a candidate record {\"gender\": \"M\", \"ssc_p\": 71.0, ...} or a list of them",
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        RecordSeed {
            vocabulary: self.vocabulary,
            records: self.records,
        }
        .visit_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(RecordSeed {
                vocabulary: self.vocabulary,
                records: &mut *self.records,
            })?
            .is_some()
        {}
        if self.records.rows == 0 {
            return Err(de::Error::custom(
                "the list of records is empty: give at least one record",
            ));
        }
        Ok(())
    }
}

/// One record, written straight into a new row.
struct RecordSeed<'a> {
    vocabulary: &'a Vocabulary,
    records: &'a mut Records,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "record {} as an object of fields", self.records.rows)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let row = self.records.rows;
        if row == MAX_RECORDS {
            return Err(de::Error::custom(format!(
                "more than {MAX_RECORDS} records in one request: send them in several"
            )));
        }
        let width = self.vocabulary.len();
        let start = self.records.data.len();
        self.records.data.resize(start + width, 0.0);
        let cells = &mut self.records.data[start..];
        let vocabulary = self.vocabulary;
        // A set: a record of 87k distinct fields (1 MiB) took 8 s natively
        // with a list's quadratic look-ups.
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        let mut name = String::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!(
                    "record {row}, field `{key}` is given twice"
                )));
            }
            let refuse = |what: &str| {
                de::Error::custom(format_args!(
                    "record {row}, field `{key}` is {what}; a field takes a string, a number or a list of strings"
                ))
            };
            // `key=value` is built in one buffer per record, not per field.
            let mut one_hot = |cells: &mut [f32], text: &str| {
                name.clear();
                name.push_str(&key);
                name.push_str(&vocabulary.separator);
                name.push_str(text);
                if let Some(c) = vocabulary.column(&name) {
                    cells[c] += 1.0;
                }
            };
            match map.next_value::<Value<'de>>()? {
                Value::Text(text) => one_hot(cells, &text),
                Value::Texts(texts) => texts.iter().for_each(|t| one_hot(cells, t)),
                Value::Number(x) => {
                    let v = x as f32;
                    if !v.is_finite() {
                        return Err(de::Error::custom(format_args!(
                            "record {row}, field `{key}`: {x} is not a finite 32-bit float"
                        )));
                    }
                    if let Some(c) = vocabulary.column(&key) {
                        cells[c] += v;
                    }
                }
                // scikit-learn looks a null up as a number, and fails only
                // when the vocabulary has that column.
                Value::Null if vocabulary.column(&key).is_none() => {}
                Value::Null => return Err(refuse("null")),
                Value::Other(what) => return Err(refuse(what)),
            }
            seen.insert(key);
        }
        self.records.rows += 1;
        Ok(())
    }
}

/// A field's value, as far as the vectoriser cares.
enum Value<'de> {
    Text(Cow<'de, str>),
    Texts(Vec<Cow<'de, str>>),
    Number(f64),
    Null,
    /// What it was, for the error.
    Other(&'static str),
}

impl<'de> de::Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Number(if v { 1.0 } else { 0.0 }))
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    /// A list of strings; anything else in it makes it a list scikit-learn
    /// refuses.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let mut texts = Vec::new();
        while let Some(item) = seq.next_element::<Value<'de>>()? {
            match item {
                Value::Text(t) => texts.push(t),
                _ => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Value::Other("a list holding something other than strings"));
                }
            }
        }
        Ok(Value::Texts(texts))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Other("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vectoriser_naming_a_feature_twice_is_refused() {
        let json = r#"{"feature_names": ["a", "b", "a"], "separator": "="}"#;
        let err = Vocabulary::from_json(json).err().expect("refused");
        assert!(err.contains("twice"), "{err}");
    }

    fn vocabulary() -> Vocabulary {
        Vocabulary::from_json(
            r#"{"feature_names": ["age", "gender=F", "gender=M", "score"], "separator": "="}"#,
        )
        .unwrap()
    }

    fn rows(body: &str) -> Result<Records, Error> {
        Records::parse(body.as_bytes(), &vocabulary())
    }

    #[test]
    fn strings_are_one_hot_and_numbers_pass_through() {
        let r = rows(r#"{"gender": "M", "age": 30, "score": 71.5}"#).unwrap();
        assert_eq!((r.rows, r.data), (1, vec![30.0, 0.0, 1.0, 71.5]));
    }

    #[test]
    fn unknown_keys_and_values_are_ignored_and_missing_keys_are_zero() {
        let body = r#"[{"gender": "X", "town": "Y", "extra": 3, "note": null}, {"age": true}]"#;
        let r = rows(body).unwrap();
        assert_eq!(r.rows, 2);
        assert_eq!(r.data, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn lists_of_strings_and_columns_hit_twice_add_up_as_in_scikit_learn() {
        let r = rows(r#"{"gender": ["M", "F", "M"], "gender=M": 0.5}"#).unwrap();
        assert_eq!(r.data, [0.0, 1.0, 2.5, 0.0]);
    }

    #[test]
    fn other_values_are_refused_naming_the_field() {
        let mixed = "a list holding something other than strings";
        for (body, field, what) in [
            (r#"{"age": null}"#, "age", "null"),
            (r#"[{"age": 1}, {"gender": ["M", 1]}]"#, "gender", mixed),
            (r#"{"score": {"x": 1}}"#, "score", "an object"),
            (r#"{"age": 1, "age": 2}"#, "age", "given twice"),
        ] {
            let Err(Error::Invalid(m)) = rows(body) else {
                panic!("{body} was not refused as invalid");
            };
            assert!(m.contains(&format!("field `{field}` is {what}")), "{m}");
            assert!(m.starts_with("record "), "{m}");
        }
    }

    #[test]
    fn a_request_holds_at_most_max_records() {
        let list = |n: usize| format!("[{}]", vec!["{}"; n].join(","));
        assert_eq!(rows(&list(MAX_RECORDS)).unwrap().rows, MAX_RECORDS);
        let Err(Error::Invalid(m)) = rows(&list(MAX_RECORDS + 1)) else {
            panic!("one record too many was taken");
        };
        assert!(m.contains("send them in several"), "{m}");
    }

    #[test]
    fn bodies_that_are_not_records_are_refused() {
        assert!(matches!(rows("[]"), Err(Error::Invalid(m)) if m.contains("empty")));
        assert!(matches!(rows("[1]"), Err(Error::Invalid(_))));
        assert!(matches!(rows("42"), Err(Error::Invalid(_))));
        assert!(
            matches!(rows(r#"{"age": 1e300}"#), Err(Error::Invalid(m)) if m.contains("finite"))
        );
        assert!(matches!(rows("{"), Err(Error::Malformed(_))));
        assert!(matches!(rows(""), Err(Error::Malformed(_))));
    }
}
