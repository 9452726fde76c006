//! Fencing tokens: strictly increasing per key across a quorum, through node crashes.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use redquorum::testkit::LocalCluster;
use redquorum::{Error, RedLock, Retry};
use tokio::time::Instant;

/// AOF with fsync always, on tmpfs when there is one (fsync is then cheap; the data still
/// survives a node's restart, which is what the tests need).
fn aof_cluster(n: usize) -> LocalCluster {
    let mut b = LocalCluster::builder().nodes(n).appendonly(true);
    if std::path::Path::new("/dev/shm").is_dir() {
        b = b.base_dir("/dev/shm");
    }
    b.start()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

async fn fenced(c: &LocalCluster) -> RedLock {
    builder(c).fencing(true).build().await.expect("build")
}

/// Leaves exactly the nodes of `up` running (AOF keeps the counters of the restarted ones), and
/// returns once `locks` reaches every one of them (a probe key's grant counts them).
async fn only_up(c: &LocalCluster, locks: &RedLock, up: &[usize]) {
    if up.iter().any(|&i| !c.is_running(i)) {
        // Requests to a dead node stay queued until their node timeout and are delivered if
        // it comes back before: a restarted node would receive INCRs of earlier rounds their
        // callers gave up on. The history is about nodes that missed those rounds.
        tokio::time::sleep(locks.node_timeout() * 2).await;
    }
    for i in 0..c.len() {
        match (up.contains(&i), c.is_running(i)) {
            (true, false) => c.restart(i).expect("restart"),
            (false, true) => c.kill(i).expect("kill"),
            _ => {}
        }
    }
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        assert!(
            Instant::now() < deadline,
            "nodes {up:?} never all reachable"
        );
        if let Ok(Some(g)) = locks.try_acquire("probe").await {
            let probe_until = Instant::now() + Duration::from_millis(300);
            while g.granted_nodes() < up.len() && Instant::now() < probe_until {
                tokio::task::yield_now().await;
            }
            let all = g.granted_nodes() == up.len();
            g.release().await.expect("release probe");
            if all {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same history for both schemes: majorities rotating over {0,1,x} three times, then
/// {0,1,2}, then {2,3,4}. Nodes 0 and 1 took every grant, nodes 2-4 a third each, so the last
/// majority, which shares only node 2 with the one before, sees counters far below the previous
/// token: its plain maximum goes back (Kleppmann's "11 from {1,2,3}, then 7 from {3,4,5}").
/// The confirming round (raise lagging nodes to t while our value holds the key) keeps the
/// tokens strictly increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_max_of_incr_fails_where_the_confirmed_token_does_not() {
    let c = aof_cluster(5);
    let real = fenced(&c).await;
    let naive = builder(&c)
        .fencing_unconfirmed()
        .build()
        .await
        .expect("build");
    let (mut real_tokens, mut naive_tokens) = (Vec::new(), Vec::new());
    let rotation = [[0, 1, 2], [0, 1, 3], [0, 1, 4]];
    let history = rotation
        .iter()
        .cycle()
        .take(9)
        .chain(&[[0, 1, 2], [2, 3, 4]]);
    for up in history {
        only_up(&c, &real, up).await;
        only_up(&c, &naive, up).await;
        // Each scheme on its own key: per-key counters, the same history of majorities.
        for (locks, key, tokens) in [
            (&real, "real", &mut real_tokens),
            (&naive, "naive", &mut naive_tokens),
        ] {
            let g = locks.acquire(&patient(), key).await.expect("acquire");
            tokens.push(g.fencing_token().expect("fencing on"));
            g.release().await.expect("release");
        }
    }
    assert!(
        real_tokens.windows(2).all(|w| w[0] < w[1]),
        "real tokens {real_tokens:?}"
    );
    let (before, last) = (naive_tokens[9], naive_tokens[10]);
    assert!(
        last < before,
        "the naive scheme should repeat or go back on this history: {naive_tokens:?}"
    );
}

/// 2 000 successive acquisitions of one key by three RedLocks while a nemesis kills and
/// restarts nodes (AOF, fsync always), with contention producing partial grants: the tokens,
/// recorded inside the critical section, strictly increase in hold order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_strictly_increase_through_crashes_and_contention() {
    let c = Arc::new(aof_cluster(5));
    let tokens = Arc::new(Mutex::new(Vec::with_capacity(2_000)));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let locks = builder(&c)
            .fencing(true)
            // Keys on a crashed node survive its restart (AOF): a short lease bounds the stall.
            .ttl(Duration::from_secs(1))
            .node_timeout(Duration::from_millis(100))
            .retry(Retry::exponential(
                Duration::from_millis(1),
                Duration::from_millis(10),
            ))
            .build()
            .await
            .expect("build");
        let tokens = tokens.clone();
        clients.push(tokio::spawn(async move {
            loop {
                let g = match locks.acquire(&patient(), "k").await {
                    Ok(g) => g,
                    Err(Error::NoQuorum { .. }) => continue, // mid-restart
                    Err(e) => panic!("{e}"),
                };
                let token = g.fencing_token().expect("fencing on");
                {
                    let mut t = tokens.lock().expect("no poison");
                    if t.len() >= 2_000 {
                        return;
                    }
                    t.push(token);
                }
                let _ = g.release().await;
            }
        }));
    }
    let nemesis = {
        let (c, tokens) = (c.clone(), tokens.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut faults = 0;
            // Crash a random node, let the clients run on 4 of 5, restart it (AOF replays),
            // let them run on 5; now and then two at once (still a minority).
            // Bounded (a hang guard), so a client that panicked fails the test instead of
            // hanging it.
            let give_up = Instant::now() + HANG_GUARD;
            while tokens.lock().expect("no poison").len() < 2_000 && Instant::now() < give_up {
                let a = rng.usize(0..5);
                let b = (a + 1 + rng.usize(0..4)) % 5;
                let victims: &[usize] = if faults % 4 == 3 { &[a, b] } else { &[a] };
                for &i in victims {
                    c.kill(i).expect("kill");
                    faults += 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                for &i in victims {
                    c.restart(i).expect("restart");
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            faults
        })
    };
    for t in clients {
        t.await.expect("client panicked");
    }
    let faults = nemesis.await.expect("nemesis panicked");
    let tokens = tokens.lock().expect("no poison");
    assert_eq!(tokens.len(), 2_000);
    assert!(faults > 0, "no node was ever killed");
    for w in tokens.windows(2) {
        assert!(w[0] < w[1], "token went from {} to {}", w[0], w[1]);
    }
}

/// Fencing counters live apart from lock keys: a lock named like a counter is just a lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_never_collide_with_lock_keys() {
    let c = cluster(3);
    // A lease longer than the wait below: a lock key gone was released, never expired.
    let locks = builder(&c)
        .fencing(true)
        .ttl(HANG_GUARD * 2)
        .build()
        .await
        .expect("build");
    for key in ["job", "job:fence", "fence:job"] {
        let g = locks.try_acquire(key).await.expect("ok").expect("free");
        assert_eq!(g.fencing_token(), Some(1), "{key}");
        g.release().await.expect("release");
    }
    // release() returns once a majority answered: wait for the last node's delete too. Only
    // the counters stay; a lock key that stays is a bug (the hang guard then fails the test).
    eventually("every lock key deleted, the counters left", || {
        all_keys(&c)
            .iter()
            .all(|(_, k)| k.starts_with("redquorum::fence:default:"))
    })
    .await;
    assert_eq!(
        all_keys(&c).len(),
        9,
        "three counters on each of three nodes"
    );
}

/// Scripts the nodes ran since `before` (a fenced acquire and the fence round are scripts).
fn scripts_since(c: &LocalCluster, before: &redquorum::testkit::CommandStats) -> u64 {
    let used = command_stats(c).since(before);
    used.calls("evalsha") + used.calls("eval")
}

/// A fenced acquire of `key` whose every node has answered (stragglers included), with the
/// scripts it cost.
async fn fenced_acquire_cost(
    c: &LocalCluster,
    locks: &RedLock,
    key: &str,
) -> (redquorum::LockGuard, u64) {
    let before = command_stats(c);
    let guard = locks.acquire(&patient(), key).await.expect("acquire");
    let redis_key = locks.redis_key(key).expect("key");
    eventually("every node to hold the key", || {
        (0..c.len()).all(|i| get(c, i, &redis_key).is_some())
    })
    .await;
    (guard, scripts_since(c, &before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_second_fencing_round_when_the_counters_agree() {
    let c = cluster(5);
    let locks = fenced(&c).await;
    // Warm up: scripts loaded, connections identified. The key reached every node and its
    // release deleted it on every node before counting starts (a straggling delete would
    // count as a script of the acquire below).
    let (warm_up, _) = fenced_acquire_cost(&c, &locks, "warm").await;
    warm_up.release().await.expect("release");
    let warm = locks.redis_key("warm").expect("key");
    eventually("the warm-up release on every node", || {
        (0..c.len()).all(|i| get(&c, i, &warm).is_none())
    })
    .await;

    // Every counter at 0: the granting majority agrees, one script per node and no more.
    let (guard, scripts) = fenced_acquire_cost(&c, &locks, "agree").await;
    assert_eq!(guard.fencing_token(), Some(1));
    assert_eq!(scripts, 5, "one acquire script per node, no fence round");
    guard.release().await.expect("release");

    // Counters 2, 2, 3, 1, 1 after the increments: no three of them are equal, so every
    // majority disagrees and the lagging nodes are raised in a second round (the control that
    // shows the count can see one).
    let counter = locks.fence_key("disagree").expect("fence key");
    for (i, incrs) in [(0, 1), (1, 1), (2, 2)] {
        for _ in 0..incrs {
            raw(&c, i, &["INCR", &counter]);
        }
    }
    let (guard, scripts) = fenced_acquire_cost(&c, &locks, "disagree").await;
    assert!(
        guard.fencing_token() >= Some(2),
        "{:?}",
        guard.fencing_token()
    );
    assert!(
        scripts > 5,
        "disagreeing counters must be raised in a second round: {scripts} scripts"
    );
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_get_no_token_and_no_counter() {
    let c = cluster(3);
    let locks = fenced(&c).await;
    let pair = locks
        .acquire_many(&patient(), &["acct:1", "acct:2"])
        .await
        .expect("acquire_many");
    assert_eq!(pair.fencing_token(), None, "a set carries no token");
    let counters: Vec<_> = all_keys(&c)
        .into_iter()
        .filter(|(_, k)| k.contains("::fence:"))
        .collect();
    assert!(counters.is_empty(), "a set created counters: {counters:?}");
    pair.release().await.expect("release");
    // The control: a single key of the same RedLock does get one.
    let one = locks.acquire(&patient(), "acct:1").await.expect("acquire");
    assert_eq!(one.fencing_token(), Some(1));
    one.release().await.expect("release");
}
