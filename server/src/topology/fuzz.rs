//! Property tests: whatever the text, the loader answers without
//! panicking; what it accepts keeps the promises above; and for
//! topology-shaped files it accepts or refuses exactly what this
//! module's docs say, naming the instance (and field) at fault.
use super::*;
use proptest::prelude::*;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::OnceLock;

/// One folder for every case (`tests::fixture`): the defaults, and the
/// `m.onnx` a relative path finds next to the topology file.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(super::tests::fixture).as_path()
}

fn defaults() -> Defaults {
    Defaults {
        model: dir().join("m.onnx"),
        module: dir().join("g.wasm"),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What every answer promises, whatever the text: an accepted topology
/// is usable as is (`files`: its model and module exist); a refusal
/// starts with the file and names the instance when it is about one.
fn check(
    file: &Path,
    files: bool,
    got: &Result<Topology, TopologyError>,
) -> Result<(), TestCaseError> {
    match got {
        Ok(t) => {
            prop_assert_eq!(t.path.as_path(), file);
            prop_assert!(t.instances.iter().any(|i| i.active), "{:?}", t);
            let mut names = HashSet::new();
            let mut ports = HashSet::new();
            for i in &t.instances {
                prop_assert!(valid_name(&i.name), "{:?}", i.name);
                prop_assert!(names.insert(i.name.as_str()), "{} twice", i.name);
                prop_assert!(i.max_load >= 1, "{:?}", i);
                if let Some(port) = i.port.filter(|p| *p != 0) {
                    prop_assert!(ports.insert((i.host, port)), "{:?} twice", (i.host, port));
                }
                if files {
                    prop_assert!(i.model.is_file() && i.module.is_file(), "{:?}", i);
                }
            }
        }
        Err(e) => {
            let shown = e.to_string();
            let prefix = format!("{}: ", file.display());
            prop_assert!(
                shown.starts_with(&prefix) && shown.len() > prefix.len(),
                "{}",
                shown
            );
            prop_assert!(!matches!(e, TopologyError::Read { .. }), "{}", shown);
            if let TopologyError::Instance { instance, .. } = e {
                prop_assert!(
                    shown.contains(&format!("instance `{instance}`")),
                    "{}",
                    shown
                );
            }
        }
    }
    Ok(())
}

/// Parses `text` both ways (shape only, then with files checked),
/// checking [`check`]'s promises; returns both answers.
fn both(text: &str) -> Result<[Result<Topology, TopologyError>; 2], TestCaseError> {
    let file = dir().join("t.json");
    let shape = Topology::parse_shape(text, &file);
    check(&file, false, &shape)?;
    let full = Topology::parse(text, &file, &defaults());
    check(&file, true, &full)?;
    Ok([shape, full])
}

/// Pieces of topologies, so that a random sequence often gets past the
/// JSON syntax into the loader's own checks.
#[rustfmt::skip]
const TOKENS: &[&str] = &[
    "{", "}", "[", "]", ":", ",", " ", "\n", "\"p1\"", "\"\"", "\"status\"", "\"port\"",
    "\"host\"", "\"max_load\"", "\"model\"", "\"module\"", "\"load\"", "true", "false",
    "null", "0", "-0", "-1", "1.5", "9696", "65535", "65536", "18446744073709551616", "1e400",
    "\"9696\"", "\"127.0.0.2\"", "\"::1\"", "\"m.onnx\"", "\"\\u0000\"", "\"\\ud800\"",
    "\"p1\": {\"status\": true}",
    "\"p2\": {\"status\": false, \"port\": 9696}",
    "\"p3\": {\"status\": true, \"port\": \"9696\", \"host\": \"127.0.0.2\"}",
    "\"p4\": {\"status\": true, \"max_load\": 0}",
    "\"p5\": [true, 0, 9697]",
];

/// Why an entry is refused, as far as the oracle can tell.
#[derive(Debug, Clone)]
enum Bad {
    /// Its name breaks the naming rule.
    Name,
    /// serde refuses the entry; its message contains this ("" where
    /// serde's message promises nothing, e.g. a wrong type).
    Serde(String),
    /// The loader's own check refuses this field, naming it.
    Check(&'static str),
}

/// A field's JSON text (`None`: left out) and what the loader should make of it.
type Field<T> = (Option<String>, Result<T, Bad>);

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn wrong_type() -> Bad {
    Bad::Serde(String::new())
}

// Each field has a strategy for values the loader takes and one for
// values it refuses; `faults` picks which fields of an entry break, so
// that most files are valid and a refusal usually has a single cause.

fn name_ok() -> impl Strategy<Value = String> {
    // A small pool makes repeated keys (refused) reasonably common.
    prop_oneof![
        1 => prop::sample::select(vec!["predict1", "predict2", "predict3", "p-4", "a.b_c", "Z9"])
            .prop_map(String::from),
        2 => "[a-zA-Z0-9._-]{1,8}",
    ]
}

fn name_bad() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "bad name", "\u{fc}", "p\"q", "p\\q", "p/q"])
            .prop_map(String::from),
        // Mostly refused; valid by chance now and then (the oracle judges).
        1 => ".{0,4}",
    ]
}

fn status_ok() -> impl Strategy<Value = Field<bool>> {
    prop::bool::weighted(0.7).prop_map(|b| -> Field<bool> { (Some(b.to_string()), Ok(b)) })
}

fn status_bad() -> impl Strategy<Value = Field<bool>> {
    prop_oneof![
        Just::<Field<bool>>((None, Err(Bad::Serde("missing field `status`".into())))),
        prop::sample::select(vec!["\"true\"", "1", "null", "[]"])
            .prop_map(|t| -> Field<bool> { (Some(t.into()), Err(wrong_type())) }),
    ]
}

/// `load` is the article's counter, read and ignored: anything goes.
fn load_text() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("0"),
        Some("7"),
        Some("-3"),
        Some("null"),
        Some("\"busy\""),
        Some("[1, 2]"),
        Some("{\"x\": 1}"),
        Some("1e300"),
    ])
}

fn port_ok() -> impl Strategy<Value = Field<Option<u16>>> {
    prop_oneof![
        2 => prop::sample::select(vec![None, Some("null")])
            .prop_map(|t| -> Field<Option<u16>> { (t.map(String::from), Ok(None)) }),
        // Few distinct ports, as numbers or (padded) strings: clashes are common.
        6 => (prop::sample::select(vec![0u16, 9696, 9697, 65535]), 0..3)
            .prop_map(|(p, form)| -> Field<Option<u16>> {
                let text = match form {
                    0 => p.to_string(),
                    1 => json(&p.to_string()),
                    _ => json(&format!(" {p}\t")),
                };
                (Some(text), Ok(Some(p)))
            }),
        1 => any::<u16>().prop_map(|p| -> Field<Option<u16>> { (Some(p.to_string()), Ok(Some(p))) }),
    ]
}

fn port_bad() -> impl Strategy<Value = Field<Option<u16>>> {
    let not_a_port = || Err(Bad::Check("port"));
    prop_oneof![
        (65536u64..=u64::MAX)
            .prop_map(move |n| -> Field<Option<u16>> { (Some(n.to_string()), not_a_port()) }),
        prop::sample::select(vec!["65536", "96x6", "", " ", "-1", "0x50"])
            .prop_map(move |s| -> Field<Option<u16>> { (Some(json(s)), not_a_port()) }),
        prop::sample::select(vec!["-1", "1.5", "1e3", "true", "[]", "{}"])
            .prop_map(|t| -> Field<Option<u16>> { (Some(t.into()), Err(wrong_type())) }),
    ]
}

fn host_ok() -> impl Strategy<Value = Field<Option<IpAddr>>> {
    prop_oneof![
        prop::sample::select(vec![None, Some("null")])
            .prop_map(|t| -> Field<Option<IpAddr>> { (t.map(String::from), Ok(None)) }),
        // " 127.0.0.2 " is 127.0.0.2: the same host for port clashes.
        prop::sample::select(vec![
            "127.0.0.2",
            "127.0.0.3",
            " 127.0.0.2 ",
            "::1",
            "0.0.0.0"
        ])
        .prop_map(|h| -> Field<Option<IpAddr>> {
            (Some(json(h)), Ok(Some(h.trim().parse().unwrap())))
        }),
    ]
}

fn host_bad() -> impl Strategy<Value = Field<Option<IpAddr>>> {
    prop_oneof![
        prop::sample::select(vec![
            "node-2",
            "",
            "127.0.0.256",
            "localhost",
            "127.0.0.2:80"
        ])
        .prop_map(|h| -> Field<Option<IpAddr>> { (Some(json(h)), Err(Bad::Check("host"))) }),
        prop::sample::select(vec!["1", "[]", "true"])
            .prop_map(|t| -> Field<Option<IpAddr>> { (Some(t.into()), Err(wrong_type())) }),
    ]
}

/// A `max_load` written as this number: a threshold if it fits a
/// usize, except 0.
fn max_load_number(n: u64) -> Field<usize> {
    let want = match n {
        0 => Err(Bad::Check("max_load")),
        n => usize::try_from(n).map_err(|_| wrong_type()),
    };
    (Some(n.to_string()), want)
}

fn max_load_ok() -> impl Strategy<Value = Field<usize>> {
    prop_oneof![
        2 => prop::sample::select(vec![None, Some("null")])
            .prop_map(|t| -> Field<usize> { (t.map(String::from), Ok(DEFAULT_MAX_LOAD)) }),
        4 => (1u64..=20).prop_map(max_load_number),
        1 => prop::sample::select(vec![u64::MAX, 1 << 32]).prop_map(max_load_number),
        1 => any::<u64>().prop_map(max_load_number),
    ]
}

fn max_load_bad() -> impl Strategy<Value = Field<usize>> {
    prop_oneof![
        Just(max_load_number(0)),
        prop::sample::select(vec![
            "-1",
            "1.5",
            "\"5\"",
            "1e3",
            "18446744073709551616",
            "true"
        ])
        .prop_map(|t| -> Field<usize> { (Some(t.into()), Err(wrong_type())) }),
    ]
}

/// A `model` or `module` field.
#[derive(Debug, Clone, Copy)]
enum PathChoice {
    Absent,
    Null,
    /// `"m.onnx"`: relative, and there next to the file.
    Here,
    /// Relative, and nowhere.
    Nowhere,
    Absolute,
    WrongType,
}

impl PathChoice {
    fn text(self) -> Option<String> {
        match self {
            PathChoice::Absent => None,
            PathChoice::Null => Some("null".into()),
            PathChoice::Here => Some(json("m.onnx")),
            PathChoice::Nowhere => Some(json("nowhere.onnx")),
            PathChoice::Absolute => Some(serde_json::to_string(&dir().join("g.wasm")).unwrap()),
            PathChoice::WrongType => Some("7".into()),
        }
    }

    /// `default`: the fallback when files are checked (`None`: shape only).
    fn want(
        self,
        field: &'static str,
        base: &Path,
        default: Option<&Path>,
    ) -> Result<PathBuf, Bad> {
        match self {
            PathChoice::Absent | PathChoice::Null => {
                Ok(default.map(Path::to_path_buf).unwrap_or_default())
            }
            PathChoice::Here => Ok(base.join("m.onnx")),
            PathChoice::Nowhere if default.is_some() => Err(Bad::Check(field)),
            PathChoice::Nowhere => Ok(base.join("nowhere.onnx")),
            // Joining an absolute path yields it unchanged.
            PathChoice::Absolute => Ok(base.join(dir().join("g.wasm"))),
            PathChoice::WrongType => Err(wrong_type()),
        }
    }
}

fn path_ok() -> impl Strategy<Value = PathChoice> {
    prop::sample::select(vec![
        PathChoice::Absent,
        PathChoice::Absent,
        PathChoice::Null,
        PathChoice::Here,
        PathChoice::Absolute,
    ])
}

/// `Nowhere` is refused only when files are checked.
fn path_bad() -> impl Strategy<Value = PathChoice> {
    prop::sample::select(vec![PathChoice::Nowhere, PathChoice::WrongType])
}

/// One `"name": {...}` entry of a topology, with its fields' meaning.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// The whole entry is this instead of an object (e.g. `true`).
    scalar: Option<&'static str>,
    status: Field<bool>,
    load: Option<&'static str>,
    port: Field<Option<u16>>,
    host: Field<Option<IpAddr>>,
    max_load: Field<usize>,
    model: PathChoice,
    module: PathChoice,
    /// A field the format does not have.
    unknown: Option<&'static str>,
    /// Writes `status` twice, same value (a JSON object keeps the last).
    repeat: bool,
    /// Field order does not matter: rotate them by this much.
    rotate: usize,
}

/// Bits of `faults`: which fields of an entry to break.
const NAME: u16 = 1;
const SCALAR: u16 = 1 << 1;
const STATUS: u16 = 1 << 2;
const PORT: u16 = 1 << 3;
const HOST: u16 = 1 << 4;
const MAX_LOAD: u16 = 1 << 5;
const MODEL: u16 = 1 << 6;
const MODULE: u16 = 1 << 7;
const UNKNOWN: u16 = 1 << 8;

/// Mostly no fault, often exactly one (whose message the oracle can
/// predict), sometimes several.
fn faults() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(0u16),
        3 => (0u16..9).prop_map(|bit| 1 << bit),
        1 => any::<u16>(),
    ]
}

fn pick<T>(faults: u16, field: u16, ok: T, bad: T) -> T {
    if faults & field == 0 {
        ok
    } else {
        bad
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        (
            name_ok(),
            name_bad(),
            status_ok(),
            status_bad(),
            port_ok(),
            port_bad(),
        ),
        (
            host_ok(),
            host_bad(),
            max_load_ok(),
            max_load_bad(),
            path_ok(),
            path_bad(),
        ),
        (
            path_ok(),
            path_bad(),
            load_text(),
            any::<bool>(),
            0usize..8,
            faults(),
        ),
        (
            prop::sample::select(vec!["true", "[]", "null", "\"x\"", "1"]),
            prop::sample::select(vec!["colour", "Status", "max-load"]),
        ),
    )
        .prop_map(
            |(
                (name, name_bad, status, status_bad, port, port_bad),
                (host, host_bad, max_load, max_load_bad, model, model_bad),
                (module, module_bad, load, repeat, rotate, faults),
                (scalar, unknown),
            )| Entry {
                name: pick(faults, NAME, name, name_bad),
                scalar: pick(faults, SCALAR, None, Some(scalar)),
                status: pick(faults, STATUS, status, status_bad),
                load,
                port: pick(faults, PORT, port, port_bad),
                host: pick(faults, HOST, host, host_bad),
                max_load: pick(faults, MAX_LOAD, max_load, max_load_bad),
                model: pick(faults, MODEL, model, model_bad),
                module: pick(faults, MODULE, module, module_bad),
                unknown: pick(faults, UNKNOWN, None, Some(unknown)),
                repeat,
                rotate,
            },
        )
}

impl Entry {
    fn text(&self) -> String {
        if let Some(scalar) = self.scalar {
            return scalar.to_owned();
        }
        let given = [
            ("status", self.status.0.clone()),
            ("load", self.load.map(str::to_owned)),
            ("port", self.port.0.clone()),
            ("host", self.host.0.clone()),
            ("max_load", self.max_load.0.clone()),
            ("model", self.model.text()),
            ("module", self.module.text()),
            (
                self.unknown.unwrap_or(""),
                self.unknown.map(|_| "1".to_owned()),
            ),
        ];
        let mut fields: Vec<(&str, String)> = given
            .into_iter()
            .filter_map(|(key, text)| Some((key, text?)))
            .collect();
        if let (true, Some(status)) = (self.repeat, &self.status.0) {
            fields.push(("status", status.clone()));
        }
        let n = fields.len().max(1);
        fields.rotate_left(self.rotate % n);
        let body: Vec<String> = fields
            .iter()
            .map(|(k, t)| format!("\"{k}\": {t}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    }

    /// What the loader should make of this entry alone.
    fn want(&self, base: &Path, defaults: Option<&Defaults>) -> Result<InstanceSpec, Bad> {
        if !valid_name(&self.name) {
            return Err(Bad::Name);
        }
        if self.scalar.is_some() {
            return Err(wrong_type());
        }
        let model = self
            .model
            .want("model", base, defaults.map(|d| d.model.as_path()));
        let module = self
            .module
            .want("module", base, defaults.map(|d| d.module.as_path()));
        // serde reads the whole entry before the loader checks a value;
        // of several serde refusals, which one it names is its business.
        let mut serde: Vec<String> = [
            self.status.1.clone().err(),
            self.port.1.clone().err(),
            self.host.1.clone().err(),
            self.max_load.1.clone().err(),
            model.clone().err(),
            module.clone().err(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|bad| match bad {
            Bad::Serde(says) => Some(says),
            _ => None,
        })
        .collect();
        serde.extend(self.unknown.map(|u| format!("unknown field `{u}`")));
        match serde.len() {
            0 => {}
            1 => return Err(Bad::Serde(serde.remove(0))),
            _ => return Err(wrong_type()),
        }
        // Then the loader's checks, in its order.
        let active = self.status.1.clone()?;
        let port = self.port.1.clone()?;
        let host = self.host.1.clone()?;
        let max_load = self.max_load.1.clone()?;
        Ok(InstanceSpec {
            name: self.name.clone(),
            active,
            port,
            host,
            max_load,
            concurrency: None,
            batch: None,
            model: model?,
            module: module?,
        })
    }
}

/// Topology files as entries: seldom empty.
fn files() -> impl Strategy<Value = Vec<Entry>> {
    prop_oneof![
        1 => Just(Vec::new()),
        15 => proptest::collection::vec(entry(), 1..6),
    ]
}

fn text(entries: &[Entry]) -> String {
    let body: Vec<String> = entries
        .iter()
        .map(|e| format!("{}: {}", json(&e.name), e.text()))
        .collect();
    format!("{{{}}}", body.join(",\n"))
}

/// The oracle's answer for a whole file.
#[derive(Debug)]
enum Want {
    Ok(Vec<InstanceSpec>),
    Twice(String),
    Instance(String, Bad),
    NoInstances,
    NoActive,
    PortTaken { name: String, other: String },
}

fn want(entries: &[Entry], file: &Path, defaults: Option<&Defaults>) -> Want {
    // A repeated name is refused before any entry is looked at.
    let mut names = HashSet::new();
    if let Some(e) = entries.iter().find(|e| !names.insert(e.name.as_str())) {
        return Want::Twice(e.name.clone());
    }
    let base = file.parent().unwrap();
    let mut specs = Vec::new();
    for e in entries {
        match e.want(base, defaults) {
            Ok(spec) => specs.push(spec),
            Err(bad) => return Want::Instance(e.name.clone(), bad),
        }
    }
    if specs.is_empty() {
        return Want::NoInstances;
    }
    if !specs.iter().any(|s| s.active) {
        return Want::NoActive;
    }
    let mut ports: Vec<((Option<IpAddr>, u16), &str)> = Vec::new();
    for s in &specs {
        if let Some(port) = s.port.filter(|p| *p != 0) {
            if let Some((_, other)) = ports.iter().find(|(key, _)| *key == (s.host, port)) {
                return Want::PortTaken {
                    name: s.name.clone(),
                    other: other.to_string(),
                };
            }
            ports.push(((s.host, port), &s.name));
        }
    }
    Want::Ok(specs)
}

fn agree(want: &Want, got: &Result<Topology, TopologyError>) -> Result<(), TestCaseError> {
    let says = |bad: &Bad| match bad {
        Bad::Name => "the name must be".to_owned(),
        Bad::Serde(says) => says.clone(),
        Bad::Check(field) => format!("field `{field}`"),
    };
    let ok = match (want, got) {
        (Want::Ok(specs), Ok(t)) => &t.instances == specs,
        (Want::Twice(name), Err(TopologyError::Syntax { message, .. })) => {
            message.contains(&format!("instance `{name}` is given twice"))
        }
        (
            Want::Instance(name, bad),
            Err(TopologyError::Instance {
                instance, message, ..
            }),
            // Errors tell the name escaped: it may hold control characters.
        ) => *instance == name.escape_debug().to_string() && message.contains(&says(bad)),
        (Want::NoInstances, Err(TopologyError::Whole { message, .. })) => {
            message.contains("no instances")
        }
        (Want::NoActive, Err(TopologyError::Whole { message, .. })) => {
            message.contains("no active instance")
        }
        (
            Want::PortTaken { name, other },
            Err(TopologyError::Instance {
                instance, message, ..
            }),
        ) => {
            instance == name
                && message.contains("field `port`")
                && message.contains(&format!("already the port of `{other}`"))
        }
        _ => false,
    };
    prop_assert!(ok, "wanted {:?}, got {:?}", want, got);
    Ok(())
}

proptest! {
    /// Any bytes: an answer, never a panic, and [`check`]'s promises.
    #[test]
    fn any_bytes_load_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = both(&String::from_utf8_lossy(&bytes))?;
    }

    /// Topology-ish token soup reaches the loader's checks far more often
    /// than raw bytes do.
    #[test]
    fn any_tokens_load_or_are_refused(tokens in proptest::collection::vec(prop::sample::select(TOKENS), 0..48)) {
        let _ = both(&tokens.concat())?;
    }

    /// Topology-shaped files (random names, roles, ports, hosts,
    /// thresholds, paths; missing, unknown, repeated and wrongly typed
    /// fields; repeated names) load exactly as the docs say, both ways;
    /// a refusal names the instance at fault and, where the loader
    /// checks the value itself, the field.
    #[test]
    fn shaped_files_load_as_documented(entries in files()) {
        let text = text(&entries);
        let file = dir().join("t.json");
        let defaults = defaults();
        let [shape, full] = both(&text)?;
        agree(&want(&entries, &file, None), &shape)?;
        agree(&want(&entries, &file, Some(&defaults)), &full)?;
    }

    /// A shaped file cut short or with one byte changed: still an answer.
    #[test]
    fn damaged_files_load_or_are_refused(entries in files(),
                                         at in any::<prop::sample::Index>(),
                                         byte in any::<u8>(),
                                         cut in any::<bool>()) {
        let mut bytes = text(&entries).into_bytes();
        let i = at.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = byte;
        }
        let _ = both(&String::from_utf8_lossy(&bytes))?;
    }
}
