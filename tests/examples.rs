//! The examples: each file in `examples/` is declared in Cargo.toml with
//! `required-features = ["testkit"]`, says how to run it, and runs to completion against the
//! local masters it starts itself.
//!
//! Running them does not go through `cargo run` (a nested cargo would wait for the build lock
//! this test run holds): `cargo test --all-features` has already built every example into
//! `target/<profile>/examples/`, next to this test's own `deps/` directory, and this test runs
//! those binaries one after another (at once, they slow each other down past the examples'
//! node timeouts of 20 ms), each bounded by [`TIMEOUT`]. A binary that is missing or older than
//! its sources (`cargo test --test examples` does not build examples) fails the test, saying
//! how to build it: a test that cannot find what it tests must not pass. Without the `testkit`
//! feature the examples are not built at all, and this file compiles to nothing.
#![cfg(feature = "testkit")]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Every example, with a line its output must contain when it ran to the end, or `None` for
/// one that is not run here.
const EXAMPLES: &[(&str, Option<&str>)] = &[
    ("demo", Some("never two holders at once")),
    // Not run: it is the long chaos soak (tests/chaos.rs runs the CI-sized one).
    ("soak", None),
    ("fencing", Some("rejected: token")),
    ("basic", Some("done")),
    ("with_lock", Some("lost fired")),
    ("groups", Some("done")),
    ("chaos", Some("healed: acquired and released again")),
    ("tracing", Some("lock busy; waiting to retry")),
    // The test build has every feature, `metrics` too.
    (
        "metrics",
        Some("redquorum_acquisitions_total{outcome=\"granted\"} 11"),
    ),
];

/// Examples that always start their own masters: they inject faults, or need a short TTL on a
/// fresh cluster.
const OWN_MASTERS: &[&str] = &["chaos", "fencing", "soak"];

/// Per example, a hang guard only: each takes about 2 s at most on a quiet machine, all of them
/// together about 5 s, and many times that on a loaded one.
const TIMEOUT: Duration = Duration::from_secs(300);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `[[example]]` entries of Cargo.toml: (name, required-features line).
fn declared_examples() -> Vec<(String, Option<String>)> {
    let manifest = read(&root().join("Cargo.toml"));
    let mut out = Vec::new();
    let mut in_example = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_example = line == "[[example]]";
            if in_example {
                out.push((String::new(), None));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if let (true, Some(entry)) = (in_example, out.last_mut()) {
            match key.trim() {
                "name" => entry.0 = value.trim().trim_matches('"').to_owned(),
                "required-features" => entry.1 = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    out
}

fn example_files() -> BTreeSet<String> {
    fs::read_dir(root().join("examples"))
        .expect("examples/ exists")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect()
}

#[test]
fn every_example_is_declared_with_the_testkit_feature() {
    let declared = declared_examples();
    let names: BTreeSet<String> = declared.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names.len(),
        declared.len(),
        "an example is declared twice: {declared:?}"
    );
    assert_eq!(
        names,
        example_files(),
        "examples/*.rs and Cargo.toml's [[example]] entries differ"
    );
    for (name, features) in &declared {
        assert_eq!(
            features.as_deref(),
            Some(r#"["testkit"]"#),
            "example {name}: needs required-features = [\"testkit\"]"
        );
    }
    let listed: BTreeSet<String> = EXAMPLES.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(
        listed, names,
        "tests/examples.rs: EXAMPLES should list every example"
    );
}

#[test]
fn every_example_says_how_to_run_it() {
    for name in example_files() {
        let src = read(&root().join("examples").join(format!("{name}.rs")));
        let run = format!("cargo run --features testkit --example {name}");
        assert!(
            src.starts_with("//!"),
            "examples/{name}.rs: start with a //! description"
        );
        assert!(
            src.contains(&run),
            "examples/{name}.rs: its header should show `{run}`"
        );
        if !OWN_MASTERS.contains(&name.as_str()) {
            assert!(
                src.contains("REDQUORUM_NODES") && src.contains("env_or_local"),
                "examples/{name}.rs: should use REDQUORUM_NODES, or local masters without it"
            );
        }
    }
}

/// `target/<profile>/examples/<name>`, from this test binary's `target/<profile>/deps/`;
/// fails the test if it is missing or older than its sources.
fn binary(name: &str) -> PathBuf {
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join(name)))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "examples/{name} is not built: run `cargo test --all-features` (or \
                 `cargo build --all-features --examples` before `cargo test --test examples`)"
            )
        });
    assert!(
        modified(&path) >= newest_source(name),
        "examples/{name}: binary older than its sources: run `cargo test --all-features` (or \
         `cargo build --all-features --examples` before `cargo test --test examples`)"
    );
    path
}

fn modified(path: &Path) -> SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newest modification time among the crate's sources and the example's own file.
fn newest_source(name: &str) -> SystemTime {
    let mut newest = modified(&root().join("examples").join(format!("{name}.rs")));
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}

/// Waits for `child` to exit, killing it after `timeout`.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}

#[test]
fn examples_run_against_local_masters() {
    let _light = common::light_blocking();
    let dir = std::env::temp_dir().join(format!("redquorum-examples-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    for &(name, expect) in EXAMPLES {
        let Some(expect) = expect else {
            continue;
        };
        let bin = binary(name);
        let output = dir.join(format!("{name}.out"));
        let file = fs::File::create(&output).expect("output file");
        let mut child = Command::new(&bin)
            .env_remove("REDQUORUM_NODES")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone output file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let status = wait(&mut child, TIMEOUT);
        let out = fs::read_to_string(&output).unwrap_or_default();
        if !(status.as_ref().is_ok_and(|s| s.success()) && out.contains(expect)) {
            let status = status.map_or_else(|e| e, |s| s.to_string());
            failures.push(format!(
                "examples/{name} ({status}; expected {expect:?} in its output):\n{out}"
            ));
        }
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The soak across OS processes (clients in 2 child processes, oracle in a separate
/// redis-server), briefly: the checks must come out clean.
#[test]
fn soak_across_processes_is_clean() {
    // Heavy: runs alone in this binary (see common::heavy).
    let _heavy = common::heavy_blocking();
    let bin = binary("soak");
    let out = Command::new(&bin)
        .args(["6", "7", "3", "3", "2"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run soak");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("violations:   0"), "{text}");
    let grants: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("grants:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(grants > 100, "{text}");
}
