//! Waiting without spinning: release notifications wake waiters at once; polling and the
//! holder's lease keep them live when a notification is lost.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use redquorum::testkit::LocalCluster;
use redquorum::{Context, Error, RedLock, Retry, WaitStrategy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A RedLock whose polling safety net is minutes long: each poll is drawn uniformly from
/// [0, HANG_GUARD] (full jitter), so a wake-up within a few seconds comes from a notification
/// (or the holder's lease running out), not a poll, with odds of 60 to 1 or better each time.
/// Its node timeout is a second: these tests time wake-ups, not node requests, and three
/// rounds in a row that a loaded machine stalls past 250 ms would end the wait as NoQuorum.
async fn slow_poller(c: &LocalCluster) -> RedLock {
    builder(c)
        .ttl(HANG_GUARD * 2) // a key it leaves behind shows, it does not expire unseen
        .node_timeout(Duration::from_secs(1))
        .retry(Retry::exponential(HANG_GUARD, HANG_GUARD))
        .build()
        .await
        .expect("build")
}

/// [`slow_poller`] whose safety poll is the hang guard too: neither its retry policy nor its
/// safety poll wakes it within minutes, so a wake-up within seconds comes from a notification
/// or the holder's lease end it read.
async fn never_polls(c: &LocalCluster) -> RedLock {
    builder(c)
        .ttl(HANG_GUARD * 2)
        .node_timeout(Duration::from_secs(1))
        .retry(Retry::exponential(HANG_GUARD, HANG_GUARD))
        .safety_poll(HANG_GUARD)
        .build()
        .await
        .expect("build")
}

/// Releases `g`, then returns how long `task` took to get the lock after that (and releases
/// it too).
async fn woken_after_release(
    g: redquorum::LockGuard,
    task: tokio::task::JoinHandle<Result<redquorum::LockGuard, Error>>,
) -> Duration {
    let released = Instant::now();
    g.release().await.expect("release");
    let got = task.await.expect("no panic").expect("acquired");
    let woken = released.elapsed();
    got.release().await.expect("release");
    woken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_the_waiter_at_once() {
    let _light = common::light().await;
    let c = cluster(5);
    // A lease longer than the test: the waiter can only be woken by the release.
    let holder = long_lease(&c).await;
    let waiter = slow_poller(&c).await;
    let channel = format!("{}:released", holder.redis_key("k").expect("key"));
    for _ in 0..5 {
        let g = holder.try_acquire("k").await.expect("ok").expect("free");
        let task = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.acquire(&patient(), "k").await })
        };
        // Released only once the waiter is subscribed everywhere: the hand-off is then a
        // notification's work.
        assert!(
            until_numsub(&c, &channel, 1).await,
            "waiter never subscribed"
        );
        let released = Instant::now();
        g.release().await.expect("release");
        let got = task.await.expect("no panic").expect("acquired");
        let handoff = released.elapsed();
        // A notification takes milliseconds; 5 s leaves room for a loaded machine and is still
        // far below the holder's lease and (60 to 1, five rounds in a row) the next poll.
        assert!(
            handoff < Duration::from_secs(5),
            "woken by polling, not by the release: {handoff:?}"
        );
        got.release().await.expect("release");
    }
    assert!(
        until_numsub(&c, &channel, 0).await,
        "subscription left behind"
    );
}

/// Runs `ACL SETUSER waiter <rules>` on every node of `c`.
fn set_waiter_user(c: &LocalCluster, rules: &[&str]) {
    for i in 0..c.len() {
        let mut args = vec!["ACL", "SETUSER", "waiter"];
        args.extend_from_slice(rules);
        raw(c, i, &args);
    }
}

/// The subscriptions are taken away for the whole wait (the waiter's user loses its channel
/// rights, so Redis drops them and refuses every resubscription): no notification, and no
/// reconnect to wake the waiter either. The holder's lease and the safety poll are minutes
/// away, so only the retry policy's polls (every 300 ms at most) can find the release. (That
/// dropped subscriptions come back is `an_existing_waiter_is_resubscribed_…` below; refused
/// ones are, by design, not retried.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_covered_by_polling() {
    let _light = common::light().await;
    let c = cluster(3);
    set_waiter_user(&c, &["on", ">pw", "~*", "allchannels", "+@all"]);
    let urls: Vec<String> = (0..3)
        .map(|i| format!("redis://waiter:pw@127.0.0.1:{}", c.port(i).expect("port")))
        .collect();
    let holder = long_lease(&c).await;
    let waiter = builder(&c)
        .nodes(&urls)
        .ttl(HANG_GUARD * 2)
        .retry(Retry::exponential(
            Duration::from_millis(300),
            Duration::from_millis(300),
        ))
        .safety_poll(HANG_GUARD)
        .build()
        .await
        .expect("build");
    let channel = format!("{}:released", holder.redis_key("k").expect("key"));
    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&patient(), "k").await })
    };
    assert!(
        until_numsub(&c, &channel, 1).await,
        "waiter never subscribed"
    );
    // Redis drops the subscription connections of a user that loses its channel rights.
    set_waiter_user(&c, &["resetchannels"]);
    assert!(
        until_numsub(&c, &channel, 0).await,
        "subscriptions survived"
    );
    let before = command_stats(&c);
    let released = Instant::now();
    g.release().await.expect("release"); // publishes to nobody
    let got = task.await.expect("no panic").expect("acquired by polling");
    let found = released.elapsed();
    // Polls every 300 ms at most; 5 s leaves room for a loaded machine and is far below the
    // holder's lease, the safety poll (minutes) and the subscriptions' return (never, here).
    assert!(
        found < Duration::from_secs(5),
        "found {found:?} after the release"
    );
    assert_eq!(
        command_stats(&c).since(&before).calls("subscribe"),
        0,
        "a subscription came back during the wait"
    );
    got.release().await.expect("release");
}

/// A waiter already waiting when its subscription connections drop is resubscribed, woken to
/// re-check (the release may have been lost meanwhile), and then notified of the release on
/// the new subscriptions; its next poll is minutes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_waiter_is_resubscribed_and_woken_after_its_subscriptions_drop() {
    let _light = common::light().await;
    let c = cluster(3);
    let holder = long_lease(&c).await;
    let waiter = slow_poller(&c).await;
    let channel = format!("{}:released", holder.redis_key("k").expect("key"));
    let (g, task) = held_and_awaited(&c, &holder, &waiter, "k").await;
    let dropped = command_stats(&c);
    let dropped_at = Instant::now();
    for i in 0..3 {
        let killed = kill_subscriptions(&c, i);
        assert!(killed >= 1, "node {i}: no subscription connection to kill");
    }
    // Resubscribed on every node (the same waiter, still waiting) ...
    eventually("the waiter resubscribes", || {
        command_stats(&c).since(&dropped).calls("subscribe") >= 3
    })
    .await;
    assert!(
        until_numsub(&c, &channel, 1).await,
        "waiter never resubscribed"
    );
    // ... and woken to re-check (the release may have been lost meanwhile): another attempt
    // at once. Its poll is uniform in [0, HANG_GUARD]: within 10 s (room for a loaded machine)
    // only with odds of 1 in 30.
    eventually("the waiter re-checks", || {
        command_stats(&c).since(&dropped).calls("set") >= 3
    })
    .await;
    let rechecked = dropped_at.elapsed();
    assert!(
        rechecked < Duration::from_secs(10),
        "re-checked {rechecked:?} after the drop: by a poll, not a wake"
    );
    assert!(!task.is_finished(), "acquired a held lock");
    let released = Instant::now();
    g.release().await.expect("release");
    let got = task.await.expect("no panic").expect("acquired");
    let woken = released.elapsed();
    assert!(
        woken < Duration::from_secs(5),
        "woken by polling, not by the new subscription: {woken:?}"
    );
    got.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_is_succeeded_when_its_lease_ends_not_a_poll_later() {
    let _light = common::light().await;
    let c = cluster(3);
    let crashed = builder(&c)
        .ttl(Duration::from_millis(800))
        .build()
        .await
        .expect("build");
    // Neither its retry policy (a poll drawn over [0, HANG_GUARD]) nor its safety poll
    // (HANG_GUARD) can wake it within seconds: only the lease end it read can.
    let waiter = never_polls(&c).await;
    let g = crashed.try_acquire("k").await.expect("ok").expect("free");
    let lease_ends = Instant::now() + Duration::from_millis(800);
    std::mem::forget(g); // the holder dies without releasing
    let got = waiter
        .acquire(&patient(), "k")
        .await
        .expect("acquired after expiry");
    let late = Instant::now().saturating_duration_since(lease_ends);
    // Woken by the lease's end: one attempt later, milliseconds on a quiet machine. 2 s was
    // exceeded on a loaded one (the file ran 5 times slower than usual); 10 s still rules out
    // the safety poll (minutes) and a retry poll but 1 time in 30.
    assert!(
        late < Duration::from_secs(10),
        "acquired {late:?} after the lease ended"
    );
    got.release().await.expect("release");
}

#[tokio::test(flavor = "current_thread")]
async fn a_hundred_local_waiters_acquire_once_each_in_order() {
    let _light = common::light().await;
    let c = cluster(3);
    let locks = long_lease(&c).await;
    let other = long_lease(&c).await;
    let channel = format!("{}:released", locks.redis_key("k").expect("key"));
    let blocker = other.try_acquire("k").await.expect("ok").expect("free");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (locks, order) = (locks.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = locks.acquire(&patient(), "k").await?;
            order.lock().expect("no poison").push(i);
            g.release().await
        }));
        // Current-thread runtime: task i reaches the queue before task i+1 is spawned.
        tokio::task::yield_now().await;
    }
    assert!(
        until_numsub(&c, &channel, 1).await,
        "one subscription per node for all 100"
    );
    blocker.release().await.expect("release");
    for t in tasks {
        t.await.expect("no panic").expect("acquire and release");
    }
    assert_eq!(
        *order.lock().expect("no poison"),
        (0..100).collect::<Vec<_>>()
    );
    assert!(until_numsub(&c, &channel, 0).await, "subscription leaked");
    assert!((0..3).all(|i| channels(&c, i).is_empty()));
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiters_on_a_thousand_keys_use_constant_connections() {
    // Heavy: runs alone in this binary (see common::heavy).
    let _heavy = common::heavy().await;
    let c = cluster(3);
    // Leases far longer than the test (every wait below is bounded by HANG_GUARD), so every
    // waiter really waits until cancelled.
    let locks = builder(&c)
        .ttl(HANG_GUARD * 4)
        .build()
        .await
        .expect("build");
    let other = builder(&c)
        .ttl(HANG_GUARD * 4)
        .build()
        .await
        .expect("build");
    let keys: Vec<String> = (0..1000).map(|k| format!("many-{k}")).collect();
    let mut held = Vec::new();
    for k in &keys {
        held.push(other.try_acquire(k).await.expect("ok").expect("free"));
    }
    let token = CancellationToken::new();
    let ctx = Context::with_timeout(HANG_GUARD * 2).with_cancel(token.clone());
    let mut tasks = Vec::new();
    for w in 0..10_000 {
        let (locks, ctx, key) = (locks.clone(), ctx.clone(), keys[w % 1000].clone());
        tasks.push(tokio::spawn(async move { locks.acquire(&ctx, &key).await }));
    }
    // Every key's head is subscribed: 1000 channels per node.
    eventually("every key's head to subscribe", || {
        (0..3).all(|i| channels(&c, i).len() >= 1000)
    })
    .await;
    // Two connections per node for `locks` (commands, pubsub), one for `other`.
    for i in 0..3 {
        assert_eq!(clients(&c, i), 3, "node {i}");
    }
    token.cancel();
    for t in tasks {
        let res = t.await.expect("no panic");
        assert!(matches!(res, Err(Error::Cancelled { .. })), "{res:?}");
    }
    eventually("every subscription to end after cancellation", || {
        (0..3).all(|i| channels(&c, i).is_empty())
    })
    .await;
    drop(held);
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_while_waiting_unsubscribes_and_leaves_nothing() {
    let _light = common::light().await;
    let c = cluster(3);
    let holder = long_lease(&c).await;
    let waiter = slow_poller(&c).await;
    let channel = format!("{}:released", holder.redis_key("k").expect("key"));
    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let err = waiter.acquire(&ctx(300), "k").await.expect_err("held");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        until_numsub(&c, &channel, 0).await,
        "subscription left after the deadline"
    );
    g.release().await.expect("release");
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_strategy_never_subscribes() {
    let _light = common::light().await;
    let c = cluster(3);
    let holder = locks(&c).await;
    let waiter = builder(&c)
        .wait_strategy(WaitStrategy::Poll)
        .build()
        .await
        .expect("build");
    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let before = command_stats(&c);
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&patient(), "k").await })
    };
    // Several attempts, a SET on each node each (a PubSub waiter subscribes right after its
    // first one).
    eventually("the waiter to poll", || {
        command_stats(&c).since(&before).calls("set") >= 9
    })
    .await;
    assert!((0..3).all(|i| channels(&c, i).is_empty()));
    assert_eq!(command_stats(&c).since(&before).calls("subscribe"), 0);
    g.release().await.expect("release");
    task.await
        .expect("no panic")
        .expect("acquired by polling")
        .release()
        .await
        .expect("release");
}

/// A waiter covered by live subscriptions on every node sends nothing while it waits: no
/// attempt between its re-check after subscribing and the holder's lease end (10 minutes
/// away) or its safety poll (30 s), though its retry policy's backoff is 10 to 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covered_waiter_sends_nothing_while_it_waits() {
    let _light = common::light().await;
    let c = cluster(5);
    let holder = long_lease(&c).await;
    let waiter = builder(&c)
        .retry(Retry::exponential(
            Duration::from_millis(10),
            Duration::from_millis(200),
        ))
        .build()
        .await
        .expect("build");
    let (g, task) = held_and_awaited(&c, &holder, &waiter, "k").await;
    let quiet = command_stats(&c);
    // Two seconds: ten backoff intervals at the policy's ceiling, and two health checks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = command_stats(&c).since(&quiet);
    assert_eq!(
        (used.calls("set"), used.calls("pttl"), used.calls("evalsha")),
        (0, 0, 0),
        "a covered waiter polled: {used:?}"
    );
    // What it may send: a health-check PING per node per second.
    assert!(used.calls("ping") <= 5 * 3, "{used:?}");
    woken_after_release(g, task).await;
}

/// A subscription connection that hangs without closing (a half-open socket, a frozen link)
/// loses the release published on it; the health check finds it within about two seconds,
/// and the reconnect wakes the waiter, whose next poll is minutes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_lost_on_hung_subscriptions_still_wakes_the_waiter() {
    let _light = common::light().await;
    let c = proxied(3);
    let direct: Vec<String> = (0..3).map(|i| c.direct_url(i).expect("node")).collect();
    let holder = builder(&c)
        .nodes(&direct)
        .ttl(HANG_GUARD * 2)
        .build()
        .await
        .expect("build");
    let waiter = slow_poller(&c).await;
    let (g, task) = held_and_awaited(&c, &holder, &waiter, "k").await;
    for i in 0..3 {
        assert!(
            c.proxy(i).expect("proxy").hang_subscribers() >= 1,
            "node {i}: no subscription connection to hang"
        );
    }
    // The release is published to hung connections only.
    let woken = woken_after_release(g, task).await;
    // Health check each second, unanswered after a second, reconnect: about two seconds; the
    // bound leaves room for a loaded machine and is far below the next poll (minutes).
    assert!(
        woken < Duration::from_secs(10),
        "woken by polling, not by the health check: {woken:?}"
    );
}

/// A waiter whose subscriptions are refused (an ACL user without channel rights) cannot rely
/// on notifications: it polls with its retry policy's backoff, and still gets the lock soon
/// after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_subscriptions_are_refused_polls() {
    let _light = common::light().await;
    let c = cluster(3);
    for i in 0..3 {
        raw(
            &c,
            i,
            &[
                "ACL",
                "SETUSER",
                "nochannels",
                "on",
                ">pw",
                "~*",
                "resetchannels",
                "+@all",
            ],
        );
    }
    let urls: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "redis://nochannels:pw@127.0.0.1:{}",
                c.port(i).expect("port")
            )
        })
        .collect();
    let holder = long_lease(&c).await;
    let waiter = builder(&c)
        .nodes(&urls)
        .retry(Retry::exponential(
            Duration::from_millis(10),
            Duration::from_millis(20),
        ))
        .build()
        .await
        .expect("build");
    let g = holder.try_acquire("k").await.expect("ok").expect("free");
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&patient(), "k").await })
    };
    // Polling: an attempt (a SET on each node) every 20 ms at most, so well over 3 x 10
    // SETs in a second even on a loaded machine; a waiter relying on notifications sends none.
    let before = command_stats(&c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polled = command_stats(&c).since(&before).calls("set");
    assert!(
        polled >= 30,
        "the waiter did not poll: {polled} SETs in a second"
    );
    g.release().await.expect("release");
    let got = task.await.expect("no panic").expect("acquired by polling");
    got.release().await.expect("release");
}

/// A subscription connection that dies (here: killed by the server) loses the release
/// published meanwhile; the dead socket is found at once, and the reconnect wakes the waiter,
/// whose next poll is minutes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_lost_on_killed_subscriptions_still_wakes_the_waiter() {
    let _light = common::light().await;
    let c = cluster(3);
    let holder = long_lease(&c).await;
    let waiter = slow_poller(&c).await;
    let (g, task) = held_and_awaited(&c, &holder, &waiter, "k").await;
    for i in 0..3 {
        let killed = kill_subscriptions(&c, i);
        assert!(killed >= 1, "node {i}: no subscription connection to kill");
    }
    // The release is published to nobody.
    let woken = woken_after_release(g, task).await;
    assert!(
        woken < Duration::from_secs(10),
        "woken by polling, not by the dead connection: {woken:?}"
    );
}

/// A key removed by something that does not publish (`DEL` by hand) is found by the safety
/// poll, not minutes later by the retry policy, nor at the end of the holder's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_without_a_word_is_found_by_the_safety_poll() {
    let _light = common::light().await;
    let c = cluster(3);
    let holder = long_lease(&c).await;
    let waiter = builder(&c)
        .ttl(HANG_GUARD * 2)
        .retry(Retry::exponential(HANG_GUARD, HANG_GUARD))
        .safety_poll(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let (g, task) = held_and_awaited(&c, &holder, &waiter, "k").await;
    let key = holder.redis_key("k").expect("key");
    let deleted = Instant::now();
    for i in 0..3 {
        raw(&c, i, &["DEL", &key]);
    }
    let got = task.await.expect("no panic").expect("acquired");
    let found = deleted.elapsed();
    // The safety poll is 1 s; 5 s leaves room for a loaded machine, far below the holder's
    // lease and the next poll (minutes).
    assert!(
        found < Duration::from_secs(5),
        "found {found:?} after the DEL"
    );
    got.release().await.expect("release");
    std::mem::forget(g); // its key is gone; a release would only say NotHeld
}

/// Five proxied nodes, 0, 1 and 2 slower (20 ms each way) than 3 and 4.
fn three_slow_of_five() -> LocalCluster {
    let c = proxied(5);
    for i in 0..3 {
        c.proxy(i)
            .expect("proxy")
            .set_latency(Duration::from_millis(20));
    }
    c
}

/// `key` under another owner's value on nodes 0, 1 and 2 of five: every attempt is refused by
/// a majority and granted by nodes 3 and 4 (a split vote). On [`three_slow_of_five`] the
/// grants come first, so the attempt knows it was a split vote when the refusals decide it
/// (refusals first would decide the round before the grants land; see docs/testing.md).
fn held_by_three_of_five(c: &LocalCluster, key: &str) {
    for i in 0..3 {
        raw(c, i, &["SET", key, "someone-else", "PX", "600000"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_undo_of_an_attempt_that_is_not_retried_is_announced() {
    let _light = common::light().await;
    let c = three_slow_of_five();
    let locks = long_lease(&c).await;
    let key = locks.redis_key("split").expect("key");
    held_by_three_of_five(&c, &key);
    let before = command_stats(&c);
    assert!(locks.try_acquire("split").await.expect("ok").is_none());
    eventually("the partial grant undone on nodes 3 and 4", || {
        (3..5).all(|i| get(&c, i, &key).is_none())
    })
    .await;
    // Announced where it was undone (a waiter may have been refused by the partial grant).
    eventually("the undo's announcements", || {
        command_stats(&c).since(&before).calls("publish") >= 2
    })
    .await;
    assert_eq!(command_stats(&c).since(&before).calls("publish"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_votes_loser_undoes_quietly_and_announces_the_key_when_it_leaves() {
    let _light = common::light().await;
    let c = three_slow_of_five();
    let locks = long_lease(&c).await;
    let key = locks.redis_key("split").expect("key");
    held_by_three_of_five(&c, &key);
    let before = command_stats(&c);
    let err = locks
        .acquire(&ctx(2_000), "split")
        .await
        .expect_err("a majority is held elsewhere");
    assert!(err.is_timeout(), "{err:?}");
    // The leave announcement: one bare PUBLISH per node.
    eventually("the leave announced on every node", || {
        command_stats(&c).since(&before).calls("publish") >= 5
    })
    .await;
    eventually("the last partial grant undone", || {
        (3..5).all(|i| get(&c, i, &key).is_none())
    })
    .await;
    let used = command_stats(&c).since(&before);
    // Every attempt is one SET per node (split votes: the waiter polls).
    let attempts = used.calls("set") / 5;
    assert!(attempts >= 3, "only {attempts} attempts in two seconds");
    // Quiet undos: the leave's 5, plus 2 if the last round was cut off by the deadline (a
    // dropped round's undo announces). Each announced undo would add 2 per attempt.
    let published = used.calls("publish");
    assert!(
        published <= 7,
        "{published} PUBLISHes for {attempts} split votes: the undos were announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_between_the_first_attempt_and_the_subscription_is_not_missed() {
    let _light = common::light().await;
    // The waiter reaches the nodes through proxies that add 150 ms each way; the holder goes
    // straight to them. So the holder's release can land after the waiter's first attempt was
    // refused and before its subscription exists (which takes a new connection and several
    // round trips): nobody hears that release's notification.
    let c = proxied(5);
    for i in 0..5 {
        c.proxy(i)
            .expect("proxy")
            .set_latency(Duration::from_millis(150));
    }
    let direct: Vec<String> = (0..5)
        .map(|i| c.direct_url(i).expect("direct url"))
        .collect();
    let holder_locks = builder(&c)
        .nodes(&direct)
        .ttl(HANG_GUARD * 2)
        .build()
        .await
        .expect("build the holder");
    // Neither the holder's lease nor the safety poll can end the waiter's sleep during the test:
    // only the re-check after subscribing can find the key free.
    let waiter_locks = builder(&c)
        .ttl(HANG_GUARD * 2)
        .node_timeout(Duration::from_secs(1))
        .safety_poll(HANG_GUARD)
        .build()
        .await
        .expect("build the waiter");
    // Warm-up: the waiter's subscription connections exist and are live, so its subscription
    // is confirmed by every node when `subscribe` returns (a connection that comes up later
    // wakes every waiter, which would re-check for it).
    let warm = holder_locks
        .acquire(&patient(), "warm")
        .await
        .expect("holder acquires");
    let warm_waiter = {
        let waiter_locks = waiter_locks.clone();
        tokio::spawn(async move { waiter_locks.acquire(&patient(), "warm").await })
    };
    let warm_channel = format!("{}:released", holder_locks.redis_key("warm").expect("key"));
    assert!(until_numsub(&c, &warm_channel, 1).await, "never subscribed");
    warm.release().await.expect("release");
    warm_waiter
        .await
        .expect("task")
        .expect("warm-up acquire")
        .release()
        .await
        .expect("release");

    let holder = holder_locks
        .acquire(&patient(), "gap")
        .await
        .expect("holder acquires");
    let channel = format!("{}:released", holder_locks.redis_key("gap").expect("key"));
    let before = command_stats(&c);
    let waiter = {
        let waiter_locks = waiter_locks.clone();
        tokio::spawn(async move { waiter_locks.acquire(&ctx(20_000), "gap").await })
    };
    eventually("the waiter's first attempt refused on every node", || {
        command_stats(&c).since(&before).calls("set") >= 5
    })
    .await;
    holder.release().await.expect("release");
    let subscribed: Vec<i64> = (0..5).map(|i| numsub(&c, i, &channel)).collect();
    assert!(
        subscribed.iter().all(|&n| n == 0),
        "the release did not land before the subscription ({subscribed:?} subscribers): the \
         test shows nothing; raise the latency"
    );
    let got = waiter.await.expect("waiter task");
    let guard = got.expect("the waiter finds the key free on its re-check");
    guard.release().await.expect("release");
}

/// Replacing a dead subscription connection resubscribes every channel and wakes every waiter
/// of the process to re-check, not only one: four waiters on four keys, all asleep with
/// nothing announced, each take their key once the connections they rely on die; a fifth,
/// whose key stays held, is resubscribed and hears the release that comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_subscription_connection_wakes_every_waiter() {
    let _light = common::light().await;
    let c = cluster(3);
    let holder = long_lease(&c).await;
    // No poll and no safety poll within the test: only a wake can end the waits.
    let waiter = never_polls(&c).await;
    let keys: Vec<String> = (0..4).map(|k| format!("many-{k}")).collect();
    let mut held = Vec::new();
    let mut tasks = Vec::new();
    for key in &keys {
        held.push(holder.try_acquire(key).await.expect("ok").expect("free"));
        let (waiter, key) = (waiter.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            waiter.acquire(&ctx(60_000), &key).await
        }));
    }
    for key in &keys {
        let channel = format!("{}:released", holder.redis_key(key).expect("key"));
        assert!(
            until_numsub(&c, &channel, 1).await,
            "{key}: never subscribed"
        );
    }
    let still = holder
        .try_acquire("still")
        .await
        .expect("ok")
        .expect("free");
    let still_task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&ctx(60_000), "still").await })
    };
    let still_channel = format!("{}:released", holder.redis_key("still").expect("key"));
    assert!(
        until_numsub(&c, &still_channel, 1).await,
        "never subscribed"
    );
    // The keys go without a word (nothing publishes): the waiters sleep on.
    for key in &keys {
        let redis_key = holder.redis_key(key).expect("key");
        for i in 0..3 {
            raw(&c, i, &["DEL", &redis_key]);
        }
    }
    for i in 0..3 {
        let killed = kill_subscriptions(&c, i);
        assert!(killed >= 1, "node {i}: no subscription connection to kill");
    }
    for (key, task) in keys.iter().zip(tasks) {
        let got = task.await.expect("no panic");
        let guard = got.unwrap_or_else(|e| panic!("{key}: not woken by the reconnect: {e}"));
        guard.release().await.expect("release");
    }
    drop(held);
    // A fifth waiter, whose key stays held through the reconnect, is resubscribed on every
    // node and hears the release that follows.
    assert!(
        until_numsub(&c, &still_channel, 1).await,
        "the still-held key's channel was not resubscribed"
    );
    still.release().await.expect("release");
    let got = still_task.await.expect("no panic");
    got.unwrap_or_else(|e| panic!("not woken by the release after resubscribing: {e}"))
        .release()
        .await
        .expect("release");
}

/// The waiter's subscription connections, made live by one wait on `key` that `holder` ends.
async fn warm_subscriptions(c: &LocalCluster, holder: &RedLock, waiter: &RedLock, key: &str) {
    let held = holder.acquire(&patient(), key).await.expect("acquire");
    let task = {
        let (waiter, key) = (waiter.clone(), key.to_owned());
        tokio::spawn(async move { waiter.acquire(&patient(), &key).await })
    };
    let channel = format!("{}:released", holder.redis_key(key).expect("key"));
    assert!(until_numsub(c, &channel, 1).await, "never subscribed");
    held.release().await.expect("release");
    task.await
        .expect("task")
        .expect("warm-up acquire")
        .release()
        .await
        .expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_right_after_a_notification_skips_the_pttl_hint() {
    let _light = common::light().await;
    let c = cluster(5);
    let holder = long_lease(&c).await;
    let waiter = never_polls(&c).await;
    warm_subscriptions(&c, &holder, &waiter, "warm").await;
    let held = holder.acquire(&patient(), "hint").await.expect("acquire");
    let before = command_stats(&c);
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&patient(), "hint").await })
    };
    // Attempt 1 has no hint; attempt 2 (the re-check after subscribing) reads the PTTL.
    eventually("the re-check's PTTL hint on every node", || {
        command_stats(&c).since(&before).calls("pttl") >= 5
    })
    .await;
    held.release().await.expect("release");
    let got = task.await.expect("task").expect("woken by the release");
    // Every node processed attempt 3's SET (granted or not: on a loaded machine the wake-up
    // from one node's release can send attempt 3 to a node whose release has not landed yet,
    // which refuses it, so waiting for the key on all five nodes could wait for ever).
    eventually("every node to have answered attempt 3", || {
        command_stats(&c).since(&before).calls("set") >= 15
    })
    .await;
    let used = command_stats(&c).since(&before);
    // Attempt 3, right after the notification, sent no PTTL.
    assert_eq!(used.calls("set"), 15, "three attempts of one SET per node");
    assert_eq!(used.calls("pttl"), 5, "only the re-check read the PTTL");
    got.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_uses_a_fresh_value() {
    let _light = common::light().await;
    // Split votes: each attempt's value stays on nodes 3 and 4 until the slow refusals come
    // back and it is undone (tens of ms), long enough to be read there.
    let c = three_slow_of_five();
    let locks = builder(&c)
        .ttl(HANG_GUARD * 2)
        .owner("fresh")
        .build()
        .await
        .expect("build");
    let key = locks.redis_key("fresh").expect("key");
    held_by_three_of_five(&c, &key);
    // Attempts go on until three values were seen (a count, not a time: on a loaded machine
    // a value can come and go between two looks); only the hang guard bounds the search.
    let task = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire(&patient(), "fresh").await })
    };
    let mut seen = std::collections::HashSet::new();
    eventually("three attempts' values seen on node 3", || {
        if let Some(v) = get(&c, 3, &key) {
            assert!(v.ends_with(":fresh"), "value {v:?} lacks the owner label");
            seen.insert(v);
        }
        seen.len() >= 3 || task.is_finished()
    })
    .await;
    assert!(seen.len() >= 3, "{seen:?}");
    task.abort();
}
