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
//! serve `POST /predict` directly. `concurrency` is the most calls the entry
//! runs at once, each in its own sandbox (default: `serve --concurrency`).
//! `"batch": {"max_requests": 32, "max_delay": "200us"}` turns on dynamic
//! batching: requests that arrive together are merged into one guest call
//! (`"wait": "full-delay"` makes each batch wait its whole delay).
//! Relative `model` and `module` paths are resolved against the topology
//! file's folder.
//!
//! Every error names the file, the instance and the field, so an operator
//! can fix the file without reading hadr's source.
//!
//! A leaf: uses no other module of the crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The article's default saturation threshold: in-flight requests per instance.
pub const DEFAULT_MAX_LOAD: usize = 10;

/// Most requests one merged batch may hold: bounds a batch's memory
/// (requests × `--max-body`) and its call's length.
pub const MAX_BATCH_REQUESTS: usize = 1024;

/// Longest `max_delay` a batch may wait: a batch that waits its whole delay
/// adds it to its requests' latency, so it is meant in microseconds.
pub const MAX_BATCH_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// An instance's dynamic batching (its `"batch"` entry): requests that
/// arrive while the first of a batch waits for them (at most `max_delay`,
/// as `wait` says) are merged into one guest call, up to `max_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpec {
    /// Most requests merged into one call. Requests, not rows: the host
    /// does not read bodies (the guest does), and a request may hold
    /// several rows.
    pub max_requests: usize,
    /// How long a batch stays open at most for others to join it, from
    /// when its first request arrived (a leader that waited longer for a
    /// sandbox closes its batch at once). A round of the worker's ready
    /// tasks is not cut short, so a batch may close a little later.
    pub max_delay: std::time::Duration,
    /// Whether it waits only while requests keep arriving, or its whole
    /// delay.
    pub wait: BatchWait,
}

/// How long a batch waits for requests to join it, within its `max_delay`
/// (`"wait"` in a `"batch"` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchWait {
    /// While requests keep arriving: the batch closes once its leader,
    /// having let its worker's ready tasks (the connections it serves) run,
    /// finds that none of them brought a new request. An instance that
    /// keeps up runs each request at once; one that does not finds requests
    /// waiting, and merges them.
    #[default]
    WhileArriving,
    /// The whole `max_delay`, unless the batch fills first: merges every
    /// request that arrives within the delay, and adds the delay to the
    /// latency of every batch that does not fill.
    FullDelay,
}

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
    /// The address its port listens on (`"host"`); `None`: the router's IP.
    /// In a fleet (`serve --only`), each entry's machine.
    pub host: Option<std::net::IpAddr>,
    /// In-flight requests at which the router stops sending it more.
    pub max_load: usize,
    /// Most calls it runs at once, each in its own sandboxes (`None`: the
    /// host's `--concurrency`).
    pub concurrency: Option<usize>,
    /// Dynamic batching, if the entry asks for it.
    pub batch: Option<BatchSpec>,
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
#[serde(
    deny_unknown_fields,
    expecting = "an object of the instance's fields (\"status\", \"port\", \"model\", ...)"
)]
struct RawInstance {
    status: bool,
    #[serde(default)]
    #[allow(dead_code, reason = "the article's field; load is measured, not read")]
    load: serde_json::Value,
    #[serde(default)]
    port: Option<RawPort>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    max_load: Option<usize>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    batch: Option<RawBatch>,
    #[serde(default)]
    model: Option<PathBuf>,
    #[serde(default)]
    module: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"max_requests\": N, \"max_delay\": \"200us\"}"
)]
struct RawBatch {
    max_requests: usize,
    max_delay: String,
    /// Read in [`batch_wait`], so that its errors name the field.
    #[serde(default)]
    wait: Option<serde_json::Value>,
}

#[derive(Deserialize)]
// An untagged enum's `expecting` is its whole error message.
#[serde(
    untagged,
    expecting = "not a TCP port (0 to 65535, as a number or a string)"
)]
enum RawPort {
    Number(u64),
    Text(String),
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path, defaults: &Defaults) -> Result<Self, TopologyError> {
        Self::parse(&read(path)?, path, defaults)
    }

    /// Reads a topology's shape only (names, roles, hosts, ports,
    /// thresholds), without checking that its model and module files exist:
    /// for tools that run where they do not (`hadr-host export haproxy`).
    pub fn load_shape(path: &Path) -> Result<Self, TopologyError> {
        Self::parse_shape(&read(path)?, path)
    }

    /// [`Topology::load_shape`] from text; `path` names it in errors.
    pub fn parse_shape(text: &str, path: &Path) -> Result<Self, TopologyError> {
        Self::parse_with(text, path, None)
    }

    /// Validates a topology's text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path, defaults: &Defaults) -> Result<Self, TopologyError> {
        Self::parse_with(text, path, Some(defaults))
    }

    /// Keeps only the entries named in `only` (`serve --only`), in file
    /// order; an unknown name is refused, naming the ones there are.
    pub fn only(mut self, only: &[String]) -> Result<Self, TopologyError> {
        if let Some(unknown) = only
            .iter()
            .find(|n| !self.instances.iter().any(|i| &i.name == *n))
        {
            let names: Vec<&str> = self.instances.iter().map(|i| i.name.as_str()).collect();
            return Err(TopologyError::Whole {
                file: self.path.clone(),
                message: format!(
                    "--only names `{unknown}`, which the file does not have; its entries are {}",
                    names.join(", ")
                ),
            });
        }
        self.instances.retain(|i| only.contains(&i.name));
        Ok(self)
    }

    /// With `defaults`, model and module files are resolved and must exist.
    fn parse_with(
        text: &str,
        path: &Path,
        defaults: Option<&Defaults>,
    ) -> Result<Self, TopologyError> {
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
        // Two entries may share a port only on different hosts.
        let mut ports: HashMap<(Option<std::net::IpAddr>, u16), &str> = HashMap::new();
        for i in &self.instances {
            if let Some(port) = i.port.filter(|p| *p != 0) {
                if let Some(other) = ports.insert((i.host, port), &i.name) {
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

fn read(path: &Path) -> Result<String, TopologyError> {
    std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
        file: path.to_owned(),
        source,
    })
}

fn instance(
    file: &Path,
    base: &Path,
    defaults: Option<&Defaults>,
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
        // Told escaped: the name may hold control characters.
        return Err(TopologyError::Instance {
            file: file.to_owned(),
            instance: name.escape_debug().to_string(),
            message: "the name must be non-empty ASCII letters, digits, `-`, `_` or `.`".into(),
        });
    }
    let raw: RawInstance = serde_path_to_error::deserialize(value)
        .map_err(|e| fail(crate::errors::field_error(&e)))?;
    let port = raw.port.map(port).transpose().map_err(fail)?;
    let host = raw
        .host
        .map(|h| {
            let ip = h.trim().parse::<std::net::IpAddr>().map_err(|_| {
                fail(format!(
                    "field `host`: {h:?} is not an IP address (the address the entry's port listens on, e.g. \"127.0.0.2\")"
                ))
            })?;
            // Such an address binds, but no TCP connection can reach it.
            let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
            if ip.is_multicast() || broadcast {
                return Err(fail(format!(
                    "field `host`: {ip} is a {} address, which takes no TCP connection",
                    if broadcast { "broadcast" } else { "multicast" }
                )));
            }
            Ok(ip)
        })
        .transpose()?;
    let max_load = raw.max_load.unwrap_or(DEFAULT_MAX_LOAD);
    if max_load == 0 {
        return Err(fail("field `max_load`: must be at least 1".into()));
    }
    if raw.concurrency == Some(0) {
        return Err(fail(
            "field `concurrency`: must be at least 1 (the calls it runs at once)".into(),
        ));
    }
    let batch = raw.batch.map(batch_spec).transpose().map_err(fail)?;
    let resolve = |field: &str, given: Option<PathBuf>, default: Option<&Path>| {
        let path = match (given, default) {
            (Some(p), _) if p.is_absolute() => p,
            (Some(p), _) => base.join(p),
            (None, Some(default)) => default.to_owned(),
            // Shape only: no default to fall back to, and none needed.
            (None, None) => PathBuf::new(),
        };
        match defaults.is_none() || path.is_file() {
            true => Ok(path),
            false if path.is_dir() => Err(fail(format!(
                "field `{field}`: {} is a directory, not a file",
                path.display()
            ))),
            false => Err(fail(format!(
                "field `{field}`: no such file: {}",
                path.display()
            ))),
        }
    };
    let model = resolve("model", raw.model, defaults.map(|d| d.model.as_path()))?;
    let module = resolve("module", raw.module, defaults.map(|d| d.module.as_path()))?;
    Ok(InstanceSpec {
        name: name.clone(),
        active: raw.status,
        port,
        host,
        max_load,
        concurrency: raw.concurrency,
        batch,
        model,
        module,
    })
}

fn batch_spec(raw: RawBatch) -> Result<BatchSpec, String> {
    if !(2..=MAX_BATCH_REQUESTS).contains(&raw.max_requests) {
        return Err(format!(
            "field `batch.max_requests`: {} is out of range: 2 to {MAX_BATCH_REQUESTS} requests merged into one call (leave `batch` out not to batch)",
            raw.max_requests
        ));
    }
    let max_delay = humantime::parse_duration(raw.max_delay.trim()).map_err(|e| {
        format!(
            "field `batch.max_delay`: {:?} is not a duration ({e}); write e.g. \"200us\" or \"1ms\"",
            raw.max_delay
        )
    })?;
    if max_delay > MAX_BATCH_DELAY {
        return Err(format!(
            "field `batch.max_delay`: {} is longer than {}: a batch may wait this long for requests to join it, so it is meant in microseconds",
            raw.max_delay.trim(),
            humantime::format_duration(MAX_BATCH_DELAY)
        ));
    }
    Ok(BatchSpec {
        max_requests: raw.max_requests,
        max_delay,
        wait: batch_wait(raw.wait)?,
    })
}

fn batch_wait(raw: Option<serde_json::Value>) -> Result<BatchWait, String> {
    use serde::de::IntoDeserializer;
    let Some(value) = raw else {
        return Ok(BatchWait::default());
    };
    let refused = |why: String| {
        format!(
            "field `batch.wait`: {value} is not a way to wait ({why}); write \"while-arriving\" (the default) or \"full-delay\""
        )
    };
    let text = value
        .as_str()
        .ok_or_else(|| refused("not a string".into()))?;
    BatchWait::deserialize(text.into_deserializer())
        .map_err(|e: serde::de::value::Error| refused(e.to_string()))
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

/// The example beside a model file: the `example` request body of
/// `<stem>.cases.json` (else its first case's input, as `{"inputs": [row]}`),
/// if that file exists and has one.
pub fn example_beside(model: &Path) -> Option<bytes::Bytes> {
    let stem = model.file_stem()?.to_string_lossy();
    let cases = model.with_file_name(format!("{stem}.cases.json"));
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(cases).ok()?).ok()?;
    let body = match cases.get("example") {
        Some(example) => example.clone(),
        None => serde_json::json!({ "inputs": [cases.get("cases")?.get(0)?.get("input")?] }),
    };
    serde_json::to_vec(&body).ok().map(bytes::Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the tests' topology files sit: the defaults, and the `m.onnx`
    /// a relative path finds next to them, are checked-in one-byte files
    /// (the loader checks that files exist, not what they hold), so no test
    /// leaves a folder behind.
    pub(super) fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/topology/fixture")
    }

    fn defaults(dir: &Path) -> Defaults {
        Defaults {
            model: dir.join("m.onnx"),
            module: dir.join("g.wasm"),
        }
    }

    fn parse(text: &str) -> Result<Topology, TopologyError> {
        let dir = fixture();
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
        // Type errors name the field too, nested ones by their path.
        let e = error(r#"{"p1": {"status": true, "max_load": "ten"}}"#);
        assert!(e.contains("field `max_load`: invalid type: string"), "{e}");
        let e = error(r#"{"p1": {"status": "yes"}}"#);
        assert!(e.contains("field `status`: invalid type"), "{e}");
        let e =
            error(r#"{"p1": {"status": true, "batch": {"max_requests": -1, "max_delay": "1ms"}}}"#);
        assert!(
            e.contains("field `batch.max_requests`: invalid value"),
            "{e}"
        );
        let e = error(r#"{"p1": {"status": true, "batch": {"max_delay": "1ms"}}}"#);
        assert!(
            e.contains("field `batch`: missing field `max_requests`"),
            "{e}"
        );
        let e = error(r#"{"p1": {"status": true, "batch": {"max_requests": 1, "colour": 1}}}"#);
        assert!(
            e.contains("p1`: field `batch`: unknown field `colour`"),
            "{e}"
        );
        let e = error(r#"{"p1": {"status": true, "colour": 1}}"#);
        assert!(e.contains("p1`: unknown field `colour`"), "{e}");
        // What a field takes, not serde's names for hadr's types.
        for (entry, want) in [
            (
                r#"{"status": true, "port": -1}"#,
                "field `port`: not a TCP port (0 to 65535",
            ),
            (
                r#"{"status": true, "port": [1]}"#,
                "field `port`: not a TCP port (0 to 65535",
            ),
            (
                r#"{"status": true, "batch": true}"#,
                "field `batch`: invalid type: boolean `true`, expected an object {\"max_requests\"",
            ),
            (r#"5"#, "expected an object of the instance's fields"),
            (
                r#"{"status": true, "host": "224.0.0.1"}"#,
                "224.0.0.1 is a multicast address",
            ),
            (
                r#"{"status": true, "host": "255.255.255.255"}"#,
                "is a broadcast address",
            ),
            (r#"{"status": true, "model": "."}"#, "field `model`: "),
        ] {
            let e = error(&format!(r#"{{"p1": {entry}}}"#));
            assert!(e.contains(want), "{entry}: {e}");
            assert!(!e.contains("Raw"), "{entry}: {e}");
        }
        let e = error(r#"{"p1": {"status": true, "model": "."}}"#);
        assert!(e.contains("is a directory, not a file"), "{e}");
        let e = error("{\"a\\u0000b\": {\"status\": true}}");
        assert!(e.contains("instance `a\\0b`"), "{e}");
    }

    #[test]
    fn batching_is_read_and_its_bounds_named() {
        let t = parse(
            r#"{"p1": {"status": true, "batch": {"max_requests": 32, "max_delay": "200us"}}}"#,
        )
        .unwrap();
        let want = BatchSpec {
            max_requests: 32,
            max_delay: std::time::Duration::from_micros(200),
            wait: BatchWait::WhileArriving,
        };
        assert_eq!(t.instances[0].batch, Some(want));
        let t = parse(
            r#"{"p1": {"status": true, "batch": {"max_requests": 32, "max_delay": "200us", "wait": "full-delay"}}}"#,
        )
        .unwrap();
        let want = BatchSpec {
            wait: BatchWait::FullDelay,
            ..want
        };
        assert_eq!(t.instances[0].batch, Some(want));
        assert_eq!(
            parse(r#"{"p1": {"status": true}}"#).unwrap().instances[0].batch,
            None
        );
        for (entry, says) in [
            (
                r#"{"max_requests": 1, "max_delay": "1ms"}"#,
                "field `batch.max_requests`: 1 is out of range",
            ),
            (
                r#"{"max_requests": 4096, "max_delay": "1ms"}"#,
                "field `batch.max_requests`: 4096",
            ),
            (
                r#"{"max_requests": 8, "max_delay": "soon"}"#,
                "field `batch.max_delay`: \"soon\" is not a duration",
            ),
            (
                r#"{"max_requests": 8, "max_delay": "5s"}"#,
                "field `batch.max_delay`: 5s is longer than 1s",
            ),
            (r#"{"max_requests": 8}"#, "missing field `max_delay`"),
            (
                r#"{"max_requests": 8, "max_delay": "1ms", "rows": 2}"#,
                "unknown field `rows`",
            ),
            (
                r#"{"max_requests": 8, "max_delay": "1ms", "wait": "forever"}"#,
                "field `batch.wait`: \"forever\" is not a way to wait (unknown variant `forever`",
            ),
            (
                r#"{"max_requests": 8, "max_delay": "1ms", "wait": 5}"#,
                "field `batch.wait`: 5 is not a way to wait (not a string)",
            ),
            (
                r#"{"max_requests": 8, "max_delay": "1ms", "wait": {"full-delay": null}}"#,
                "field `batch.wait`: {\"full-delay\":null} is not a way to wait",
            ),
        ] {
            let e = error(&format!(
                r#"{{"p1": {{"status": true, "batch": {entry}}}}}"#
            ));
            assert!(
                e.contains("instance `p1`") && e.contains(says),
                "{entry}: {e}"
            );
        }
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

    #[test]
    fn hosts_are_addresses_and_a_port_is_unique_per_host() {
        let shape = |text: &str| Topology::parse_shape(text, Path::new("t.json"));
        let t = shape(
            r#"{"a": {"status": true, "host": "127.0.0.2", "port": 9000},
                "b": {"status": true, "host": "127.0.0.3", "port": 9000}}"#,
        )
        .unwrap();
        assert_eq!(t.instances[1].host, Some("127.0.0.3".parse().unwrap()));
        let e = shape(r#"{"a": {"status": true, "host": "node-2"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("instance `a`: field `host`") && e.contains("not an IP address"),
            "{e}"
        );
        let e = shape(
            r#"{"a": {"status": true, "host": "127.0.0.2", "port": 9000},
                "b": {"status": true, "host": "127.0.0.2", "port": 9000}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already the port of `a`"), "{e}");
    }

    #[test]
    fn only_keeps_the_named_entries_and_refuses_unknown_names() {
        let t = Topology::parse_shape(
            r#"{"a": {"status": true}, "b": {"status": true}, "c": {"status": false}}"#,
            Path::new("t.json"),
        )
        .unwrap();
        let kept = t.clone().only(&["c".into(), "a".into()]).unwrap();
        let names: Vec<&str> = kept.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let e = t.only(&["d".into()]).unwrap_err().to_string();
        assert!(e.contains("`d`") && e.contains("a, b, c"), "{e}");
    }
}

#[cfg(test)]
mod fuzz;
