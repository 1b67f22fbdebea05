//! House rules checked by a test: every Rust file says what it is in a `//!` line, no test is
//! switched off or reduced to "it panics", and no crate's top-level modules import each other in
//! a cycle (beyond the listed edges still to be broken).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(directory: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("readable directory") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc_and_no_test_is_disabled() {
    let root = crate::support::root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found only {} Rust files", files.len());
    // Spelled in pieces so this file does not trip its own check.
    let forbidden = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{relative}: does not start with a `//!` line"));
        }
        for pattern in forbidden {
            if text.contains(pattern) {
                problems.push(format!("{relative}: contains `{pattern}`"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Edges between top-level modules that still close an import cycle, by crate: `(from, to)`.
/// Each is a debt to pay, not a pattern to follow. The test fails on a cycle through any other
/// edge, and on an entry here that no longer closes a cycle (remove it then).
const CYCLE_ALLOWLIST: &[(&str, &[(&str, &str)])] = &[
    ("proto/src", &[]),
    ("services/common/src", &[]),
    ("services/runner/src", &[]),
    ("services/gateway/src", &[]),
];

/// Which top-level modules of a crate each top-level module names, with the files that do:
/// `crate::<module>` (also inside `use crate::{…}`) and `super::…` chains that climb to the
/// crate root. Read from the source text: comment lines and `#[cfg(test)]` modules are skipped
/// (tests may reach anywhere), and a name that is not a top-level module is not an edge.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|file| module_path(src, file).into_iter().next())
        .collect();
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let path = module_path(src, file);
        let Some(top) = path.first() else {
            continue; // lib.rs, main.rs: the crate root names every module
        };
        let relative = file.strip_prefix(src).unwrap_or(file).display().to_string();
        let text = without_tests_and_comments(&std::fs::read_to_string(file).expect("readable"));
        for name in root_references(&text, path.len()) {
            if name != *top && modules.contains(&name) {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(name)
                    .or_default()
                    .insert(relative.clone());
            }
        }
    }
    graph
}

/// `engine/drive.rs` → `["engine", "drive"]`, `engine/mod.rs` → `["engine"]`, `lib.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut path: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(path.last().map(String::as_str), Some("mod")) {
        path.pop();
    }
    if matches!(path.as_slice(), [only] if only == "lib" || only == "main") {
        path.clear();
    }
    path
}

/// The source without comment lines and without `#[cfg(test)] mod … { … }` blocks (rustfmt
/// puts the closing brace at the opening line's indentation).
fn without_tests_and_comments(text: &str) -> String {
    let mut kept = Vec::new();
    let mut skip_until: Option<String> = None;
    let mut previous = "";
    for line in text.lines() {
        if let Some(end) = &skip_until {
            if line == end {
                skip_until = None;
            }
        } else if previous.trim() == "#[cfg(test)]"
            && line.trim_start().contains("mod ")
            && line.ends_with('{')
        {
            let indent = &line[..line.len() - line.trim_start().len()];
            skip_until = Some(format!("{indent}}}"));
        } else if !line.trim_start().starts_with("//") {
            kept.push(line);
        }
        previous = line;
    }
    kept.join("\n")
}

/// The crate-root names a file's text reaches: after `crate::`, and after a `super::` chain at
/// least `depth` long (from a file `depth` modules below the root). `{a, b::c}` groups give
/// each of their first names.
fn root_references(text: &str, depth: usize) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    let mut index = 0;
    while index < text.len() {
        let rest = &text[index..];
        let before = text[..index].chars().next_back();
        let boundary = before.is_none_or(|c| !is_ident(c) && c != ':' && c != '$');
        if boundary && rest.starts_with("crate::") {
            index += "crate::".len();
            names.extend(first_names(&text[index..]));
            continue;
        }
        if boundary && rest.starts_with("super::") {
            let mut climbs = 0;
            while text[index..].starts_with("super::") {
                climbs += 1;
                index += "super::".len();
            }
            if climbs >= depth {
                names.extend(first_names(&text[index..]));
            }
            continue;
        }
        index += rest.chars().next().map_or(1, char::len_utf8);
    }
    names
}

/// The leading identifier of a path, or of each item of a leading `{…}` group.
fn first_names(path: &str) -> Vec<String> {
    let identifier = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = path.strip_prefix('{') else {
        return vec![identifier(path)];
    };
    let mut items = Vec::new();
    let (mut depth, mut start) = (0_usize, 0);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(identifier(&group[start..at]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(identifier(&group[start..at]));
                start = at + 1;
            }
            _ => {}
        }
    }
    items
}

/// Every cycle a depth-first search closes in `graph` without the `removed` edges, each as the
/// modules around it (the first repeated at the end).
fn cycles(
    graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    removed: &BTreeSet<(String, String)>,
) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        removed: &BTreeSet<(String, String)>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            if removed.contains(&(node.to_owned(), next.clone())) || done.contains(next) {
                continue;
            }
            if let Some(at) = stack.iter().position(|on| on == next) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(next.clone());
                found.push(cycle);
            } else {
                visit(next, graph, removed, stack, done, found);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if !done.contains(node) {
            visit(node, graph, removed, &mut Vec::new(), &mut done, &mut found);
        }
    }
    found
}

/// Whether `to` can be reached from `from` in `graph` without the `removed` edges.
fn reaches(
    graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    removed: &BTreeSet<(String, String)>,
    from: &str,
    to: &str,
) -> bool {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from.to_owned()];
    while let Some(node) = pending.pop() {
        if node == to {
            return true;
        }
        for next in graph.get(&node).into_iter().flat_map(|edges| edges.keys()) {
            if !removed.contains(&(node.clone(), next.clone())) && seen.insert(next.clone()) {
                pending.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn no_new_import_cycle_between_top_level_modules() {
    let root = crate::support::root();
    let mut problems = Vec::new();
    for (crate_src, allowed) in CYCLE_ALLOWLIST {
        let graph = module_graph(&root.join(crate_src));
        assert!(graph.len() > 2, "{crate_src}: found only {graph:?}");
        let allowed: BTreeSet<(String, String)> = allowed
            .iter()
            .map(|(from, to)| ((*from).to_owned(), (*to).to_owned()))
            .collect();
        for cycle in cycles(&graph, &allowed) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|pair| {
                    let files = &graph[&pair[0]][&pair[1]];
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    format!("{} -> {} ({})", pair[0], pair[1], files.join(", "))
                })
                .collect();
            problems.push(format!(
                "{crate_src}: import cycle {}: move what they share into a module below both",
                steps.join(", ")
            ));
        }
        for edge in &allowed {
            let mut others = allowed.clone();
            others.remove(edge);
            // The edge closes a cycle when its target leads back to its source.
            if !reaches(&graph, &others, &edge.1, &edge.0) {
                problems.push(format!(
                    "{crate_src}: `{} -> {}` is in CYCLE_ALLOWLIST but closes no cycle any more: remove it",
                    edge.0, edge.1
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The store's seam holds: only `store/sled/` names sled's API, and the admin API reads through
/// named queries, never key encodings or raw scans.
#[test]
fn sled_stays_behind_the_store_seam_and_the_api_uses_queries() {
    let root = crate::support::root();
    let runner = root.join("services/runner/src");
    let mut files = Vec::new();
    rust_files(&runner, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&runner)
            .unwrap_or(&file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&file).expect("readable");
        let code: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect();
        // (`sled::Sled` is the store's own backend module, which `store/mod.rs` opens.)
        let names_sled = |line: &&str| {
            line.replace(concat!("sled", "::Sled"), "")
                .contains(concat!("sled", "::"))
        };
        if !relative.starts_with("store/sled/") && code.iter().any(names_sled) {
            problems.push(format!("{relative}: names sled's API outside store/sled/"));
        }
        if relative.starts_with("service/api/") {
            for pattern in [concat!("Key", "::"), concat!("scan_", "prefix"), "raw_tree"] {
                if code.iter().any(|line| line.contains(pattern)) {
                    problems.push(format!(
                        "{relative}: uses `{pattern}`; the API reads through named store or engine queries"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
