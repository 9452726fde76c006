//! The in-flight bound (`max_in_flight`), and what it means for validity: a grant whose round
//! took longer than the lease (here: waiting for permits) is never returned.
mod common;

use std::time::Duration;

use common::*;
use redquorum::RedLock;
use tokio::time::Instant;

/// Three proxied nodes, each request delayed by `each_way` in both directions.
fn slow_cluster(each_way: Duration) -> redquorum::testkit::LocalCluster {
    let c = proxied(3);
    for i in 0..3 {
        c.proxy(i).expect("proxy").set_latency(each_way);
    }
    c
}

/// `keys` concurrent `try_acquire`s on distinct keys; each result with the instant it came back.
async fn burst(
    locks: &RedLock,
    keys: usize,
) -> Vec<(
    Result<Option<redquorum::LockGuard>, redquorum::Error>,
    Instant,
)> {
    let tasks: Vec<_> = (0..keys)
        .map(|k| {
            let locks = locks.clone();
            tokio::spawn(async move {
                let got = locks.try_acquire(&format!("burst-{k}")).await;
                (got, Instant::now())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_the_requests_in_flight() {
    let each_way = Duration::from_millis(25);
    let c = slow_cluster(each_way);
    let locks = builder(&c)
        .ttl(HANG_GUARD * 2)
        .max_in_flight(3)
        .build()
        .await
        .expect("build");
    // 24 acquires of distinct keys: 72 requests, each holding a permit for at least one round
    // trip through the proxies (50 ms). With 3 permits they need at least 24 round trips one
    // after another (1.2 s); unbounded, all would go out at once (about one round trip). A
    // loaded machine only makes it slower, so the lower bound holds anywhere.
    let started = Instant::now();
    let results = burst(&locks, 24).await;
    let took = started.elapsed();
    for (r, _) in &results {
        assert!(
            matches!(r, Ok(Some(_))),
            "distinct keys are all free: {r:?}"
        );
    }
    assert!(
        took >= Duration::from_secs(1),
        "72 requests of 50 ms each under 3 permits took only {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_came_too_late_is_never_returned() {
    let each_way = Duration::from_millis(20);
    let c = slow_cluster(each_way);
    let ttl = Duration::from_millis(600);
    let locks = builder(&c)
        .ttl(ttl)
        .node_timeout(Duration::from_millis(200))
        .max_in_flight(3)
        .build()
        .await
        .expect("build");
    // 40 attempts start together; with 3 permits and 40 ms per request the later ones get
    // their grants well over a TTL after they started: their validity is not positive.
    let results = burst(&locks, 40).await;
    let mut granted = 0;
    let mut refused = 0;
    for (r, returned_at) in results {
        match r {
            Ok(Some(guard)) => {
                granted += 1;
                // Positive when it was decided; the slack covers the scheduling between that
                // and the task noting the time on a loaded machine (a late grant is hundreds
                // of ms past its end).
                assert!(
                    guard.expires_at() + Duration::from_millis(50) > returned_at,
                    "a grant returned {:?} after its validity ended",
                    returned_at - guard.expires_at()
                );
            }
            Ok(None) => refused += 1,
            Err(e) => panic!("no node failed, yet: {e}"),
        }
    }
    assert!(
        refused > 0,
        "every one of the 40 grants came in time ({granted}): the test shows nothing"
    );
    assert!(granted > 0, "the first attempts are in time");
}
