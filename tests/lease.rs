//! Release and extend: quorum-verified, typed outcomes, never touching another owner's key.
mod common;

use std::time::Duration;

use common::*;
use redquorum::{Error, Operation};
use tokio::time::Instant;

async fn short_lease(c: &redquorum::testkit::LocalCluster) -> redquorum::RedLock {
    builder(c)
        .ttl(Duration::from_millis(300))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_of_an_expired_lock_is_not_held() {
    let c = cluster(3);
    let locks = short_lease(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    let key = locks.redis_key("k").expect("key");
    // Wait for the nodes themselves to expire the key (the behaviour under test).
    while (0..3).any(|i| pttl(&c, i, &key) != -2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(g.validity(), Duration::ZERO);
    let err = g.release().await.expect_err("expired");
    assert!(
        matches!(
            err,
            Error::NotHeld {
                op: Operation::Release,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_after_another_owner_took_it_is_not_owner_and_leaves_their_key() {
    let c = cluster(3);
    let a = short_lease(&c).await;
    let b = locks(&c).await; // 5 s lease
    let stale = a.try_acquire("k").await.expect("ok").expect("free");
    let ctx = patient();
    let fresh = b
        .acquire(&ctx, "k")
        .await
        .expect("acquired after a's lease ran out");
    let key = b.redis_key("k").expect("key");
    // b holds a majority (a node whose copy of a's key had not expired yet may have refused).
    let theirs: Vec<usize> = (0..3)
        .filter(|&i| get(&c, i, &key).as_deref() == Some(fresh.value()))
        .collect();
    assert!(theirs.len() >= 2, "{theirs:?}");

    let err = stale.release().await.expect_err("not ours any more");
    assert!(
        matches!(
            err,
            Error::NotOwner {
                op: Operation::Release,
                ..
            }
        ),
        "{err:?}"
    );
    for &i in &theirs {
        assert_eq!(
            get(&c, i, &key).as_deref(),
            Some(fresh.value()),
            "the other owner's key was touched on node {i}"
        );
    }
    assert!(fresh.is_held().await.expect("query"));
    fresh.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_the_lock_past_its_first_lease() {
    let c = cluster(5);
    // A third of the TTL between extensions: a loaded machine may oversleep by a second.
    let ttl = Duration::from_millis(2_100);
    let lease = |c| {
        builder(c)
            .ttl(ttl)
            .node_timeout(Duration::from_millis(100))
            .build()
    };
    let locks = lease(&c).await.expect("build");
    let rival = lease(&c).await.expect("build");
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let key = locks.redis_key("k").expect("key");
    for _ in 0..6 {
        tokio::time::sleep(ttl / 3).await;
        g.extend(ttl).await.expect("extend");
        assert!(g.validity() > ttl / 2);
        assert!(rival.try_acquire("k").await.expect("ok").is_none());
    }
    // 4.2 s in, twice the TTL: still ours on a majority.
    let ours: Vec<usize> = (0..5)
        .filter(|&i| get(&c, i, &key).as_deref() == Some(g.value()))
        .collect();
    assert!(ours.len() >= 3, "{ours:?}");
    g.extend(Duration::from_secs(5))
        .await
        .expect("longer lease");
    assert!(pttl(&c, ours[0], &key) > 4_000);
    assert!(g.is_held().await.expect("query"));
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_after_expiry_fails_and_touches_nothing() {
    let c = cluster(3);
    let other = locks(&c).await;
    let locks = short_lease(&c).await;
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let taken = other.acquire(&patient(), "k").await.expect("after expiry");
    let err = g.extend(Duration::from_secs(5)).await.expect_err("expired");
    assert!(
        matches!(
            err,
            Error::NotHeld {
                op: Operation::Extend,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(taken.is_held().await.expect("query"));
    let key = other.redis_key("k").expect("key");
    let theirs = (0..3)
        .filter(|&i| get(&c, i, &key).as_deref() == Some(taken.value()))
        .count();
    assert!(theirs >= 2, "the new owner lost its majority");
    taken.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_rejects_a_lease_without_validity() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let before = g.expires_at();
    let err = g
        .extend(Duration::from_millis(10))
        .await
        .expect_err("too short");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_eq!(g.expires_at(), before);
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_without_a_majority_fails_and_keeps_what_it_has() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let before = g.expires_at();
    c.kill(0).expect("kill");
    c.kill(1).expect("kill");
    let err = g
        .extend(Duration::from_secs(5))
        .await
        .expect_err("minority");
    assert!(
        matches!(
            err,
            Error::NoQuorum {
                op: Operation::Extend,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        g.expires_at(),
        before,
        "validity must not grow without a majority"
    );
    // The surviving node still holds our key: a failed extend unlocks nothing.
    let key = locks.redis_key("k").expect("key");
    assert_eq!(get(&c, 2, &key).as_deref(), Some(g.value()));
    let held = g.is_held().await;
    assert!(
        matches!(held, Err(Error::NoQuorum { .. })),
        "cannot tell with one node of three: {held:?}"
    );
    drop(g);
}

/// Node 0 holds a stray value of someone else, node 1 is frozen (and still holds ours), node 2
/// releases: nobody else holds a majority and ours may still be on two nodes, so the release
/// outcome is NoQuorum, whatever order the replies come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_outcome_does_not_depend_on_reply_order() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    let key = locks.redis_key("k").expect("key");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x:stray")
        .query(&mut conn(&c, 0))
        .expect("SET");
    c.pause(1).expect("pause");
    let res = g.release().await;
    c.resume(1).expect("resume");
    assert!(
        matches!(
            res,
            Err(Error::NoQuorum {
                op: Operation::Release,
                ..
            })
        ),
        "{res:?}"
    );
    assert_eq!(
        get(&c, 0, &key).as_deref(),
        Some("x:stray"),
        "stray value touched"
    );
}

/// Extend with validity left, while another owner's value sits on one node: that node is
/// never extended, and our majority still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_never_touches_another_owners_key() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let key = locks.redis_key("k").expect("key");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x:other")
        .arg("PX")
        .arg(1_000)
        .query(&mut conn(&c, 0))
        .expect("SET");
    g.extend(Duration::from_secs(30))
        .await
        .expect("2 of 3 still ours");
    assert!(
        pttl(&c, 0, &key) <= 1_000,
        "another owner's key was extended"
    );
    assert!(pttl(&c, 1, &key) > 20_000 && pttl(&c, 2, &key) > 20_000);
    // Now a majority is another owner's: NotOwner, and their keys keep their leases.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x:other")
        .arg("PX")
        .arg(1_000)
        .query(&mut conn(&c, 1))
        .expect("SET");
    let err = g
        .extend(Duration::from_secs(30))
        .await
        .expect_err("majority is theirs");
    assert!(
        matches!(
            err,
            Error::NotOwner {
                op: Operation::Extend,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(pttl(&c, 0, &key) <= 1_000 && pttl(&c, 1, &key) <= 1_000);
    assert_eq!(get(&c, 2, &key).as_deref(), Some(g.value()));
    drop(g);
}

/// An extend whose majority confirms only after the current validity ran out (two nodes were
/// frozen across that moment) must not report success, even though the nodes, whose own lease
/// had not ended yet, answer "extended".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_confirmed_after_the_validity_ran_out_fails() {
    let c = std::sync::Arc::new(cluster(3));
    // drift 0.3: validity ≈ 418 ms of the nodes' 600 ms lease, a wide window to land in.
    let locks = builder(&c)
        .ttl(Duration::from_millis(600))
        .drift_factor(0.3)
        .node_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("build");
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let expires_at = g.expires_at();
    let before = command_stats(&c);
    // Frozen first, so that how long freezing takes cannot push the extend past expiry.
    c.pause(0).expect("pause");
    c.pause(1).expect("pause");
    tokio::time::sleep_until(expires_at - Duration::from_millis(100)).await;
    let thaw = {
        let c = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(expires_at + Duration::from_millis(50)).await;
            c.resume(0).and_then(|()| c.resume(1))
        })
    };
    let sent = tokio::time::Instant::now();
    let res = g.extend(Duration::from_secs(5)).await;
    thaw.await.expect("no panic").expect("resume");
    assert!(
        matches!(
            res,
            Err(Error::NotHeld {
                op: Operation::Extend,
                ..
            })
        ),
        "an extend confirmed after expiry: {res:?}"
    );
    assert_eq!(g.expires_at(), expires_at, "validity grew");
    // Refused for the right reason: the round went out while the lease was valid and a majority
    // (node 2 at once, a thawed one later) ran the extension; not a local "already expired".
    assert!(sent < expires_at, "the extend started after expiry");
    let extended = command_stats(&c).since(&before).calls("pexpire");
    assert!(extended >= 2, "the extension reached {extended} node(s)");
}

mod many {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_sets_are_never_both_granted() {
        let c = cluster(3);
        let a = long_lease(&c).await;
        let b = long_lease(&c).await;
        let ab = a
            .try_acquire_many(&["a", "b"])
            .await
            .expect("ok")
            .expect("free");
        assert!(b.try_acquire_many(&["b", "c"]).await.expect("ok").is_none());
        assert!(b.try_acquire("a").await.expect("ok").is_none());
        let c_only = b
            .try_acquire_many(&["c", "d"])
            .await
            .expect("ok")
            .expect("disjoint");
        ab.release().await.expect("release");
        let bc = b.try_acquire_many(&["c", "b"]).await.expect("ok");
        assert!(bc.is_none(), "c is still held by the other set");
        c_only.release().await.expect("release");
        let bc = b
            .try_acquire_many(&["c", "b"])
            .await
            .expect("ok")
            .expect("free now");
        bc.release().await.expect("release");
        assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_with_one_held_key_is_not_granted_and_nothing_is_left() {
        let c = cluster(3);
        let a = long_lease(&c).await;
        let b = long_lease(&c).await;
        let held = a.try_acquire("y").await.expect("ok").expect("free");
        assert!(b
            .try_acquire_many(&["x", "y", "z"])
            .await
            .expect("ok")
            .is_none());
        // On the nodes holding y, not even the free keys were taken (all or nothing on each
        // node); where a's straggling grant had not landed yet b's set may have been, and the
        // failed round's spawned undo removes it.
        for k in ["x", "z"] {
            let key = b.redis_key(k).expect("key");
            let yk = a.redis_key("y").expect("key");
            for i in 0..3 {
                if get(&c, i, &yk).as_deref() == Some(held.value()) {
                    assert!(get(&c, i, &key).is_none(), "{k} taken beside y on node {i}");
                }
            }
        }
        let deadline = Instant::now() + HANG_GUARD;
        let stray = |k: &str| {
            let key = b.redis_key(k).expect("key");
            (0..3).any(|i| get(&c, i, &key).is_some())
        };
        while (stray("x") || stray("z")) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !stray("x") && !stray("z"),
            "the failed round was not undone"
        );
        // Waiting for the set ends when the held key is released.
        let before = command_stats(&c);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire_many(&patient(), &["x", "y", "z"]).await })
        };
        // Release only once the waiter has tried at least once (its requests reached the
        // nodes), so the waiting path really runs.
        eventually("the waiter's first attempt to reach the nodes", || {
            command_stats(&c).since(&before).calls("evalsha") >= 2
        })
        .await;
        held.release().await.expect("release");
        let set = waiter.await.expect("no panic").expect("acquired");
        assert!(set.is_held().await.expect("query"));
        let mut set = set;
        set.extend(Duration::from_secs(20))
            .await
            .expect("extend all three");
        // On every node holding the set (a majority), all three keys were extended together
        // (shortened from the long lease to 20 s: only an extended key is in that window).
        let extended = |k: &str| -> Vec<usize> {
            let key = b.redis_key(k).expect("key");
            (0..3)
                .filter(|&i| (15_000..=20_000).contains(&pttl(&c, i, &key)))
                .collect()
        };
        let on = extended("x");
        assert!(on.len() >= 2, "x extended on {on:?} only");
        assert_eq!(extended("y"), on);
        assert_eq!(extended("z"), on);
        set.release().await.expect("release");
        // Released, not expired: the extension made the keys last 20 s; 10 s is room for a
        // loaded machine.
        assert!(wait_until_no_keys(&c, Duration::from_secs(10))
            .await
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_sets_are_config_errors() {
        let c = cluster(3);
        let a = locks(&c).await;
        let none: [&str; 0] = [];
        assert!(matches!(
            a.try_acquire_many(&none).await,
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            a.try_acquire_many(&["a", ""]).await,
            Err(Error::Config { .. })
        ));
        // Duplicates collapse: a set of one key behaves as that key.
        let g = a
            .try_acquire_many(&["a", "a"])
            .await
            .expect("ok")
            .expect("free");
        assert!(a.try_acquire("a").await.expect("ok").is_none());
        g.release().await.expect("release");
    }

    /// Tasks of three RedLocks take random overlapping sets of four keys: no key is ever held by
    /// two of them at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_overlapping_sets_exclude_each_other() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c = cluster(5);
        let keys = ["k0", "k1", "k2", "k3"];
        let holders: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        let mut tasks = Vec::new();
        for client in 0..3u64 {
            let locks = long_lease(&c).await;
            for task in 0..3u64 {
                let (locks, holders) = (locks.clone(), holders.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(client * 10 + task);
                    for _ in 0..30 {
                        let set: Vec<usize> = (0..4).filter(|_| rng.bool()).collect();
                        let set = if set.is_empty() {
                            vec![rng.usize(0..4)]
                        } else {
                            set
                        };
                        let names: Vec<&str> = set.iter().map(|&i| keys[i]).collect();
                        let g = locks
                            .acquire_many(&patient(), &names)
                            .await
                            .expect("acquire");
                        for &i in &set {
                            assert_eq!(
                                holders[i].fetch_add(1, Ordering::SeqCst),
                                0,
                                "{} held twice",
                                keys[i]
                            );
                        }
                        let hold = Duration::from_micros(rng.u64(0..3_000));
                        tokio::time::sleep(hold).await;
                        for &i in &set {
                            holders[i].fetch_sub(1, Ordering::SeqCst);
                        }
                        g.release().await.expect("release");
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("task panicked");
        }
        assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
    }
}

/// A `Lease` handle ends when its guard lets go (release, drop, or a local hand-off): its
/// validity is zero and `lost()` has fired, so work still holding the handle stops; the next
/// holder gets a fresh handle.
mod a_lease_ends_with_its_guard {
    use super::*;

    fn ended(lease: &redquorum::Lease, how: &str) {
        assert_eq!(lease.validity(), Duration::ZERO, "after {how}");
        assert!(lease.has_ended(), "after {how}");
        assert!(lease.lost().is_cancelled(), "after {how}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_release_and_on_drop() {
        let c = cluster(3);
        let locks = locks(&c).await;
        let g = locks.try_acquire("k").await.expect("ok").expect("free");
        let lease = g.lease();
        assert!(lease.validity() > Duration::ZERO && !lease.has_ended());
        g.release().await.expect("release");
        ended(&lease, "release");

        let g = locks.try_acquire("k").await.expect("ok").expect("free");
        let lease = g.lease();
        drop(g);
        ended(&lease, "drop");
    }

    /// On a current-thread runtime a spawned waiter runs up to its place in the local queue at
    /// the first yield (it sends nothing before it has the turn).
    #[tokio::test]
    async fn on_a_local_hand_off_and_the_next_holder_gets_a_fresh_one() {
        let c = cluster(3);
        let locks = locks(&c).await;
        let g = locks.try_acquire("k").await.expect("ok").expect("free");
        let old = g.lease();
        let value = g.value().to_owned();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire(&ctx(10_000), "k").await })
        };
        tokio::task::yield_now().await;
        g.release().await.expect("release");
        let next = waiter.await.expect("no panic").expect("acquired");
        assert_eq!(
            next.value(),
            value,
            "handed on locally, not taken anew in Redis"
        );
        ended(&old, "a hand-off");
        let new = next.lease();
        assert!(new.validity() > Duration::ZERO && !new.has_ended() && !new.is_lost());
        next.release().await.expect("release");
        ended(&new, "release");
    }
}
