//! A minority of dead or frozen masters does not stop locking; a majority does, promptly.
mod common;

use std::time::Duration;

use common::*;
use redquorum::{Error, NodeCause, Operation};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_killed_still_acquires_and_releases() {
    let c = cluster(5);
    let locks = locks(&c).await;
    c.kill(1).expect("kill");
    c.kill(3).expect("kill");
    for round in 0..20 {
        let g = locks
            .acquire(&patient(), "k")
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(g.granted_nodes(), 3);
        let other = locks.try_acquire("k").await.expect("a majority answers");
        assert!(other.is_none(), "second holder with 2 nodes down");
        g.release().await.expect("release with 3 of 5");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_killed_returns_no_quorum_before_the_deadline() {
    let c = cluster(5);
    let locks = long_lease(&c).await;
    for i in [0, 2, 4] {
        c.kill(i).expect("kill");
    }
    let started = Instant::now();
    let err = locks
        .acquire(&ctx(10_000), "k")
        .await
        .expect_err("no majority");
    let waited = started.elapsed();
    match &err {
        Error::NoQuorum {
            confirmed,
            required,
            nodes,
            causes,
            ..
        } => {
            assert_eq!((*required, *nodes), (3, 5));
            assert!(*confirmed <= 2);
            assert_eq!(causes.len(), 3, "one cause per dead node: {causes:?}");
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    assert!(err.to_string().contains("majority"), "{err}");
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?} for a dead cluster"
    );
    // Nothing left on the two live nodes.
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

/// A SIGSTOPped master answers nothing: early quorum means acquire does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_does_not_slow_acquisition() {
    let c = cluster(5);
    let locks = builder(&c)
        .ttl(Duration::from_secs(60))
        .node_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("build");
    c.pause(2).expect("pause");
    let started = Instant::now();
    for _ in 0..10 {
        let g = locks.acquire(&patient(), "k").await.expect("acquire");
        g.release().await.expect("release");
    }
    // Ten rounds with a 10 s node timeout: waiting for node 2 even once would take 10 s. Ten
    // rounds take milliseconds on a quiet machine; 5 s leaves room for a loaded one.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    c.resume(2).expect("resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_with_a_minority_down_works_and_the_node_joins_later() {
    let c = cluster(3);
    c.kill(0).expect("kill");
    let locks = locks(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    assert_eq!(g.granted_nodes(), 2);
    g.release().await.expect("release");
    c.restart(0).expect("restart");
    // The connection to node 0 comes back by itself: node 0 grants again.
    let key = locks.redis_key("k").expect("key");
    // Generous: the reconnect backs off while the node is down, and CI machines are busy.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let g = locks.try_acquire("k").await.expect("ok").expect("free");
        // Node 0 may answer after the decision (a straggler): look at it directly, for up to
        // a node timeout.
        let this_round = Instant::now() + locks.node_timeout();
        let on_node_0 = loop {
            if get(&c, 0, &key).as_deref() == Some(g.value()) {
                break true;
            }
            if Instant::now() >= this_round {
                break false;
            }
            tokio::task::yield_now().await;
        };
        g.release().await.expect("release");
        if on_node_0 {
            break;
        }
        assert!(Instant::now() < deadline, "node 0 never rejoined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_with_a_majority_down_fails_with_causes() {
    let c = cluster(3);
    c.kill(0).expect("kill");
    c.kill(1).expect("kill");
    // The dead nodes refuse at once; the bound only has to let the live one connect on a
    // loaded machine.
    let err = builder(&c)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect_err("majority down");
    match err {
        Error::NoQuorum {
            op: Operation::Connect,
            answered: 1,
            required: 2,
            causes,
            ..
        } => {
            assert_eq!(causes.len(), 2);
            assert!(causes.iter().all(|f| f.node.starts_with("127.0.0.1:")));
        }
        other => panic!("expected NoQuorum on connect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_majority_times_out_per_node_not_per_deadline() {
    let c = cluster(3);
    // A lease longer than the test: the lock is free at the end because it was undone.
    let locks = builder(&c)
        .ttl(HANG_GUARD * 2)
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    c.pause(0).expect("pause");
    c.pause(1).expect("pause");
    let started = Instant::now();
    let err = locks.try_acquire("k").await.expect_err("majority frozen");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    match err {
        Error::NoQuorum { causes, .. } => {
            assert!(
                causes.iter().all(|f| f.cause == NodeCause::Timeout),
                "{causes:?}"
            )
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    c.resume(0).expect("resume");
    c.resume(1).expect("resume");
    // After the freeze, the undo sent during it has landed and the lock is free again: the
    // keys the thawed nodes granted go (the lease outlasts the wait, so not by expiry) and the
    // next try gets the lock at once.
    let left = wait_until_no_keys(&c, HANG_GUARD).await;
    assert!(left.is_empty(), "not undone: {left:?}");
    let g = locks
        .try_acquire("k")
        .await
        .expect("ok")
        .expect("free after the undo");
    g.release().await.expect("release");
}

/// A node that comes back while a round is in flight may answer after the grant was decided and
/// even after the guard was released (its request and the release both wait for the reconnect,
/// and either may go first). Its grant must not outlive the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_straggler_grant_is_released_too() {
    let mut reached = 0;
    for round in 0..10 {
        let c = cluster(3);
        c.kill(0).expect("kill");
        // A lease longer than the wait below: a key still there then outlived its release.
        let locks = long_lease(&c).await;
        let g = locks.try_acquire("k").await.expect("ok").expect("free");
        g.release().await.expect("release");
        // Node 0's acquire and release are both still waiting for its connection.
        c.restart(0).expect("restart");
        let left = wait_until_no_keys(&c, HANG_GUARD).await;
        assert!(
            left.is_empty(),
            "round {round}: key outlived its release: {left:?}"
        );
        if set_calls(&c, 0) > 0 {
            reached += 1; // the straggling acquire did reach the restarted node
        }
    }
    assert!(
        reached > 0,
        "no straggler ever reached the node: the test proved nothing"
    );
}

/// `SET` commands node `i` ran since it started (only the acquire script runs SET).
fn set_calls(c: &redquorum::testkit::LocalCluster, i: usize) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn(c, i))
        .expect("INFO");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 3 of 5 masters dead while another client holds the lock on the 2 live ones: the answers
/// say "held", but they are not a majority, so the outcome is NoQuorum, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_majority_is_no_quorum_even_when_the_live_nodes_say_held() {
    let c = cluster(5);
    let holder = locks(&c).await;
    let other = common::locks(&c).await;
    let _g = holder.try_acquire("k").await.expect("ok").expect("free");
    for i in [0, 2, 4] {
        c.kill(i).expect("kill");
    }
    let started = Instant::now();
    let res = other.acquire(&ctx(10_000), "k").await;
    assert!(
        matches!(
            res,
            Err(Error::NoQuorum {
                op: Operation::Acquire,
                ..
            })
        ),
        "{res:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Two of five masters 300 ms away (each way): early quorum decides with the three near ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_minority_does_not_slow_acquisition() {
    let c = proxied(5);
    // The slow nodes answer within the node timeout: they are slow, not dead.
    let locks = builder(&c)
        .node_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    for i in [1, 3] {
        c.proxy(i)
            .expect("proxy")
            .set_latency(Duration::from_millis(300));
    }
    let started = Instant::now();
    for _ in 0..10 {
        let g = locks.acquire(&patient(), "k").await.expect("acquire");
        g.release().await.expect("release");
    }
    // Ten acquire+release cycles: waiting for a slow node even once per cycle would take
    // 10 x 2 x 600 ms = 12 s. They take milliseconds on a quiet machine; 3 s leaves room for
    // a loaded one.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A partitioned minority (connections open, nothing answered) does not stop locking; a
/// partitioned majority gives NoQuorum; healing restores service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_a_minority_and_a_majority() {
    let c = proxied(5);
    let locks = locks(&c).await;
    c.proxy(0).expect("proxy").blackhole();
    c.proxy(4).expect("proxy").cut();
    let g = locks
        .acquire(&patient(), "k")
        .await
        .expect("minority partitioned");
    g.release().await.expect("release");
    c.proxy(2).expect("proxy").blackhole();
    let err = locks
        .acquire(&ctx(5_000), "k")
        .await
        .expect_err("majority partitioned");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err:?}");
    for i in [0, 2, 4] {
        c.proxy(i).expect("proxy").heal();
    }
    // Connections stuck in the blackhole time out and reconnect by themselves.
    let g = locks.acquire(&patient(), "k").await.expect("healed");
    g.release().await.expect("release");
}

/// A RedLock used after the runtime it was built on has shut down says so, and what to do,
/// instead of timing out with no reason.
#[test]
fn a_redlock_outliving_its_runtime_says_why_it_cannot_reach_the_nodes() {
    let c = cluster(3);
    let built_on = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let locks = built_on.block_on(async { common::locks(&c).await });
    drop(built_on);
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = other
        .block_on(locks.try_acquire("k"))
        .expect_err("no node can be reached");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::NoQuorum { .. }) && msg.contains("runtime this RedLock was built on"),
        "{msg}"
    );
}

/// A release that a node did not get (its connection was cut) is tried again in the
/// background once the node is back, instead of leaving the key there until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_a_node_missed_is_retried_in_the_background() {
    let c = proxied(3);
    let locks = long_lease(&c).await;
    let g = locks.try_acquire("k").await.expect("ok").expect("free");
    eventually("every node's grant to be recorded", || {
        g.granted_nodes() == 3
    })
    .await;
    assert_eq!(g.granted_nodes(), 3, "every node holds the key");
    c.proxy(2).expect("proxy").cut();
    g.release().await.expect("released on a majority");
    c.proxy(2).expect("proxy").heal();
    // The lease outlasts the hang guard, so a key gone was released by the retries, which go
    // on for as long as the key could be there, however slowly the node reconnects.
    let left = wait_until_no_keys(&c, HANG_GUARD).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Debug output of redquorum from every thread of this test binary (set up once).
fn debug_log() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("redquorum=debug"))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        log
    })
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_release_is_retried_for_one_ttl_and_then_given_up() {
    let log = debug_log();
    let c = proxied(3);
    let ttl = Duration::from_secs(1);
    let locks = builder(&c)
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let key = locks.redis_key("missed").expect("key");
    let guard = locks.acquire(&patient(), "missed").await.expect("acquire");
    eventually("node 2 to hold the key", || get(&c, 2, &key).is_some()).await;
    // Node 2 becomes unreachable (every connection closed, new ones too) for good.
    let port = c
        .url(2)
        .expect("url")
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    let node = format!(":{port}/");
    c.proxy(2).expect("proxy").cut();
    let released = Instant::now();
    guard
        .release()
        .await
        .expect("a majority confirms the release");
    // The background retries end once their pauses add up to more than one TTL: the key has
    // expired there by then. The bound is generous (a loaded machine delays each send by up to
    // a node timeout); what matters is that the retries stop.
    let gave_up = |log: &std::sync::Mutex<Vec<u8>>| {
        String::from_utf8_lossy(&log.lock().expect("log"))
            .lines()
            .any(|l| l.contains("the key expires by TTL there") && l.contains(&node))
    };
    while !gave_up(log) && released.elapsed() < ttl * 30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = released.elapsed();
    assert!(
        gave_up(log),
        "still retrying {after:?} after the release (TTL {ttl:?})"
    );
    // Not before a TTL of pauses: it was retried that long first.
    assert!(after >= ttl, "gave up after only {after:?}");
    c.proxy(2).expect("proxy").heal();
}
