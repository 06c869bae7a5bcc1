//! The map in `server/src/lib.rs`, enforced: each module uses only the
//! layers its table row allows, and no two files use each other through a
//! cycle. Reads the sources of `hadr-server` and `hadr-tools` and fails
//! naming the offending use (a module using another through `crate::` or,
//! within a folder, `super::`; comments do not count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `hadr-server`'s layers: each top-level module and the modules it may use.
/// Same table as the map in `server/src/lib.rs`.
const SERVER: &[(&str, &[&str])] = &[
    ("errors", &[]),
    ("topology", &["errors"]),
    ("shutdown", &[]),
    ("sandbox", &["topology", "shutdown"]),
    ("oip", &["sandbox"]),
    ("serving", &["sandbox"]),
    ("instance", &["serving", "sandbox", "oip", "topology"]),
    ("routing", &["instance", "state", "shutdown"]),
    (
        "state",
        &["instance", "serving", "sandbox", "topology", "shutdown"],
    ),
    ("metrics", &["instance", "routing", "serving", "sandbox"]),
    (
        "rollout",
        &[
            "metrics", "instance", "serving", "sandbox", "state", "topology", "shutdown",
        ],
    ),
    (
        "http",
        &[
            "rollout", "metrics", "state", "routing", "instance", "serving", "sandbox", "oip",
            "shutdown", "errors",
        ],
    ),
    (
        "serve",
        &[
            "http", "rollout", "metrics", "state", "routing", "instance", "serving", "sandbox",
            "topology", "shutdown",
        ],
    ),
];

/// `hadr-tools`' layers.
const TOOLS: &[(&str, &[&str])] = &[
    ("spawn", &[]),
    ("loadtest", &[]),
    ("admin_client", &[]),
    ("fleet", &["admin_client", "spawn"]),
    ("drill", &["fleet", "admin_client", "loadtest", "spawn"]),
];

/// Module path of a source file: `instance` for `instance/mod.rs`,
/// `sandbox::nn::budget` for `sandbox/nn/budget.rs`.
fn path_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        None | Some("lib" | "main") => None,
        Some(_) => Some(parts.join("::")),
    }
}

/// The node a module path belongs to in the graph: its first two parts
/// (`sandbox::nn::budget` is `sandbox::nn`).
fn node_of(path: &str) -> String {
    path.split("::").take(2).collect::<Vec<_>>().join("::")
}

/// The paths `code` (of the module at `path`) names through `crate::` or
/// `super::`, grouped imports (`use crate::{a::X, b::Y}`) included, as
/// `a::X`-like paths resolved against the known modules later. Comment
/// lines do not count.
fn uses(path: &str, code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let parent = path.rsplit_once("::").map(|(p, _)| p);
    let mut found = BTreeSet::new();
    for (prefix, base) in [("crate::", None), ("super::", parent)] {
        if prefix == "super::" && base.is_none() {
            continue;
        }
        for (at, _) in code.match_indices(prefix) {
            if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for item in items(&code[at + prefix.len()..]) {
                found.insert(match base {
                    Some(base) => format!("{base}::{item}"),
                    None => item,
                });
            }
        }
    }
    found
}

/// The first two path segments of what follows a `crate::`: one path, or
/// each path of a `{...}` group.
fn items(rest: &str) -> Vec<String> {
    let segments = |s: &str| -> String {
        s.split("::")
            .take(2)
            .map(|w| {
                w.trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("::")
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![segments(rest)];
    };
    // Split the group at its top-level commas, up to its closing brace.
    let (mut depth, mut start, mut out) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(segments(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(segments(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Each module of the crate in `src` and the modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut raw: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.is_dir() {
                stack.push(file);
                continue;
            }
            // Sources only: a module's folder may hold its test fixtures.
            if file.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let Some(path) = path_of(file.strip_prefix(src).unwrap()) else {
                continue;
            };
            let code = std::fs::read_to_string(&file).unwrap();
            let used = uses(&path, &code);
            raw.entry(node_of(&path)).or_default().extend(used);
        }
    }
    let known: BTreeSet<String> = raw.keys().cloned().collect();
    raw.iter()
        .map(|(me, used)| {
            let resolved = used
                .iter()
                .filter_map(|path| {
                    let two = node_of(path);
                    let top = path.split("::").next().unwrap().to_string();
                    [two, top].into_iter().find(|m| known.contains(m))
                })
                .filter(|m| m != me)
                .collect();
            (me.clone(), resolved)
        })
        .collect()
}

/// A cycle through `start`, if any, as the path that closes it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in &graph[&here] {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

/// Every use that breaks `layers` or closes a cycle, as a message.
fn violations(
    graph: &BTreeMap<String, BTreeSet<String>>,
    layers: &[(&str, &[&str])],
) -> Vec<String> {
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let allowed: BTreeMap<&str, &[&str]> = layers.iter().copied().collect();
    let mut found = Vec::new();
    for (me, used) in graph {
        let Some(may) = allowed.get(top(me).as_str()) else {
            found.push(format!("`{me}` is in no layer of the table"));
            continue;
        };
        for other in used {
            let layer = top(other);
            if layer != top(me) && !may.contains(&layer.as_str()) {
                found.push(format!("`{me}` uses `{other}`, which its layer may not"));
            }
        }
    }
    found.extend(
        graph
            .keys()
            .filter_map(|m| cycle_from(graph, m))
            .map(|c| format!("cycle: {}", c.join(" -> "))),
    );
    found
}

fn crate_src(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn the_server_follows_its_map() {
    let graph = graph(&crate_src("server"));
    assert!(
        graph["http::api"].contains("routing::router") && graph.contains_key("sandbox::live"),
        "the source tree was not read: {graph:?}"
    );
    let found = violations(&graph, SERVER);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_tools_follow_their_map() {
    let graph = graph(&crate_src("tools"));
    assert!(graph["drill"].contains("loadtest"), "{graph:?}");
    let found = violations(&graph, TOOLS);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_checker_finds_what_breaks_a_map() {
    let a = uses(
        "a",
        "use crate::b::X;\n// crate::c is only mentioned\nhadr_server::d::Y",
    );
    assert_eq!(a, BTreeSet::from(["b::X".to_string()]));
    let api = uses("http::api", "use super::app::App;\nuse crate::http::body;");
    assert_eq!(
        api,
        BTreeSet::from(["http::app::App".to_string(), "http::body".to_string()])
    );
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
        ("c".to_string(), BTreeSet::new()),
    ]);
    assert_eq!(cycle_from(&graph, "a").unwrap(), ["a", "b", "a"]);
    let layers: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &[])];
    let found = violations(&graph, layers);
    assert!(
        found
            .iter()
            .any(|f| f == "`b` uses `a`, which its layer may not"),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f == "`c` is in no layer of the table"),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("cycle: a -> b")),
        "{found:?}"
    );
}
