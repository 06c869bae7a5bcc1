//! Reading a node's attributes with errors that name them.
//!
//! tract's `pb_helpers` report problems as free text; the ensemble parsers want
//! [`TreeError`]s instead, so a malformed model says which attribute is wrong in
//! a form tests (and the host) can match on. Nothing here calls tract's
//! parsing, whose tensor loader panics on some malformed tensors.

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};

use crate::error::TreeError;

/// A node's attributes, looked up by name.
pub(crate) struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    /// The attribute called `name`, if the node carries it.
    fn find(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// The attribute called `name`, checked to have protobuf type `expected`.
    ///
    /// Type 0 (UNDEFINED) is let through: very old writers left it unset and
    /// the value fields are still meaningful.
    fn typed(
        &self,
        name: &'static str,
        expected: AttributeType,
    ) -> Result<Option<&'a AttributeProto>, TreeError> {
        let Some(attr) = self.find(name) else {
            return Ok(None);
        };
        if attr.r#type != expected as i32 && attr.r#type != AttributeType::Undefined as i32 {
            let found = AttributeType::try_from(attr.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| format!("#{}", attr.r#type));
            return Err(TreeError::WrongType {
                attr: name,
                found,
                expected: expected.as_str_name(),
            });
        }
        Ok(Some(attr))
    }

    pub(crate) fn ints(&self, name: &'static str) -> Result<Option<&'a [i64]>, TreeError> {
        Ok(self
            .typed(name, AttributeType::Ints)?
            .map(|a| a.ints.as_slice()))
    }

    pub(crate) fn floats(&self, name: &'static str) -> Result<Option<&'a [f32]>, TreeError> {
        Ok(self
            .typed(name, AttributeType::Floats)?
            .map(|a| a.floats.as_slice()))
    }

    pub(crate) fn int(&self, name: &'static str) -> Result<Option<i64>, TreeError> {
        Ok(self.typed(name, AttributeType::Int)?.map(|a| a.i))
    }

    pub(crate) fn string(&self, name: &'static str) -> Result<Option<&'a str>, TreeError> {
        self.typed(name, AttributeType::String)?
            .map(|a| utf8(name, &a.s))
            .transpose()
    }

    pub(crate) fn strings(&self, name: &'static str) -> Result<Option<Vec<&'a str>>, TreeError> {
        let Some(attr) = self.typed(name, AttributeType::Strings)? else {
            return Ok(None);
        };
        attr.strings
            .iter()
            .map(|s| utf8(name, s))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// A required INTS attribute.
    pub(crate) fn req_ints(&self, name: &'static str) -> Result<&'a [i64], TreeError> {
        self.ints(name)?.ok_or(TreeError::Missing { attr: name })
    }

    /// A required INTS attribute with exactly `len` entries (the length of `like`).
    pub(crate) fn ints_len(
        &self,
        name: &'static str,
        len: usize,
        like: &'static str,
    ) -> Result<&'a [i64], TreeError> {
        let v = self.req_ints(name)?;
        check_len(name, v.len(), len, like)?;
        Ok(v)
    }

    /// A list of doubles given either as FLOATS `name` or as a TENSOR `tensor_name`
    /// (the `_as_tensor` form the spec added for double precision).
    pub(crate) fn doubles(
        &self,
        name: &'static str,
        tensor_name: &'static str,
    ) -> Result<Option<Vec<f64>>, TreeError> {
        let floats = self.floats(name)?;
        let tensor = self.typed(tensor_name, AttributeType::Tensor)?;
        match (floats, tensor) {
            (Some(_), Some(_)) => Err(TreeError::Exclusive {
                first: name,
                second: tensor_name,
            }),
            (Some(f), None) => Ok(Some(f.iter().map(|&x| x as f64).collect())),
            (None, Some(t)) => tensor_doubles(tensor_name, t).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// An attribute's bytes as UTF-8, or an error naming it.
fn utf8<'a>(name: &'static str, bytes: &'a [u8]) -> Result<&'a str, TreeError> {
    std::str::from_utf8(bytes).map_err(|_| TreeError::Invalid {
        attr: name,
        why: "value is not UTF-8".into(),
    })
}

/// The values of a TENSOR attribute holding FLOAT or DOUBLE data, as doubles.
///
/// Read here rather than by tract's `load_tensor`, which panics
/// (`unimplemented!`) on a STRING tensor whose data is in `raw_data`, and
/// would follow external data to files beside the model: an uploaded model
/// must get a load error naming the attribute, never a panic.
fn tensor_doubles(name: &'static str, attr: &AttributeProto) -> Result<Vec<f64>, TreeError> {
    let t = attr.t.as_ref().ok_or(TreeError::Missing { attr: name })?;
    let invalid = |why: String| TreeError::Invalid { attr: name, why };
    if t.data_location == Some(DataLocation::External as i32) {
        return Err(invalid("external data is not read for an attribute".into()));
    }
    let values = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if t.raw_data.is_empty() => {
            Ok(t.float_data.iter().map(|&x| x as f64).collect())
        }
        Ok(DataType::Float) => from_raw(&t.raw_data, |b: [u8; 4]| f32::from_le_bytes(b) as f64),
        Ok(DataType::Double) if t.raw_data.is_empty() => Ok(t.double_data.clone()),
        Ok(DataType::Double) => from_raw(&t.raw_data, f64::from_le_bytes),
        other => {
            let found = other.map_or(format!("#{}", t.data_type), |d| d.as_str_name().into());
            return Err(invalid(format!(
                "expected FLOAT or DOUBLE data, got {found}"
            )));
        }
    }
    .map_err(invalid)?;
    check_dims(t, values.len()).map_err(invalid)?;
    Ok(values)
}

/// Little-endian values of `N` bytes each, as ONNX lays out `raw_data`.
fn from_raw<const N: usize>(raw: &[u8], read: impl Fn([u8; N]) -> f64) -> Result<Vec<f64>, String> {
    let values = raw.chunks_exact(N);
    if !values.remainder().is_empty() {
        return Err(format!(
            "raw_data has {} bytes, not a whole number of {N}-byte values",
            raw.len()
        ));
    }
    Ok(values
        .map(|b| read(b.try_into().expect("N bytes")))
        .collect())
}

/// Checks that a tensor's dims hold exactly `count` values (no dims: one).
fn check_dims(t: &TensorProto, count: usize) -> Result<(), String> {
    let size = t.dims.iter().try_fold(1usize, |size, &d| {
        usize::try_from(d).ok().and_then(|d| size.checked_mul(d))
    });
    match size {
        Some(size) if size == count => Ok(()),
        _ => Err(format!("dims {:?} do not hold its {count} values", t.dims)),
    }
}

/// Checks that a per-node or per-vote attribute has one entry per item.
pub(crate) fn check_len(
    name: &'static str,
    found: usize,
    expected: usize,
    like: &'static str,
) -> Result<(), TreeError> {
    if found == expected {
        Ok(())
    } else {
        Err(TreeError::Length {
            attr: name,
            found,
            expected,
            like,
        })
    }
}
