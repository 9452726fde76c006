//! The basics: `acquire` (waits), `try_acquire` (one attempt), `release`, and what a waiter
//! sees when the holder keeps the lock past its deadline.
//!
//! ```text
//! cargo run --features testkit --example basic            # starts 3 local masters itself
//! REDQUORUM_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run --features testkit --example basic        # uses your masters (docs/docker.md)
//! ```
use std::time::Duration;

use redquorum::{Context, Error, RedLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (urls, _cluster) = redquorum::testkit::env_or_local(3)?;
    println!("nodes: {}", urls.join(" "));
    let locks = RedLock::builder()
        .nodes(&urls)
        .ttl(Duration::from_secs(5))
        // The default (ttl / 200, at least 50 ms) suits a quiet network; a busy laptop or CI
        // machine running a debug build needs more.
        .node_timeout(Duration::from_millis(250))
        .owner("basic-example")
        .build()
        .await?;

    // acquire: waits (here: at most 2 s) while someone else holds the lock.
    let ctx = Context::with_timeout(Duration::from_secs(2));
    let guard = locks.acquire(&ctx, "orders:42").await?;
    println!(
        "acquired {:?}: {} of {} nodes granted ({} needed), validity {} ms",
        guard.key(),
        guard.granted_nodes(),
        locks.nodes(),
        locks.quorum(),
        guard.validity().as_millis()
    );

    // try_acquire: one attempt, no wait. The lock is held, so: None.
    let second = locks.try_acquire("orders:42").await?;
    println!(
        "try_acquire while held: {}",
        if second.is_some() {
            "acquired (wrong!)"
        } else {
            "None"
        }
    );
    assert!(second.is_none());

    // acquire with a short deadline while held: Error::Timeout. (A waiter of the same process
    // queues locally behind the holder, so its message counts 0 attempts sent to Redis.)
    let short = Context::with_timeout(Duration::from_millis(200));
    match locks.acquire(&short, "orders:42").await {
        Err(e @ Error::Timeout { .. }) => println!("acquire while held: {e}"),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }

    // release: compare-and-delete, confirmed by a majority.
    guard.release().await?;
    println!("released");

    // Now it is free: try_acquire succeeds. A dropped guard is released in the background.
    let again = locks.try_acquire("orders:42").await?;
    println!(
        "try_acquire after release: {}",
        if again.is_some() {
            "acquired"
        } else {
            "None (wrong!)"
        }
    );
    let again = again.ok_or("the lock should be free after release")?;
    again.release().await?;
    println!("done");
    Ok(())
}
