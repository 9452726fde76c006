//! The safety checker under faults: mutual exclusion, no lost updates, increasing fencing
//! tokens and progress while a minority of masters is killed, frozen, slowed or partitioned;
//! the same for read-write locks (no write hold overlaps another hold) and semaphores (never
//! more than k holders), which must also show real concurrency; prompt failure without a
//! majority; and negative tests proving the checkers can fail.
mod common;

use std::time::Duration;

use common::*;
use redquorum::testkit::{check_holds, HoldRecord, LocalCluster, Primitive, Report, Workload};
use redquorum::{Error, RedLock};
use tokio::time::Instant;

/// 5 masters behind fault proxies, AOF with fsync always (on tmpfs when available).
fn chaos_cluster(appendonly: bool) -> LocalCluster {
    let mut b = LocalCluster::builder()
        .nodes(5)
        .proxied(true)
        .appendonly(appendonly);
    if std::path::Path::new("/dev/shm").is_dir() {
        b = b.base_dir("/dev/shm");
    }
    b.start()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

/// Lock keys (not fencing counters) left on any node.
fn lock_keys_left(c: &LocalCluster) -> Vec<(usize, String)> {
    all_keys(c)
        .into_iter()
        .filter(|(_, k)| !k.contains("::fence:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_grants_under_minority_faults_without_a_violation() {
    // Heavy: runs alone in this binary (see common::heavy).
    let _heavy = common::heavy().await;
    let c = chaos_cluster(true);
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    // A count, not a rate: the run ends at the 5 000th grant, its length only a hang guard
    // (the grants per second are the soak example's figure: `examples/soak.rs`).
    let mut w = Workload::new(HANG_GUARD, 20261122);
    w.max_grants = 5_000;
    let report = w.run(&c).await.expect("run");
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.grants >= 5_000, "too few grants: {report}");
    assert!(
        report.faults.values().sum::<u64>() >= 10,
        "the nemesis did little: {report}"
    );
    // With a majority up, someone always makes progress within a few leases.
    assert!(report.max_stall < Duration::from_secs(3), "{report}");
    // Everything released or expired afterwards (a lease is 1 s; the bound is a hang guard).
    let deadline = Instant::now() + HANG_GUARD;
    while !lock_keys_left(&c).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lock_keys_left(&c).is_empty(), "{:?}", lock_keys_left(&c));
    // No task outlives the run for long: subscriptions, lease watchers, stragglers and
    // background releases all end once the clients are gone.
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let deadline = Instant::now() + HANG_GUARD;
    while alive() > tasks_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        alive() <= tasks_before,
        "{} tasks left (from {tasks_before})",
        alive()
    );
}

/// A workload of `primitive` under the minority nemesis (an action every 100 ms) until 3 000
/// grants (the duration is a hang guard: far more than a loaded machine needs), checked: no
/// violation, and every kind of fault injected.
async fn three_thousand_grants_of(primitive: Primitive, keys: usize, seed: u64) -> Report {
    let c = chaos_cluster(true);
    let mut w = Workload::new(Duration::from_secs(240), seed);
    w.max_grants = 3_000;
    w.fault_interval = Duration::from_millis(100);
    w.keys = keys;
    w.primitive = primitive;
    let report = w.run(&c).await.expect("run");
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.grants >= 3_000, "too few grants: {report}");
    for kind in ["kill", "pause", "partition", "latency"] {
        assert!(
            report.faults.get(kind).is_some_and(|n| *n > 0),
            "no {kind} fault injected: {report}"
        );
    }
    let deadline = Instant::now() + HANG_GUARD;
    while !lock_keys_left(&c).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lock_keys_left(&c).is_empty(), "{:?}", lock_keys_left(&c));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_locks_under_minority_faults_without_a_violation() {
    let _heavy = common::heavy().await;
    let report = three_thousand_grants_of(Primitive::ReadWrite, 3, 20261130).await;
    // Readers really shared the lock (otherwise the check proved nothing about sharing).
    assert!(
        report.max_concurrent >= 2,
        "readers never overlapped: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphores_under_minority_faults_never_exceed_their_permits() {
    let _heavy = common::heavy().await;
    let permits = 3;
    let report = three_thousand_grants_of(Primitive::Semaphore { permits }, 2, 20261131).await;
    assert_eq!(
        report.max_concurrent, permits,
        "the bound was never reached: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_write_checker_sees_a_reader_let_in_by_a_master_that_forgot_the_writer() {
    let _light = common::light().await;
    let (violations, _) = kleppmann_rw(false).await;
    assert_eq!(violations.len(), 1, "the checker missed it: {violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_read_write_schedule_with_aof_is_clean() {
    let _light = common::light().await;
    let (violations, after) = kleppmann_rw(true).await;
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        after.is_some(),
        "the reader got in before the writer's validity ended"
    );
}

/// Kleppmann's schedule for a read-write lock: writer A on {0,1,2} (3 and 4 cut off), node 2
/// killed and restarted at once, then reader B on {2,3,4} (0 and 1 cut off). Without
/// persistence node 2 forgot A and B reads while A writes. Returns the checker's verdict and
/// how long after A's validity B's grant came (`None` if before).
async fn kleppmann_rw(appendonly: bool) -> (Vec<String>, Option<Duration>) {
    let c = chaos_cluster(appendonly);
    let make = || async {
        builder(&c)
            .ttl(Duration::from_secs(2))
            .node_timeout(Duration::from_millis(100))
            .build()
            .await
            .expect("build")
    };
    let (a, b) = (make().await, make().await);
    c.proxy(3).expect("proxy").cut();
    c.proxy(4).expect("proxy").cut();
    let wa = a.write(&patient(), "k").await.expect("A writes on {0,1,2}");
    let a_start = Instant::now();
    c.kill(2).expect("kill");
    c.restart(2).expect("restart");
    c.proxy(3).expect("proxy").heal();
    c.proxy(4).expect("proxy").heal();
    c.proxy(0).expect("proxy").cut();
    c.proxy(1).expect("proxy").cut();
    let rb = b
        .read(&patient(), "k")
        .await
        .expect("B reads (at the latest after A's lease)");
    let b_start = Instant::now();
    let holds = [
        HoldRecord {
            key: "k".into(),
            client: 0,
            token: None,
            shared: false,
            start: a_start,
            end: wa.expires_at(),
            valid_until: wa.expires_at(),
        },
        HoldRecord {
            key: "k".into(),
            client: 1,
            token: None,
            shared: true,
            start: b_start,
            end: b_start,
            valid_until: rb.expires_at(),
        },
    ];
    for i in [0, 1] {
        c.proxy(i).expect("proxy").heal();
    }
    (
        check_holds(&holds),
        b_start.checked_duration_since(wa.expires_at()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_every_client_fails_before_its_deadline() {
    let _light = common::light().await;
    let c = chaos_cluster(false);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            builder(&c)
                .node_timeout(Duration::from_millis(100))
                .build()
                .await
                .expect("build"),
        );
    }
    c.kill(0).expect("kill");
    c.proxy(1).expect("proxy").blackhole();
    c.pause(2).expect("pause");
    let deadline = Duration::from_secs(5);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|locks: RedLock| {
            tokio::spawn(async move {
                let started = Instant::now();
                let res = locks
                    .acquire(&redquorum::Context::with_timeout(deadline), "k")
                    .await;
                (res.map(drop), started.elapsed())
            })
        })
        .collect();
    for t in tasks {
        let (res, took) = t.await.expect("no panic");
        assert!(
            matches!(res, Err(Error::NoQuorum { .. } | Error::Timeout { .. })),
            "{res:?}"
        );
        assert!(took < deadline, "took {took:?}");
    }
    c.resume(2).expect("resume");
}

/// One paused master: acquire latency stays close to the healthy one (generous bound; the
/// soak reports the real figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_costs_little_latency() {
    let _light = common::light().await;
    let c = chaos_cluster(false);
    let locks = builder(&c)
        .node_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let cycle = || async {
        let t = Instant::now();
        let g = locks.acquire(&patient(), "k").await.expect("acquire");
        let took = t.elapsed();
        g.release().await.expect("release");
        took
    };
    let mut healthy = Vec::new();
    for _ in 0..50 {
        healthy.push(cycle().await);
    }
    c.pause(3).expect("pause");
    let mut paused = Vec::new();
    for _ in 0..50 {
        paused.push(cycle().await);
    }
    c.resume(3).expect("resume");
    healthy.sort_unstable();
    paused.sort_unstable();
    let (h, p) = (healthy[25], paused[25]);
    // Far below the 2 s node timeout: nobody waits for the frozen node. The 500 ms term is
    // room for a loaded machine, whose load can change between the two series.
    assert!(
        p < h * 10 + Duration::from_millis(500),
        "healthy p50 {h:?}, paused p50 {p:?}"
    );
}

/// Kleppmann's case, and the proof that the checker can fail: A holds the lock on nodes
/// {0,1,2} (3 and 4 unreachable); node 2 crashes and comes back within the lease; B then
/// acquires on {2,3,4}. Without persistence node 2 forgot A's key and both hold the lock: the
/// checker must report it. With AOF (fsync always), or with node 2 kept down for one TTL, B
/// cannot get in while A's lease lasts: clean. Returns the checker's verdict and, if B got the
/// lock, how long after A's validity ended its grant came (`None` if before).
async fn kleppmann(
    appendonly: bool,
    restart_delay: Duration,
) -> (Vec<String>, Result<Option<Duration>, Error>) {
    let c = chaos_cluster(appendonly);
    let ttl = Duration::from_secs(2);
    let a = builder(&c)
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let b = builder(&c)
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    // Cut (not blackholed: held bytes would reach 3 and 4 after healing, as TCP would).
    c.proxy(3).expect("proxy").cut();
    c.proxy(4).expect("proxy").cut();
    let ga = a
        .acquire(&patient(), "k")
        .await
        .expect("A acquires on {0,1,2}");
    let a_start = Instant::now();
    c.kill(2).expect("kill");
    tokio::time::sleep(restart_delay).await;
    c.restart(2).expect("restart");
    c.proxy(3).expect("proxy").heal();
    c.proxy(4).expect("proxy").heal();
    c.proxy(0).expect("proxy").cut();
    c.proxy(1).expect("proxy").cut();
    let mut holds = Vec::new();
    // B tries until it gets in (after A's lease at the latest; the deadline is a hang guard).
    let gb = b.acquire(&patient(), "k").await;
    let b_start = Instant::now();
    holds.push(HoldRecord {
        key: "k".into(),
        client: 0,
        token: None,
        shared: false,
        start: a_start,
        end: ga.expires_at(), // A works until its validity ends
        valid_until: ga.expires_at(),
    });
    let b_after_a = gb
        .as_ref()
        .map(|_| b_start.checked_duration_since(ga.expires_at()));
    if let Ok(gb) = &gb {
        holds.push(HoldRecord {
            key: "k".into(),
            client: 1,
            token: None,
            shared: false,
            start: b_start,
            end: b_start,
            valid_until: gb.expires_at(),
        });
    }
    for i in [0, 1] {
        c.proxy(i).expect("proxy").heal();
    }
    (check_holds(&holds), b_after_a.map_err(Clone::clone))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_without_persistence_lets_a_second_holder_in_and_the_checker_sees_it() {
    let _light = common::light().await;
    let (violations, _) = kleppmann(false, Duration::ZERO).await;
    assert_eq!(
        violations.len(),
        1,
        "the checker missed Kleppmann's case: {violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_schedule_with_aof_is_clean() {
    let _light = common::light().await;
    let (violations, b) = kleppmann(true, Duration::ZERO).await;
    assert!(violations.is_empty(), "{violations:?}");
    // Clean because B waited for A's lease, not because B never got in.
    let after = b.expect("B acquires once A's lease is over");
    assert!(after.is_some(), "B was granted before A's validity ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_schedule_with_a_restart_delay_of_one_ttl_is_clean() {
    let _light = common::light().await;
    let (violations, b) = kleppmann(false, Duration::from_secs(2)).await;
    assert!(violations.is_empty(), "{violations:?}");
    let after = b.expect("B acquires once A's lease is over");
    assert!(after.is_some(), "B was granted before A's validity ended");
}

/// Negative control for `max_stall` on a real run: a workload without a nemesis, during which
/// a majority (3 of 5) is frozen for 1.5 s once grants are flowing. No grant is possible meanwhile, so
/// the report must show a stall of about that length (and still no violation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_majority_shows_in_max_stall() {
    let _light = common::light().await;
    let c = chaos_cluster(false);
    let mut w = Workload::new(Duration::from_secs(6), 7);
    w.nemesis = false;
    w.clients = 3;
    w.keys = 1;
    let freeze = Duration::from_millis(1_500);
    let schedule = async {
        // Every client is built and locking (a client still being built when the majority
        // freezes would fail the run): node 4, never frozen, shows each one's connection
        // running lock commands.
        eventually("every client is locking", || locking_clients(&c, 4) >= 3).await;
        tokio::task::block_in_place(|| {
            for i in 0..3 {
                c.pause(i).expect("pause");
            }
        });
        // The stall under test: its length is the behaviour, not a wait for something.
        tokio::time::sleep(freeze).await;
        tokio::task::block_in_place(|| {
            for i in 0..3 {
                c.resume(i).expect("resume");
            }
        });
    };
    let (report, ()) = tokio::join!(w.run(&c), schedule);
    let report = report.expect("run");
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.grants > 0, "{report}");
    // A grant decided just before the freeze may return just after it began: 1.2 s of 1.5.
    assert!(
        report.max_stall >= Duration::from_millis(1_200),
        "the freeze did not show: {report}"
    );
}

/// Connections to node `i` whose last command was one a lock client sends while locking.
fn locking_clients(c: &LocalCluster, i: usize) -> usize {
    client_list(c, i)
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| matches!(f, "cmd=set" | "cmd=evalsha" | "cmd=pttl" | "cmd=eval"))
        })
        .count()
}
