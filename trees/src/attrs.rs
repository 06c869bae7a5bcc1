//! Reading a node's attributes with errors that name them.
//!
//! tract's `pb_helpers` report problems as free text; the ensemble parsers want
//! [`TreeError`]s instead, so a malformed model says which attribute is wrong in
//! a form tests (and the host) can match on.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, NodeProto};
use tract_onnx::prelude::*;

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
        ctx: &ParsingContext,
        name: &'static str,
        tensor_name: &'static str,
    ) -> TractResult<Option<Vec<f64>>> {
        let floats = self.floats(name)?;
        let tensor = self.typed(tensor_name, AttributeType::Tensor)?;
        match (floats, tensor) {
            (Some(_), Some(_)) => Err(TreeError::Exclusive {
                first: name,
                second: tensor_name,
            })?,
            (Some(f), None) => Ok(Some(f.iter().map(|&x| x as f64).collect())),
            (None, Some(t)) => Ok(Some(tensor_doubles(ctx, tensor_name, t)?)),
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

/// The values of a TENSOR attribute, as doubles, whatever float type it holds.
fn tensor_doubles(
    ctx: &ParsingContext,
    name: &'static str,
    attr: &AttributeProto,
) -> TractResult<Vec<f64>> {
    let proto = attr.t.as_ref().ok_or(TreeError::Missing { attr: name })?;
    let tensor = ctx.load_tensor(proto)?;
    if !tensor.datum_type().is_float() {
        Err(TreeError::Invalid {
            attr: name,
            why: format!("expected a float tensor, got {:?}", tensor.datum_type()),
        })?;
    }
    let doubles = tensor.cast_to::<f64>()?;
    Ok(doubles.try_as_plain_ram()?.as_slice::<f64>()?.to_vec())
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
