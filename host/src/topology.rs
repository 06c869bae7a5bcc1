//! Topology files: the article's format, read unchanged, plus optional fields.
//!
//! ```json
//! { "predict1": { "status": true,  "load": 0, "port": "9696" },
//!   "predict3": { "status": false, "load": 0, "port": "9698", "max_load": 20,
//!                 "model": "../models/breast_cancer.onnx", "module": "guest.wasm" } }
//! ```
//! `status: false` marks a standby. `load` is the article's live counter; a
//! file's value is ignored at start (load is always measured, never trusted).
//! `port` (string or number, `"0"` for any free port) makes the instance also
//! serve `POST /predict` directly. Relative `model` and `module` paths are
//! resolved against the topology file's folder.
//!
//! Every error names the file, the instance and the field, so an operator
//! can fix the file without reading hadr's source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The article's default saturation threshold: in-flight requests per instance.
pub const DEFAULT_MAX_LOAD: usize = 10;

/// A validated topology: instances in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Where it was read from.
    pub path: PathBuf,
    /// Instances in the order the file lists them.
    pub instances: Vec<InstanceSpec>,
}

/// One entry of a topology.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    /// Its name (the JSON key).
    pub name: String,
    /// `true` for active, `false` for standby.
    pub active: bool,
    /// A direct `POST /predict` port, if any (0: any free port).
    pub port: Option<u16>,
    /// In-flight requests at which the router stops sending it more.
    pub max_load: usize,
    /// The ONNX model it serves.
    pub model: PathBuf,
    /// The guest component it runs.
    pub module: PathBuf,
}

/// What a topology falls back to where an entry names no model or module.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Model for entries without `model`.
    pub model: PathBuf,
    /// Guest component for entries without `module`.
    pub module: PathBuf,
}

/// Why a topology file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("{file}: cannot read topology: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON, or not an object of instances.
    #[error("{file}: not a topology (a JSON object of instances): {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// serde_json's explanation, with line and column.
        message: String,
    },
    /// One instance's entry is wrong.
    #[error("{file}: instance `{instance}`: {message}")]
    Instance {
        /// The file.
        file: PathBuf,
        /// The instance's name.
        instance: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The topology as a whole is unusable.
    #[error("{file}: {message}")]
    Whole {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    status: bool,
    #[serde(default)]
    #[allow(dead_code, reason = "the article's field; load is measured, not read")]
    load: serde_json::Value,
    #[serde(default)]
    port: Option<RawPort>,
    #[serde(default)]
    max_load: Option<usize>,
    #[serde(default)]
    model: Option<PathBuf>,
    #[serde(default)]
    module: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(u64),
    Text(String),
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path, defaults: &Defaults) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, defaults)
    }

    /// Validates a topology's text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path, defaults: &Defaults) -> Result<Self, TopologyError> {
        let file = path.to_owned();
        let entries = entries(text).map_err(|e| TopologyError::Syntax {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let instances = entries
            .into_iter()
            .map(|(name, value)| instance(&file, base, defaults, name, value))
            .collect::<Result<Vec<_>, _>>()?;
        let topology = Self {
            path: file,
            instances,
        };
        topology.check_whole()?;
        Ok(topology)
    }

    fn check_whole(&self) -> Result<(), TopologyError> {
        let whole = |message: String| TopologyError::Whole {
            file: self.path.clone(),
            message,
        };
        if self.instances.is_empty() {
            return Err(whole("no instances: list at least one, e.g. {\"predict1\": {\"status\": true, \"load\": 0, \"port\": \"9696\"}}".into()));
        }
        if !self.instances.iter().any(|i| i.active) {
            return Err(whole(
                "no active instance: set `\"status\": true` on at least one".into(),
            ));
        }
        let mut ports: HashMap<u16, &str> = HashMap::new();
        for i in &self.instances {
            if let Some(port) = i.port.filter(|p| *p != 0) {
                if let Some(other) = ports.insert(port, &i.name) {
                    return Err(TopologyError::Instance {
                        file: self.path.clone(),
                        instance: i.name.clone(),
                        message: format!("field `port`: {port} is already the port of `{other}`"),
                    });
                }
            }
        }
        Ok(())
    }
}

fn instance(
    file: &Path,
    base: &Path,
    defaults: &Defaults,
    name: String,
    value: serde_json::Value,
) -> Result<InstanceSpec, TopologyError> {
    let fail = |message: String| TopologyError::Instance {
        file: file.to_owned(),
        instance: name.clone(),
        message,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(fail(
            "the name must be non-empty ASCII letters, digits, `-`, `_` or `.`".into(),
        ));
    }
    let raw: RawInstance = serde_json::from_value(value).map_err(|e| fail(e.to_string()))?;
    let port = raw.port.map(port).transpose().map_err(fail)?;
    let max_load = raw.max_load.unwrap_or(DEFAULT_MAX_LOAD);
    if max_load == 0 {
        return Err(fail("field `max_load`: must be at least 1".into()));
    }
    let resolve = |field: &str, given: Option<PathBuf>, default: &Path| {
        let path = match given {
            Some(p) if p.is_absolute() => p,
            Some(p) => base.join(p),
            None => default.to_owned(),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(fail(format!(
                "field `{field}`: no such file: {}",
                path.display()
            )))
        }
    };
    let model = resolve("model", raw.model, &defaults.model)?;
    let module = resolve("module", raw.module, &defaults.module)?;
    Ok(InstanceSpec {
        name: name.clone(),
        active: raw.status,
        port,
        max_load,
        model,
        module,
    })
}

fn port(raw: RawPort) -> Result<u16, String> {
    let parsed = match &raw {
        RawPort::Number(n) => u16::try_from(*n).ok(),
        RawPort::Text(s) => s.trim().parse::<u16>().ok(),
    };
    parsed.ok_or_else(|| {
        let shown = match raw {
            RawPort::Number(n) => n.to_string(),
            RawPort::Text(s) => format!("{s:?}"),
        };
        format!("field `port`: {shown} is not a TCP port (0 to 65535, as a number or a string)")
    })
}

/// The file's entries in order, refusing an instance named twice (a JSON
/// object with a repeated key, whose later entry would silently replace the
/// earlier one).
fn entries(text: &str) -> Result<Vec<(String, serde_json::Value)>, serde_json::Error> {
    use serde::de::{Deserializer, Error, MapAccess, Visitor};

    struct Entries;

    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, serde_json::Value)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of instances")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, serde_json::Value)> = Vec::new();
            while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                if out.iter().any(|(seen, _)| *seen == name) {
                    return Err(A::Error::custom(format_args!(
                        "instance `{name}` is given twice"
                    )));
                }
                out.push((name, value));
            }
            Ok(out)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let entries = de.deserialize_map(Entries)?;
    de.end()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(dir: &Path) -> Defaults {
        let model = dir.join("m.onnx");
        let module = dir.join("g.wasm");
        std::fs::write(&model, b"x").unwrap();
        std::fs::write(&module, b"x").unwrap();
        Defaults { model, module }
    }

    fn parse(text: &str) -> Result<Topology, TopologyError> {
        let dir = std::env::temp_dir().join(format!("hadr-topology-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Topology::parse(text, &dir.join("t.json"), &defaults(&dir))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_articles_files_load_unchanged() {
        for name in ["single.json", "2-active.json", "3-active.json"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../topologies")
                .join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let t = parse(&text).unwrap();
            assert_eq!(t.instances[0].name, "predict1");
            assert_eq!(t.instances[0].port, Some(9696));
            assert!(t.instances.iter().all(|i| i.max_load == DEFAULT_MAX_LOAD));
        }
        let t = parse(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/2-active.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let active: Vec<bool> = t.instances.iter().map(|i| i.active).collect();
        assert_eq!(active, [true, true, false]);
    }

    #[test]
    fn errors_name_the_instance_and_field() {
        let e = error(r#"{"p1": {"status": true, "port": "96x6"}}"#);
        assert!(
            e.contains("instance `p1`") && e.contains("field `port`"),
            "{e}"
        );
        let e = error(r#"{"p1": {"status": true, "colour": 1}}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = error(r#"{"p1": {"load": 0}}"#);
        assert!(e.contains("missing field `status`"), "{e}");
        let e = error(r#"{"p1": {"status": true, "model": "nowhere.onnx"}}"#);
        assert!(e.contains("field `model`: no such file"), "{e}");
        let e = error(r#"{"p1": {"status": true, "max_load": 0}}"#);
        assert!(e.contains("field `max_load`"), "{e}");
    }

    #[test]
    fn whole_file_errors() {
        assert!(error("{").contains("not a topology"));
        assert!(error("[]").contains("not a topology"));
        assert!(error("{}").contains("no instances"));
        let twice = error(r#"{"p1": {"status": true}, "p1": {"status": false}}"#);
        assert!(twice.contains("instance `p1` is given twice"), "{twice}");
        assert!(error(r#"{"p1": {"status": false}}"#).contains("no active instance"));
        let e = error(
            r#"{"a": {"status": true, "port": 9000}, "b": {"status": true, "port": "9000"}}"#,
        );
        assert!(
            e.contains("instance `b`") && e.contains("already the port of `a`"),
            "{e}"
        );
    }

    #[test]
    fn port_zero_may_repeat_and_order_is_kept() {
        let t = parse(r#"{"z": {"status": true, "port": 0}, "a": {"status": false, "port": "0"}}"#)
            .unwrap();
        let names: Vec<&str> = t.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
    }
}
