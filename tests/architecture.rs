//! The library's module map holds: docs/architecture.md lists the modules top to bottom
//! (exactly those `src/lib.rs` declares), and every `crate::` path in a module's code names a
//! module further down the list, so the imports form no cycle; no library source file is
//! longer than 700 lines. The testkit and the CLI sit outside the library and may use all of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

/// The modules `src/lib.rs` declares (the testkit left out).
fn declared(lib: &str) -> Vec<String> {
    let mut mods: Vec<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .filter(|m| m != "testkit")
        .collect();
    mods.sort();
    mods
}

/// The module map of docs/architecture.md, top to bottom: the numbered list items of its
/// "Module map" section that start with a module name in backticks (`` 1. `lock` — ... ``).
fn module_order(doc: &str) -> Vec<String> {
    doc.lines()
        .skip_while(|l| !l.starts_with("## Module map"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let (number, rest) = l.trim().split_once(". `")?;
            number.parse::<usize>().ok()?;
            rest.split_once('`').map(|(name, _)| name.to_owned())
        })
        .collect()
}

fn map_text(src: &Path) -> String {
    let doc = src.join("..").join("docs").join("architecture.md");
    std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`round/acquire.rs` is in `round`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The modules named by `crate::<module>` in `code`, outside comments.
fn uses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups are not used in this crate; a capitalised name is an item
            // re-exported at the root (`crate::RedLock`), which is the top of the map.
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// `(from, to)` for every import that does not point down the list, or names an item at the
/// crate root from below it.
fn upward_imports(src: &Path, order: &[String]) -> Vec<(String, String, PathBuf)> {
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let Some(from) = module_of(src, &file) else {
            continue;
        };
        let Some(&from_rank) = rank.get(from.as_str()) else {
            continue; // lib.rs, the testkit, the CLI
        };
        let code = std::fs::read_to_string(&file).expect("read source");
        for to in uses(&code) {
            let ok = match rank.get(to.as_str()) {
                Some(&to_rank) => to == from || to_rank > from_rank,
                // An item re-exported at the root: only the top may use it in code.
                None => from_rank == 0,
            };
            if !ok {
                bad.push((from.clone(), to, file.clone()));
            }
        }
    }
    bad
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_module_map_names_every_module_once() {
    let src = src();
    let mut order = module_order(&map_text(&src));
    order.sort();
    let lib = declared(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    assert_eq!(order, lib, "docs/architecture.md's map against src/lib.rs");
}

#[test]
fn every_import_points_down_the_module_map() {
    let src = src();
    let order = module_order(&map_text(&src));
    assert!(order.len() > 10, "the map lists the modules: {order:?}");
    let bad = upward_imports(&src, &order);
    let lines: Vec<String> = bad
        .iter()
        .map(|(from, to, file)| format!("{from} -> {to} ({})", file.display()))
        .collect();
    assert!(
        bad.is_empty(),
        "imports against the module map of src/lib.rs {order:?}:\n{}",
        lines.join("\n")
    );
}

/// Negative control: the checker finds an upward import (a copy of `src/` where the bottom
/// module, `error`, uses the top one).
#[test]
fn the_map_check_catches_an_upward_import() {
    let src = src();
    let order = module_order(&map_text(&src));
    let copy = std::env::temp_dir().join(format!("redquorum-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).expect("temp dir");
    for name in ["lib.rs", "error.rs", "lock.rs"] {
        std::fs::copy(src.join(name), copy.join(name)).expect("copy");
    }
    assert!(
        upward_imports(&copy, &order).is_empty(),
        "the copy starts clean"
    );
    let error = copy.join("error.rs");
    let mut code = std::fs::read_to_string(&error).expect("read");
    code.push_str("\n#[allow(unused_imports)]\nuse crate::lock::RedLock;\n");
    std::fs::write(&error, code).expect("write");
    let bad = upward_imports(&copy, &order);
    let _ = std::fs::remove_dir_all(&copy);
    assert!(
        bad.iter()
            .any(|(from, to, _)| from == "error" && to == "lock"),
        "{bad:?}"
    );
}

#[test]
fn no_library_source_file_is_longer_than_700_lines() {
    let src = src();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<(PathBuf, usize)> = files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("testkit")) && !f.starts_with(src.join("bin")))
        .filter_map(|f| {
            let lines = std::fs::read_to_string(&f).expect("read").lines().count();
            (lines > MAX_LINES).then_some((f, lines))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}
