//! A chaos test with the testkit: with a minority of masters crashed or frozen, locks are still
//! granted; with a majority gone, `acquire` fails with `Error::NoQuorum`; after healing, locking
//! resumes. Always starts its own 5 local masters (it kills and pauses them).
//!
//! ```text
//! cargo run --features testkit --example chaos
//! ```
use std::time::Duration;

use redquorum::testkit::LocalCluster;
use redquorum::{Context, Error, RedLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = LocalCluster::start(5)?; // every redis-server is killed when this drops
    let locks = RedLock::builder()
        .nodes(cluster.urls())
        .node_timeout(Duration::from_millis(200)) // what a frozen node costs each round
        .build()
        .await?;
    let ctx = || Context::with_timeout(Duration::from_secs(3));

    cluster.kill(0)?; // a crash
    cluster.pause(1)?; // SIGSTOP: connections hang, like a partition or a long GC pause
    let guard = locks.acquire(&ctx(), "orders:42").await?;
    println!(
        "1 killed, 1 paused: acquired on {} of 5 nodes",
        guard.granted_nodes()
    );
    guard.release().await?;

    cluster.kill(2)?; // now only 2 of 5 answer
    let err = locks
        .acquire(&ctx(), "orders:42")
        .await
        .expect_err("2 of 5 cannot grant");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    println!("3 of 5 down: {err}");

    cluster.resume(1)?;
    cluster.restart(0)?;
    cluster.restart(2)?;
    locks.acquire(&ctx(), "orders:42").await?.release().await?;
    println!("healed: acquired and released again");
    Ok(())
}
