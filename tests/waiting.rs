//! acquire waits while the lock is held, ends at the deadline, on cancellation, or when the
//! retry budget runs out.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redquorum::testkit::LocalCluster;
use redquorum::{Context, Error, RedLock, Retry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_returns_none_while_held() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    for _ in 0..3 {
        assert!(locks.try_acquire("k").await.expect("ok").is_none());
    }
    assert!(g.validity() > Duration::from_secs(4));
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_waits_then_succeeds_after_release() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let other_process = common::locks(&c).await;
    let holder = other_process
        .try_acquire("k")
        .await
        .expect("ok")
        .expect("free");
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (locks, released) = (locks.clone(), released.clone());
        tokio::spawn(async move {
            let g = locks.acquire(&patient(), "k").await;
            (g, released.load(Ordering::SeqCst))
        })
    };
    // The waiter is waiting once it has subscribed to the release channel.
    let channel = format!("{}:released", locks.redis_key("k").expect("key"));
    assert!(
        until_numsub(&c, &channel, 1).await,
        "waiter never started waiting"
    );
    released.store(true, Ordering::SeqCst);
    holder.release().await.expect("release");
    let (g, after_release) = waiter.await.expect("no panic");
    let g = g.expect("acquired after release");
    assert!(
        after_release,
        "acquired while the other holder still held it"
    );
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_times_out_at_the_deadline_while_held() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let other_process = self::locks(&c).await;
    let _holder = other_process
        .try_acquire("k")
        .await
        .expect("ok")
        .expect("free");
    let started = Instant::now();
    let err = locks.acquire(&ctx(300), "k").await.expect_err("held");
    let waited = started.elapsed();
    match &err {
        Error::Timeout { key, attempts, .. } => {
            assert_eq!(key, "k");
            assert!(*attempts > 1, "it retried: {attempts}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(err.is_timeout() && err.is_retryable());
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    // Ends at the deadline, not at the holder's lease end (5 s after it was taken) nor at a
    // later attempt: 2 s over the deadline covers a loaded machine's scheduling delays.
    assert!(waited < Duration::from_millis(2_300), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_holder_makes_local_waiters_time_out_without_redis_traffic() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let holder = locks.try_acquire("k").await.expect("ok").expect("free");
    // Let the straggling third grant land before counting.
    let key = locks.redis_key("k").expect("key");
    eventually("the holder's grant on every node", || {
        (0..3).all(|i| get(&c, i, &key).as_deref() == Some(holder.value()))
    })
    .await;
    let before = command_stats(&c);
    let started = Instant::now();
    let err = locks.acquire(&ctx(200), "k").await.expect_err("held");
    assert!(matches!(err, Error::Timeout { attempts: 0, .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Nothing reached the nodes (CommandStats leaves out its own INFO calls).
    assert_eq!(command_stats(&c).since(&before).total(), 0);
    // try_acquire does not queue: it says "held" at once.
    assert!(locks.try_acquire("k").await.expect("ok").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_context_fails_without_waiting() {
    let c = cluster(3);
    let locks = locks(&c).await;
    let ctx = Context::with_deadline(Instant::now() - Duration::from_millis(1));
    assert!(matches!(
        locks.acquire(&ctx, "k").await,
        Err(Error::Timeout { attempts: 0, .. })
    ));
    assert!(all_keys(&c).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_ends_the_wait() {
    let c = cluster(3);
    let holder_locks = locks(&c).await;
    let _holder = holder_locks
        .try_acquire("k")
        .await
        .expect("ok")
        .expect("free");
    let locks = builder(&c)
        .retry(
            Retry::exponential(Duration::from_millis(1), Duration::from_millis(5)).max_attempts(3),
        )
        .build()
        .await
        .expect("build");
    match locks.acquire(&patient(), "k").await {
        Err(Error::RetriesExhausted { attempts: 3, .. }) => {}
        other => panic!("expected RetriesExhausted after 3 attempts, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_ends_the_wait_and_leaves_nothing() {
    let c = cluster(3);
    let locks = long_lease(&c).await;
    let other_process = long_lease(&c).await;
    let holder = other_process
        .try_acquire("k")
        .await
        .expect("ok")
        .expect("free");
    let token = CancellationToken::new();
    let ctx = Context::with_timeout(HANG_GUARD).with_cancel(token.clone());
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire(&ctx, "k").await })
    };
    // Cancel only once the waiter is really waiting (subscribed after its first attempt).
    let channel = format!("{}:released", locks.redis_key("k").expect("key"));
    assert!(
        until_numsub(&c, &channel, 1).await,
        "waiter never started waiting"
    );
    let cancelled_at = Instant::now();
    token.cancel();
    let res = waiter.await.expect("no panic");
    assert!(matches!(res, Err(Error::Cancelled { .. })), "{res:?}");
    // At once (milliseconds), not at the holder's lease end (5 s) or the deadline; 2 s
    // covers a loaded machine's scheduling delays.
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    assert!(
        until_numsub(&c, &channel, 0).await,
        "subscription left after cancellation"
    );
    holder.release().await.expect("release");
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

/// Dropping an acquire future at any point (here: by a timeout racing it, many times over at
/// varied moments) leaves no key behind once the spawned undo has run. Each node is 5 ms away
/// each way (a 10 ms round trip), and the cuts spread over 0..15 ms, so most land while the
/// SETs are on their way or their answers are: the drops happen with requests in flight, not
/// all on tokio's first timer tick before anything was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_leaves_no_key_behind() {
    let c = proxied(5);
    let locks = long_lease(&c).await;
    for i in 0..5 {
        c.proxy(i)
            .expect("proxy")
            .set_latency(Duration::from_millis(5));
    }
    let before = command_stats(&c);
    let mut completed = 0;
    for i in 0..200u64 {
        let cut = Duration::from_micros(i * 75);
        let key = format!("drop-{i}");
        match tokio::time::timeout(cut, locks.acquire(&patient(), &key)).await {
            Ok(Ok(g)) => {
                completed += 1;
                g.release().await.expect("release");
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => {} // dropped mid-flight
        }
    }
    let left = wait_until_no_keys(&c, HANG_GUARD).await;
    assert!(left.is_empty(), "keys left behind: {left:?}");
    assert!(
        completed < 200,
        "no acquire was ever cut short; the test proves nothing"
    );
    // Every key is free (no contention), so a completed acquire made one SET per node; SETs
    // beyond those came from dropped acquires that had reached the nodes, whose keys the undo
    // then had to remove.
    let sets = command_stats(&c).since(&before).calls("set");
    let from_dropped = sets.saturating_sub(5 * completed);
    assert!(
        from_dropped >= 5 * 10,
        "only {from_dropped} SETs of dropped acquires reached a node ({completed} completed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_guard_releases() {
    let c = cluster(3);
    let locks = long_lease(&c).await;
    let key = locks.redis_key("scoped").expect("key");
    {
        let _g = locks
            .try_acquire("scoped")
            .await
            .expect("ok")
            .expect("free");
        assert!((0..3).filter(|&i| get(&c, i, &key).is_some()).count() >= 2);
    }
    // The release runs in a spawned task; acquire waits for it.
    let g = locks
        .acquire(&patient(), "scoped")
        .await
        .expect("released by drop");
    g.release().await.expect("release");
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

/// A `RedLock` with a 300 ms lease, and its guard of key `k` kept after its validity ran out.
async fn kept_past_its_validity(c: &LocalCluster) -> (RedLock, redquorum::LockGuard) {
    let locks = builder(c)
        .ttl(Duration::from_millis(300))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let stale = locks.try_acquire("k").await.expect("ok").expect("free");
    stale.lost().cancelled().await; // the validity ran out; the guard is kept
    (locks, stale)
}

/// `try_acquire` is one attempt of `acquire`: a local guard kept past its validity does not
/// block it (the key is free in Redis once the lease ran out there), just as `acquire` goes
/// past such a holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_is_not_blocked_by_a_local_guard_kept_past_its_validity() {
    let c = cluster(3);
    let (locks, stale) = kept_past_its_validity(&c).await;
    let key = locks.redis_key("k").expect("key");
    // The nodes expire the key a drift after the validity: wait for that, not for a time.
    eventually("the nodes to expire the key", || {
        (0..3).all(|i| pttl(&c, i, &key) == -2)
    })
    .await;
    let fresh = locks
        .try_acquire("k")
        .await
        .expect("ok")
        .expect("the key is free in Redis; the expired local guard must not block try_acquire");
    assert!(fresh.validity() > Duration::ZERO);
    // Another client is refused while the fresh guard holds it.
    let other = common::locks(&c).await;
    assert!(other.try_acquire("k").await.expect("ok").is_none());
    fresh.release().await.expect("release");
    drop(stale);
}

/// A waiter that went past a local guard kept past its validity, and won in Redis, does not
/// become the local queue's holder: the turn still belongs to the expired guard, so a waiter
/// that arrives next must also go to Redis rather than wait for a turn that only the expired
/// guard's drop would hand on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_after_one_that_went_past_an_expired_local_guard_are_not_stuck() {
    let c = cluster(3);
    let (locks, stale) = kept_past_its_validity(&c).await;
    let first = locks
        .acquire(&ctx(10_000), "k")
        .await
        .expect("past the stale guard");
    let second = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire(&ctx(10_000), "k").await })
    };
    first.release().await.expect("release");
    let second = second
        .await
        .expect("no panic")
        .expect("the key is free in Redis: the second waiter must get it");
    second.release().await.expect("release");
    drop(stale);
}
