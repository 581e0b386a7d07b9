//! The shape of the source tree (issue 18): inside every crate, the files' imports (`use crate::…`,
//! `use super::…` and inline `crate::…` paths) form no cycle, and no Rust file is over 700 lines.
//! A file that imports from another names the module file that defines what it uses; a module
//! file (`mod.rs`) declares and re-exports its children, and nothing in the crate imports through
//! those re-exports, so per-ISA kernels, drivers and types stay layered.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file below `src` (`lib.rs` → [], `a/mod.rs` → [a], `a/b.rs` → [a, b]).
fn module_of(src: &Path, f: &Path) -> Vec<String> {
    let rel = f.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && !(parts.is_empty() && (stem == "lib" || stem == "main")) {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments, string contents and its trailing `#[cfg(test)] mod`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    for line in text.lines() {
        let l = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        for c in l.chars() {
            if c == '"' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e as f}}`) into its paths (without the `as` names).
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.replace(" as ", "@").chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else { return vec![tree.split('@').next().unwrap_or("").to_string()] };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (vec![], 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).flat_map(|p| expand(&format!("{prefix}{p}"))).collect()
}

/// Every crate-internal path a file's code names, as written (`crate::a::b`, `super::c`, `self::d`).
fn paths_in(code: &str) -> Vec<String> {
    let mut v = vec![];
    // `use` statements (possibly spanning lines).
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        v.extend(expand(&rest[..end]));
        rest = &rest[end..];
    }
    // Inline paths.
    for start in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(i) = rest.find(start) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let len = tail.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                v.push(tail[..len].trim_end_matches(':').to_string());
            }
            rest = &rest[i + start.len()..];
        }
    }
    v.into_iter().filter(|p| p.starts_with("crate::") || p.starts_with("super::") || p.starts_with("self::")).collect()
}

/// The module a path lands in: the deepest existing module along it.
fn resolve(from: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Vec<String>, &[&str]) = match segs[0] {
        "crate" => (vec![], &segs[1..]),
        "self" => (from.to_vec(), &segs[1..]),
        _ => {
            let mut b = from.to_vec();
            let mut i = 0;
            while segs.get(i) == Some(&"super") {
                b.pop();
                i += 1;
            }
            (b, &segs[i..])
        }
    };
    for s in rest {
        let mut next = base.clone();
        next.push(s.to_string());
        if modules.contains(&next) {
            base = next;
        } else {
            break;
        }
    }
    base
}

fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn dfs(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|x| x == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = dfs(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = dfs(n, edges, &mut state, &mut vec![]) {
                return Some(c);
            }
        }
    }
    None
}

/// The import graph of one crate's `src`: module → modules it imports from.
fn graph_of(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = vec![];
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges = BTreeMap::new();
    for f in &files {
        let from = module_of(src, f);
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let to: BTreeSet<Vec<String>> =
            paths_in(&code).iter().map(|p| resolve(&from, p, &modules)).filter(|m| *m != from).collect();
        edges.insert(from, to);
    }
    edges
}

#[test]
fn no_import_cycle_inside_any_crate() {
    // LOWBIT_CHECK_ROOT: check another checkout (to see the checker fail on a tree with cycles).
    let root = std::env::var_os("LOWBIT_CHECK_ROOT").map(PathBuf::from).unwrap_or_else(common::root);
    let crates = root.join("crates");
    let mut checked = 0;
    for c in std::fs::read_dir(&crates).unwrap() {
        let src = c.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let g = graph_of(&src);
        checked += g.len();
        if let Some(cycle) = find_cycle(&g) {
            let names: Vec<String> =
                cycle.iter().map(|m| if m.is_empty() { "lib".into() } else { m.join("::") }).collect();
            panic!("{}: import cycle {}", src.display(), names.join(" -> "));
        }
    }
    assert!(checked > 50, "only {checked} modules found");
}

#[test]
fn the_checker_finds_a_cycle_and_reads_use_trees() {
    assert_eq!(expand("crate::a::{b, c::{d, e as f}}"), ["crate::a::b", "crate::a::c::d", "crate::a::c::e"]);
    let d = common::tmpdir("module-graph");
    let src = d.join("src");
    std::fs::create_dir_all(src.join("k")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod k;\n").unwrap();
    std::fs::write(src.join("k/mod.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("k/a.rs"), "use super::b::X;\n// use crate::lib;\npub struct Y;\n").unwrap();
    std::fs::write(src.join("k/b.rs"), "pub struct X;\nfn f() { let _ = crate::k::a::Y; }\n").unwrap();
    let c = find_cycle(&graph_of(&src)).expect("a -> b -> a is a cycle");
    assert!(c.len() == 3 && c[0] == c[2], "{c:?}");
    std::fs::write(src.join("k/b.rs"), "pub struct X;\n#[cfg(test)]\nmod tests {\n    use crate::k::a::Y;\n}\n")
        .unwrap();
    assert_eq!(find_cycle(&graph_of(&src)), None, "test modules and comments are not imports");
}

#[test]
fn no_rust_file_over_700_lines() {
    let mut files = vec![];
    rust_files(&common::root().join("crates"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 700).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these at their seams: {long:?}");
}
