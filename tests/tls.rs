//! Locks over TLS: TLS-only redis-server processes started by the testkit (certificates from a
//! CA generated at start), reached through `rediss://` URLs with the CA given to the builder.
//! Built with `testkit-tls` and `tls-rustls` (see Cargo.toml: this package's test builds always
//! use the redis crate's rustls backend).

mod common;

use std::time::Duration;

use common::{patient, HANG_GUARD};
use redquorum::testkit::LocalCluster;
use redquorum::{Error, NodeFailure, RedLock, RedLockBuilder, Retry};
use tokio::time::Instant;

fn tls_cluster(builder: redquorum::testkit::LocalClusterBuilder) -> LocalCluster {
    builder
        .start()
        .unwrap_or_else(|e| panic!("cannot start TLS redis-server processes: {e}"))
}

fn ca(c: &LocalCluster) -> String {
    c.tls_ca_pem().expect("a TLS cluster has a CA").to_owned()
}

/// A builder for `c`'s `rediss://` URLs that trusts its CA (settings as tests/common's).
fn builder(c: &LocalCluster) -> RedLockBuilder {
    RedLock::builder()
        .nodes(c.urls())
        .tls_root_certs(ca(c))
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_millis(250))
        .retry(Retry::exponential(
            Duration::from_millis(2),
            Duration::from_millis(20),
        ))
}

/// A synchronous connection to node `i` of `c` over TLS, trusting the cluster's CA (for
/// looking at what the lock left there).
fn conn(c: &LocalCluster, i: usize) -> redis::Connection {
    let url = c.direct_url(i).expect("node index");
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca(c).into_bytes()),
    };
    redis::Client::build_with_tls(url, certs)
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| panic!("TLS connection to node {i}: {e}"))
}

fn query<T: redis::FromRedisValue>(c: &LocalCluster, i: usize, cmd: &redis::Cmd) -> T {
    cmd.query(&mut conn(c, i))
        .unwrap_or_else(|e| panic!("{cmd:?} on node {i}: {e}"))
}

fn pttl(c: &LocalCluster, i: usize, key: &str) -> i64 {
    query(c, i, redis::cmd("PTTL").arg(key))
}

fn get(c: &LocalCluster, i: usize, key: &str) -> Option<String> {
    query(c, i, redis::cmd("GET").arg(key))
}

/// Every node's failure in a `NoQuorum`, or a panic naming what came instead.
fn failures(result: Result<RedLock, Error>) -> Vec<NodeFailure> {
    match result {
        Err(Error::NoQuorum { causes, .. }) => causes,
        Err(other) => panic!("expected NoQuorum, got {other}"),
        Ok(_) => panic!("expected NoQuorum, got a RedLock"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_taken_extended_and_released_over_tls() {
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls(true));
    assert!(c
        .urls()
        .iter()
        .all(|u| u.starts_with("rediss://127.0.0.1:")));
    let locks = builder(&c).build().await.expect("build over TLS");
    let key = locks.redis_key("k").expect("key");

    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    assert!(!g.validity().is_zero());
    for i in 0..3 {
        assert_eq!(get(&c, i, &key).as_deref(), Some(g.value()), "node {i}");
        assert!(pttl(&c, i, &key) <= 5_000, "node {i}");
    }
    g.extend(Duration::from_secs(60)).await.expect("extend");
    for i in 0..3 {
        // Above the 5 s lease it was taken with: the extension reached the node.
        assert!(pttl(&c, i, &key) > 5_000, "node {i} not extended");
    }
    g.release().await.expect("release");
    for i in 0..3 {
        assert_eq!(get(&c, i, &key), None, "node {i} still holds the key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_over_tls() {
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls(true));
    // A lease longer than the test: the waiter can only get the lock through the release.
    let holder = builder(&c)
        .ttl(HANG_GUARD * 2)
        .build()
        .await
        .expect("build");
    // Polls drawn from [0, HANG_GUARD]: a wake-up within seconds is the notification's work
    // (odds of 60 to 1 or better against a poll).
    let waiter = builder(&c)
        .ttl(HANG_GUARD * 2)
        .retry(Retry::exponential(HANG_GUARD, HANG_GUARD))
        .build()
        .await
        .expect("build");
    let channel = format!("{}:released", holder.redis_key("k").expect("key"));

    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&patient(), "k").await })
    };
    // Released only once the waiter is subscribed on every node, over its TLS connections.
    common::eventually("the waiter subscribed on every node", || {
        (0..3).all(|i| {
            let (_, n): (String, i64) =
                query(&c, i, redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel));
            n == 1
        })
    })
    .await;
    let released = Instant::now();
    g.release().await.expect("release");
    let got = task.await.expect("no panic").expect("acquired");
    let handoff = released.elapsed();
    assert!(
        handoff < Duration::from_secs(5),
        "woken by polling, not by the release: {handoff:?}"
    );
    got.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_gets_a_certificate_error() {
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls(true));
    let other = tls_cluster(LocalCluster::builder().nodes(1).tls(true));
    // Another CA's certificate, and (without tls_root_certs) the default trust store: neither
    // signed these servers' certificates.
    let wrong_ca = RedLock::builder()
        .nodes(c.urls())
        .tls_root_certs(ca(&other))
        .node_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_secs(5));
    let default_store = RedLock::builder()
        .nodes(c.urls())
        .node_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_secs(5));
    for (what, b) in [
        ("another CA", wrong_ca),
        ("the default store", default_store),
    ] {
        let causes = failures(b.build().await);
        assert_eq!(causes.len(), 3, "{what}: {causes:?}");
        for f in causes {
            let shown = f.to_string();
            assert!(
                shown.contains("TLS: ")
                    && shown.to_lowercase().contains("certificate")
                    && shown.contains("tls_root_certs"),
                "{what}: the cause does not name the certificate problem: {shown}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_to_a_tls_port_fails_cleanly() {
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls(true));
    let plain: Vec<String> = c
        .urls()
        .iter()
        .map(|u| u.replacen("rediss://", "redis://", 1))
        .collect();
    let started = Instant::now();
    let causes = failures(
        RedLock::builder()
            .nodes(&plain)
            .node_timeout(Duration::from_millis(250))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await,
    );
    // Within the connect timeout (plus a loaded machine's slack), not a hang.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(causes.len(), 3, "{causes:?}");
    // Each names the node and suggests rediss:// (the server resets a plain connection).
    for f in &causes {
        assert!(
            f.node.starts_with("127.0.0.1:") && f.to_string().contains("use rediss://"),
            "{f}"
        );
    }
    // Certificates given with a plain URL: refused before any connection.
    let err = RedLock::builder()
        .nodes(&plain)
        .tls_root_certs(ca(&c))
        .build()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("does not use TLS") && err.contains("rediss://"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls_client_auth(true));
    let causes = failures(
        builder(&c)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .await,
    );
    assert_eq!(causes.len(), 3, "without a client certificate: {causes:?}");
    for f in &causes {
        assert!(f.to_string().contains("TLS: "), "{f}");
    }

    let cert = c.tls_client_cert_pem().expect("client cert").to_owned();
    let key = c.tls_client_key_pem().expect("client key").to_owned();
    let b = builder(&c).tls_client_cert(cert, key.clone());
    let shown = format!("{b:?}");
    let key_body = key.lines().nth(1).expect("a PEM body line");
    assert!(!shown.contains(key_body), "the key in Debug: {shown}");
    let locks = b.build().await.expect("build with a client certificate");
    let g = locks.acquire(&patient(), "k").await.expect("acquire");
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_goes_through_the_fault_proxies() {
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls(true).proxied(true));
    let locks = builder(&c)
        .build()
        .await
        .expect("build through the proxies");
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    g.release().await.expect("release");
    // A partitioned node fails with a timeout, the others keep the quorum.
    c.proxy(0).expect("proxy").blackhole();
    let g = locks.acquire(&patient(), "k").await.expect("acquire");
    match locks.try_acquire("k").await {
        Ok(None) => {}
        other => panic!("a second grant while the first is held: {other:?}"),
    }
    g.release().await.expect("release");
}

/// The CLI over TLS: `status` with `--tls-ca` reaches TLS-only masters (exit 1: the lock is
/// free); without it, every master is named with the certificate problem (exit 69).
#[cfg(feature = "cli")]
#[test]
fn the_cli_takes_rediss_urls_and_a_ca_file() {
    use std::process::Command;
    let c = tls_cluster(LocalCluster::builder().nodes(3).tls(true));
    let dir = std::env::temp_dir().join(format!("redquorum-tls-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca(&c)).expect("write the CA");
    let status = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_redquorum"))
            .args(["status", "--key", "k", "--node-timeout", "250ms", "--nodes"])
            .arg(c.urls().join(","))
            .args(extra)
            .env_remove("REDQUORUM_NODES")
            .output()
            .expect("run redquorum");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let ca_arg = ca_file.to_str().expect("utf-8 path");
    let (code, text) = status(&["--tls-ca", ca_arg]);
    assert_eq!(code, Some(1), "a free lock: {text}");
    let (code, text) = status(&[]);
    assert_eq!(code, Some(69), "{text}");
    assert!(
        text.contains("TLS: ") && text.contains("--tls-ca"),
        "{text}"
    );
    let (code, text) = status(&["--tls-ca", "/nonexistent/ca.crt"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("cannot read --tls-ca"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
