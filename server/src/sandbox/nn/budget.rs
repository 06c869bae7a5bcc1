//! The host memory a model may claim, checked before tract sees it.
//!
//! tract folds constants while it analyses a model: a 215-byte file whose
//! `ConstantOfShape` declares 128M floats makes the host allocate 512 MiB at
//! load, and copy it at every prediction. So the ONNX graph is read first,
//! and every tensor whose size the file fixes is sized against the budget:
//! - the constants it carries (initializers, `Constant` nodes);
//! - tensors whose shape comes from a constant (`ConstantOfShape`, `Expand`,
//!   `Tile`, `Range`);
//! - every declared input, output and value with fixed dimensions.
//!
//! What the file leaves symbolic (the batch) is counted as 1. A second check
//! after tract's typing ([`check_fact`]) sizes every tensor tract could fix.

use std::collections::HashMap;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::pb::{type_proto, GraphProto, ModelProto, NodeProto, TensorProto};

use crate::sandbox::nn::tract_backend::from_le_bytes;

/// A tensor over the budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} `{name}` would take {bytes} bytes of host memory, over the model budget of {budget} bytes (--max-model-bytes)"
)]
pub struct OverBudget {
    /// What kind of tensor it is (a constant, an output of an op, ...).
    pub what: String,
    /// Its name in the model.
    pub name: String,
    /// Its size (saturated at `u64::MAX`).
    pub bytes: u64,
    /// The budget.
    pub budget: u64,
}

/// Checks every size the model file fixes against `budget` bytes, each tensor
/// alone and the constants together.
pub fn check_model(model: &ModelProto, budget: u64) -> Result<(), OverBudget> {
    let mut walk = Walk {
        budget,
        constants: 0,
        ints: HashMap::new(),
    };
    if let Some(graph) = &model.graph {
        walk.graph(graph)?;
    }
    Ok(())
}

/// Checks one tensor tract typed: `volume` elements of `size` bytes.
pub fn check_fact(name: &str, volume: u64, size: u64, budget: u64) -> Result<(), OverBudget> {
    fit("the tensor", name, volume.saturating_mul(size), budget)
}

/// `bytes` of `what` `name`, refused over `budget`.
fn fit(what: &str, name: &str, bytes: u64, budget: u64) -> Result<(), OverBudget> {
    if bytes > budget {
        return Err(OverBudget {
            what: what.into(),
            name: name.into(),
            bytes,
            budget,
        });
    }
    Ok(())
}

/// Small integer constants are kept by name: they are the shapes and
/// repeats other ops take.
const SMALL_INTS: usize = 64;

struct Walk {
    budget: u64,
    /// Bytes of constants seen so far.
    constants: u64,
    /// Integer constants of at most [`SMALL_INTS`] values, by output name.
    ints: HashMap<String, Vec<i64>>,
}

impl Walk {
    fn graph(&mut self, graph: &GraphProto) -> Result<(), OverBudget> {
        for tensor in &graph.initializer {
            self.constant("the initializer", &tensor.name, tensor)?;
        }
        for info in graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
        {
            if let Some(type_proto::Value::TensorType(t)) =
                info.r#type.as_ref().and_then(|t| t.value.as_ref())
            {
                let dims = t.shape.as_ref().map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(dimension::Value::DimValue(v)) => v,
                            _ => 1,
                        })
                        .collect::<Vec<_>>()
                });
                if let Some(dims) = dims {
                    self.sized(
                        "the declared tensor",
                        &info.name,
                        volume(&dims),
                        elem_size(t.elem_type),
                    )?;
                }
            }
        }
        for node in &graph.node {
            self.node(node)?;
        }
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), OverBudget> {
        for attribute in &node.attribute {
            if let Some(t) = &attribute.t {
                self.constant("the constant", name_of(node), t)?;
            }
            for t in &attribute.tensors {
                self.constant("the constant", name_of(node), t)?;
            }
            for g in attribute.g.iter().chain(&attribute.graphs) {
                self.graph(g)?;
            }
        }
        let input = |i: usize| node.input.get(i).and_then(|n| self.ints.get(n));
        let made = match node.op_type.as_str() {
            "ConstantOfShape" => input(0).map(|shape| {
                let size = node
                    .attribute
                    .iter()
                    .find_map(|a| a.t.as_ref())
                    .map_or(4, |t| elem_size(t.data_type));
                (volume(shape), size)
            }),
            "Expand" => input(1).map(|shape| (volume(shape), 1)),
            "Tile" => input(1).map(|repeats| (volume(repeats), 1)),
            "Range" => match (input(0), input(1), input(2)) {
                (Some(start), Some(limit), Some(delta)) => {
                    range_len(start, limit, delta).map(|n| (n, 1))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some((elements, size)) = made {
            self.sized(
                &format!("the output of {}", node.op_type),
                name_of(node),
                elements,
                size,
            )?;
        }
        Ok(())
    }

    /// A constant: sized alone, added to the total, and kept if it is a
    /// small integer list.
    fn constant(&mut self, what: &str, name: &str, t: &TensorProto) -> Result<(), OverBudget> {
        let bytes = volume(&t.dims).saturating_mul(elem_size(t.data_type));
        fit(what, name, bytes, self.budget)?;
        self.constants = self.constants.saturating_add(bytes);
        fit("the constants, with", name, self.constants, self.budget)?;
        if let Some(values) = small_ints(t) {
            let key = if t.name.is_empty() { name } else { &t.name };
            self.ints.insert(key.to_string(), values);
        }
        Ok(())
    }

    fn sized(&self, what: &str, name: &str, elements: u64, size: u64) -> Result<(), OverBudget> {
        fit(what, name, elements.saturating_mul(size), self.budget)
    }
}

fn name_of(node: &NodeProto) -> &str {
    if node.name.is_empty() {
        node.output.first().map_or("", String::as_str)
    } else {
        &node.name
    }
}

/// Elements of a shape; negative or absent dimensions count as 1.
fn volume(dims: &[i64]) -> u64 {
    dims.iter().fold(1u64, |n, &d| {
        n.saturating_mul(u64::try_from(d).unwrap_or(1).max(1))
    })
}

/// Bytes per element of an ONNX data type (strings and unknowns as 8).
fn elem_size(data_type: i32) -> u64 {
    match DataType::try_from(data_type) {
        Ok(DataType::Uint8 | DataType::Int8 | DataType::Bool) => 1,
        Ok(DataType::Uint16 | DataType::Int16 | DataType::Float16 | DataType::Bfloat16) => 2,
        Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
        Ok(DataType::Complex128) => 16,
        _ => 8,
    }
}

/// The values of a small INT64 or INT32 constant.
fn small_ints(t: &TensorProto) -> Option<Vec<i64>> {
    if volume(&t.dims) > SMALL_INTS as u64 {
        return None;
    }
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 if !t.int64_data.is_empty() => Some(t.int64_data.clone()),
        DataType::Int64 => Some(from_le_bytes(&t.raw_data, i64::from_le_bytes)),
        DataType::Int32 if !t.int32_data.is_empty() => {
            Some(t.int32_data.iter().map(|&v| i64::from(v)).collect())
        }
        DataType::Int32 => Some(
            from_le_bytes(&t.raw_data, i32::from_le_bytes)
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        _ => None,
    }
}

/// Elements of `Range(start, limit, delta)` on scalar constants.
fn range_len(start: &[i64], limit: &[i64], delta: &[i64]) -> Option<u64> {
    let ([s], [l], [d]) = (start, limit, delta) else {
        return None;
    };
    if *d == 0 {
        return None;
    }
    let span = (i128::from(*l) - i128::from(*s)) / i128::from(*d);
    Some(u64::try_from(span.max(0)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto};

    fn ints(name: &str, values: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn model(initializer: Vec<TensorProto>, node: Vec<NodeProto>) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                initializer,
                node,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: format!("{op}_0"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_constant_of_shape_of_128m_floats_is_over_a_256_mib_budget() {
        let m = model(
            vec![ints("shape", &[128 << 20])],
            vec![node("ConstantOfShape", &["shape"])],
        );
        let e = check_model(&m, 256 << 20).unwrap_err();
        assert_eq!(e.bytes, 512 << 20);
        assert_eq!(e.name, "ConstantOfShape_0");
        assert!(e.to_string().contains("--max-model-bytes"), "{e}");
        check_model(&m, 512 << 20).unwrap();
    }

    #[test]
    fn a_shape_given_by_a_constant_node_counts_too() {
        let constant = NodeProto {
            op_type: "Constant".into(),
            output: vec!["shape".into()],
            attribute: vec![AttributeProto {
                name: "value".into(),
                t: Some(ints("", &[1 << 20, 1 << 20])),
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = model(vec![], vec![constant, node("Expand", &["x", "shape"])]);
        assert!(check_model(&m, 1 << 30).is_err());
    }

    #[test]
    fn big_initializers_and_their_sum_are_refused() {
        let floats = |name: &str, n: i64| TensorProto {
            name: name.into(),
            dims: vec![n],
            data_type: DataType::Float as i32,
            ..Default::default()
        };
        assert!(check_model(&model(vec![floats("w", 1000)], vec![]), 4000).is_ok());
        assert!(check_model(&model(vec![floats("w", 1001)], vec![]), 4000).is_err());
        let e = check_model(
            &model(vec![floats("a", 600), floats("b", 600)], vec![]),
            4000,
        )
        .unwrap_err();
        assert!(e.what.contains("constants"), "{e}");
    }

    #[test]
    fn a_range_of_a_billion_is_refused_and_a_negative_one_is_empty() {
        let m = model(
            vec![
                ints("s", &[0]),
                ints("l", &[1_000_000_000]),
                ints("d", &[1]),
            ],
            vec![node("Range", &["s", "l", "d"])],
        );
        assert!(check_model(&m, 1 << 20).is_err());
        assert_eq!(range_len(&[5], &[0], &[1]), Some(0));
        assert_eq!(range_len(&[0], &[10], &[0]), None);
    }

    #[test]
    fn shapes_that_overflow_saturate_instead_of_wrapping() {
        assert_eq!(volume(&[i64::MAX, i64::MAX]), u64::MAX);
        assert_eq!(volume(&[-1, 3]), 3);
        assert!(check_fact("t", u64::MAX, 4, 1 << 30).is_err());
    }
}
