//! The preflight check of the masters (`RedLock::check`, `RedLockBuilder::check`, the
//! refusal at `build()`), against real redis-server processes run with each unsafe setting.
//! Every check is shown flagging a bad setting and passing a good one.
#![cfg(feature = "testkit")]

mod common;

use std::sync::PoisonError;
use std::time::Duration;

use common::{cluster, raw};
use redquorum::check::{Check, Level, NodeReport, Report};
use redquorum::testkit::LocalCluster;
use redquorum::{Error, RedLock, RedLockBuilder};

/// A builder for the check. Its node timeout is generous so that a loaded machine's round
/// trips do not turn a node's verdict (a_round_trip_beyond_the_node_timeout_is_unsafe sets its
/// own, to show the round-trip check flag one).
fn builder(urls: impl IntoIterator<Item = String>) -> RedLockBuilder {
    RedLock::builder()
        .nodes(urls.into_iter().collect::<Vec<_>>())
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_secs(1))
}

async fn check(c: &LocalCluster) -> Report {
    builder(c.urls()).check().await.expect("valid settings")
}

fn level(node: &NodeReport, check: Check) -> Level {
    node.finding(check)
        .unwrap_or_else(|| panic!("no {check} finding in {node:?}"))
        .level
}

fn seen(node: &NodeReport, check: Check) -> String {
    node.finding(check)
        .map(|f| f.seen.clone())
        .unwrap_or_default()
}

fn fix(node: &NodeReport, check: Check) -> String {
    node.finding(check)
        .and_then(|f| f.fix.clone())
        .unwrap_or_default()
}

/// Sets a node's configuration with CONFIG SET (a real server, changed at run time).
fn config_set(c: &LocalCluster, i: usize, name: &str, value: &str) {
    raw(c, i, &["CONFIG", "SET", name, value]);
}

/// Makes every node of `c` safe: what the docker compose files start the masters with.
fn make_safe(c: &LocalCluster) {
    for i in 0..c.len() {
        config_set(c, i, "appendonly", "yes");
        config_set(c, i, "appendfsync", "always");
        config_set(c, i, "maxmemory-policy", "noeviction");
    }
}

/// Every `--name value` pair of the `command:` lines of a compose file.
fn compose_settings(path: &str) -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut services = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(list) = line.strip_prefix("command:") else {
            continue;
        };
        let words: Vec<String> = list
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|w| w.trim().trim_matches('"').to_owned())
            .collect();
        assert_eq!(
            words.first().map(String::as_str),
            Some("redis-server"),
            "{line}"
        );
        let pairs: Vec<(String, String)> = words[1..]
            .chunks(2)
            .map(|p| {
                let name = p[0].strip_prefix("--").unwrap_or_else(|| panic!("{line}"));
                (name.to_owned(), p.get(1).cloned().unwrap_or_default())
            })
            .collect();
        services.push(pairs);
    }
    assert!(!services.is_empty(), "no command: lines in {path}");
    services
}

#[tokio::test]
async fn the_docker_compose_settings_pass_every_check() {
    for file in ["docker/compose-3.yml", "docker/compose-5.yml"] {
        let services = compose_settings(file);
        // Every service of a file has the same settings: the cluster's nodes start with them.
        assert!(services.windows(2).all(|w| w[0] == w[1]), "{file}");
        let args = services[0]
            .iter()
            .flat_map(|(n, v)| [format!("--{n}"), v.clone()]);
        let c = LocalCluster::builder()
            .nodes(services.len())
            .server_args(args)
            .start()
            .expect("start redis-servers");
        let report = check(&c).await;
        assert_eq!(report.nodes.len(), services.len());
        for node in &report.nodes {
            for check in [
                Check::Connection,
                Check::Role,
                Check::Persistence,
                Check::Eviction,
                Check::Independence,
                Check::Permissions,
                Check::RoundTrip,
                Check::Clock,
            ] {
                assert_eq!(level(node, check), Level::Ok, "{file}: {check}: {node:?}");
            }
            assert!(node.clock_rate.is_some() && node.round_trip.is_some());
        }
        assert_eq!(report.verdict(), Level::Ok, "{file}:\n{report}");
        assert!(report.is_safe());
        let shown = report.to_string();
        assert!(shown.contains("verdict: safe"), "{shown}");
    }
}

#[tokio::test]
async fn appendonly_no_is_unsafe_unless_restarts_are_delayed() {
    // The testkit's default: no persistence at all.
    let c = cluster(3);
    let report = check(&c).await;
    for node in &report.nodes {
        assert_eq!(level(node, Check::Persistence), Level::Unsafe, "{node:?}");
        assert!(seen(node, Check::Persistence).contains("appendonly no"));
        let fix = fix(node, Check::Persistence);
        assert!(
            fix.contains("appendonly yes") && fix.contains("5s") && fix.contains("delayed restart"),
            "{fix}"
        );
    }
    assert!(!report.is_safe());
    assert_eq!(report.verdict(), Level::Unsafe);
    // Acceptable where every restart is delayed by the TTL: a warning that says so.
    let delayed = report.accept_delayed_restarts();
    for node in &delayed.nodes {
        assert_eq!(level(node, Check::Persistence), Level::Warning, "{node:?}");
        assert!(fix(node, Check::Persistence).contains("accepted because every restart"));
    }
    assert!(delayed.is_safe(), "{delayed}");
}

#[tokio::test]
async fn appendfsync_everysec_warns_and_no_is_unsafe() {
    let c = cluster(3);
    make_safe(&c);
    config_set(&c, 1, "appendfsync", "everysec");
    config_set(&c, 2, "appendfsync", "no");
    let report = check(&c).await;
    assert_eq!(level(&report.nodes[0], Check::Persistence), Level::Ok);
    let everysec = &report.nodes[1];
    assert_eq!(level(everysec, Check::Persistence), Level::Warning);
    assert!(
        seen(everysec, Check::Persistence).contains("up to a second"),
        "{everysec:?}"
    );
    assert_eq!(level(&report.nodes[2], Check::Persistence), Level::Unsafe);
    assert!(fix(&report.nodes[2], Check::Persistence).contains("appendfsync always"));
    assert!(!report.is_safe());
    let delayed = report.accept_delayed_restarts();
    assert_eq!(level(&delayed.nodes[0], Check::Persistence), Level::Ok);
    assert_eq!(level(&delayed.nodes[2], Check::Persistence), Level::Warning);
}

#[tokio::test]
async fn an_evicting_policy_is_unsafe_with_maxmemory_and_a_warning_without() {
    let c = cluster(3);
    make_safe(&c);
    config_set(&c, 1, "maxmemory", "100mb");
    config_set(&c, 1, "maxmemory-policy", "allkeys-lru");
    config_set(&c, 2, "maxmemory-policy", "volatile-lru");
    let report = check(&c).await;
    assert_eq!(level(&report.nodes[0], Check::Eviction), Level::Ok);
    let lru = &report.nodes[1];
    assert_eq!(level(lru, Check::Eviction), Level::Unsafe, "{lru:?}");
    assert!(seen(lru, Check::Eviction).contains("allkeys-lru"));
    assert!(fix(lru, Check::Eviction).contains("noeviction"));
    assert_eq!(level(&report.nodes[2], Check::Eviction), Level::Warning);
}

#[tokio::test]
async fn a_replica_is_unsafe_and_its_master_is_warned() {
    let c = cluster(3);
    make_safe(&c);
    let port = c.port(0).expect("node 0").to_string();
    raw(&c, 2, &["REPLICAOF", "127.0.0.1", &port]);
    let report = check(&c).await;
    let replica = &report.nodes[2];
    assert_eq!(level(replica, Check::Role), Level::Unsafe, "{replica:?}");
    assert!(seen(replica, Check::Role).contains(&format!("127.0.0.1:{port}")));
    assert_eq!(level(&report.nodes[1], Check::Role), Level::Ok);
    // The master learns of its replica once the replica has connected.
    common::eventually("the replica to connect to node 0", || {
        match raw(&c, 0, &["INFO", "replication"]) {
            redis::Value::BulkString(b) => {
                String::from_utf8_lossy(&b).contains("connected_slaves:1")
            }
            redis::Value::VerbatimString { text, .. } => text.contains("connected_slaves:1"),
            _ => false,
        }
    })
    .await;
    let report = check(&c).await;
    assert_eq!(level(&report.nodes[0], Check::Role), Level::Warning);
    assert!(fix(&report.nodes[0], Check::Role).contains("promoted"));
}

#[tokio::test]
async fn one_server_under_two_urls_is_found_where_build_refuses() {
    let c = cluster(2);
    make_safe(&c);
    let port = c.port(0).expect("node 0");
    let urls = vec![
        format!("redis://127.0.0.1:{port}"),
        format!("redis://localhost:{port}"),
        c.url(1).expect("node 1"),
    ];
    let err = builder(urls.clone())
        .build()
        .await
        .expect_err("build refuses");
    assert!(err.to_string().contains("same Redis server"), "{err}");
    let report = builder(urls).check().await.expect("the check runs anyway");
    for i in [0, 1] {
        let node = &report.nodes[i];
        assert_eq!(level(node, Check::Independence), Level::Unsafe, "{node:?}");
    }
    assert!(seen(&report.nodes[0], Check::Independence).contains("localhost"));
    assert_eq!(level(&report.nodes[2], Check::Independence), Level::Ok);
    // The very same URL twice (which build() refuses before any I/O) is checked too.
    let same = vec![
        c.url(0).expect("0"),
        c.url(0).expect("0"),
        c.url(1).expect("1"),
    ];
    let report = builder(same).check().await.expect("the check runs anyway");
    assert_eq!(level(&report.nodes[1], Check::Independence), Level::Unsafe);
}

/// A cluster whose nodes have an ACL user `app` (password `pw`) with every command but
/// `denied`; the URLs returned log in as that user.
fn acl_cluster(denied: &[&str]) -> (LocalCluster, Vec<String>) {
    let minus: Vec<String> = denied.iter().map(|d| format!("-{d}")).collect();
    let mut rule = vec!["~*", "&*", "+@all"];
    rule.extend(minus.iter().map(String::as_str));
    acl_user(&rule)
}

/// A cluster whose nodes have an ACL user `app` (password `pw`) with the ACL `rules`.
fn acl_user(rules: &[&str]) -> (LocalCluster, Vec<String>) {
    let c = cluster(3);
    make_safe(&c);
    let mut rule = vec!["ACL", "SETUSER", "app", "on", ">pw"];
    rule.extend(rules);
    for i in 0..c.len() {
        raw(&c, i, &rule);
    }
    let urls = (0..c.len())
        .map(|i| format!("redis://app:pw@127.0.0.1:{}", c.port(i).expect("port")))
        .collect();
    (c, urls)
}

#[tokio::test]
async fn commands_denied_by_an_acl_are_named() {
    let (_c, urls) = acl_cluster(&["evalsha"]);
    let report = builder(urls).check().await.expect("valid");
    for node in &report.nodes {
        assert_eq!(level(node, Check::Permissions), Level::Unsafe, "{node:?}");
        let seen = seen(node, Check::Permissions);
        assert!(
            seen.contains("EVALSHA (denied by ACL") && seen.contains("'evalsha'"),
            "{seen}"
        );
        assert!(!seen.contains("PUBLISH"), "{seen}");
        assert!(fix(node, Check::Permissions).contains("+evalsha"));
        // The password never shows.
        assert!(
            node.node.starts_with("redis://***@127.0.0.1:"),
            "{}",
            node.node
        );
    }
    assert!(!format!("{report}{report:?}").contains(":pw@"));

    let (_c, urls) = acl_cluster(&["publish"]);
    let report = builder(urls).check().await.expect("valid");
    for node in &report.nodes {
        // Waiters then poll: degraded, not unsafe.
        assert_eq!(level(node, Check::Permissions), Level::Warning, "{node:?}");
        assert!(seen(node, Check::Permissions).contains("PUBLISH"));
    }
    assert!(report.is_safe());

    let (_c, urls) = acl_cluster(&["subscribe"]);
    let report = builder(urls).check().await.expect("valid");
    assert!(seen(&report.nodes[0], Check::Permissions).contains("SUBSCRIBE"));
}

#[tokio::test]
async fn the_probes_use_the_namespace_keys_and_channels() {
    // Keys and channels of the namespace only: everything the crate sends is allowed.
    let (_c, urls) = acl_user(&["~redquorum:*", "&redquorum:*", "+@all"]);
    let report = builder(urls).check().await.expect("valid");
    for node in &report.nodes {
        assert_eq!(level(node, Check::Permissions), Level::Ok, "{node:?}");
    }
    // Another namespace's keys: the lock commands are denied (their keys are).
    let (_c, urls) = acl_user(&["~other:*", "&other:*", "+@all"]);
    let report = builder(urls).check().await.expect("valid");
    let denied = seen(&report.nodes[0], Check::Permissions);
    assert_eq!(level(&report.nodes[0], Check::Permissions), Level::Unsafe);
    for cmd in ["SET", "EVALSHA", "PTTL", "PUBLISH", "SUBSCRIBE"] {
        assert!(
            denied.contains(&format!("{cmd} (denied by ACL")),
            "{cmd}: {denied}"
        );
    }
    // Redis 7's default for a new user: no channels. Releases are then not announced.
    let (_c, urls) = acl_user(&["~*", "+@all"]);
    let report = builder(urls).check().await.expect("valid");
    let node = &report.nodes[0];
    assert_eq!(level(node, Check::Permissions), Level::Warning, "{node:?}");
    let denied = seen(node, Check::Permissions);
    assert!(
        denied.contains("PUBLISH (denied") && denied.contains("SUBSCRIBE (denied"),
        "{denied}"
    );
    assert!(fix(node, Check::Permissions).contains("&redquorum:*"));
}

#[tokio::test]
async fn the_probes_leave_nothing_behind_and_fencing_adds_incr() {
    let c = cluster(3);
    make_safe(&c);
    let report = builder(c.urls())
        .fencing(true)
        .check()
        .await
        .expect("valid");
    for node in &report.nodes {
        assert_eq!(level(node, Check::Permissions), Level::Ok, "{node:?}");
        assert!(seen(node, Check::Permissions).contains("INCR"), "{node:?}");
    }
    assert_eq!(
        common::all_keys(&c),
        Vec::new(),
        "the probes left keys behind"
    );
    let report = check(&c).await;
    assert!(!seen(&report.nodes[0], Check::Permissions).contains("INCR"));

    let (c, urls) = acl_cluster(&["incr"]);
    let report = builder(urls).fencing(true).check().await.expect("valid");
    assert_eq!(level(&report.nodes[0], Check::Permissions), Level::Unsafe);
    assert!(seen(&report.nodes[0], Check::Permissions).contains("INCR (denied by ACL"));
    assert_eq!(
        common::all_keys(&c),
        Vec::new(),
        "the probes left keys behind"
    );
}

/// The fencing probe's key can never stay behind for good: with `DEL` denied, the key the
/// `INCR` probe used is still there after the check, but expires by itself.
#[tokio::test]
async fn the_fencing_probe_key_expires_even_when_it_cannot_be_deleted() {
    let (c, urls) = acl_cluster(&["del"]);
    let report = builder(urls).fencing(true).check().await.expect("valid");
    assert!(seen(&report.nodes[0], Check::Permissions).contains("DEL (denied by ACL"));
    let left = common::all_keys(&c);
    assert!(
        !left.is_empty(),
        "DEL was denied: the probe key is still there"
    );
    for (i, key) in left {
        let ttl = common::pttl(&c, i, &key);
        assert!(
            ttl > 0,
            "node {i}: {key} left without an expiry (PTTL {ttl})"
        );
    }
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_unsafe_within_the_connect_timeout() {
    let c = common::proxied(3);
    make_safe(&c);
    c.proxy(2).expect("proxy").blackhole();
    let report = builder(c.urls())
        .connect_timeout(Duration::from_millis(500))
        .check()
        .await
        .expect("valid");
    let down = &report.nodes[2];
    assert!(!down.reachable(), "{down:?}");
    assert!(
        seen(down, Check::Connection).contains("timed out"),
        "{down:?}"
    );
    assert!(report.nodes[0].reachable() && report.nodes[1].reachable());
}

#[tokio::test]
async fn a_paused_node_is_unreachable_not_a_hang() {
    let c = cluster(3);
    make_safe(&c);
    // SIGSTOP: the kernel still accepts connections, nothing answers.
    c.pause(1).expect("pause node 1");
    let report = builder(c.urls())
        .connect_timeout(Duration::from_millis(300))
        .check()
        .await
        .expect("valid");
    c.resume(1).expect("resume node 1");
    let paused = &report.nodes[1];
    assert!(!paused.reachable(), "{paused:?}");
    assert!(
        seen(paused, Check::Connection).contains("timed out"),
        "{paused:?}"
    );
    assert_eq!(report.nodes[0].level(), Level::Ok, "{:?}", report.nodes[0]);
}

#[tokio::test]
async fn a_denied_config_gives_could_not_read_not_a_crash() {
    let (_c, urls) = acl_cluster(&["config"]);
    let report = builder(urls).check().await.expect("valid");
    for node in &report.nodes {
        let persistence = node.finding(Check::Persistence).expect("persistence");
        // appendonly is also in INFO; appendfsync is not.
        assert_eq!(persistence.level, Level::Unknown, "{node:?}");
        assert!(
            persistence.seen.contains("could not read"),
            "{persistence:?}"
        );
        // maxmemory-policy is in INFO too.
        assert_eq!(level(node, Check::Eviction), Level::Ok, "{node:?}");
        assert_eq!(level(node, Check::Permissions), Level::Ok, "{node:?}");
    }
    assert_eq!(report.verdict(), Level::Unknown);
    assert!(report.is_safe());
}

#[tokio::test]
async fn a_renamed_config_gives_could_not_read_not_a_crash() {
    let c = LocalCluster::builder()
        .nodes(3)
        .server_args(["--appendonly", "yes", "--rename-command", "CONFIG", ""])
        .start()
        .expect("start redis-servers");
    let report = check(&c).await;
    for node in &report.nodes {
        let persistence = node.finding(Check::Persistence).expect("persistence");
        assert_eq!(persistence.level, Level::Unknown, "{node:?}");
        assert!(
            persistence
                .seen
                .contains("appendonly yes, could not read appendfsync")
                && persistence.seen.contains("unknown command"),
            "{persistence:?}"
        );
        assert_eq!(level(node, Check::Eviction), Level::Ok, "{node:?}");
    }
    assert_eq!(report.verdict(), Level::Unknown, "{report}");
}

#[tokio::test]
async fn unreachable_and_unauthenticated_nodes_are_unsafe() {
    let c = LocalCluster::builder()
        .nodes(3)
        .requirepass("s3cret")
        .start()
        .expect("start redis-servers");
    make_safe(&c);
    let port = |i| c.port(i).expect("port");
    c.kill(2).expect("kill node 2");
    let urls = vec![
        c.url(0).expect("url"),
        format!("redis://:wrong@127.0.0.1:{}", port(1)),
        format!("redis://127.0.0.1:{}", port(2)),
    ];
    // A majority cannot be reached: build() would fail; the check runs.
    let report = builder(urls).check().await.expect("valid");
    assert!(report.nodes[0].reachable());
    assert_eq!(report.nodes[0].level(), Level::Ok, "{:?}", report.nodes[0]);
    let wrong = &report.nodes[1];
    assert!(!wrong.reachable());
    assert_eq!(level(wrong, Check::Connection), Level::Unsafe);
    assert!(
        seen(wrong, Check::Connection).contains("authentication"),
        "{wrong:?}"
    );
    assert!(!format!("{wrong:?}").contains("wrong"), "{wrong:?}");
    let down = &report.nodes[2];
    assert!(!down.reachable());
    assert!(
        seen(down, Check::Connection).contains("refused"),
        "{down:?}"
    );
    assert!(fix(down, Check::Connection).contains("never votes"));
    assert!(!report.is_safe());
    let shown = report.to_string();
    assert!(
        !shown.contains("s3cret") && shown.contains("verdict: unsafe (2 of 3"),
        "{shown}"
    );

    // No password at all: NOAUTH on the first command.
    let report = builder([format!("redis://127.0.0.1:{}", port(0))])
        .check()
        .await
        .expect("valid");
    assert!(seen(&report.nodes[0], Check::Connection).contains("authentication"));
}

#[tokio::test]
async fn a_round_trip_beyond_the_node_timeout_is_unsafe() {
    let c = common::proxied(3);
    make_safe(&c);
    c.proxy(1)
        .expect("proxy")
        .set_latency(Duration::from_millis(60));
    let report = builder(c.urls())
        .node_timeout(Duration::from_millis(100))
        .check()
        .await
        .expect("valid");
    assert_eq!(level(&report.nodes[0], Check::RoundTrip), Level::Ok);
    let slow = &report.nodes[1];
    assert_eq!(level(slow, Check::RoundTrip), Level::Unsafe, "{slow:?}");
    assert!(slow
        .round_trip
        .is_some_and(|r| r >= Duration::from_millis(100)));
    assert!(fix(slow, Check::RoundTrip).contains("node_timeout"));
}

#[tokio::test]
async fn a_built_lock_checks_its_own_nodes() {
    let c = cluster(3);
    make_safe(&c);
    config_set(&c, 0, "appendonly", "no");
    let locks = builder(c.urls()).build().await.expect("build");
    let report = locks.check().await;
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(level(&report.nodes[0], Check::Persistence), Level::Unsafe);
    assert_eq!(report.nodes[1].level(), Level::Ok, "{:?}", report.nodes[1]);
    assert_eq!(report.node_timeout, locks.node_timeout());
    assert_eq!(report.unsafe_findings().count(), 1);
}

#[tokio::test]
async fn refuse_unsafe_masters_fails_build_naming_node_and_setting() {
    let c = LocalCluster::builder()
        .nodes(3)
        .requirepass("s3cret")
        .start()
        .expect("start redis-servers");
    make_safe(&c);
    config_set(&c, 1, "maxmemory", "100mb");
    config_set(&c, 1, "maxmemory-policy", "allkeys-lru");
    let err = builder(c.urls())
        .refuse_unsafe_masters(true)
        .build()
        .await
        .expect_err("an evicting master is refused");
    assert!(matches!(err, Error::Config { .. }));
    let msg = err.to_string();
    let port = c.port(1).expect("port");
    assert!(
        msg.contains(&format!("redis://***@127.0.0.1:{port}/0: eviction"))
            && msg.contains("allkeys-lru")
            && msg.contains("noeviction"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(
        !msg.contains(&format!("{}/0", c.port(0).expect("port"))),
        "{msg}"
    );

    // Off (the default), the same masters build.
    builder(c.urls()).build().await.expect("builds by default");
    // Safe masters build with the option on.
    make_safe(&c);
    builder(c.urls())
        .refuse_unsafe_masters(true)
        .build()
        .await
        .expect("safe masters build");
}

#[tokio::test]
async fn build_logs_a_warning_for_each_unsafe_setting() {
    let c = cluster(3);
    make_safe(&c);
    config_set(&c, 2, "appendonly", "no");
    let (log, subscriber) = common::log_subscriber("warn");
    let _guard = tracing::subscriber::set_default(subscriber);
    let _locks = builder(c.urls())
        .build()
        .await
        .expect("builds: refusing is off");
    // Logged before build() returns, on the lock's own connections.
    let logged =
        String::from_utf8_lossy(&log.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
    let port = c.port(2).expect("port");
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("unsafe Redis master setting"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logged}");
    assert!(
        warnings[0].contains(&format!("127.0.0.1:{port}")) && warnings[0].contains("appendonly no"),
        "{logged}"
    );
}
