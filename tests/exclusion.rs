//! Mutual exclusion: no two holders at once, between instances and between tasks.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_exclude_each_other() {
    let c = cluster(3);
    let a = locks(&c).await;
    let b = locks(&c).await;
    let held = a.try_acquire("job").await.expect("no error").expect("free");
    assert!(b.try_acquire("job").await.expect("no error").is_none());
    held.release().await.expect("release");
    let again = b
        .try_acquire("job")
        .await
        .expect("no error")
        .expect("free after release");
    assert!(a.try_acquire("job").await.expect("no error").is_none());
    again.release().await.expect("release");
}

/// The critical section of the counter test: a read, a yield and a write (not atomic), with
/// `inside` counting who is in it. Returns whether someone else was inside at the same time.
async fn increment(inside: &AtomicUsize, counter: &AtomicUsize) -> bool {
    let others = inside.fetch_add(1, Ordering::SeqCst);
    let read = counter.load(Ordering::SeqCst);
    tokio::task::yield_now().await;
    counter.store(read + 1, Ordering::SeqCst);
    inside.fetch_sub(1, Ordering::SeqCst);
    others > 0
}

/// A counter incremented with a read, a yield and a write (not atomic) stays exact only if the
/// lock really excludes: 4 instances × 8 tasks × 25 increments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_counter_stays_exact_under_contention() {
    let c = cluster(5);
    let counter = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let locks = long_lease(&c).await;
        for _ in 0..8 {
            let (locks, counter, inside) = (locks.clone(), counter.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let guard = locks.acquire(&patient(), "counter").await.expect("acquire");
                    assert!(!increment(&inside, &counter).await, "two holders at once");
                    guard.release().await.expect("release");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task panicked");
    }
    assert_eq!(counter.load(Ordering::SeqCst), 4 * 8 * 25);
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

/// Negative control for the test above: the same tasks and critical section with a client that
/// ignores the lock must trip both of its checks, the "two holders at once" flag and the exact
/// count (one task yields inside the section and the next one runs: current_thread makes the
/// interleaving certain rather than likely).
#[tokio::test(flavor = "current_thread")]
async fn the_counter_checks_catch_a_client_that_ignores_the_lock() {
    let counter = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4 * 8)
        .map(|_| {
            let (counter, inside) = (counter.clone(), inside.clone());
            tokio::spawn(async move {
                let mut overlaps = 0;
                for _ in 0..25 {
                    // No acquire: the broken client.
                    overlaps += usize::from(increment(&inside, &counter).await);
                }
                overlaps
            })
        })
        .collect();
    let mut overlaps = 0;
    for t in tasks {
        overlaps += t.await.expect("task panicked");
    }
    assert!(overlaps > 0, "the flag saw no second holder");
    assert!(
        counter.load(Ordering::SeqCst) < 4 * 8 * 25,
        "no update was lost"
    );
}
