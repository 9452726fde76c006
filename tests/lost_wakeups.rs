//! Schedules in which a waiter that relies on notifications (covered) could sleep while the
//! lock is free and nothing announces it, past what the holder's lease end justifies (found by
//! a review of the waiting design; each test failed on the code as reviewed): a set's release,
//! a bare announcement, a winner with a shorter lease, an unreachable round.
mod common;

use std::time::Duration;

use common::*;
use redquorum::testkit::LocalCluster;
use redquorum::{Context, RedLock, Retry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A covered waiter that practically never polls by its retry policy (full jitter over
/// [0, HANG_GUARD]) and whose safety poll is the default (30 s): a wake-up within a few
/// seconds comes from a notification or from the lease end it read.
async fn covered_waiter(c: &LocalCluster, ttl: Duration) -> RedLock {
    builder(c)
        .ttl(ttl)
        .retry(Retry::exponential(HANG_GUARD, HANG_GUARD))
        .build()
        .await
        .expect("build")
}

/// A set holder (`acquire_many`) takes the same Redis key as the single-key lock of that
/// name, so it refuses a single-key waiter; but a set's release never PUBLISHes
/// (`release_op`: "a set's release is never announced (sets poll)"). The single-key waiter
/// is covered (subscribed on a majority, refused everywhere, no split), so it sleeps until
/// the set's lease end or the safety poll (30 s), though the lock was released at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sets_release_wakes_a_single_key_waiter_of_one_of_its_keys() {
    let c = cluster(3);
    let sets = long_lease(&c).await;
    let waiter = covered_waiter(&c, HANG_GUARD * 2).await;
    let set = sets
        .try_acquire_many(&["k", "other"])
        .await
        .expect("ok")
        .expect("free");
    let before = command_stats(&c);
    let task = awaited(
        &c,
        &waiter,
        "k",
        Context::with_timeout(Duration::from_secs(10)),
    )
    .await;
    until_rechecked(&c, &before).await;
    let released = Instant::now();
    set.release().await.expect("release");
    let got = task.await.expect("no panic");
    let took = released.elapsed();
    let got = got.unwrap_or_else(|e| {
        panic!("the set was released, yet the single-key waiter slept on for {took:?}: {e}")
    });
    assert!(
        took < Duration::from_secs(5),
        "woken {took:?} after the set's release"
    );
    got.release().await.expect("release");
}

/// A bare announcement (`LeaveAnnounced`: a split vote's loser that leaves without the lock)
/// wakes a covered waiter while the holder still holds every node. The attempt right after a
/// release notification skips the PTTL hint and assumes a fresh lease of one TTL
/// (`Waiter::wants_hint`, `next_check`), but nobody won anything fresh here: the holder's
/// lease ends much sooner. If the holder has died, the waiter sleeps up to one TTL past its
/// lease end, with nothing to announce the free lock (same TTL on every client).
///
/// Schedule (3 nodes, every client ttl 12 s):
/// 1. a stale value on nodes 0 and 1 only (a previous holder's partial release);
/// 2. W acquires: granted on node 2 only, a split; it undoes quietly, arms `LeaveAnnounced`
///    and waits;
/// 3. the stale value goes (no PUBLISH); H acquires all three nodes and dies (lease ends at
///    t_H + 12 s);
/// 4. Z waits, covered, with the PTTL hint: sleeps until t_H + 12 s;
/// 5. W is cancelled at t_H + 9 s: it leaves and PUBLISHes on every node (nothing deleted);
/// 6. Z wakes, re-attempts without a hint, is refused by H, assumes 12 s: sleeps until
///    t_H + 21 s, 9 s after H's lease ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_announcement_does_not_make_a_waiter_oversleep_a_dead_holders_lease() {
    let c = cluster(3);
    let ttl = Duration::from_secs(12);
    let splitter = covered_waiter(&c, ttl).await;
    let waiter = covered_waiter(&c, ttl).await;
    let key = waiter.redis_key("k").expect("key");

    // 1. A stale value on a minority... of two of three nodes.
    for i in 0..2 {
        raw(&c, i, &["SET", &key, "stale", "PX", "60000"]);
    }
    // 2. W splits: node 2 grants, 0 and 1 refuse. It waits until it is cancelled (step 5).
    let leave = CancellationToken::new();
    let before = command_stats(&c);
    let w = awaited(
        &c,
        &splitter,
        "k",
        Context::with_timeout(HANG_GUARD).with_cancel(leave.clone()),
    )
    .await;
    until_rechecked(&c, &before).await;
    eventually("W's quiet undo lands on node 2", || {
        get(&c, 2, &key).is_none()
    })
    .await;
    // 3. The stale value goes without a word and H takes every node, then dies: H's value
    //    replaces it in one step per node, node 2 first (W, a split vote's loser, re-checks
    //    within a second: between a DEL and H's own acquire it could take the lock itself).
    let lease_ms = ttl.as_millis().to_string();
    for i in [2, 0, 1] {
        raw(&c, i, &["SET", &key, "H:dead-holder", "PX", &lease_ms]);
    }
    let lease_ends = Instant::now() + ttl;
    // 4. Z waits, covered, until H's lease end: subscribed beside W, and re-checked with the
    //    PTTL hint.
    let before = command_stats(&c);
    let z = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&patient(), "k").await })
    };
    assert!(
        until_numsub(&c, &format!("{key}:released"), 2).await,
        "Z never subscribed"
    );
    until_rechecked(&c, &before).await;
    // 5. W leaves (announcing the key on every node) 3 s before H's lease ends: a waiter that
    //    then assumed a fresh lease of its own TTL would sleep until 9 s after that end.
    let leave_at = lease_ends - Duration::from_secs(3);
    assert!(
        Instant::now() < leave_at,
        "set-up took more than {:?} of H's lease: the schedule cannot be run",
        ttl - Duration::from_secs(3)
    );
    tokio::time::sleep_until(leave_at).await;
    leave.cancel();
    let left = w.await.expect("no panic");
    assert!(
        matches!(left, Err(redquorum::Error::Cancelled { .. })),
        "W cannot win while H holds every node: {left:?}"
    );
    // 6. Z must still be woken at H's lease end.
    let got = z.await.expect("no panic");
    let now = Instant::now();
    let got = got.unwrap_or_else(|e| {
        panic!(
            "H's lease ended {:?} ago and the lock is free, yet Z still sleeps: {e}",
            now.saturating_duration_since(lease_ends)
        )
    });
    let late = Instant::now().saturating_duration_since(lease_ends);
    // The defect oversleeps 9 s (step 6); 6 s leaves a loaded machine room and still sees it.
    assert!(
        late < Duration::from_secs(6),
        "acquired {late:?} after H's lease ended"
    );
    got.release().await.expect("release");
}

/// Right after a release notification the waiter skips the PTTL hint and assumes the
/// contender that beat it holds a lease of *its own* TTL. Clients of one lock need not share
/// a TTL (another service, the CLI's `--ttl`): a contender with a 1 s lease that wins the
/// release and dies leaves the waiter (TTL 20 s) asleep for 20 s, ~19 s after the lease
/// ended, with nothing to announce it. (Emulated atomically per node: the release deletes and
/// publishes, the 1 s contender's SET lands before the waiter's re-attempt.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_woken_by_a_release_does_not_assume_its_own_ttl_for_the_winner() {
    let c = cluster(3);
    let holder = long_lease(&c).await;
    let waiter = covered_waiter(&c, Duration::from_secs(20)).await;
    let key = holder.redis_key("k").expect("key");
    let channel = format!("{key}:released");
    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let before = command_stats(&c);
    let task = awaited(
        &c,
        &waiter,
        "k",
        Context::with_timeout(Duration::from_secs(15)),
    )
    .await;
    until_rechecked(&c, &before).await;
    // Per node, in one step: the holder's release (delete + publish) and a 1 s contender's
    // grant, which then dies.
    let script = "redis.call('DEL', KEYS[1]); \
                  redis.call('SET', KEYS[1], 'short-lived:other', 'PX', 1000); \
                  return redis.call('PUBLISH', ARGV[1], '')";
    for i in 0..3 {
        raw(&c, i, &["EVAL", script, "1", &key, &channel]);
    }
    let lease_ends = Instant::now() + Duration::from_secs(1);
    let got = task.await.expect("no panic");
    let got = got.unwrap_or_else(|e| {
        panic!(
            "the 1 s lease ended {:?} ago, yet the waiter still sleeps: {e}",
            Instant::now().saturating_duration_since(lease_ends)
        )
    });
    let late = Instant::now().saturating_duration_since(lease_ends);
    // The defect oversleeps about 19 s (the waiter's own 20 s TTL); 10 s leaves a loaded
    // machine room and still sees it.
    assert!(
        late < Duration::from_secs(10),
        "acquired {late:?} after the lease ended"
    );
    got.release().await.expect("release");
    std::mem::forget(g);
}

/// An attempt that a majority did not answer (`Attempt::Unreachable`) reaches the waiter as
/// `Busy::default()`: `failed: 0`, no split, no hint. With its subscriptions still live
/// (they are separate connections, and PubSub commands are not refused by an OOM node), the
/// waiter counts as covered and sleeps one assumed TTL (min the safety poll) instead of
/// polling with the backoff, as the docs promise for "a failed node in the last round". Here
/// the nodes refuse writes (maxmemory reached) for a moment while the key is released; the
/// lock is free again a moment later and nothing will announce it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_last_round_was_unreachable_polls() {
    let c = cluster(3);
    let holder = long_lease(&c).await;
    let waiter = builder(&c)
        .ttl(Duration::from_secs(20))
        .retry(Retry::exponential(
            Duration::from_millis(200),
            Duration::from_millis(200),
        ))
        .build()
        .await
        .expect("build");
    let key = holder.redis_key("k").expect("key");
    let channel = format!("{key}:released");
    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let before = command_stats(&c);
    let task = awaited(
        &c,
        &waiter,
        "k",
        Context::with_timeout(Duration::from_secs(8)),
    )
    .await;
    until_rechecked(&c, &before).await;
    // The nodes refuse writes; the holder's release lands (DEL and PUBLISH still run).
    for i in 0..3 {
        raw(&c, i, &["CONFIG", "SET", "maxmemory", "1"]);
    }
    for i in 0..3 {
        raw(&c, i, &["DEL", &key]);
    }
    // One message wakes the waiter once (a message per node would wake it per node).
    raw(&c, 0, &["PUBLISH", &channel, ""]);
    let oom = |i: usize| info(&c, i, "errorstats").contains("errorstat_OOM");
    eventually("the waiter's round is refused for memory", || {
        (0..3).all(oom)
    })
    .await;
    // A moment later the nodes accept writes again: the lock is free.
    for i in 0..3 {
        raw(&c, i, &["CONFIG", "SET", "maxmemory", "0"]);
    }
    let free = Instant::now();
    let got = task.await.expect("no panic");
    let got = got.unwrap_or_else(|e| {
        panic!(
            "the lock has been free for {:?} and the waiter did not retry: {e}",
            free.elapsed()
        )
    });
    assert!(
        free.elapsed() < Duration::from_secs(3),
        "acquired {:?} after",
        free.elapsed()
    );
    got.release().await.expect("release");
    std::mem::forget(g);
}
