//! The per-node pipelines: a request's failure stays its own, no release is dropped, and
//! requests that land late (after a failed round, or resent after NOSCRIPT) never leave a
//! guard counting on more validity than the nodes give, or a key behind.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redquorum::testkit::LocalCluster;
use redquorum::{Error, RedLock, Retry, WaitStrategy};
use tokio::time::Instant;

/// Takes and releases a key once, so every node has the scripts loaded (a release is one).
async fn warm(locks: &RedLock) {
    let g = locks.try_acquire("warm").await.expect("ok").expect("free");
    g.release().await.expect("release");
}

/// A node that refuses writes (NOREPLICAS here; OOM under maxmemory+noeviction, MISCONF after
/// a failed BGSAVE and READONLY on a demoted master behave the same) while reads still work.
/// A waiter's hinted plain acquire is `SET` + `PTTL`: the SET fails, `Op::reply` returns at
/// `next()?` without consuming the PTTL reply, and the next request of the same pipeline takes
/// that integer as its SET reply: "anything but Nil" = Granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_set_in_a_hinted_acquire_does_not_grant_the_next_request() {
    let c = cluster(3);
    let locks = RedLock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(250))
        .wait_strategy(WaitStrategy::Poll)
        .retry(Retry::exponential(
            Duration::from_millis(1),
            Duration::from_millis(3),
        ))
        .build()
        .await
        .expect("build");
    // Z holds "t0".."t7" on nodes 1 and 2: a majority, with a long lease.
    let targets: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    for t in &targets {
        let k = locks.redis_key(t).unwrap();
        for i in [1, 2] {
            raw(&c, i, &["SET", &k, "Z:other", "PX", "60000"]);
        }
    }
    // Y holds "w0".."w31" on nodes 0 and 1, so our waiters keep retrying (hinted from the
    // second attempt on).
    for w in 0..32 {
        let k = locks.redis_key(&format!("w{w}")).unwrap();
        for i in [0, 1] {
            raw(&c, i, &["SET", &k, "Y:other", "PX", "60000"]);
        }
    }
    // Node 2 now refuses writes, reads still work.
    raw(&c, 2, &["CONFIG", "SET", "min-replicas-to-write", "1"]);

    let stop = Instant::now() + Duration::from_secs(4);
    let mut waiters = Vec::new();
    for w in 0..32 {
        let locks = locks.clone();
        waiters.push(tokio::spawn(async move {
            // Y holds it throughout: the waiter can only run out of time.
            let r = locks.acquire(&ctx(4_000), &format!("w{w}")).await;
            assert!(matches!(r, Err(Error::Timeout { .. })), "w{w}: {r:?}");
        }));
    }
    let grants = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let mut contenders = Vec::new();
    for t in targets.clone() {
        let (locks, grants, tries) = (locks.clone(), grants.clone(), tries.clone());
        contenders.push(tokio::spawn(async move {
            while Instant::now() < stop {
                tries.fetch_add(1, Ordering::Relaxed);
                let r = locks.try_acquire(&t).await;
                if let Ok(Some(g)) = r {
                    grants.fetch_add(1, Ordering::Relaxed);
                    std::mem::forget(g); // keep it: it is the second holder
                }
            }
        }));
    }
    for h in contenders {
        h.await.unwrap();
    }
    for h in waiters {
        h.await.expect("waiter panicked");
    }
    raw(&c, 2, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
    // Z still holds every target on nodes 1 and 2 (a majority): nobody else may be granted.
    for t in &targets {
        let k = locks.redis_key(t).unwrap();
        assert_eq!(get(&c, 2, &k).as_deref(), Some("Z:other"));
    }
    let tries = tries.load(Ordering::Relaxed);
    assert_eq!(
        grants.load(Ordering::Relaxed),
        0,
        "try_acquire was granted while another owner held a majority ({tries} tries)"
    );
}

/// A release queued behind a batch whose earliest deadline is later than its own (the
/// background clean-up's 500 ms retries) is dropped by `retain` without being sent; the
/// acquire of the same value sent earlier on the same connection then lands when the node
/// comes back, and nobody releases it: the key stays for a full TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_queued_behind_a_slow_batch_is_not_dropped() {
    let c = cluster(3);
    let locks = RedLock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(50))
        .build()
        .await
        .expect("build");
    warm(&locks).await;

    c.pause(2).expect("pause");
    // Both granted by nodes 0 and 1; node 2's acquires are written to its socket and time out.
    let a = locks.acquire(&ctx(2_000), "a").await.expect("a");
    // Let the straggler's timeout be heard before a's release (no late-acquire flag).
    tokio::time::sleep(Duration::from_millis(120)).await;
    // "h" is held by another owner on nodes 0 and 1: a refused try_acquire, whose undo goes
    // to node 2 alone (0 and 1 refused), times out there and is retried in the background,
    // batches that occupy node 2's sender while it is frozen.
    let h = locks.redis_key("h").unwrap();
    for i in [0, 1] {
        raw(&c, i, &["SET", &h, "Z:other", "PX", "60000"]);
    }
    assert!(locks.try_acquire("h").await.expect("answered").is_none());
    tokio::time::sleep(Duration::from_millis(180)).await;
    // a's release to node 2 waits behind that batch, its 50 ms deadline passes, it is dropped.
    let a_key = locks.redis_key("a").unwrap();
    let a_value = a.value().to_owned();
    a.release().await.expect("released on a majority");
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.resume(2).expect("resume");
    // The resumed node runs what was written to it; the background release retries end
    // within about two seconds.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let left = get(&c, 2, &a_key);
    let pttl = pttl(&c, 2, &a_key);
    assert_eq!(
        left, None,
        "a released guard's value is back on node 2 (ours: {a_value}), pttl {pttl} ms"
    );
}

async fn client(c: &LocalCluster) -> RedLock {
    builder(c)
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build")
}

/// A failed extension with a shorter TTL still reaches the nodes (extensions always go out,
/// late or not): by the time the keys expire and another process takes the lock, the guard no
/// longer reports any validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shortening_extension_shortens_the_validity_too() {
    let c = proxied(3);
    let a = client(&c).await;
    let b = client(&c).await;
    warm(&a).await;
    let mut guard = a.try_acquire("k").await.unwrap().expect("free");
    for i in 0..3 {
        c.proxy(i).unwrap().blackhole();
    }
    let r = guard.extend(Duration::from_secs(1)).await;
    assert!(
        matches!(r, Err(Error::NoQuorum { .. })),
        "extend must fail while blackholed: {r:?}"
    );
    for i in 0..3 {
        c.proxy(i).unwrap().heal();
    }
    // The extensions land after all: the keys expire about 1 s after it was sent, long before
    // the 10 s lease they replaced would have (8 s: room for a loaded machine, still short of
    // that lease). Whenever another process gets in, the guard reports no validity.
    let expired_by = Instant::now() + Duration::from_secs(8);
    let taken = loop {
        if let Some(g) = b.try_acquire("k").await.unwrap() {
            break Some(g);
        }
        if Instant::now() >= expired_by {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        guard.validity(),
        Duration::ZERO,
        "the guard outlived its keys"
    );
    assert!(taken.is_some(), "the late extension did land and expire");
}

/// The same through the local hand-off: a grant that a failed extension may have shortened is
/// not handed on with its old validity (its validity is already the shorter one, below half
/// the TTL, so the release goes through Redis and the waiter acquires there).
/// (current_thread: the waiter is known to be queued once it has run, see below.)
#[tokio::test(flavor = "current_thread")]
async fn a_grant_a_late_extension_may_shorten_is_not_handed_on_with_its_old_validity() {
    let c = proxied(3);
    let a = client(&c).await;
    let b = client(&c).await;
    warm(&a).await;
    let mut guard = a.try_acquire("k").await.unwrap().expect("free");
    let a2 = a.clone();
    let waiter = tokio::spawn(async move { a2.acquire(&patient(), "k").await });
    // Joining the local queue behind our guard and waiting for the turn involve no I/O: a
    // few yields let the waiter run until it waits there, where a hand-off could reach it.
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "the waiter got past our guard");
    for i in 0..3 {
        c.proxy(i).unwrap().blackhole();
    }
    let r = guard.extend(Duration::from_secs(1)).await;
    assert!(
        matches!(r, Err(Error::NoQuorum { .. })),
        "extend must fail while blackholed: {r:?}"
    );
    assert!(guard.validity() <= Duration::from_secs(1));
    let released = guard.release().await;
    assert!(
        matches!(released, Err(Error::NoQuorum { .. })),
        "the shortened grant went to Redis (blackholed), not to the waiter: {released:?}"
    );
    for i in 0..3 {
        c.proxy(i).unwrap().heal();
    }
    let next = waiter.await.unwrap().expect("acquired through Redis");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let validity = next.validity();
    let other = b.try_acquire("k").await.unwrap();
    assert!(
        other.is_none(),
        "two holders: B acquired while the local guard reports validity {validity:?}"
    );
}

/// A NOSCRIPT resend of an acquire is not checked against its caller having given up: the
/// failed round's undo (a release that finds nothing) overtakes it and the key stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_acquire_is_not_resent_after_noscript() {
    let c = proxied(3);
    let a = RedLock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(500))
        .fencing(true)
        .build()
        .await
        .expect("build");
    warm(&a).await;
    let k = a.redis_key("k").unwrap();
    raw(&c, 0, &["SCRIPT", "FLUSH"]); // node 0 restarted: empty script cache
    for i in [1, 2] {
        raw(&c, i, &["SET", &k, "other", "PX", "60000"]);
    }
    c.proxy(0).unwrap().set_latency(Duration::from_millis(40));
    for i in [1, 2] {
        c.proxy(i).unwrap().set_latency(Duration::from_millis(60));
    }
    let r = a.try_acquire("k").await.unwrap();
    assert!(r.is_none());
    // The undo and any resend are done well within this (node timeout 500 ms).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let left = get(&c, 0, &k);
    assert!(
        left.is_none(),
        "our abandoned acquire holds node 0 after its undo: {left:?}, pttl {}",
        pttl(&c, 0, &k)
    );
}
