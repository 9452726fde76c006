//! One Redis server must never count as several votes: however its URLs differ (database,
//! host name, a proxy), the nodes are identified by the server's `run_id`.
mod common;

use std::time::Duration;

use common::*;
use redquorum::testkit::{FaultProxy, LocalCluster};
use redquorum::{Error, RedLock};
use tokio::time::Instant;

const SECRET: &str = "dup-s3cret";

fn reason(err: Error) -> String {
    match err {
        Error::Config { reason } => reason,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_under_several_urls_is_refused_at_build() {
    let c = LocalCluster::builder()
        .nodes(2)
        .requirepass(SECRET)
        .start()
        .expect("start");
    let (p, q) = (c.port(0).expect("port"), c.port(1).expect("port"));
    // Another database of the same server.
    let urls = [
        format!("redis://:{SECRET}@127.0.0.1:{p}/0"),
        format!("redis://:{SECRET}@127.0.0.1:{p}/1"),
        format!("redis://:{SECRET}@localhost:{p}"),
    ];
    let err = RedLock::builder()
        .nodes(&urls)
        .build()
        .await
        .expect_err("one server, three URLs");
    let r = reason(err);
    assert!(
        r.contains(&format!("redis://***@127.0.0.1:{p}/0"))
            && r.contains(&format!("redis://***@127.0.0.1:{p}/1")),
        "{r}"
    );
    assert!(!r.contains(SECRET), "{r}");
    // Another name for the same host: only the server can tell.
    let urls = [
        format!("redis://:{SECRET}@127.0.0.1:{p}"),
        format!("redis://:{SECRET}@127.0.0.1:{q}"),
        format!("redis://:{SECRET}@localhost:{p}"),
    ];
    let err = RedLock::builder()
        .nodes(&urls)
        // A healthy node is heard within a node timeout: generous for a busy machine.
        .node_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("node 3 is node 1");
    let r = reason(err);
    assert!(
        r.contains(&format!("redis://***@127.0.0.1:{p}"))
            && r.contains(&format!("redis://***@localhost:{p}"))
            && r.contains("same Redis server"),
        "{r}"
    );
    assert!(!r.contains(SECRET), "{r}");
}

/// Node 3 is down when the lock is built, and comes up as a second path to node 1's server:
/// it must never vote, also after that server restarts (a new run_id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_that_connects_later_never_votes() {
    let c = cluster(2);
    let alias = FaultProxy::start(c.port(0).expect("port")).expect("proxy");
    alias.cut();
    let urls = [c.url(0).expect("url"), c.url(1).expect("url"), alias.url()];
    let locks = RedLock::builder()
        .nodes(&urls)
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_millis(250))
        .build()
        .await
        .expect("two distinct nodes answer");
    alias.heal();
    // Only node 1's server is left: one vote of three, never a majority.
    c.kill(1).expect("kill");
    let seen_as_duplicate = |round: &str| {
        let locks = locks.clone();
        let alias_node = format!("127.0.0.1:{}/0", alias.port());
        let round = round.to_owned();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match locks.try_acquire("k").await {
                    Ok(Some(guard)) => panic!(
                        "{round}: granted by {} nodes with one server up: node 3 voted as node 1",
                        guard.granted_nodes()
                    ),
                    Ok(None) => panic!("{round}: nobody else holds the key"),
                    Err(Error::NoQuorum { causes, .. }) => {
                        let dup = causes.iter().find(|f| f.node == alias_node);
                        if let Some(f) = dup.filter(|f| f.to_string().contains("same Redis server"))
                        {
                            return (f.to_string(), causes);
                        }
                    }
                    Err(other) => panic!("{round}: {other}"),
                }
                assert!(
                    Instant::now() < deadline,
                    "{round}: node 3 never identified"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (why, _) = seen_as_duplicate("after it came up").await;
    assert!(
        why.contains(&format!("127.0.0.1:{}", c.port(0).expect("port"))),
        "{why}"
    );
    // The server restarts with a new run_id; node 3 reconnects first, node 1 after it.
    c.restart(0).expect("restart");
    let (why, _) = seen_as_duplicate("after a restart").await;
    assert!(
        why.contains(&format!("127.0.0.1:{}", c.port(0).expect("port"))),
        "{why}"
    );
    // Node 1 itself answers again (its connection came back).
    let node_1 = format!("127.0.0.1:{}/0", c.port(0).expect("port"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match locks.try_acquire("k").await {
            Ok(Some(guard)) => panic!("granted by {} nodes", guard.granted_nodes()),
            Err(Error::NoQuorum {
                confirmed: 1,
                causes,
                ..
            }) if causes.iter().all(|f| f.node != node_1) => break,
            Err(Error::NoQuorum { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "node 1 never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Error::Config` for two URLs of one server (found by `run_id` at `build()`) is one
/// clean line (review finding: a lost `\` line continuation put 18 spaces in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_server_error_is_one_clean_line() {
    let c = cluster(2);
    let (p, q) = (c.port(0).expect("port"), c.port(1).expect("port"));
    let urls = [
        format!("redis://127.0.0.1:{p}"),
        format!("redis://127.0.0.1:{q}"),
        format!("redis://localhost:{p}"),
    ];
    let err = RedLock::builder()
        .nodes(&urls)
        .node_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("node 3 is node 1");
    let msg = err.to_string();
    assert!(msg.contains("same Redis server"), "{msg}");
    assert!(!msg.contains("  ") && !msg.contains('\n'), "{msg:?}");
}
