//! The host's modules depend on each other one way: no cycles. Reads
//! `host/src` and fails naming the cycle when a change adds one (a module
//! using another through `crate::` or, within a folder, `super::`; comments
//! do not count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name of a source file: `instance` for `instance.rs`, `http::api`
/// for `http/api.rs`, `http` for `http/mod.rs`.
fn module_of(relative: &Path) -> Option<String> {
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
        // Only the http folder is split into layers of its own.
        Some("http") => Some(parts[..parts.len().min(2)].join("::")),
        Some(_) => Some(parts[0].clone()),
    }
}

/// The modules `code` (of module `me`) uses.
fn uses(me: &str, code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let parent = me.rsplit_once("::").map(|(p, _)| p);
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (prefix, base) in [("crate::", None), ("super::", parent)] {
            for (at, _) in line.match_indices(prefix) {
                let rest = &line[at + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let after = &rest[name.len()..];
                let module = match base {
                    Some(base) => format!("{base}::{name}"),
                    None if name == "http" && after.starts_with("::") => {
                        let sub: String = after[2..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        format!("http::{sub}")
                    }
                    None => name,
                };
                if prefix == "super::" && base.is_none() {
                    continue;
                }
                found.insert(module);
            }
        }
    }
    found.remove(me);
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Some(me) = module_of(path.strip_prefix(&src).unwrap()) else {
                continue;
            };
            let code = std::fs::read_to_string(&path).unwrap();
            let used = uses(&me, &code);
            graph.entry(me).or_default().extend(used);
        }
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

/// A cycle through `start`, if any, as the path that closes it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
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
    walk(graph, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn modules_depend_on_each_other_one_way() {
    let graph = graph();
    assert!(
        graph.contains_key("instance") && graph.contains_key("http::api"),
        "the source tree was not read: {graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle() {
    let a = uses("a", "use crate::b::X;\n// crate::c is only mentioned");
    assert_eq!(a, BTreeSet::from(["b".to_string()]));
    let api = uses("http::api", "use super::app::App;\nuse crate::http::body;");
    assert_eq!(
        api,
        BTreeSet::from(["http::app".to_string(), "http::body".to_string()])
    );
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(cycle_from(&graph, "a").unwrap(), ["a", "b", "a"]);
}
