//! Workers contending for one lock on 5 Redis masters, with a node killed half-way.
//!
//! ```text
//! cargo run --features testkit --example demo            # starts 5 local masters itself
//! REDQUORUM_NODES=redis://h1:6379,redis://h2:6379,redis://h3:6379 \
//!     cargo run --features testkit --example demo        # uses your masters
//! ```
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redquorum::{Context, RedLock};
use tokio::time::Instant;

const WORKERS: usize = 4;
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (urls, cluster) = redquorum::testkit::env_or_local(5)?;
    if cluster.is_some() {
        println!("started 5 local redis-server masters: {}", urls.join(" "));
    }
    let cluster = Arc::new(cluster);
    let start = Instant::now();
    let grants = Arc::new(AtomicUsize::new(0));
    let holders = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 1..=WORKERS {
        let locks = RedLock::builder()
            .nodes(&urls)
            .ttl(Duration::from_secs(2))
            .owner(format!("worker-{w}"))
            .build()
            .await?;
        let (cluster, grants, holders) = (cluster.clone(), grants.clone(), holders.clone());
        tasks.push(tokio::spawn(async move {
            for round in 1..=ROUNDS {
                let asked = Instant::now();
                let ctx = Context::with_timeout(Duration::from_secs(10));
                let guard = locks.acquire(&ctx, "demo-job").await?;
                let n = grants.fetch_add(1, Ordering::SeqCst) + 1;
                let inside = holders.fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(inside, 1, "two holders at once");
                println!(
                    "{:>6.0?}  worker-{w} was granted the lock (round {round}, waited {:>4} ms, validity {} ms, {} nodes granted)",
                    start.elapsed(),
                    asked.elapsed().as_millis(),
                    guard.validity().as_millis(),
                    guard.granted_nodes(),
                );
                if n == WORKERS * ROUNDS / 2 {
                    if let Some(c) = cluster.as_ref() {
                        c.kill(0)?;
                        println!("{:>6.0?}  -- killed master 0: 4 of 5 left, locking goes on --", start.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await; // the critical section
                holders.fetch_sub(1, Ordering::SeqCst);
                // Printed while the lock is still held, so that it comes before the next
                // holder's grant: printed after `release()` returned, it could follow it.
                println!("{:>6.0?}  worker-{w} releases the lock", start.elapsed());
                guard.release().await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    println!(
        "{} grants between {WORKERS} workers in {:.0?}; never two holders at once",
        grants.load(Ordering::SeqCst),
        start.elapsed()
    );
    Ok(())
}
