//! The metrics (feature `metrics`), recorded by `metrics-util`'s debugging recorder after a
//! known sequence of operations against real masters: each step's metrics are read as the
//! change since the step before.
#![cfg(feature = "metrics")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redquorum::{Context, RedLock};

/// One step's metrics: `name{label=value,...}` → a counter's increase or a histogram's
/// sample count.
type Step = BTreeMap<String, u64>;

fn step(snapshotter: &Snapshotter) -> Step {
    let mut out = Step::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let n = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => continue,
        };
        if n > 0 {
            out.insert(name, n);
        }
    }
    out
}

fn get(step: &Step, name: &str) -> u64 {
    step.get(name).copied().unwrap_or(0)
}

/// The sum over every label set of `name`, restricted to those containing `with`.
fn sum(step: &Step, name: &str, with: &str) -> u64 {
    step.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(with))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "current_thread")]
async fn every_metric_counts_what_happened() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let c = cluster(3);
    let a = long_lease(&c).await;
    let b = long_lease(&c).await;
    step(&snapshotter); // whatever building recorded

    // A grant and a release through Redis.
    let guard = a.acquire(&patient(), "one").await.expect("free");
    guard.release().await.expect("release");
    let s = step(&snapshotter);
    assert_eq!(
        get(&s, "redquorum_acquisitions_total{outcome=granted}"),
        1,
        "{s:#?}"
    );
    assert_eq!(
        get(&s, "redquorum_acquire_wait_seconds{outcome=granted}"),
        1,
        "{s:#?}"
    );
    assert_eq!(get(&s, "redquorum_grant_validity_seconds{}"), 1, "{s:#?}");
    assert_eq!(get(&s, "redquorum_releases_total{path=redis}"), 1, "{s:#?}");
    // Every node answered the acquire and the release: two requests each, or one if the
    // round was decided before its answer came (it is still recorded when it lands).
    for port in (0..3).map(|i| c.port(i).expect("port")) {
        let node = format!("redquorum_node_request_seconds{{node=127.0.0.1:{port}/0}}");
        assert!(get(&s, &node) >= 1, "{node} missing: {s:#?}");
    }
    assert_eq!(sum(&s, "redquorum_node_failures_total", ""), 0, "{s:#?}");

    // Busy: a try in this process while it holds the lock; a timeout in another.
    let held = a.acquire(&patient(), "two").await.expect("free");
    assert!(a.try_acquire("two").await.expect("try").is_none());
    let short = Context::with_timeout(Duration::from_millis(200));
    let timed_out = b.acquire(&short, "two").await.expect_err("held by a");
    assert!(timed_out.is_timeout(), "{timed_out}");
    let s = step(&snapshotter);
    assert_eq!(
        get(&s, "redquorum_acquisitions_total{outcome=granted}"),
        1,
        "{s:#?}"
    );
    assert_eq!(
        get(&s, "redquorum_acquisitions_total{outcome=busy}"),
        1,
        "{s:#?}"
    );
    assert_eq!(
        get(&s, "redquorum_acquisitions_total{outcome=timeout}"),
        1,
        "{s:#?}"
    );
    assert_eq!(
        get(&s, "redquorum_acquire_wait_seconds{outcome=timeout}"),
        1,
        "{s:#?}"
    );

    // A local hand-off: a waiter of this process takes the lock without Redis.
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.acquire(&patient(), "two").await })
    };
    // On this current-thread runtime the waiter runs until it waits in the local queue
    // (joining it and waiting for the turn involve no I/O).
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    held.release().await.expect("handed on");
    let next = waiter.await.expect("no panic").expect("granted");
    next.release().await.expect("release");
    let s = step(&snapshotter);
    assert_eq!(get(&s, "redquorum_releases_total{path=local}"), 1, "{s:#?}");
    assert_eq!(get(&s, "redquorum_releases_total{path=redis}"), 1, "{s:#?}");

    // A lost lease: its validity runs out while watched.
    let brief = builder(&c)
        .ttl(Duration::from_millis(300))
        .build()
        .await
        .expect("build");
    let guard = brief.acquire(&patient(), "three").await.expect("free");
    guard.lost().cancelled().await;
    drop(guard);
    let s = step(&snapshotter);
    assert_eq!(get(&s, "redquorum_leases_lost_total{}"), 1, "{s:#?}");

    // A node killed: its requests fail, and its release-notification connection is lost.
    let holder = a.acquire(&patient(), "four").await.expect("free");
    let subscribed = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(&patient(), "four").await })
    };
    wait_for_subscribers(&c, &b, "four").await;
    let killed = c.port(2).expect("port");
    c.kill(2).expect("kill");
    // Released in the background: a node that misses it is retried (a loaded machine may
    // time one out), and the waiter is woken by the release on the nodes that are up.
    drop(holder);
    let next = subscribed.await.expect("no panic").expect("granted");
    drop(next);
    let reconnects = format!("redquorum_pubsub_reconnects_total{{node=127.0.0.1:{killed}/0}}");
    let failures = format!("node=127.0.0.1:{killed}/0");
    let s = step(&snapshotter);
    assert!(get(&s, &reconnects) >= 1, "{reconnects} missing: {s:#?}");
    assert!(
        sum(&s, "redquorum_node_failures_total", &failures) >= 1,
        "{s:#?}"
    );
}

/// Waits until `locks` has a waiter subscribed to `key`'s channel on every node.
async fn wait_for_subscribers(c: &redquorum::testkit::LocalCluster, locks: &RedLock, key: &str) {
    let channel = format!("{}:released", locks.redis_key(key).expect("key"));
    let mut conns: Vec<redis::Connection> = (0..c.len())
        .map(|i| {
            redis::Client::open(c.url(i).expect("url"))
                .and_then(|client| client.get_connection())
                .expect("connect")
        })
        .collect();
    eventually("the waiter subscribed on every node", || {
        conns.iter_mut().all(|conn| {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query(conn)
                .unwrap_or_default();
            counts.first().is_some_and(|(_, n)| *n > 0)
        })
    })
    .await;
}
