//! Groups, owner labels and ownership queries.
mod common;

use std::time::Duration;

use common::*;
use redquorum::{Error, Operation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_isolated_and_share_connections() {
    let c = cluster(3);
    let locks = locks(&c).await;
    // The connections the RedLock makes for locking, counted once they are up.
    let warm = locks.try_acquire("warm").await.expect("ok").expect("free");
    warm.release().await.expect("release");
    let connections = || (0..3).map(|i| clients(&c, i)).collect::<Vec<_>>();
    let before = connections();
    let billing = locks.group("billing").expect("group");
    let shipping = locks.group("shipping").expect("group");
    let a = billing
        .try_acquire("invoice-7")
        .await
        .expect("ok")
        .expect("free");
    let b = shipping
        .try_acquire("invoice-7")
        .await
        .expect("ok")
        .expect("other group");
    let d = locks
        .try_acquire("invoice-7")
        .await
        .expect("ok")
        .expect("default group");
    assert!(billing
        .try_acquire("invoice-7")
        .await
        .expect("ok")
        .is_none());
    assert_eq!(
        billing.redis_key("invoice-7").expect("key"),
        "redquorum:billing:invoice-7"
    );
    assert_eq!(
        locks.redis_key("invoice-7").expect("key"),
        "redquorum:default:invoice-7"
    );
    // A group named like a prefix of a key cannot collide: ':' is not allowed in group names.
    assert!(matches!(
        locks.group("billing:x"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(locks.group(""), Err(Error::Config { .. })));
    for g in [a, b, d] {
        g.release().await.expect("release");
    }
    // Two groups locked, queried and released through the same connections: none added.
    assert_eq!(
        connections(),
        before,
        "a group opened connections of its own"
    );
    // The count does see a client with connections of its own (another RedLock).
    let other = common::locks(&c).await;
    other
        .try_acquire("warm")
        .await
        .expect("ok")
        .expect("free")
        .release()
        .await
        .expect("release");
    let more = connections();
    assert!(
        more.iter().zip(&before).all(|(m, b)| m > b),
        "{before:?} -> {more:?}"
    );
}

/// Calls of `command` node `i` ran since it started.
fn calls(c: &redquorum::testkit::LocalCluster, i: usize, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn(c, i))
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_is_locked_follow_the_majority() {
    let c = cluster(3);
    let locks = builder(&c).owner("worker-1").build().await.expect("build");
    let observer = builder(&c).owner("observer").build().await.expect("build");
    assert!(!observer.is_locked("k").await.expect("query"));
    assert_eq!(observer.owner("k").await.expect("query"), None);

    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    assert!(observer.is_locked("k").await.expect("query"));
    assert_eq!(
        observer.owner("k").await.expect("query").as_deref(),
        Some("worker-1")
    );
    assert!(g.is_held().await.expect("query"));
    assert!(g.value().ends_with(":worker-1"));

    // A value on a single node (a minority) is not a holder.
    let key = locks.redis_key("m").expect("key");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x:stray")
        .query(&mut conn(&c, 0))
        .expect("SET");
    assert!(!observer.is_locked("m").await.expect("query"));

    g.release().await.expect("release");
    assert!(!observer.is_locked("k").await.expect("query"));
    assert_eq!(observer.owner("k").await.expect("query"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_held_turns_false_when_another_owner_takes_over() {
    let c = cluster(3);
    let short = builder(&c)
        .ttl(Duration::from_millis(300))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let other = locks(&c).await;
    let g = short.try_acquire("k").await.expect("ok").expect("free");
    assert!(g.is_held().await.expect("query"));
    let taken = other.acquire(&patient(), "k").await.expect("after expiry");
    assert!(!g.is_held().await.expect("query"));
    assert!(taken.is_held().await.expect("query"));
    taken.release().await.expect("release");
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_prefixes_every_key() {
    let c = cluster(3);
    let locks = builder(&c).namespace("app1").build().await.expect("build");
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    // The grant is decided by 2 of 3; wait until the third node's reply is recorded too.
    eventually("every node's grant to be recorded", || {
        g.granted_nodes() == 3
    })
    .await;
    let keys = all_keys(&c);
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|(_, k)| k == "app1:default:k"), "{keys:?}");
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_keys_are_rejected_before_any_io() {
    let c = cluster(3);
    let locks = locks(&c).await;
    assert!(matches!(
        locks.try_acquire("").await,
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        locks.acquire(&ctx(100), "").await,
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        locks.is_locked("").await,
        Err(Error::Config { .. })
    ));
    assert!(matches!(locks.owner("").await, Err(Error::Config { .. })));
    assert!(all_keys(&c).is_empty());
}

/// The lock is on nodes 0 and 1 of 3, node 2 is empty (restarted without persistence) and
/// node 0 is frozen: nobody can tell whether the lock is free, so the answer is NoQuorum, not
/// "free".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undetermined_majority_is_no_quorum_not_free() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let observer = common::locks(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    let key = locks.redis_key("k").expect("key");
    // Let node 2's (possibly straggling) grant land first, then wipe it by a restart.
    eventually("node 2's grant to land", || get(&c, 2, &key).is_some()).await;
    c.restart(2).expect("restart");
    assert_eq!(get(&c, 2, &key), None);
    // Make sure the observer's connection to node 2 is back before freezing node 0: its
    // queries reach node 2 again (a query answered by nodes 0 and 1 alone shows nothing).
    let seen = calls(&c, 2, "get");
    let warm = tokio::time::Instant::now() + HANG_GUARD;
    while calls(&c, 2, "get") == seen {
        assert!(tokio::time::Instant::now() < warm, "node 2 never came back");
        // Answered by nodes 0 and 1 at least; what counts is whether node 2 saw it.
        observer.is_locked("warm-up").await.ok();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.pause(0).expect("pause");
    let locked = observer.is_locked("k").await;
    let owner = observer.owner("k").await;
    let held = g.is_held().await;
    c.resume(0).expect("resume");
    assert!(
        matches!(
            locked,
            Err(Error::NoQuorum {
                op: Operation::Query,
                ..
            })
        ),
        "{locked:?}"
    );
    assert!(matches!(owner, Err(Error::NoQuorum { .. })), "{owner:?}");
    assert!(matches!(held, Err(Error::NoQuorum { .. })), "{held:?}");
    g.release().await.expect("release");
}
