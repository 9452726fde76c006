//! Groups and ownership queries: `group()`, `owner()`, `is_locked()` and `guard.is_held()`.
//!
//! ```text
//! cargo run --features testkit --example groups           # starts 3 local masters itself
//! REDQUORUM_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run --features testkit --example groups       # uses your masters (docs/docker.md)
//! ```
use std::time::Duration;

use redquorum::{Error, RedLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (urls, _cluster) = redquorum::testkit::env_or_local(3)?;
    println!("nodes: {}", urls.join(" "));
    let client = |owner: &str, ttl: Duration| {
        RedLock::builder()
            .nodes(&urls)
            .ttl(ttl)
            // The default (ttl / 200, at least 50 ms) suits a quiet network; a busy laptop or CI
            // machine running a debug build needs more.
            .node_timeout(Duration::from_millis(100))
            .owner(owner)
            .build()
    };
    let billing_worker = client("billing-worker-1", Duration::from_secs(5)).await?;
    let observer = client("observer", Duration::from_secs(5)).await?;

    // Groups share the connections of their RedLock; equal key names in different groups are
    // different locks (Redis keys `<namespace>:<group>:<key>`).
    let billing = billing_worker.group("billing")?;
    let shipping = billing_worker.group("shipping")?;
    let invoice = billing
        .try_acquire("invoice-7")
        .await?
        .ok_or("billing/invoice-7 is free")?;
    let parcel = shipping
        .try_acquire("invoice-7")
        .await?
        .ok_or("shipping/invoice-7 is free")?;
    println!(
        "held {} and {}",
        billing.redis_key("invoice-7")?,
        shipping.redis_key("invoice-7")?
    );

    // Ownership queries from another client: the owner label a majority agrees on.
    let seen = observer.group("billing")?;
    let owner = seen.owner("invoice-7").await?;
    println!("owner of billing/invoice-7: {owner:?}");
    assert_eq!(owner.as_deref(), Some("billing-worker-1"));
    assert!(seen.is_locked("invoice-7").await?);
    assert!(
        seen.try_acquire("invoice-7").await?.is_none(),
        "held by billing-worker-1"
    );
    // The default group is yet another namespace: nothing is held there.
    assert!(!observer.is_locked("invoice-7").await?);
    println!("default/invoice-7 is locked: false");

    // is_held asks the nodes whether our value is still on a majority.
    println!("guard.is_held(): {}", invoice.is_held().await?);
    invoice.release().await?;
    parcel.release().await?;
    assert!(!seen.is_locked("invoice-7").await?);
    assert_eq!(seen.owner("invoice-7").await?, None);
    println!("after release: is_locked false, owner None");

    // A lease that runs out: is_held turns false, fires the lost signal, and release says so.
    let short = client("short-lived", Duration::from_millis(300)).await?;
    let guard = short.try_acquire("report").await?.ok_or("report is free")?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held = guard.is_held().await?;
    println!(
        "after 400 ms on a 300 ms lease: is_held {held}, lost {}",
        guard.lost().is_cancelled()
    );
    assert!(!held && guard.lost().is_cancelled());
    match guard.release().await {
        Err(e @ Error::NotHeld { .. }) => println!("release: {e}"),
        other => return Err(format!("expected NotHeld, got {other:?}").into()),
    }

    // Group names cannot contain ':' (keys of different groups would collide).
    assert!(matches!(observer.group("a:b"), Err(Error::Config { .. })));
    println!("done");
    Ok(())
}
