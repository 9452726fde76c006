//! Counting semaphores against real masters: at most k holders, waiters wake on releases,
//! bad permit counts are refused, and the naive quorum scheme is shown unsafe on the schedule
//! where the slot scheme stays within k.
mod common;

use std::time::Duration;

use common::*;
use redquorum::testkit::{check_holds, check_permits, HoldRecord, LocalCluster};
use redquorum::{Error, RedLock, Semaphore};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_permits_then_none_and_a_release_frees_one() {
    let _light = light().await;
    let c = cluster(3);
    let (a, b) = (locks(&c).await, locks(&c).await);
    let sem_a = a.semaphore("exports", 3).expect("semaphore");
    let sem_b = b.semaphore("exports", 3).expect("semaphore");
    let mut held = Vec::new();
    for sem in [&sem_a, &sem_b, &sem_a] {
        held.push(
            sem.try_acquire()
                .await
                .expect("no error")
                .expect("a free permit"),
        );
    }
    // One holder per slot: each slot holds one of their values on a majority.
    for slot in 0..3 {
        let key = format!("redquorum::sem:default:exports:{slot}");
        let owners: Vec<Option<String>> = (0..3).map(|i| get(&c, i, &key)).collect();
        let holder = held.iter().find(|g| {
            owners
                .iter()
                .filter(|o| o.as_deref() == Some(g.value()))
                .count()
                >= 2
        });
        assert!(holder.is_some(), "slot {slot}: {owners:?}");
    }
    assert!(sem_b.try_acquire().await.expect("no error").is_none());
    assert!(sem_a.try_acquire().await.expect("no error").is_none());
    held.pop().expect("one").release().await.expect("release");
    let again = sem_b.try_acquire().await.expect("no error").expect("freed");
    held.push(again);
    for g in held {
        g.release().await.expect("release");
    }
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_permit_counts_and_names_are_config_errors() {
    let _light = light().await;
    let c = cluster(1);
    let locks = locks(&c).await;
    for (name, permits) in [("x", 0), ("x", redquorum::MAX_PERMITS + 1), ("", 2)] {
        let err = locks.semaphore(name, permits).expect_err("refused");
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }
    assert_eq!(locks.semaphore("x", 64).expect("64 is fine").permits(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphores_live_in_their_own_key_space() {
    let _light = light().await;
    let c = cluster(3);
    let locks = locks(&c).await;
    let sem = locks.semaphore("x", 1).expect("semaphore");
    let m = locks
        .try_acquire("x")
        .await
        .expect("no error")
        .expect("free");
    let w = locks.try_write("x").await.expect("no error").expect("free");
    let p = sem
        .try_acquire()
        .await
        .expect("no error")
        .expect("another lock");
    assert!((0..3).any(|i| get(&c, i, "redquorum::sem:default:x:0").as_deref() == Some(p.value())));
    for g in [m, w, p] {
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_when_a_permit_is_released() {
    let _light = light().await;
    let c = cluster(3);
    let (a, b) = (long_lease(&c).await, long_lease(&c).await);
    let sem = a.semaphore("jobs", 2).expect("semaphore");
    let p1 = sem.acquire(&patient()).await.expect("first");
    let p2 = sem.acquire(&patient()).await.expect("second");
    let waiter = {
        let sem = b.semaphore("jobs", 2).expect("semaphore");
        tokio::spawn(async move { sem.acquire(&patient()).await })
    };
    // It subscribes to the semaphore's channel, then a release (not the lease: it is longer
    // than the hang guard) wakes it.
    assert!(until_numsub(&c, "redquorum::sem:default:jobs:released", 1).await);
    p1.release().await.expect("release");
    let p3 = waiter
        .await
        .expect("task")
        .expect("granted after the release");
    assert!(p3.validity() > Duration::ZERO);
    let mut p3 = p3;
    p3.extend(Duration::from_secs(30))
        .await
        .expect("extend a permit");
    drop(p3); // released in the background
    p2.release().await.expect("release");
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_announced_on_the_semaphores_channel() {
    // The waiter test above still passes (by its safety poll, slowly) when the announcement
    // goes to the wrong channel; this one listens to the channel itself.
    let _light = light().await;
    let c = cluster(3);
    let locks = long_lease(&c).await;
    let sem = locks.semaphore("jobs", 2).expect("semaphore");
    let client = redis::Client::open(c.direct_url(0).expect("url")).expect("client");
    let mut sub = client.get_async_pubsub().await.expect("pubsub");
    sub.subscribe("redquorum::sem:default:jobs:released")
        .await
        .expect("subscribe");
    let permit = sem.acquire(&patient()).await.expect("permit");
    permit.release().await.expect("release");
    let mut messages = sub.on_message();
    let message = tokio::time::timeout(HANG_GUARD, futures::StreamExt::next(&mut messages))
        .await
        .expect("the release was announced");
    assert_eq!(
        message.expect("a message").get_channel_name(),
        "redquorum::sem:default:jobs:released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_never_exceed_k_and_reach_it() {
    let _light = light().await;
    let c = cluster(3);
    let k = 3;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let locks = locks(&c).await;
        tasks.push(tokio::spawn(async move {
            let sem = locks.semaphore("pool", k).expect("semaphore");
            let mut holds = Vec::new();
            for _ in 0..10 {
                let g = sem.acquire(&patient()).await.expect("permit");
                let begin = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                holds.push(HoldRecord {
                    key: "pool".into(),
                    client: t,
                    token: None,
                    shared: true,
                    start: begin,
                    end: Instant::now(),
                    valid_until: g.expires_at(),
                });
                g.release().await.expect("release");
            }
            holds
        }));
    }
    let mut holds = Vec::new();
    for t in tasks {
        holds.extend(t.await.expect("task"));
    }
    assert_eq!(holds.len(), 80);
    let (violations, most) = check_permits(&holds, k);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(most, k, "k holders were never reached at once");
    assert!(start.elapsed() < HANG_GUARD);
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

/// Three acquirers (three clients, as three processes would be), each reaching only two of
/// three nodes (the third cut off): the first through {0,1}, the second {1,2}, the third
/// {0,2}. Returns the holds granted.
async fn three_acquirers_on_two_nodes_each(c: &LocalCluster, naive: bool) -> Vec<HoldRecord> {
    let mut holds = Vec::new();
    for (client, cut) in [2usize, 0, 1].into_iter().enumerate() {
        let sem = two_permit_semaphore(c, naive).await;
        c.proxy(cut).expect("proxy").cut();
        let ctx = ctx(1_500);
        // Retried until the two reachable nodes answer (a node just healed may still be
        // reconnecting): granted, or refused for good when the deadline passes.
        let granted = loop {
            match sem.try_acquire().await {
                Ok(granted) => break granted,
                Err(e) if !ctx.is_expired() && matches!(e, Error::NoQuorum { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        if let Some(g) = granted {
            holds.push((client, Instant::now(), g));
        }
        c.proxy(cut).expect("proxy").heal();
    }
    let end = Instant::now();
    holds
        .into_iter()
        .map(|(client, start, g)| {
            let h = HoldRecord {
                key: "quota".into(),
                client,
                token: None,
                shared: true,
                start,
                end,
                valid_until: g.expires_at(),
            };
            std::mem::forget(g); // the holds stay on the nodes until their leases run out
            h
        })
        .collect()
}

async fn two_permit_semaphore(c: &LocalCluster, naive: bool) -> Semaphore {
    let mut b = RedLock::builder()
        .nodes(c.urls())
        .ttl(HANG_GUARD)
        .node_timeout(Duration::from_millis(250));
    if naive {
        b = b.semaphore_counting();
    }
    let locks = b.build().await.expect("build");
    locks.semaphore("quota", 2).expect("semaphore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_naive_counting_semaphore_admits_three_holders_of_two_permits_and_the_checker_sees_it()
{
    let _light = light().await;
    let c = proxied(3);
    let holds = three_acquirers_on_two_nodes_each(&c, true).await;
    // Two holders on every node, yet three hold the semaphore.
    assert_eq!(holds.len(), 3, "the counterexample did not reproduce");
    let (violations, most) = check_permits(&holds, 2);
    assert_eq!(most, 3);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        check_holds(&holds).is_empty(),
        "shared holds never conflict as such"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_semaphore_stays_within_its_permits_on_the_same_schedule() {
    let _light = light().await;
    let c = proxied(3);
    let holds = three_acquirers_on_two_nodes_each(&c, false).await;
    // The third acquirer finds no slot free on both of its nodes.
    assert_eq!(holds.len(), 2, "{holds:?}");
    let (violations, most) = check_permits(&holds, 2);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(most, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_semaphore_share_a_local_gate_of_k_places() {
    let _light = light().await;
    let c = cluster(3);
    let locks = long_lease(&c).await;
    let sem = locks.semaphore("gate", 1).expect("semaphore");
    let held = sem.try_acquire().await.expect("no error").expect("free");
    // The one place is taken: a clone waits locally, and its wait ends with the release.
    let waiter = {
        let sem = sem.clone();
        tokio::spawn(async move { sem.acquire(&patient()).await })
    };
    assert!(sem.clone().try_acquire().await.expect("no error").is_none());
    // Another client is refused by Redis, not by a gate.
    let other = long_lease(&c)
        .await
        .semaphore("gate", 1)
        .expect("semaphore");
    assert!(other.try_acquire().await.expect("no error").is_none());
    held.release().await.expect("release");
    let next = waiter
        .await
        .expect("task")
        .expect("granted after the release");
    next.release().await.expect("release");
    // A timed-out wait at the gate is a timeout.
    let first = sem.try_acquire().await.expect("no error").expect("free");
    let err = sem.acquire(&ctx(50)).await.expect_err("the place is taken");
    assert!(err.is_timeout(), "{err:?}");
    first.release().await.expect("release");
}
