//! Leases that keep themselves alive, and the lost-lock signal.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redquorum::Error;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_keeps_a_short_lease_alive_through_long_work() {
    let c = cluster(5);
    let locks = builder(&c)
        .ttl(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let rival = common::locks(&c).await;
    let rival_got_in = Arc::new(AtomicBool::new(false));
    let out = locks
        .with_lock(&patient(), "job", |lease| {
            let (rival, rival_got_in) = (rival.clone(), rival_got_in.clone());
            async move {
                let started = Instant::now();
                // 5 s of work under a 1 s lease, checking all along that nobody else gets in.
                while started.elapsed() < Duration::from_secs(5) {
                    if let Some(g) = rival.try_acquire("job").await.expect("rival query") {
                        rival_got_in.store(true, Ordering::SeqCst);
                        drop(g);
                    }
                    assert!(!lease.is_lost(), "lost while the nodes are healthy");
                    assert!(lease.validity() > Duration::ZERO);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                42
            }
        })
        .await
        .expect("work done under the lock");
    assert_eq!(out, 42);
    assert!(
        !rival_got_in.load(Ordering::SeqCst),
        "another RedLock acquired meanwhile"
    );
    // Released at the end: the rival gets it at once.
    assert!(rival.try_acquire("job").await.expect("ok").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_releases_when_the_work_panics() {
    let c = cluster(3);
    // A lease longer than the test: the other RedLock gets in because it was released.
    let locks = long_lease(&c).await;
    let task = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .with_lock(&patient(), "job", |_lease| async { panic!("work failed") })
                .await
        })
    };
    let err = task.await.expect_err("the panic propagates");
    assert!(err.is_panic(), "{err:?}");
    // Released, not expired: the keys go long before the lease could end, and another
    // RedLock gets the lock at its first try.
    let left = wait_until_no_keys(&c, HANG_GUARD).await;
    assert!(left.is_empty(), "not released after the panic: {left:?}");
    let other = common::locks(&c).await;
    let g = other
        .try_acquire("job")
        .await
        .expect("ok")
        .expect("released after the panic");
    g.release().await.expect("release");
}

/// 3 of 5 masters frozen during `with_lock`: renewals cannot reach a majority, so `lost()` fires
/// before the validity ends. After they resume, no other holder got in while the guard still
/// trusted its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_a_majority_fires_lost_before_the_validity_ends() {
    let c = Arc::new(cluster(5));
    let locks = builder(&c)
        .ttl(Duration::from_millis(1_500))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let rival = builder(&c)
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let trusted_until = Arc::new(std::sync::Mutex::new(None));
    let rival_task = Arc::new(std::sync::Mutex::new(None));
    let res = locks
        .with_lock(&patient(), "job", |lease| {
            let (c, trusted_until, rival_task) =
                (c.clone(), trusted_until.clone(), rival_task.clone());
            async move {
                for i in [0, 1, 2] {
                    c.pause(i).expect("pause");
                }
                // A rival keeps trying all along, from another RedLock.
                let rival = rival.clone();
                *rival_task.lock().expect("no poison") = Some(tokio::spawn(async move {
                    let deadline = Instant::now() + HANG_GUARD;
                    // When each refused try ended: shows the rival was trying all along.
                    let mut refused = Vec::new();
                    let g = loop {
                        match rival.acquire(&patient(), "job").await {
                            Ok(g) => break g,
                            // A frozen majority: keep trying.
                            Err(Error::NoQuorum { .. }) if Instant::now() < deadline => {
                                refused.push(Instant::now());
                            }
                            Err(e) => panic!("rival: {e}"),
                        }
                    };
                    let at = Instant::now();
                    g.release().await.expect("release");
                    (refused, at)
                }));
                let lost = lease.lost();
                tokio::select! {
                    () = lost.cancelled() => {}
                    () = tokio::time::sleep(HANG_GUARD) => panic!("lost never fired"),
                }
                let fired = Instant::now();
                // It fired before the validity ended (or at the latest as it ran out; 250 ms is
                // how late a timer due then may run on a loaded machine, and the trust below
                // ends at the validity's end whatever).
                assert!(fired <= lease.expires_at() + Duration::from_millis(250));
                // The guard trusted the lock until then, and never past its last validity.
                *trusted_until.lock().expect("no poison") = Some(fired.min(lease.expires_at()));
                for i in [0, 1, 2] {
                    c.resume(i).expect("resume");
                }
            }
        })
        .await;
    assert!(matches!(res, Err(Error::LockLost { .. })), "{res:?}");
    let trusted_until = trusted_until.lock().expect("no poison").expect("set");
    let rival_task = rival_task
        .lock()
        .expect("no poison")
        .take()
        .expect("spawned");
    let (refused, rival_got_it) = rival_task.await.expect("no panic");
    assert!(
        rival_got_it > trusted_until,
        "the rival held the lock while the guard still trusted it"
    );
    // Not merely late: it was refused while the guard trusted the lock and kept trying.
    assert!(
        refused.first().is_some_and(|t| *t <= trusted_until),
        "the rival never tried while the guard trusted the lock: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_when_the_validity_runs_out_without_renewal() {
    let c = cluster(3);
    let locks = builder(&c)
        .ttl(Duration::from_millis(400))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    let lost = g.lost();
    let expires_at = g.expires_at();
    tokio::time::timeout(HANG_GUARD, lost.cancelled())
        .await
        .expect("lost fired");
    assert!(Instant::now() >= expires_at);
    drop(g);
}

/// A normal release ends the lease (the handle says so, and its lost signal fires at once so
/// work still holding it stops) rather than losing it: `has_ended` tells the two apart, and
/// nothing is sent for it after the release (the keep-alive stopped with the guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_release_ends_the_lease_and_stops_the_keep_alive() {
    let c = cluster(3);
    let locks = common::locks(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    g.keep_alive();
    let lease = g.lease();
    let lost = lease.lost();
    let expires_at = lease.expires_at();
    assert!(!lost.is_cancelled() && !lease.has_ended());
    g.release().await.expect("release");
    assert!(lost.is_cancelled() && lease.has_ended() && lease.validity().is_zero());
    let before = command_stats(&c);
    // Past the renewal it would have made (at half the 5 s TTL before the end).
    tokio::time::sleep_until(expires_at - Duration::from_secs(2)).await;
    assert_eq!(command_stats(&c).since(&before).calls("pexpire"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_finding_another_owner_fires_lost_and_unlocks_nothing() {
    let c = cluster(3);
    let locks = common::locks(&c).await;
    let mut g = locks.try_acquire("k").await.expect("ok").expect("free");
    let key = locks.redis_key("k").expect("key");
    for i in [0, 1] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("x:other")
            .query(&mut conn(&c, i))
            .expect("SET");
    }
    let err = g
        .extend(Duration::from_secs(5))
        .await
        .expect_err("theirs now");
    assert!(matches!(err, Error::NotOwner { .. }), "{err:?}");
    assert!(g.lease().is_lost());
    // A confirmed loss leaves no validity to act under.
    assert_eq!(g.validity(), Duration::ZERO);
    // Node 2 still holds our value: a failed extension unlocked nothing.
    assert_eq!(get(&c, 2, &key).as_deref(), Some(g.value()));
    drop(g);
}

/// A guard kept past its lease (a stuck task) does not block the other local waiters for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_holder_past_its_lease_does_not_block_local_waiters() {
    let c = cluster(3);
    let locks = builder(&c)
        .ttl(Duration::from_millis(300))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let stuck = locks.try_acquire("k").await.expect("ok").expect("free");
    let started = Instant::now();
    let g = locks
        .acquire(&patient(), "k")
        .await
        .expect("acquired after the stuck lease ran out");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    g.release().await.expect("release");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renewal_is_retried_until_one_gets_through() {
    let c = proxied(5);
    let ttl = Duration::from_secs(3);
    let locks = builder(&c)
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let mut guard = locks.acquire(&patient(), "renew").await.expect("acquire");
    // One extension first, so that the nodes have the script loaded: a first EVALSHA answered
    // NOSCRIPT and sent again would count as two attempts below.
    guard.extend(ttl).await.expect("extend");
    let first_end = guard.expires_at();
    let lost = guard.lost();
    // A majority goes silent (held traffic is delivered on heal, as TCP would): the renewal
    // due at half the TTL cannot reach a majority and fails after one node timeout.
    for i in 0..3 {
        c.proxy(i).expect("proxy").blackhole();
    }
    let before = command_stats(&c);
    guard.keep_alive();
    // Each renewal attempt reaches the two nodes that still answer (the stats are read past
    // the proxies, so the silent nodes' counts do not move while they are silent). A second
    // attempt there is the retry.
    eventually(
        "a renewal retried after a failed one, or the lease lost",
        || lost.is_cancelled() || command_stats(&c).since(&before).calls("evalsha") >= 4,
    )
    .await;
    assert!(
        !lost.is_cancelled(),
        "the lease was lost without a retried renewal"
    );
    for i in 0..3 {
        c.proxy(i).expect("proxy").heal();
    }
    // The next retry gets through, well inside the validity that is left.
    eventually(
        "a renewal that extends the lease, or the lease lost",
        || lost.is_cancelled() || guard.expires_at() > first_end,
    )
    .await;
    assert!(
        !lost.is_cancelled(),
        "the lease was lost: no renewal got through"
    );
    assert!(guard.expires_at() > first_end);
    guard.release().await.expect("release");
}
