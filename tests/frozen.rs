//! Releases and undos under a frozen (SIGSTOPped) master, and the smaller defects found with
//! them: a PTTL hint whose error discarded a granted SET, an abandoned request reported as a
//! runtime shut down, a release not announced to a local waiter polling past an expired holder.
mod common;

use std::time::Duration;

use common::*;
use redquorum::testkit::LocalCluster;
use redquorum::{Error, NodeCause, RedLock, Retry};
use tokio::time::Instant;

/// Hang guard for conditions polled below: far beyond what any of them takes on a busy machine.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Polls `cond` every 5 ms until it holds or the hang guard passes; returns whether it held.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A guard on every node of `c` (stragglers included), so each node holds the key.
async fn held_everywhere(locks: &RedLock, c: &LocalCluster, key: &str) -> redquorum::LockGuard {
    let g = locks.try_acquire(key).await.expect("ok").expect("free");
    let n = c.len();
    assert!(
        eventually(|| g.granted_nodes() == n).await,
        "every node grants"
    );
    g
}

/// SIGSTOP a node, release (a majority answers at once), SIGKILL and restart the node with its
/// AOF: the release it never processed must be retried there, from what the node finally
/// reported (a timeout after the decision), not from the tally at the decision (no failure
/// yet), or our key sits on it until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_a_frozen_node_missed_is_retried_after_its_restart() {
    let c = LocalCluster::builder()
        .nodes(3)
        .appendonly(true)
        .start()
        .expect("cluster with AOF");
    let locks = builder(&c)
        // Far beyond the hang guard: only a retry removes the key in time.
        .ttl(Duration::from_secs(300))
        .build()
        .await
        .expect("build");
    let key = locks.redis_key("k").expect("key");
    let g = held_everywhere(&locks, &c, "k").await;
    let value = g.value().to_owned();
    c.pause(2).expect("pause");
    g.release().await.expect("released on the two live nodes");
    c.restart(2).expect("SIGKILL and restart with AOF");
    assert_eq!(
        get(&c, 2, &key).as_deref(),
        Some(value.as_str()),
        "the AOF kept our key: the release never reached node 2"
    );
    assert!(
        eventually(|| get(&c, 2, &key).is_none()).await,
        "our key stayed on the restarted node: the release was never retried there"
    );
}

/// A refused attempt (the key held elsewhere, no node granted) is undone only where a node
/// granted or did not answer: never on the nodes that refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_attempt_is_undone_only_on_the_node_that_did_not_answer() {
    let c = cluster(3);
    let holder = locks(&c).await;
    let _held = held_everywhere(&holder, &c, "k").await;
    // A node timeout that nodes 0 and 1 meet even on a loaded machine (an answer later than it
    // is a silence, which rightly calls for an undo or a retry there too).
    let node_timeout = Duration::from_secs(1);
    let contender = builder(&c)
        .node_timeout(node_timeout)
        .build()
        .await
        .expect("build");
    // Load the scripts now (a release runs one), so the counts below are the undo's alone;
    // once the warm-up key is gone from every node, its release has run everywhere.
    let warm = contender
        .try_acquire("warm")
        .await
        .expect("ok")
        .expect("free");
    warm.release().await.expect("release");
    let key = holder.redis_key("k").expect("key");
    assert!(eventually(|| all_keys(&c).iter().all(|(_, k)| *k == key)).await);
    let before: Vec<u64> = (0..3).map(|i| calls(&c, i, "evalsha")).collect();
    c.pause(2).expect("pause");
    assert!(
        contender.try_acquire("k").await.expect("ok").is_none(),
        "held elsewhere"
    );
    // The round was decided without node 2; its answer is still awaited, and an answer
    // (a refusal) would need no undo. Only once its request has timed out (no signal of that
    // leaves the client: wait well past the node timeout) does its silence call for an undo,
    // queued behind the acquire, which runs on resume.
    tokio::time::sleep(node_timeout * 2).await;
    c.resume(2).expect("resume");
    assert!(
        eventually(|| calls(&c, 2, "evalsha") > before[2]).await,
        "node 2 never got the undo its silence calls for"
    );
    let refused: Vec<u64> = (0..2)
        .map(|i| calls(&c, i, "evalsha") - before[i])
        .collect();
    assert_eq!(
        refused,
        [0, 0],
        "undo (or its retries) sent to nodes that refused"
    );
}

/// Refused attempts with a frozen node must not fill the in-flight semaphore with undos and
/// retries waiting on that node: the next round, on a free key, goes out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undos_for_a_frozen_node_do_not_hold_the_in_flight_permits() {
    let c = cluster(3);
    let holder = builder(&c)
        .ttl(Duration::from_secs(120))
        .build()
        .await
        .expect("build");
    let _held = held_everywhere(&holder, &c, "k").await;
    let contender = builder(&c).max_in_flight(4).build().await.expect("build");
    c.pause(2).expect("pause");
    let started = Instant::now();
    for _ in 0..20 {
        assert!(contender.try_acquire("k").await.expect("ok").is_none());
    }
    let g = contender
        .try_acquire("free")
        .await
        .expect("two nodes answer")
        .expect("free");
    let took = started.elapsed();
    c.resume(2).expect("resume");
    g.release().await.expect("release");
    // Two live nodes answer each round in milliseconds; before, rounds waited seconds for
    // permits held by undos and retries to node 2 (7 s). Generous for a loaded machine.
    assert!(
        took < Duration::from_secs(2),
        "21 rounds the live nodes answered took {took:?}: they waited for in-flight permits"
    );
}

/// A user whose ACL denies PTTL: the hint pipelined after a waiter's SET fails, and that must
/// not discard a granted SET (it made every attempt from the second on fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pttl_hint_does_not_discard_a_granted_set() {
    let c = cluster(3);
    for i in 0..3 {
        raw(
            &c,
            i,
            &[
                "ACL", "SETUSER", "nopttl", "on", ">pw", "~*", "&*", "+@all", "-pttl",
            ],
        );
    }
    let urls: Vec<String> = (0..3)
        .map(|i| format!("redis://nopttl:pw@127.0.0.1:{}", c.port(i).expect("port")))
        .collect();
    let holder = builder(&c)
        .ttl(Duration::from_millis(500))
        .build()
        .await
        .expect("build");
    let _held = holder.try_acquire("k").await.expect("ok").expect("free");
    let waiter = RedLock::builder()
        .nodes(urls)
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_millis(250))
        .retry(Retry::exponential(
            Duration::from_millis(2),
            Duration::from_millis(20),
        ))
        .build()
        .await
        .expect("build as nopttl");
    // Refused first (no hint), then with the hint until the holder's 500 ms lease runs out.
    let g = waiter
        .acquire(&ctx(20_000), "k")
        .await
        .expect("acquired once the holder's lease ran out");
    assert!(
        (0..3).all(|i| calls(&c, i, "pttl") == 0),
        "PTTL was denied, never run"
    );
    g.release().await.expect("release");
}

/// A request whose deadline passes before its node's sender task gets to it is not sent (an
/// acquire) and must be reported as timed out, not as "the runtime has shut down". The
/// runtime's only thread is stalled (a blocking task) right after the requests are queued.
#[tokio::test]
async fn an_abandoned_request_is_a_timeout_not_a_dead_runtime() {
    let c = cluster(3);
    let locks = locks(&c).await; // 250 ms node timeout
                                 // Runs after this task has queued its requests and before the nodes' sender tasks.
    let stall = tokio::spawn(async { std::thread::sleep(Duration::from_millis(750)) });
    let err = locks
        .try_acquire("k")
        .await
        .expect_err("no request went out in time");
    stall.await.expect("stall");
    match &err {
        Error::NoQuorum { causes, .. } => assert!(
            !causes.is_empty() && causes.iter().all(|f| f.cause == NodeCause::Timeout),
            "{err}"
        ),
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    // Nothing was sent, nothing left.
    assert!(all_keys(&c).is_empty());
}

/// A waiter that bypassed an expired local holder waits in Redis, not in the local queue: a
/// release of the key by another local ticket must be announced (PUBLISH) for it to wake, even
/// though the key has another local ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_announced_while_a_bypassed_local_waiter_waits() {
    let c = cluster(3);
    let locks = builder(&c)
        .ttl(Duration::from_secs(30))
        // A large drift allowance: the holder's validity ends long before its key expires.
        .drift_factor(0.45)
        // The waiter relies on the announcement: its backoff is long.
        .retry(Retry::exponential(
            Duration::from_secs(20),
            Duration::from_secs(20),
        ))
        .build()
        .await
        .expect("build");
    let mut holder = locks.acquire(&ctx(5_000), "k").await.expect("acquire");
    // Validity about 2.2 s, the key in Redis 4 s.
    holder
        .extend(Duration::from_secs(4))
        .await
        .expect("shorten the lease");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire(&ctx(60_000), "k").await })
    };
    // Once the holder's validity is gone, the waiter goes past it to Redis, is refused (the
    // key is still there) and subscribes: the only subscriber of this process.
    let channel = format!("{}:released", locks.redis_key("k").expect("key"));
    assert!(
        eventually(|| (0..3).all(|i| numsub(&c, i, &channel) == 1)).await,
        "the waiter never subscribed"
    );
    assert!(holder.validity().is_zero());
    let key = locks.redis_key("k").expect("key");
    let left = pttl(&c, 0, &key);
    assert!(left > 0, "the key is still in Redis ({left} ms)");
    // Without a wake-up the waiter cannot have the key before it expires there.
    let expires = Instant::now() + Duration::from_millis(left as u64);
    let published: u64 = (0..3).map(|i| calls(&c, i, "publish")).sum();
    let released = holder.release().await;
    assert!(released.is_ok(), "our value was still there: {released:?}");
    assert!(
        (0..3).map(|i| calls(&c, i, "publish")).sum::<u64>() > published,
        "the release was not announced though a local waiter waits in Redis"
    );
    let g = waiter
        .await
        .expect("task")
        .expect("the bypassed waiter acquires");
    assert!(
        Instant::now() < expires,
        "the waiter was not woken: it got the key only once the old one expired"
    );
    g.release().await.expect("release");
}

/// A lost round is decided before every node has answered; a node whose answer comes after
/// the decision gets an undo only if it granted or failed. A slow node that refuses holds
/// nothing of ours and gets nothing (before, every straggler got a blind undo: most losers of
/// a herd sent two useless requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straggler_that_refuses_gets_no_undo() {
    let c = proxied(3);
    let direct: Vec<String> = (0..3).map(|i| c.direct_url(i).expect("node")).collect();
    let holder = builder(&c).nodes(&direct).build().await.expect("build");
    let _held = held_everywhere(&holder, &c, "k").await;
    let contender = builder(&c)
        .node_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let warm = contender
        .try_acquire("warm")
        .await
        .expect("ok")
        .expect("free");
    warm.release().await.expect("release");
    let key = holder.redis_key("k").expect("key");
    assert!(eventually(|| all_keys(&c).iter().all(|(_, k)| *k == key)).await);
    let before = (calls(&c, 2, "set"), calls(&c, 2, "evalsha"));
    c.proxy(2)
        .expect("proxy")
        .set_latency(Duration::from_millis(200));
    assert!(
        contender.try_acquire("k").await.expect("ok").is_none(),
        "held elsewhere"
    );
    assert!(
        eventually(|| calls(&c, 2, "set") > before.0).await,
        "node 2 never got the acquire"
    );
    // Its refusal takes 200 ms back; a blind undo would have been sent at the decision and
    // arrive 200 ms after it. A second covers both with room to spare.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls(&c, 2, "evalsha"),
        before.1,
        "the slow node refused, yet it got an undo"
    );
}
