//! Groups, owner labels and ownership queries.
mod common;

use std::time::Duration;

use common::*;
use redquorum::{Error, Operation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_isolated_and_share_connections() {
    let c = cluster(3);
    // Clients on each node, the helpers' own kept connections left out (see `clients`).
    let connections = || (0..3).map(|i| clients(&c, i)).collect::<Vec<_>>();
    let empty = connections();
    // A RedLock alone, its connections counted once every node answered it (`build` returns
    // after a majority; the last node's connection may come later).
    let alone = locks(&c).await;
    let g = alone.try_acquire("alone").await.expect("ok").expect("free");
    eventually("every node to answer the RedLock alone", || {
        g.granted_nodes() == 3
    })
    .await;
    g.release().await.expect("release");
    let one = connections();
    // The count sees a RedLock's connections: it can fail.
    assert!(
        one.iter().zip(&empty).all(|(o, e)| o > e),
        "a RedLock added no client: {empty:?} -> {one:?}"
    );
    // A second RedLock with two groups, all of them locking on every node at once.
    let locks = locks(&c).await;
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
    eventually("every node to answer the RedLock and both groups", || {
        [&a, &b, &d].iter().all(|g| g.granted_nodes() == 3)
    })
    .await;
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
    let with_groups = connections();
    for g in [a, b, d] {
        g.release().await.expect("release");
    }
    // The RedLock and its two groups, having locked, queried and released on every node, added
    // as many clients as the RedLock alone: the groups use its connections.
    let added = |from: &[usize], to: &[usize]| -> Vec<i64> {
        to.iter()
            .zip(from)
            .map(|(&t, &f)| t as i64 - f as i64)
            .collect()
    };
    assert_eq!(
        added(&one, &with_groups),
        added(&empty, &one),
        "clients per node: none {empty:?}, a RedLock {one:?}, + a RedLock with groups \
         {with_groups:?}"
    );
    assert_eq!(
        connections(),
        with_groups,
        "connections came or went on release"
    );
    drop(alone);
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

/// No reference cycle keeps a lock manager alive: once every `RedLock`, guard and lease is
/// dropped (after local queues, a hand-off, a release subscription and a keep-alive were all
/// used), every connection it made to the nodes closes. The queues' announcer holds the
/// cluster; nothing the cluster holds may hold the queues back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_manager_closes_every_connection() {
    let c = cluster(3);
    let connections = || (0..3).map(|i| clients(&c, i)).collect::<Vec<_>>();
    let before = connections();
    {
        let a = long_lease(&c).await;
        let b = long_lease(&c).await;
        let held = a.acquire(&patient(), "k").await.expect("free");
        held.keep_alive();
        // A waiter of another process subscribes; a local one queues behind the holder. Each
        // releases as soon as it is granted (whichever order they get the lock in).
        let take_and_release = |locks: redquorum::RedLock| {
            tokio::spawn(async move {
                let guard = locks.acquire(&patient(), "k").await.expect("granted");
                let lease = guard.lease();
                guard.release().await.expect("release");
                drop(lease);
            })
        };
        let remote = take_and_release(b.clone());
        let local = take_and_release(a.clone());
        let channel = format!("{}:released", a.redis_key("k").expect("key"));
        assert!(
            until_numsub(&c, &channel, 1).await,
            "the remote waiter subscribed"
        );
        held.release().await.expect("release");
        local.await.expect("no panic");
        remote.await.expect("no panic");
        let open = connections();
        assert!(
            open.iter().zip(&before).all(|(o, b)| o > b),
            "{before:?} -> {open:?}"
        );
    }
    eventually(
        "every connection of the dropped lock managers closed",
        || connections() == before,
    )
    .await;
}
