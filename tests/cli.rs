//! End-to-end tests of the `redquorum` binary against real redis-server processes.
#![cfg(feature = "cli")]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster;
use redquorum::testkit::LocalCluster;
use redquorum::RedLock;

const BIN: &str = env!("CARGO_BIN_EXE_redquorum");
/// Longest any single invocation may take before the test fails (and kills it): a hang guard,
/// not a figure under test (those are asserted on `took`).
const LIMIT: Duration = common::HANG_GUARD;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "redquorum-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a finished invocation left.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A started invocation whose output goes to files (no pipe can block anything).
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
}

impl Running {
    fn wait(mut self) -> Outcome {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Outcome {
                    status,
                    stdout: fs::read_to_string(&self.out).unwrap_or_default(),
                    stderr: fs::read_to_string(&self.err).unwrap_or_default(),
                    took: self.started.elapsed(),
                };
            }
            if self.started.elapsed() > LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "redquorum did not finish within {LIMIT:?}; stderr:\n{}",
                    fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts the binary with `args` and a clean environment as far as redquorum is concerned.
fn start<I, S>(scratch: &Scratch, args: I, env: &[(&str, &str)]) -> Running
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let (out, err) = (
        scratch.path(&format!("stdout-{n}")),
        scratch.path(&format!("stderr-{n}")),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("REDQUORUM_NODES")
        .env_remove("REDQUORUM_FENCING_TOKEN")
        .current_dir(&scratch.0)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("stdout file"))
        .stderr(fs::File::create(&err).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running {
        child: cmd.spawn().expect("spawn redquorum"),
        out,
        err,
        started: Instant::now(),
    }
}

fn run_bin<I, S>(scratch: &Scratch, args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    start(scratch, args, &[]).wait()
}

fn nodes(c: &LocalCluster) -> String {
    c.urls().join(",")
}

/// `run` with the cluster's nodes and settings that suit a loaded 2-core machine, then `rest`.
fn run_args(c: &LocalCluster, key: &str, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--nodes".to_owned(),
        nodes(c),
        "--key".to_owned(),
        key.to_owned(),
        "--node-timeout".to_owned(),
        "250ms".to_owned(),
    ];
    args.extend(rest.iter().map(|s| (*s).to_owned()));
    args
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn wait_for_file(path: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn help_reads_like_a_man_page() {
    let s = Scratch::new();
    for args in [&["--help"][..], &["run", "--help"], &["help", "run"]] {
        let out = run_bin(&s, args);
        assert_eq!(out.code(), Some(0), "{args:?}: {out:?}");
        for section in [
            "Usage: redquorum",
            "EXIT STATUS",
            "ENVIRONMENT",
            "EXAMPLES",
            "REDQUORUM_NODES",
            "REDQUORUM_FENCING_TOKEN",
            "75",
            "76",
            "64",
        ] {
            assert!(
                out.stdout.contains(section),
                "{args:?} lacks {section:?}:\n{}",
                out.stdout
            );
        }
    }
    let run_help = run_bin(&s, ["run", "--help"]).stdout;
    for option in [
        "--nodes",
        "--key",
        "--ttl",
        "--wait",
        "--grace",
        "--owner",
        "--namespace",
        "--group",
        "--fencing",
    ] {
        assert!(run_help.contains(option), "run --help lacks {option}");
    }
    // The node timeout's default as the code computes it (config::default_node_timeout).
    assert!(
        run_help.contains("TTL/200, within 50ms..250ms"),
        "{run_help}"
    );
    let short = run_bin(&s, ["-h"]);
    assert_eq!(short.code(), Some(0));
    assert!(short.stdout.contains("run") && short.stdout.contains("status"));
}

#[test]
fn bad_usage_exits_64_with_a_clear_message() {
    let s = Scratch::new();
    let cases: [(&[&str], &str); 7] = [
        (&["run", "--bogus", "--key", "k", "--", "true"], "--bogus"),
        (
            &[
                "run",
                "--nodes",
                "redis://127.0.0.1:1",
                "--key",
                "k",
                "--ttl",
                "5x",
                "--",
                "true",
            ],
            "unknown unit",
        ),
        (
            &["run", "--nodes", "redis://127.0.0.1:1", "--key", "k"],
            "COMMAND",
        ),
        (&["run", "--key", "k", "--", "true"], "REDQUORUM_NODES"),
        (
            &[
                "run",
                "--nodes",
                "notaurl,redis://127.0.0.1:2,redis://127.0.0.1:3",
                "--key",
                "k",
                "--",
                "true",
            ],
            "not a valid Redis URL",
        ),
        (&["status", "--nodes", "redis://127.0.0.1:1"], "--key"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, says) in cases {
        let out = run_bin(&s, args);
        assert_eq!(out.code(), Some(64), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(says),
            "{args:?} should mention {says:?}: {}",
            out.stderr
        );
    }
    let bare = run_bin(&s, std::iter::empty::<&str>());
    assert_eq!(bare.code(), Some(64), "{bare:?}");
    assert!(bare.stderr.contains("Usage"), "{bare:?}");
}

#[test]
fn node_lists_with_an_empty_entry_are_refused_without_showing_them() {
    let s = Scratch::new();
    // Refused before any connection: nothing listens on these ports.
    for list in [
        "redis://:hunter2@127.0.0.1:1,redis://127.0.0.1:2,redis://127.0.0.1:3,",
        ",redis://:hunter2@127.0.0.1:1,redis://127.0.0.1:2,redis://127.0.0.1:3",
        "redis://:hunter2@127.0.0.1:1,,redis://127.0.0.1:2,redis://127.0.0.1:3",
    ] {
        for args in [
            &["run", "--nodes", list, "--key", "k", "--", "true"][..],
            &["status", "--nodes", list, "--key", "k"],
        ] {
            let out = run_bin(&s, args);
            assert_eq!(out.code(), Some(64), "{args:?}: {out:?}");
            assert!(out.stderr.contains("empty entry"), "{args:?}: {out:?}");
            assert!(!out.stderr.contains("hunter2"), "{args:?}: {out:?}");
        }
    }
    let env = start(
        &s,
        ["run", "--key", "k", "--", "true"],
        &[(
            "REDQUORUM_NODES",
            "redis://127.0.0.1:1,redis://127.0.0.1:2,redis://127.0.0.1:3,",
        )],
    )
    .wait();
    assert_eq!(env.code(), Some(64), "{env:?}");
    assert!(env.stderr.contains("REDQUORUM_NODES"), "{env:?}");
}

#[test]
fn fewer_than_3_nodes_are_refused_unless_allowed() {
    let s = Scratch::new();
    for list in [
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:1,redis://127.0.0.1:2",
    ] {
        let out = run_bin(&s, ["run", "--nodes", list, "--key", "k", "--", "true"]);
        assert_eq!(out.code(), Some(64), "{list}: {out:?}");
        assert!(out.stderr.contains("--allow-few-nodes"), "{list}: {out:?}");
    }
    let c = cluster(1);
    let out = run_bin(
        &s,
        run_args(
            &c,
            "few",
            &["--allow-few-nodes", "--", "sh", "-c", "exit 3"],
        ),
    );
    assert_eq!(out.code(), Some(3), "{out:?}");
}

#[test]
fn an_even_node_count_is_warned_about() {
    let c = cluster(4);
    let s = Scratch::new();
    let out = run_bin(&s, run_args(&c, "even", &["--", "true"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("warning: 4 nodes tolerate 1 failed master"),
        "{out:?}"
    );
    let odd = run_bin(&s, run_args(&cluster(3), "odd", &["--", "true"]));
    assert_eq!(odd.code(), Some(0), "{odd:?}");
    assert!(!odd.stderr.contains("warning"), "{odd:?}");
}

#[test]
fn flag_errors_name_the_flags_and_the_clis_defaults() {
    let s = Scratch::new();
    let dead = "redis://127.0.0.1:1,redis://127.0.0.1:2,redis://127.0.0.1:3";
    let run = |rest: &[&str]| {
        let mut args = vec!["run", "--nodes", dead, "--key", "k"];
        args.extend_from_slice(rest);
        args.extend_from_slice(&["--", "true"]);
        run_bin(&s, args)
    };
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--ttl", "0"], &["--ttl", "the default is 30s"]),
        (&["--ttl", "10ms"], &["--ttl", "use a longer --ttl"]),
        (
            &["--ttl", "100ms", "--node-timeout", "200ms"],
            &["shorter --node-timeout"],
        ),
        (&["--node-timeout", "0"], &["--node-timeout", "50ms..250ms"]),
        (&["--namespace", "a:b"], &["--namespace"]),
        (&["--owner", ""], &["--owner"]),
    ];
    for (rest, says) in cases {
        let out = run(rest);
        assert_eq!(out.code(), Some(64), "{rest:?}: {out:?}");
        for words in says {
            assert!(
                out.stderr.contains(words),
                "{rest:?} should say {words:?}: {out:?}"
            );
        }
        // The library's words for the same rules: its method names and its 10 s default.
        for library in ["node_timeout", "10 s", "ttl must", "owner label"] {
            assert!(
                !out.stderr.contains(library),
                "{rest:?} says {library:?}: {out:?}"
            );
        }
    }
    let group = run_bin(&s, ["status", "--nodes", dead, "--key", "k", "--group", ""]);
    assert_eq!(group.code(), Some(64), "{group:?}");
    assert!(group.stderr.contains("--group"), "{group:?}");
    // `status` has no --ttl: a long --node-timeout must not be refused for a TTL nobody gave.
    let status = run_bin(
        &s,
        [
            "status",
            "--nodes",
            dead,
            "--key",
            "k",
            "--node-timeout",
            "20s",
        ],
    );
    assert_eq!(status.code(), Some(69), "{status:?}");
    assert!(!status.stderr.contains("ttl"), "{status:?}");
}

#[test]
fn verbose_run_names_each_node_that_did_not_grant_and_why() {
    let c = cluster(3);
    let s = Scratch::new();
    c.kill(2).expect("kill");
    let out = run_bin(&s, run_args(&c, "named", &["-v", "--", "true"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("on 2 of 3 nodes"), "{out:?}");
    let dead = &c.url(2).expect("url")["redis://".len()..];
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains(dead))
        .unwrap_or_else(|| panic!("no line names {dead}: {out:?}"));
    assert!(line.contains("connection refused"), "{line}");
    for alive in 0..2 {
        let url = c.url(alive).expect("url");
        assert!(
            !out.stderr
                .contains(&format!("{}:", &url["redis://".len()..])),
            "a granting node is listed: {out:?}"
        );
    }
}

#[test]
fn status_tells_an_authentication_failure_from_an_unreachable_node() {
    let c = redquorum::testkit::LocalCluster::builder()
        .nodes(3)
        .requirepass("right-pw")
        .start()
        .expect("cluster");
    let s = Scratch::new();
    let mut urls = c.urls();
    urls[0] = urls[0].replace("right-pw", "wrong-pw");
    let out = run_bin(&s, ["status", "--nodes", &urls.join(","), "--key", "k"]);
    assert_eq!(out.code(), Some(1), "free: {out:?}");
    let node = format!("127.0.0.1:{}/0", c.port(0).expect("port"));
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&node))
        .unwrap_or_else(|| panic!("no row for {node}: {out:?}"));
    assert!(row.contains("auth failed"), "{row}");
    assert!(!row.contains("unreachable"), "{row}");
    assert!(out.stdout.contains("authentication failed"), "{out:?}");
    assert!(
        !out.stdout.contains("wrong-pw") && !out.stderr.contains("wrong-pw"),
        "{out:?}"
    );
}

#[test]
fn masters_that_time_out_point_at_the_node_timeout_flag() {
    let c = cluster(3);
    let s = Scratch::new();
    c.pause(0).expect("pause");
    c.pause(1).expect("pause");
    let out = run_bin(&s, run_args(&c, "slow", &["--", "true"]));
    c.resume(0).expect("resume");
    c.resume(1).expect("resume");
    assert_eq!(out.code(), Some(69), "{out:?}");
    assert!(out.stderr.contains("timed out"), "{out:?}");
    assert!(out.stderr.contains("--node-timeout"), "{out:?}");
}

#[test]
fn the_commands_exit_status_is_passed_through() {
    let c = cluster(5);
    let s = Scratch::new();
    let script = "echo \"key=$REDQUORUM_KEY\"; exit 7";
    let out = run_bin(&s, run_args(&c, "job", &["--", "sh", "-c", script]));
    assert_eq!(out.code(), Some(7), "{out:?}");
    assert!(out.stdout.contains("key=job"), "{out:?}");

    // Nodes from the environment, and a command given without `--`.
    let nodes = nodes(&c);
    let out = start(
        &s,
        ["run", "--key", "job", "sh", "-c", "exit 0"],
        &[("REDQUORUM_NODES", &nodes)],
    )
    .wait();
    assert_eq!(out.code(), Some(0), "{out:?}");

    let killed = run_bin(&s, run_args(&c, "job", &["--", "sh", "-c", "kill -9 $$"]));
    assert_eq!(killed.code(), Some(128 + 9), "{killed:?}");
    let missing = run_bin(&s, run_args(&c, "job", &["--", "./no-such-command"]));
    assert_eq!(missing.code(), Some(127), "{missing:?}");
    // Every run released the lock.
    assert!(
        common::all_keys(&c).is_empty(),
        "{:?}",
        common::all_keys(&c)
    );
}

#[test]
fn a_lock_held_elsewhere_gives_75_after_the_wait() {
    let c = cluster(5);
    let s = Scratch::new();
    let rt = runtime();
    let guard = rt.block_on(async {
        let locks = common::builder(&c)
            .ttl(Duration::from_secs(30))
            .owner("other-holder")
            .build()
            .await
            .expect("build");
        locks
            .try_acquire("backup")
            .await
            .expect("try")
            .expect("free")
    });
    let marker = s.path("ran");
    let touch = format!("touch {}", marker.display());

    let at_once = run_bin(&s, run_args(&c, "backup", &["--", "sh", "-c", &touch]));
    assert_eq!(at_once.code(), Some(75), "{at_once:?}");
    assert!(at_once.stderr.contains("other-holder"), "{at_once:?}");
    assert!(at_once.took < Duration::from_secs(3), "{at_once:?}");

    let waited = run_bin(
        &s,
        run_args(&c, "backup", &["--wait", "700ms", "--", "sh", "-c", &touch]),
    );
    assert_eq!(waited.code(), Some(75), "{waited:?}");
    assert!(waited.took >= Duration::from_millis(700), "{waited:?}");
    assert!(!marker.exists(), "the command ran without the lock");

    // Another group or namespace is another lock.
    for other in [&["--group", "other"][..], &["--namespace", "elsewhere"]] {
        let mut rest = other.to_vec();
        rest.extend(["--", "true"]);
        let out = run_bin(&s, run_args(&c, "backup", &rest));
        assert_eq!(out.code(), Some(0), "{other:?}: {out:?}");
    }
    rt.block_on(guard.release()).expect("release");
}

#[test]
fn concurrent_runs_never_overlap() {
    let c = cluster(5);
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "echo \"start $$\" >> {log}; sleep 0.15; echo \"end $$\" >> {log}",
        log = log.display()
    );
    let args = run_args(
        &c,
        "exclusive",
        &["--wait", "15s", "--", "sh", "-c", &script],
    );
    thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..3 {
                    let out = run_bin(&s, &args);
                    assert_eq!(out.code(), Some(0), "{out:?}");
                }
            });
        }
    });
    let lines: Vec<String> = s.read("log").lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert_eq!(overlap(&lines), None);
}

/// The first sign in a log of "start PID"/"end PID" lines that two runs overlapped: a start not
/// followed directly by its own end.
fn overlap(lines: &[String]) -> Option<String> {
    for pair in lines.chunks(2) {
        let pid = pair[0].strip_prefix("start ");
        let end = pair.get(1).and_then(|l| l.strip_prefix("end "));
        if pid.is_none() || pid != end {
            return Some(format!("overlap at {pair:?}: {lines:?}"));
        }
    }
    None
}

/// Negative control for `concurrent_runs_never_overlap`'s parser: two runs under different
/// locks (each ignoring the other's) that each wait, inside their command, until the other has
/// started really do overlap, and the parser must say so.
#[test]
fn the_overlap_check_catches_runs_that_ignore_each_others_lock() {
    let c = cluster(5);
    let s = Scratch::new();
    let log = s.path("log");
    // Bounded wait for the other run (3000 × 0.1 s: a hang guard of five minutes).
    let script = |me: &str, other: &str| {
        format!(
            "echo \"start $$\" >> {log}; touch {dir}/{me}; i=0; \
             while [ ! -e {dir}/{other} ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done; \
             echo \"end $$\" >> {log}",
            log = log.display(),
            dir = s.0.display(),
        )
    };
    let (sa, sb) = (script("a", "b"), script("b", "a"));
    let args_a = run_args(&c, "exclusive-a", &["--", "sh", "-c", &sa]);
    let args_b = run_args(&c, "exclusive-b", &["--", "sh", "-c", &sb]);
    thread::scope(|scope| {
        for args in [&args_a, &args_b] {
            let s = &s;
            scope.spawn(move || {
                let out = run_bin(s, args);
                assert_eq!(out.code(), Some(0), "{out:?}");
            });
        }
    });
    let lines: Vec<String> = s.read("log").lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(overlap(&lines).is_some(), "overlap missed: {lines:?}");
    // And the parser's verdicts on logs written out by hand.
    let own = |v: &[&str]| v.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        overlap(&own(&["start 1", "end 1", "start 2", "end 2"])),
        None
    );
    assert!(overlap(&own(&["start 1", "start 2", "end 1", "end 2"])).is_some());
    assert!(overlap(&own(&["start 1", "end 2", "start 2", "end 1"])).is_some());
    assert!(overlap(&own(&["start 1", "end 1", "start 2"])).is_some());
}

#[test]
fn the_fencing_token_reaches_the_command() {
    let c = cluster(5);
    let s = Scratch::new();
    let show = "echo \"token=$REDQUORUM_FENCING_TOKEN\"";
    let token = |out: &Outcome| -> u64 {
        assert_eq!(out.code(), Some(0), "{out:?}");
        out.stdout
            .trim()
            .strip_prefix("token=")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no token in {:?}", out.stdout))
    };
    let first = token(&run_bin(
        &s,
        run_args(&c, "fenced", &["--fencing", "--", "sh", "-c", show]),
    ));
    let second = token(&run_bin(
        &s,
        run_args(&c, "fenced", &["--fencing", "--", "sh", "-c", show]),
    ));
    assert!(first >= 1 && second > first, "{first} then {second}");

    // Without --fencing there is none, not even an outer one inherited from the environment.
    let plain = start(
        &s,
        run_args(&c, "fenced", &["--", "sh", "-c", show]),
        &[("REDQUORUM_FENCING_TOKEN", "999")],
    )
    .wait();
    assert_eq!(plain.code(), Some(0), "{plain:?}");
    assert_eq!(plain.stdout.trim(), "token=", "{plain:?}");
}

#[test]
fn losing_the_lock_sends_sigterm_and_exits_76() {
    let c = cluster(5);
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo TERM >> {log}; exit 3' TERM; echo started >> {log}; sleep 30 & wait",
        log = log.display()
    );
    let running = start(
        &s,
        run_args(
            &c,
            "fragile",
            &["--ttl", "2s", "--grace", "5s", "--", "sh", "-c", &script],
        ),
        &[],
    );
    assert!(
        wait_for_file(&log, "started", common::HANG_GUARD),
        "the command did not start"
    );
    let paused = Instant::now();
    for i in 0..3 {
        c.pause(i).expect("pause");
    }
    let out = running.wait();
    let after_pause = paused.elapsed();
    for i in 0..3 {
        c.resume(i).expect("resume");
    }
    assert_eq!(out.code(), Some(76), "{out:?}");
    assert!(
        s.read("log").contains("TERM"),
        "the command got no SIGTERM: {out:?}"
    );
    assert!(out.stderr.contains("lost"), "{out:?}");
    // It went on SIGTERM (lease of 2 s), well before the 5 s grace would have sent SIGKILL.
    assert!(
        after_pause < Duration::from_secs(5),
        "took {after_pause:?}: {out:?}"
    );
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let c = cluster(5);
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo TERM >> {log}' TERM; echo started >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    );
    let running = start(
        &s,
        run_args(
            &c,
            "stubborn",
            &["--ttl", "2s", "--grace", "500ms", "--", "sh", "-c", &script],
        ),
        &[],
    );
    assert!(
        wait_for_file(&log, "started", common::HANG_GUARD),
        "the command did not start"
    );
    for i in 2..5 {
        c.pause(i).expect("pause");
    }
    let out = running.wait();
    for i in 2..5 {
        c.resume(i).expect("resume");
    }
    assert_eq!(out.code(), Some(76), "{out:?}");
    assert!(s.read("log").contains("TERM"), "{out:?}");
    assert!(out.stderr.contains("SIGKILL"), "{out:?}");
}

#[test]
fn status_shows_each_node_and_the_quorum_view() {
    let c = cluster(5);
    let s = Scratch::new();
    let rt = runtime();
    let (locks, guard): (RedLock, _) = rt.block_on(async {
        let locks = common::builder(&c)
            .ttl(Duration::from_secs(30))
            .owner("status-holder")
            .fencing(true)
            .build()
            .await
            .expect("build");
        let guard = locks
            .try_acquire("report")
            .await
            .expect("try")
            .expect("free");
        (locks, guard)
    });
    let redis_key = locks.redis_key("report").expect("key");
    let status = ["status", "--nodes", &nodes(&c), "--key", "report"];

    let held = run_bin(&s, status);
    assert_eq!(held.code(), Some(0), "{held:?}");
    assert!(held.stdout.contains(&redis_key), "{held:?}");
    assert!(
        held.stdout
            .contains(&locks.fence_key("report").expect("fence key")),
        "{held:?}"
    );
    assert!(held.stdout.contains("held by status-holder"), "{held:?}");
    let holder_rows = held
        .stdout
        .lines()
        .filter(|l| l.contains("status-holder"))
        .count();
    assert!(holder_rows >= 4, "a row per node that granted: {held:?}");
    assert!(held.stdout.contains(" 1\n"), "fencing counter 1: {held:?}");
    assert!(
        held.stdout
            .contains(&c.url(0).expect("url")["redis://".len()..]),
        "{held:?}"
    );

    rt.block_on(guard.release()).expect("release");
    c.kill(4).expect("kill");
    let free = run_bin(&s, status);
    assert_eq!(free.code(), Some(1), "{free:?}");
    assert!(free.stdout.contains("free"), "{free:?}");
    // The killed node's row says why it could not be read.
    let dead = format!("127.0.0.1:{}/0", c.port(4).expect("port"));
    let row = free
        .stdout
        .lines()
        .find(|l| l.starts_with(&dead))
        .unwrap_or_else(|| panic!("no row for {dead}: {free:?}"));
    assert!(row.contains("refused"), "{row}");
    assert!(free.stdout.contains("connection refused"), "{free:?}");
}

#[test]
fn demo_shows_hand_offs() {
    let s = Scratch::new();
    let out = run_bin(&s, ["demo", "--workers", "2", "--rounds", "2"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.matches("got the lock").count(), 4, "{out:?}");
    assert!(out.stdout.contains("killed master 0"), "{out:?}");
}

#[test]
fn unreachable_masters_give_69_and_the_command_does_not_run() {
    let s = Scratch::new();
    let marker = s.path("ran");
    let touch = format!("touch {}", marker.display());
    let dead = "redis://127.0.0.1:1,redis://127.0.0.1:2,redis://127.0.0.1:3";
    let out = run_bin(
        &s,
        [
            "run", "--nodes", dead, "--key", "k", "--", "sh", "-c", &touch,
        ],
    );
    assert_eq!(out.code(), Some(69), "{out:?}");
    assert!(
        out.stderr.contains("0 of 3 Redis masters answered"),
        "{out:?}"
    );
    assert!(!marker.exists(), "the command ran without the lock");
    let status = run_bin(&s, ["status", "--nodes", dead, "--key", "k"]);
    assert_eq!(status.code(), Some(69), "{status:?}");
}

/// Whether process `pid` still runs (a zombie, or a process that is gone, does not).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The pids a job wrote to `path` (space- or newline-separated), once it has written `n`.
fn read_pids(path: &Path, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let pids: Vec<u32> = fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(Instant::now() < deadline, "the job never wrote its pids");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Kills what a test left running (on failure), so that no job outlives the test.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_redquorum_takes_its_job_with_it() {
    let c = cluster(5);
    let s = Scratch::new();
    let pids = s.path("pids");
    // The job: the command's shell and a process it started in the background.
    let script = format!(
        "sleep 300 & echo \"$$ $!\" > {pids}; wait",
        pids = pids.display()
    );
    let mut first = start(
        &s,
        run_args(&c, "orphan", &["--ttl", "2s", "--", "sh", "-c", &script]),
        &[],
    );
    let job = read_pids(&pids, 2);
    let _cleanup = KillOnDrop(job.clone());
    assert!(job.iter().all(|&p| alive(p)), "{job:?}");
    first.child.kill().expect("SIGKILL redquorum");
    let _ = first.child.wait();

    // A second run takes the lock once the first lease has run out; when its command starts,
    // nothing of the first job may be left.
    let check = job
        .iter()
        .map(|p| {
            format!(
                "if [ -e /proc/{p} ] && ! grep -q ') [ZX] ' /proc/{p}/stat; then echo alive {p}; fi; "
            )
        })
        .collect::<String>();
    let report = s.path("overlap");
    let second = run_bin(
        &s,
        run_args(
            &c,
            "orphan",
            &[
                "--wait",
                "15s",
                "--",
                "sh",
                "-c",
                &format!("{{ {check} }} > {}", report.display()),
            ],
        ),
    );
    assert_eq!(second.code(), Some(0), "{second:?}");
    assert_eq!(
        s.read("overlap"),
        "",
        "the first job still ran when the second run started"
    );
}

/// The `redis-server` children of process `parent` (from `/proc/*/stat`).
fn redis_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain ')', so split at the last one.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if head.contains("(redis-server") && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// `redquorum demo` SIGKILLed (no unwinding, no `Drop`): the redis-servers it started die
/// with it (parent-death signal) instead of running on as orphans.
#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_demo_takes_its_redis_servers_with_it() {
    let s = Scratch::new();
    let mut demo = start(&s, ["demo", "--workers", "16", "--rounds", "20"], &[]);
    assert!(
        wait_for_file(&demo.out, "local redis-server masters", LIMIT),
        "the demo never started its masters"
    );
    let servers = redis_children(demo.child.id());
    let _cleanup = KillOnDrop(servers.clone());
    assert_eq!(servers.len(), 5, "the demo's 5 masters: {servers:?}");
    assert!(servers.iter().all(|&p| alive(p)), "{servers:?}");
    demo.child.kill().expect("SIGKILL the demo");
    let _ = demo.child.wait();
    let deadline = Instant::now() + LIMIT;
    while servers.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "redis-servers outlived the killed demo: {servers:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn the_lock_is_kept_until_the_whole_job_has_exited() {
    let c = cluster(5);
    let s = Scratch::new();
    let pids = s.path("pids");
    let stop = s.path("stop");
    // The command's shell exits at once, leaving a background process that runs until told.
    let script = format!(
        "(while [ ! -e {stop} ]; do sleep 0.02; done) & echo \"$$ $!\" > {pids}; exit 0",
        stop = stop.display(),
        pids = pids.display()
    );
    let first = start(
        &s,
        run_args(&c, "background", &["--", "sh", "-c", &script]),
        &[],
    );
    let job = read_pids(&pids, 2);
    let _cleanup = KillOnDrop(job.clone());
    let (shell, background) = (job[0], job[1]);
    let deadline = Instant::now() + LIMIT;
    while alive(shell) {
        assert!(
            Instant::now() < deadline,
            "the command's shell did not exit"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(alive(background), "the background process ended early");

    let marker = s.path("ran");
    let touch = format!("touch {}", marker.display());
    let meanwhile = run_bin(&s, run_args(&c, "background", &["--", "sh", "-c", &touch]));
    assert_eq!(
        meanwhile.code(),
        Some(75),
        "the lock was free while the job still ran: {meanwhile:?}"
    );
    assert!(!marker.exists());

    fs::write(&stop, "").expect("stop file");
    let out = first.wait();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!alive(background));
    let after = run_bin(&s, run_args(&c, "background", &["--", "sh", "-c", &touch]));
    assert_eq!(after.code(), Some(0), "{after:?}");
    assert!(marker.exists());
}

#[test]
fn the_command_gets_sigterm_while_the_lease_is_still_valid() {
    let c = common::proxied(5);
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo TERM >> {log}; exit 3' TERM; echo started >> {log}; sleep 30 & wait",
        log = log.display()
    );
    let running = start(
        &s,
        run_args(
            &c,
            "margin",
            &["--ttl", "3s", "--grace", "1s", "--", "sh", "-c", &script],
        ),
        &[],
    );
    assert!(
        wait_for_file(&log, "started", LIMIT),
        "the command did not start"
    );
    // redquorum can no longer reach a majority (so its renewals fail), while a contender that
    // talks to the masters directly takes the lock the moment the keys expire there.
    for i in 0..3 {
        c.proxy(i).expect("proxy").blackhole();
    }
    let rt = runtime();
    let contender = rt.block_on(async {
        let direct: Vec<String> = (0..5)
            .map(|i| c.direct_url(i).expect("direct url"))
            .collect();
        RedLock::builder()
            .nodes(direct)
            .ttl(Duration::from_secs(5))
            .node_timeout(Duration::from_millis(250))
            .build()
            .await
            .expect("build")
    });
    let deadline = Instant::now() + LIMIT;
    let mut term_seen = None;
    let taken = loop {
        if term_seen.is_none() && s.read("log").contains("TERM") {
            term_seen = Some(Instant::now());
        }
        if let Some(guard) = rt.block_on(contender.try_acquire("margin")).expect("try") {
            break (Instant::now(), guard);
        }
        assert!(Instant::now() < deadline, "the lease never ran out");
        thread::sleep(Duration::from_millis(10));
    };
    let out = running.wait();
    for i in 0..3 {
        c.proxy(i).expect("proxy").heal();
    }
    assert_eq!(out.code(), Some(76), "{out:?}");
    let term_seen =
        term_seen.unwrap_or_else(|| panic!("no SIGTERM before the lease ran out: {out:?}"));
    // SIGTERM went out about --grace before the validity ended (not once it had ended).
    let margin = taken.0 - term_seen;
    assert!(
        margin >= Duration::from_millis(500),
        "SIGTERM only {margin:?} before another owner took the lock: {out:?}"
    );
    rt.block_on(taken.1.release()).expect("release");
}

#[test]
fn the_command_does_not_see_the_node_urls() {
    let c = cluster(3);
    let s = Scratch::new();
    let nodes = nodes(&c);
    let show = "echo \"nodes=${REDQUORUM_NODES-unset}\"";
    let from_env = start(
        &s,
        ["run", "--key", "env", "--", "sh", "-c", show],
        &[("REDQUORUM_NODES", &nodes)],
    )
    .wait();
    assert_eq!(from_env.code(), Some(0), "{from_env:?}");
    assert_eq!(from_env.stdout.trim(), "nodes=unset", "{from_env:?}");
    // Nor an outer value when --nodes was given.
    let args = run_args(&c, "env", &["--", "sh", "-c", show]);
    let with_flag = start(
        &s,
        args,
        &[("REDQUORUM_NODES", "redis://:secret@elsewhere:1")],
    )
    .wait();
    assert_eq!(with_flag.code(), Some(0), "{with_flag:?}");
    assert_eq!(with_flag.stdout.trim(), "nodes=unset", "{with_flag:?}");
}

/// Review finding: the command's `pre_exec` arms the watchdog with a `write` to its pipe while
/// SIGPIPE has its default action (std resets it before running `pre_exec` closures). If the
/// watchdog is gone (OOM-killed, `kill -9`), that write kills the forked child with SIGPIPE
/// before exec; std's spawn cannot tell that from a successful exec, so redquorum takes the
/// lock, "runs" nothing, and exits 141 as if the command had died of SIGPIPE, with no word
/// that the command never ran.
#[cfg(target_os = "linux")]
#[test]
fn a_dead_watchdog_never_turns_the_command_into_a_silent_sigpipe() {
    let c = cluster(3);
    let s = Scratch::new();
    let rt = runtime();
    let (locks, guard) = rt.block_on(async {
        let locks = common::builder(&c)
            .ttl(Duration::from_secs(60))
            .owner("review-holder")
            .build()
            .await
            .expect("build");
        let guard = locks
            .try_acquire("watchdog-gone")
            .await
            .expect("try")
            .expect("free");
        (locks, guard)
    });
    let label = format!("review-watchdog-{}", std::process::id());
    let marker = s.path("ran");
    let touch = format!("touch {}", marker.display());
    let waiting = start(
        &s,
        run_args(
            &c,
            "watchdog-gone",
            &[
                "--wait", "120s", "--owner", &label, "--", "sh", "-c", &touch,
            ],
        ),
        &[],
    );
    let redquorum = waiting.child.id();
    // The watchdog: a fork of redquorum (same command line) that is not redquorum itself.
    let deadline = Instant::now() + LIMIT;
    let watchdog = loop {
        let found = fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != redquorum)
            .find(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&label))
            });
        if let Some(pid) = found {
            break pid;
        }
        assert!(Instant::now() < deadline, "no watchdog process found");
        thread::sleep(Duration::from_millis(10));
    };
    let _ = Command::new("kill")
        .args(["-9", &watchdog.to_string()])
        .status();
    while alive(watchdog) {
        thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(guard.release()).expect("release");
    let out = waiting.wait();
    drop(locks);
    assert!(
        marker.exists() || out.stderr.contains("watchdog") && out.code() != Some(141),
        "the command never ran, and redquorum reported it as a SIGPIPE death: {out:?}"
    );
}

/// Sends signal `sig` (a name such as "TERM") to process `pid`.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -s {sig} {pid} failed");
}

#[test]
fn a_command_that_cannot_be_executed_gives_126_and_releases() {
    let c = cluster(3);
    let s = Scratch::new();
    let script = s.path("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
    // Readable but not executable: exec fails with EACCES, not ENOENT.
    let out = run_bin(
        &s,
        run_args(&c, "noexec", &["--", script.to_str().expect("utf-8 path")]),
    );
    assert_eq!(out.code(), Some(126), "{out:?}");
    assert!(out.stderr.contains("cannot run"), "{out:?}");
    assert!(
        common::all_keys(&c).is_empty(),
        "{:?}",
        common::all_keys(&c)
    );
}

#[test]
fn an_internal_failure_gives_70_and_the_command_does_not_run() {
    // With one file descriptor beside stdin, stdout and stderr (the dynamic loader needs it),
    // redquorum cannot create the watchdog's pipe: an internal error, before any I/O.
    let c = cluster(3);
    let s = Scratch::new();
    let marker = s.path("ran");
    let touch = format!("touch {}", marker.display());
    let mut args = vec![
        "-c".to_owned(),
        "ulimit -n 4 && exec \"$0\" \"$@\"".to_owned(),
        BIN.to_owned(),
    ];
    args.extend(run_args(&c, "internal", &["--", "sh", "-c", &touch]));
    let out = Command::new("sh")
        .args(&args)
        .env_remove("REDQUORUM_NODES")
        .stdin(Stdio::null())
        .output()
        .expect("run redquorum under ulimit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{out:?}");
    assert!(stderr.contains("watchdog"), "{stderr}");
    assert!(!marker.exists(), "the command ran");
    assert!(
        common::all_keys(&c).is_empty(),
        "{:?}",
        common::all_keys(&c)
    );
}

#[test]
fn a_signal_while_waiting_ends_redquorum_with_128_plus_it_and_nothing_held() {
    let c = cluster(5);
    let s = Scratch::new();
    let rt = runtime();
    let (locks, guard) = rt.block_on(async {
        let locks = common::long_lease(&c).await;
        let guard = locks
            .acquire(&common::patient(), "busy")
            .await
            .expect("holder acquires");
        (locks, guard)
    });
    let marker = s.path("ran");
    let touch = format!("touch {}", marker.display());
    for (sig, number) in [("TERM", 15), ("INT", 2), ("HUP", 1)] {
        let waiting = start(
            &s,
            run_args(&c, "busy", &["--wait", "10m", "--", "sh", "-c", &touch]),
            &[],
        );
        // It waits once it has subscribed to the key's release channel (after its first
        // refused attempt).
        assert!(
            rt.block_on(common::until_numsub(
                &c,
                "redquorum:default:busy:released",
                1
            )),
            "redquorum never started waiting"
        );
        signal(waiting.child.id(), sig);
        let out = waiting.wait();
        assert_eq!(out.code(), Some(128 + number), "SIG{sig}: {out:?}");
        assert!(!marker.exists(), "SIG{sig}: the command ran");
        // Nothing held: the only key is the holder's, and nobody listens any more.
        let keys = common::all_keys(&c);
        assert!(
            keys.iter().all(|(_, k)| k == "redquorum:default:busy"),
            "SIG{sig}: {keys:?}"
        );
        assert!(rt.block_on(common::until_numsub(
            &c,
            "redquorum:default:busy:released",
            0
        )));
    }
    rt.block_on(guard.release())
        .expect("the holder still holds the lock");
    drop(locks);
}

#[test]
fn a_lock_found_gone_at_release_gives_76() {
    let c = cluster(5);
    let s = Scratch::new();
    let (ready, go) = (s.path("ready"), s.path("go"));
    let script = format!(
        "touch {ready}; while [ ! -e {go} ]; do sleep 0.01; done; exit 0",
        ready = ready.display(),
        go = go.display()
    );
    // A TTL long enough that no renewal can notice the key gone while the command runs.
    let running = start(
        &s,
        run_args(&c, "vanishing", &["--ttl", "5m", "--", "sh", "-c", &script]),
        &[],
    );
    assert!(
        wait_for_file(&ready, "", common::HANG_GUARD),
        "the command did not start"
    );
    for i in 0..5 {
        common::raw(&c, i, &["DEL", "redquorum:default:vanishing"]);
    }
    fs::write(&go, "").expect("go");
    let out = running.wait();
    assert_eq!(out.code(), Some(76), "{out:?}");
    assert!(out.stderr.contains("not held throughout"), "{out:?}");
}

#[test]
fn signals_to_redquorum_reach_the_commands_whole_process_group() {
    let c = cluster(3);
    let s = Scratch::new();
    for (sig, number) in [("TERM", 15), ("HUP", 1)] {
        let (ready, got, stop) = (
            s.path(&format!("ready-{sig}")),
            s.path(&format!("got-{sig}")),
            s.path(&format!("stop-{sig}")),
        );
        // A background process of the command (not the command itself) records the signal;
        // the command ignores it and waits for that process.
        let script = format!(
            "(trap 'echo {sig} > {got}; exit 0' {sig}; touch {ready}; \
             while [ ! -e {stop} ]; do sleep 0.05; done) & trap '' {sig}; wait",
            ready = ready.display(),
            got = got.display(),
            stop = stop.display()
        );
        let running = start(&s, run_args(&c, "group", &["--", "sh", "-c", &script]), &[]);
        assert!(
            wait_for_file(&ready, "", common::HANG_GUARD),
            "SIG{sig}: the job did not start"
        );
        signal(running.child.id(), sig);
        // Delivery takes milliseconds; a minute only bounds the wait for a signal that never
        // comes (the job is then told to stop, so that the test fails instead of hanging).
        let reached = wait_for_file(&got, sig, Duration::from_secs(60));
        if !reached {
            fs::write(&stop, "").expect("stop");
        }
        let out = running.wait();
        assert!(
            reached,
            "SIG{sig} did not reach the command's background process: {out:?}"
        );
        // The command ignored it and ended normally once its child had gone.
        assert_eq!(out.code(), Some(0), "SIG{sig} ({number}): {out:?}");
        assert!(
            common::all_keys(&c).is_empty(),
            "{:?}",
            common::all_keys(&c)
        );
    }
}

#[test]
fn the_lease_is_kept_through_a_command_longer_than_the_ttl() {
    let c = cluster(5);
    let s = Scratch::new();
    let (ready, go) = (s.path("ready"), s.path("go"));
    let script = format!(
        "touch {ready}; while [ ! -e {go} ]; do sleep 0.01; done; exit 0",
        ready = ready.display(),
        go = go.display()
    );
    let ttl = Duration::from_secs(1);
    let running = start(
        &s,
        run_args(&c, "long", &["--ttl", "1s", "--", "sh", "-c", &script]),
        &[],
    );
    assert!(
        wait_for_file(&ready, "", common::HANG_GUARD),
        "the command did not start"
    );
    let rt = runtime();
    let locks = rt.block_on(common::locks(&c));
    let key = "redquorum:default:long";
    let value = common::get(&c, 0, key).expect("the lock is held");
    // Three TTLs go by (the passing of time is what is tested): the lease must have been
    // renewed under the same value, never lost or taken over.
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        thread::sleep(Duration::from_millis(100));
        let held = rt.block_on(locks.try_acquire("long")).expect("try_acquire");
        assert!(
            held.is_none(),
            "another client got the lock after {:?}",
            started.elapsed()
        );
    }
    let holding = (0..5)
        .filter(|&i| common::get(&c, i, key).as_deref() == Some(value.as_str()))
        .count();
    assert!(holding >= 3, "the same value on {holding} of 5 nodes");
    fs::write(&go, "").expect("go");
    let out = running.wait();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!out.stderr.contains("lost"), "{out:?}");
}

#[test]
fn sigint_to_redquorum_reaches_a_foreground_child_of_the_command() {
    // A background process of a non-interactive shell ignores SIGINT, so the group is shown
    // here by the command's foreground child: `sleep` dies of the forwarded SIGINT (status
    // 130), and the command, which traps it, records that and exits 0. Without forwarding to
    // the group the sleep runs its full 61 s and reports 0.
    let c = cluster(3);
    let s = Scratch::new();
    let (ready, log) = (s.path("ready"), s.path("log"));
    let script = format!(
        "trap 'echo command-got-INT >> {log}' INT; touch {ready}; sleep 61; \
         echo \"sleep=$?\" >> {log}; exit 0",
        ready = ready.display(),
        log = log.display()
    );
    let running = start(&s, run_args(&c, "int", &["--", "sh", "-c", &script]), &[]);
    assert!(
        wait_for_file(&ready, "", common::HANG_GUARD),
        "the command did not start"
    );
    // `touch` ran before `sleep` started: wait until the sleep is a child of the command.
    let deadline = Instant::now() + LIMIT;
    while !fs::read_dir("/proc").expect("/proc").any(|e| {
        e.ok()
            .and_then(|e| fs::read(e.path().join("cmdline")).ok())
            .is_some_and(|c| c == b"sleep\x0061\x00")
    }) {
        assert!(Instant::now() < deadline, "the sleep never started");
        thread::sleep(Duration::from_millis(10));
    }
    signal(running.child.id(), "INT");
    let out = running.wait();
    let log = s.read("log");
    assert!(log.contains("sleep=130"), "{log:?} {out:?}");
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        common::all_keys(&c).is_empty(),
        "{:?}",
        common::all_keys(&c)
    );
}
