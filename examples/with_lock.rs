//! `with_lock`: acquire, keep the lease alive while the work runs, release at the end — and the
//! lost signal, which tells the work to stop when the lease can no longer be kept.
//!
//! ```text
//! cargo run --features testkit --example with_lock        # starts 5 local masters itself
//! REDQUORUM_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run --features testkit --example with_lock    # uses your masters (docs/docker.md)
//! ```
//!
//! The second part kills a majority of the masters while the work runs, so it only runs against
//! the local masters.
use std::time::Duration;

use redquorum::{Context, Error, RedLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (urls, cluster) = redquorum::testkit::env_or_local(3)?;
    println!("nodes: {}", urls.join(" "));
    // A short TTL so that renewals (at half the TTL) happen within the example.
    let locks = RedLock::builder()
        .nodes(&urls)
        .ttl(Duration::from_millis(600))
        // The default (ttl / 200, at least 50 ms) suits a quiet network; a busy laptop or CI
        // machine running a debug build needs more.
        .node_timeout(Duration::from_millis(150))
        .build()
        .await?;
    let ctx = Context::with_timeout(Duration::from_secs(5));

    // 1. The work takes 1.6 s, longer than the 600 ms TTL: the lease is renewed in the
    //    background, and the lock is released when the work returns.
    let steps = locks
        .with_lock(&ctx, "nightly-backup", |lease| async move {
            let lost = lease.lost();
            let mut done = 0;
            for _ in 0..8 {
                tokio::select! {
                    () = lost.cancelled() => break, // stop before acting without the lock
                    () = tokio::time::sleep(Duration::from_millis(200)) => done += 1,
                }
                println!(
                    "  step {done} done, validity {} ms",
                    lease.validity().as_millis()
                );
            }
            done
        })
        .await?;
    println!("with_lock: all {steps} steps ran under the lock (renewed past its 600 ms TTL)");
    assert!(
        !locks.is_locked("nightly-backup").await?,
        "released after the work"
    );

    // 2. A majority of masters dies while the work runs: renewals cannot reach a majority, the
    //    lost signal fires before the validity ends, and with_lock reports Error::LockLost.
    let Some(cluster) = cluster else {
        println!("(REDQUORUM_NODES is set: skipping the part that kills masters)");
        return Ok(());
    };
    let cluster = &cluster;
    let result = locks
        .with_lock(&ctx, "nightly-backup", |lease| async move {
            let lost = lease.lost();
            for i in 0..3 {
                cluster.kill(i).map_err(|e| e.to_string())?;
            }
            println!("  killed 3 of 5 masters while holding the lock");
            tokio::select! {
                () = lost.cancelled() => {
                    println!("  lost fired: stopping before the next step");
                    Ok::<_, String>("stopped")
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => Ok("finished (wrong!)"),
            }
        })
        .await;
    match result {
        Err(e @ Error::LockLost { .. }) => println!("with_lock: {e}"),
        other => return Err(format!("expected Error::LockLost, got {other:?}").into()),
    }
    println!("done");
    Ok(())
}
