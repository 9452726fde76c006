//! Read-write locks against real masters: readers share, a writer excludes everyone, a waiting
//! writer is not starved, waiters wake on releases, and nothing is left behind.
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_a_writer_excludes_everyone() {
    let _light = light().await;
    let c = cluster(3);
    let (a, b) = (locks(&c).await, locks(&c).await);
    let r1 = a
        .try_read("catalog")
        .await
        .expect("no error")
        .expect("free");
    let r2 = b
        .try_read("catalog")
        .await
        .expect("no error")
        .expect("shared");
    // Readers of the same process share it too (no local queue between them).
    let r3 = a
        .try_read("catalog")
        .await
        .expect("no error")
        .expect("shared");
    assert!(b.try_write("catalog").await.expect("no error").is_none());
    // A refused single attempt leaves no intent: readers still get in.
    let r4 = b
        .try_read("catalog")
        .await
        .expect("no error")
        .expect("no intent");
    for r in [r1, r2, r3, r4] {
        r.release().await.expect("release");
    }
    let w = b
        .try_write("catalog")
        .await
        .expect("no error")
        .expect("free");
    assert!(a.try_read("catalog").await.expect("no error").is_none());
    assert!(a.try_write("catalog").await.expect("no error").is_none());
    w.release().await.expect("release");
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_locks_live_in_their_own_key_space() {
    let _light = light().await;
    let c = cluster(3);
    let locks = locks(&c).await;
    let m = locks
        .try_acquire("x")
        .await
        .expect("no error")
        .expect("free");
    let w = locks
        .try_write("x")
        .await
        .expect("no error")
        .expect("another lock");
    // On a majority at least (a straggler may not have landed yet).
    let held = (0..3)
        .filter(|i| get(&c, *i, "redquorum::rw:default:x:writer").as_deref() == Some(w.value()))
        .count();
    assert!(held >= 2, "{held}");
    // Groups apply.
    let other = locks.group("billing").expect("group");
    let w2 = other
        .try_write("x")
        .await
        .expect("no error")
        .expect("another group");
    assert!((0..3).any(|i| get(&c, i, "redquorum::rw:billing:x:writer").is_some()));
    for g in [m, w, w2] {
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_new_readers_and_is_granted_when_the_last_reader_leaves() {
    let _light = light().await;
    let c = cluster(3);
    let (a, b) = (long_lease(&c).await, long_lease(&c).await);
    let r = a.read(&patient(), "doc").await.expect("read");
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { b.write(&patient(), "doc").await })
    };
    // The writer's intent appears on the nodes...
    eventually("the writer's intent", || {
        (0..3)
            .filter(|i| get(&c, *i, "redquorum::rw:default:doc:intent").is_some())
            .count()
            >= 2
    })
    .await;
    // ...and new readers are refused while it waits, however many come.
    for _ in 0..5 {
        assert!(a.try_read("doc").await.expect("no error").is_none());
    }
    // The last reader leaving wakes it (PubSub; the lease is far longer than any wait).
    r.release().await.expect("release");
    let w = writer.await.expect("task").expect("write granted");
    assert!(w.validity() > Duration::ZERO);
    // Its intent goes with the grant on the nodes that granted (a node that refused the
    // winning round, its reader's release still on the way, keeps it until the release).
    let intents = (0..3)
        .filter(|i| get(&c, *i, "redquorum::rw:default:doc:intent").is_some())
        .count();
    assert!(
        intents <= 1,
        "{intents} nodes kept the intent after the grant"
    );
    // A reader waiting on the writer wakes when it leaves.
    let reader = {
        let a = a.clone();
        tokio::spawn(async move { a.read(&patient(), "doc").await })
    };
    tokio::task::yield_now().await;
    w.release().await.expect("release");
    let r = reader.await.expect("task").expect("read granted");
    r.release().await.expect("release");
    // Nothing left: no reader, no writer, no intent (the write release removes it anywhere).
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_gives_up_withdraws_its_intent() {
    let _light = light().await;
    let c = cluster(3);
    let (a, b) = (long_lease(&c).await, long_lease(&c).await);
    let r = a.read(&patient(), "doc").await.expect("read");
    let err = b
        .write(&ctx(300), "doc")
        .await
        .expect_err("readers hold it");
    assert!(err.is_timeout(), "{err:?}");
    // Withdrawn in the background (the intent's own expiry is a whole lease away).
    eventually("the intent withdrawn", || {
        (0..3).all(|i| get(&c, i, "redquorum::rw:default:doc:intent").is_none())
    })
    .await;
    let r2 = b
        .try_read("doc")
        .await
        .expect("no error")
        .expect("readers share");
    r.release().await.expect("release");
    r2.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_overlap_and_writers_never_overlap_anyone() {
    let _light = light().await;
    let c = cluster(3);
    let readers_in = Arc::new(AtomicUsize::new(0));
    let writer_in = Arc::new(AtomicBool::new(false));
    let max_readers = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..6 {
        let locks = locks(&c).await;
        let (readers_in, writer_in, max_readers, bad) = (
            readers_in.clone(),
            writer_in.clone(),
            max_readers.clone(),
            bad.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let write = (t + i) % 4 == 0;
                if write {
                    let g = locks.write(&patient(), "k").await.expect("write");
                    if readers_in.load(Ordering::SeqCst) > 0
                        || writer_in.swap(true, Ordering::SeqCst)
                    {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    writer_in.store(false, Ordering::SeqCst);
                    g.release().await.expect("release");
                } else {
                    let g = locks.read(&patient(), "k").await.expect("read");
                    let n = readers_in.fetch_add(1, Ordering::SeqCst) + 1;
                    max_readers.fetch_max(n, Ordering::SeqCst);
                    if writer_in.load(Ordering::SeqCst) {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    readers_in.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.expect("release");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(bad.load(Ordering::SeqCst), 0);
    assert!(
        max_readers.load(Ordering::SeqCst) >= 2,
        "readers never overlapped"
    );
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_and_writer_guards_extend_release_and_drop_like_a_mutex() {
    let _light = light().await;
    let c = cluster(3);
    let locks = locks(&c).await;
    let mut r = locks.try_read("k").await.expect("no error").expect("free");
    r.extend(Duration::from_secs(20))
        .await
        .expect("extend a reader");
    assert!(r.validity() > Duration::from_secs(15));
    let extended = (0..3)
        .filter(|i| pttl(&c, *i, "redquorum::rw:default:k:readers") > 15_000)
        .count();
    assert!(extended >= 2, "{extended}");
    r.keep_alive();
    drop(r); // released in the background
    eventually("the reader released on drop", || {
        (0..3).all(|i| pttl(&c, i, "redquorum::rw:default:k:readers") == -2)
    })
    .await;
    let mut w = locks.try_write("k").await.expect("no error").expect("free");
    w.extend(Duration::from_secs(20))
        .await
        .expect("extend a writer");
    let extended = (0..3)
        .filter(|i| pttl(&c, *i, "redquorum::rw:default:k:writer") > 15_000)
        .count();
    assert!(extended >= 2, "{extended}");
    w.release().await.expect("release");
    // A released reader leaves the set on every node.
    let r = locks.try_read("k").await.expect("no error").expect("free");
    let value = r.value().to_owned();
    r.release().await.expect("release");
    eventually("the reader gone from every node", || {
        (0..3).all(|i| {
            matches!(
                raw(
                    &c,
                    i,
                    &["ZSCORE", "redquorum::rw:default:k:readers", &value]
                ),
                redis::Value::Nil
            )
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reader_does_not_block_a_writer() {
    let _light = light().await;
    let c = cluster(3);
    let short = builder(&c)
        .ttl(Duration::from_millis(300))
        .node_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("build");
    let r = short.try_read("k").await.expect("no error").expect("free");
    std::mem::forget(r); // a reader that vanished: never released
    let locks = locks(&c).await;
    // The reader's lease (300 ms) runs out; the writer waits for it, then gets in.
    let w = locks
        .write(&patient(), "k")
        .await
        .expect("write after expiry");
    w.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_read_leaves_nothing_behind() {
    let _light = light().await;
    let c = proxied(3);
    let locks = locks(&c).await;
    // Slow nodes: no majority can answer before the future is dropped.
    for i in 1..3 {
        c.proxy(i)
            .expect("proxy")
            .set_latency(Duration::from_millis(150));
    }
    let ctx = patient();
    let read = locks.read(&ctx, "k");
    assert!(tokio::time::timeout(Duration::from_millis(20), read)
        .await
        .is_err());
    for i in 1..3 {
        c.proxy(i).expect("proxy").heal();
    }
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}

/// Readers and a writer cycling on one key never wait for a lease to run out: every wake-up
/// they need is announced. The lease (10 min) is far beyond each acquisition's deadline
/// (30 s, a hang guard for a loaded machine), so a wait for a lease fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_a_writer_in_a_loop_never_wait_for_a_lease() {
    let _light = light().await;
    let c = cluster(5);
    let locks = long_lease(&c).await;
    let mut tasks = Vec::new();
    for t in 0..9 {
        let locks = locks.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let ctx = ctx(30_000);
                let g = if t == 0 {
                    locks.write(&ctx, "hot").await
                } else {
                    locks.read(&ctx, "hot").await
                };
                g.expect("granted without waiting for a lease")
                    .release()
                    .await
                    .expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}
