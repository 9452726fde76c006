//! What the crate logs: a `tracing-subscriber` fmt layer showing the `redquorum` target at
//! debug level, then a few acquisitions (uncontended, contended, extended, released).
//!
//! ```text
//! cargo run --features testkit --example tracing          # starts 3 local masters itself
//! RUST_LOG=redquorum=trace cargo run --features testkit --example tracing   # another filter
//! REDQUORUM_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run --features testkit --example tracing      # uses your masters (docs/docker.md)
//! ```
use std::time::Duration;

use redquorum::{Context, RedLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RUST_LOG wins when set; otherwise debug and above from the crate only.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("redquorum=debug"));
    tracing_subscriber::registry()
        .with(fmt::layer())
        .with(filter)
        .init();

    let (urls, _cluster) = redquorum::testkit::env_or_local(3)?;
    println!("nodes: {}", urls.join(" "));
    let locks = RedLock::builder()
        .nodes(&urls)
        .ttl(Duration::from_secs(2))
        // The default (ttl / 200, at least 50 ms) suits a quiet network; a busy laptop or CI
        // machine running a debug build needs more.
        .node_timeout(Duration::from_millis(250))
        .owner("tracing-example")
        .build()
        .await?;
    let ctx = Context::with_timeout(Duration::from_secs(5));

    println!("-- uncontended acquire, then release (\"lock acquired\", \"lock released\")");
    locks.acquire(&ctx, "report").await?.release().await?;

    println!("-- extend (\"lock extended\")");
    let mut guard = locks.acquire(&ctx, "report").await?;
    guard.extend(Duration::from_secs(2)).await?;
    guard.release().await?;

    println!("-- contended: a second client waits until the first releases (\"lock busy\")");
    let other = RedLock::builder()
        .nodes(&urls)
        .ttl(Duration::from_secs(2))
        .node_timeout(Duration::from_millis(250))
        .build()
        .await?;
    let holder = locks.acquire(&ctx, "report").await?;
    let waiter = tokio::spawn(async move {
        let ctx = Context::with_timeout(Duration::from_secs(5));
        other.acquire(&ctx, "report").await?.release().await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.release().await?;
    waiter.await??;
    println!("done");
    Ok(())
}
