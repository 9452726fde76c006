//! `redquorum doctor` end to end: exit statuses, the table and the `--json` shape, against
//! real redis-server processes.
#![cfg(feature = "cli")]

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use common::{cluster, raw};
use redquorum::testkit::LocalCluster;

const BIN: &str = env!("CARGO_BIN_EXE_redquorum");

/// Runs `redquorum doctor args...` and returns its exit status, stdout and stderr; fails the
/// test if it does not finish within the hang guard.
fn doctor(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("doctor")
        .args(args)
        .env_remove("REDQUORUM_NODES")
        .stdin(Stdio::null());
    let (tx, rx) = mpsc::channel();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redquorum");
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(common::HANG_GUARD) {
        Ok(out) => out.expect("wait for redquorum"),
        Err(_) => {
            // Kill the child this test started, by its id.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!(
                "redquorum doctor did not finish within {:?}",
                common::HANG_GUARD
            );
        }
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn safe(c: &LocalCluster) {
    for i in 0..c.len() {
        raw(c, i, &["CONFIG", "SET", "appendonly", "yes"]);
        raw(c, i, &["CONFIG", "SET", "appendfsync", "always"]);
    }
}

fn nodes(c: &LocalCluster) -> String {
    c.urls().join(",")
}

/// `--nodes` for `c` and a node timeout generous enough that a loaded machine's round trips do
/// not turn a verdict (the round-trip check is tested in tests/doctor.rs), then `rest`.
fn args<'a>(nodes: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--nodes", nodes, "--node-timeout", "1s"];
    args.extend(rest);
    args
}

#[test]
fn safe_masters_exit_0_with_a_table() {
    let c = cluster(3);
    safe(&c);
    let (code, out, err) = doctor(&args(&nodes(&c), &[]));
    assert_eq!(code, Some(0), "{out}{err}");
    for i in 0..3 {
        let port = c.port(i).expect("port");
        assert!(
            out.contains(&format!("redis://127.0.0.1:{port}/0: ok")),
            "{out}"
        );
    }
    assert!(
        out.contains("persistence   ok       appendonly yes, appendfsync always"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("verdict: safe"), "{out}");
}

#[test]
fn an_unsafe_or_unreachable_node_exits_1_saying_what_to_change() {
    let c = cluster(3);
    safe(&c);
    raw(&c, 1, &["CONFIG", "SET", "appendonly", "no"]);
    c.kill(2).expect("kill node 2");
    let (code, out, err) = doctor(&args(&nodes(&c), &["--ttl", "10s"]));
    assert_eq!(code, Some(1), "{out}{err}");
    let port = |i| c.port(i).expect("port");
    assert!(
        out.contains(&format!("redis://127.0.0.1:{}/0: unsafe", port(1))),
        "{out}"
    );
    assert!(out.contains("-> persistence: set appendonly yes"), "{out}");
    assert!(out.contains("(10s here)"), "{out}");
    assert!(
        out.contains(&format!("redis://127.0.0.1:{}/0: unsafe", port(2))),
        "{out}"
    );
    assert!(out.contains("-> connection: start redis-server"), "{out}");
    assert!(out.contains("verdict: unsafe (2 of 3 nodes)"), "{out}");
}

#[test]
fn restarts_delayed_makes_missing_persistence_a_warning() {
    // The testkit's default: appendonly no.
    let c = cluster(3);
    let (code, out, _) = doctor(&args(&nodes(&c), &[]));
    assert_eq!(code, Some(1), "{out}");
    let (code, out, _) = doctor(&args(&nodes(&c), &["--restarts-delayed"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("persistence   warning  appendonly no"),
        "{out}"
    );
    assert!(out.contains("accepted because every restart"), "{out}");
}

#[test]
fn strict_fails_on_warnings_too() {
    let c = cluster(3);
    safe(&c);
    raw(&c, 0, &["CONFIG", "SET", "appendfsync", "everysec"]);
    let (code, out, _) = doctor(&args(&nodes(&c), &[]));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("verdict: safe, with warnings"), "{out}");
    let (code, out, _) = doctor(&args(&nodes(&c), &["--strict"]));
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn json_has_every_node_and_finding() {
    let c = LocalCluster::builder()
        .nodes(3)
        .requirepass("s3cret")
        .start()
        .expect("start redis-servers");
    safe(&c);
    raw(&c, 0, &["CONFIG", "SET", "maxmemory", "50mb"]);
    raw(&c, 0, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let (code, out, err) = doctor(&args(&nodes(&c), &["--json"]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(!out.contains("s3cret"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    assert_eq!(v["verdict"], "unsafe");
    assert_eq!(v["safe"], false);
    assert_eq!(v["node_timeout_ms"], 1000.0);
    assert_eq!(v["ttl_ms"], 30_000.0);
    assert_eq!(v["drift_factor"], 0.01);
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let port = c.port(0).expect("port");
    assert_eq!(nodes[0]["node"], format!("redis://***@127.0.0.1:{port}/0"));
    assert_eq!(nodes[0]["level"], "unsafe");
    assert_eq!(nodes[0]["reachable"], true);
    assert!(nodes[0]["run_id"].as_str().is_some_and(|s| s.len() == 40));
    assert!(nodes[0]["round_trip_ms"].as_f64().is_some());
    assert!(nodes[0]["clock_rate"].as_f64().is_some());
    let findings = nodes[0]["findings"].as_array().expect("findings");
    let checks: Vec<&str> = findings
        .iter()
        .filter_map(|f| f["check"].as_str())
        .collect();
    assert_eq!(
        checks,
        [
            "connection",
            "role",
            "persistence",
            "eviction",
            "independence",
            "permissions",
            "round-trip",
            "clock"
        ]
    );
    let eviction = &findings[3];
    assert_eq!(eviction["level"], "unsafe");
    assert!(eviction["seen"]
        .as_str()
        .is_some_and(|s| s.contains("allkeys-lru")));
    assert!(eviction["fix"]
        .as_str()
        .is_some_and(|s| s.contains("noeviction")));
    assert_eq!(findings[0]["fix"], serde_json::Value::Null);
    assert_eq!(nodes[1]["level"], "ok");
}

#[test]
fn bad_input_is_a_usage_error() {
    let nodes = "http://nowhere,redis://127.0.0.1:1,redis://127.0.0.1:2";
    let (code, _, err) = doctor(&["--nodes", nodes]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("not a valid Redis URL"), "{err}");
    let (code, _, err) = doctor(&[]);
    assert_eq!(code, Some(64), "{err}");
}
