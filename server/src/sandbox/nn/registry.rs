//! Named graphs, loaded once per host and shared by every instance.
//!
//! wasmtime-wasi-nn's own in-memory registry loads from a directory per
//! backend; hadr's models are single ONNX files named by the topology, so this
//! registry holds them itself. Cloning it clones an `Arc`: each instance's
//! wasi-nn context gets the same graphs, never a copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime_wasi_nn::backend::BackendGraph;
use wasmtime_wasi_nn::Graph;

use super::tract_backend::{TractBackend, TractGraph};

/// A model that failed to load, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read model {path}: {source}")]
    Read {
        /// The model file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tensor the model declares is over the model budget.
    #[error("model {path} refused: {source}")]
    OverBudget {
        /// The model file.
        path: PathBuf,
        /// The tensor and its size.
        source: Box<super::budget::OverBudget>,
    },
    /// tract could not load or optimise it.
    #[error("cannot load model {path} as ONNX: {message}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// tract's explanation, with its causes.
        message: String,
    },
}

/// One model as the host knows it: the shared graph and facts about it.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// The name guests load it by (the file's stem, e.g. `digits`).
    pub name: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Hex SHA-256 of the file.
    pub digest: String,
    /// The optimised plan.
    pub graph: TractGraph,
}

impl LoadedModel {
    /// Reads, parses and optimises an ONNX file within `budget` bytes;
    /// named by its file stem.
    pub fn from_file(path: &Path, budget: u64) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(model_name(path), path, &bytes, budget)
    }

    /// Parses and optimises ONNX bytes served as `name`, within `budget`
    /// bytes of host memory; `path` names them in errors.
    pub fn from_bytes(
        name: String,
        path: &Path,
        bytes: &[u8],
        budget: u64,
    ) -> Result<Self, ModelError> {
        let graph =
            TractBackend::load_onnx(bytes, budget).map_err(|e| match e
                .downcast_ref::<super::budget::OverBudget>()
            {
                Some(over) => ModelError::OverBudget {
                    path: path.to_owned(),
                    source: Box::new(over.clone()),
                },
                None => ModelError::Load {
                    path: path.to_owned(),
                    message: format!("{e:#}"),
                },
            })?;
        Ok(Self {
            name,
            path: path.to_owned(),
            digest: hadr_state::blobs::digest(bytes),
            graph,
        })
    }
}

/// The name a model file is served under: its file stem.
pub fn model_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The graphs a guest may `load-by-name`.
#[derive(Clone, Default)]
pub struct GraphRegistry {
    graphs: Arc<HashMap<String, Graph>>,
}

impl GraphRegistry {
    /// A registry serving exactly these models.
    pub fn new<'a>(models: impl IntoIterator<Item = &'a LoadedModel>) -> Self {
        let graphs = models
            .into_iter()
            .map(|m| {
                let graph: Box<dyn BackendGraph> = Box::new(m.graph.clone());
                (m.name.clone(), Graph::from(graph))
            })
            .collect();
        Self {
            graphs: Arc::new(graphs),
        }
    }
}

impl wasmtime_wasi_nn::GraphRegistry for GraphRegistry {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.graphs.get(name)
    }

    /// Graphs are shared and immutable: no guest gets a mutable one.
    fn get_mut(&mut self, _name: &str) -> Option<&mut Graph> {
        None
    }
}
