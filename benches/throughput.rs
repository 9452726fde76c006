//! Throughput and latency of acquire + release on 5 local masters, and the cost of the
//! in-flight semaphore at several sizes (how the `max_in_flight` default was chosen).
//!
//! ```text
//! cargo bench --features testkit --bench throughput [-- SECONDS]
//! ```
use std::time::Duration;

use redquorum::testkit::LocalCluster;
use redquorum::RedLock;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let cluster = LocalCluster::start(5)?;
    let build = |permits: usize| {
        RedLock::builder()
            .nodes(cluster.urls())
            .ttl(Duration::from_secs(10))
            .max_in_flight(permits)
            .build()
    };

    // 1. Uncontended latency: one task, acquire + release.
    let locks = build(1024).await?;
    for _ in 0..200 {
        locks
            .try_acquire("warm")
            .await?
            .ok_or("held")?
            .release()
            .await?;
    }
    let mut samples = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let t = Instant::now();
        let g = locks.try_acquire("lat").await?.ok_or("held")?;
        g.release().await?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    println!(
        "uncontended acquire+release, N=5: p50 {:?}  p99 {:?}  ({} samples)",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples.len()
    );

    // 2. 64 tasks on distinct keys, for several semaphore sizes.
    println!("64 tasks on distinct keys, {secs} s each:");
    for permits in [8, 64, 320, 1024, 4096] {
        let locks = build(permits).await?;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let locks = locks.clone();
                tokio::spawn(async move {
                    let key = format!("bench-{t}");
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let g = locks
                            .try_acquire(&key)
                            .await?
                            .ok_or(redquorum::Error::Config {
                                reason: "distinct key was held".into(),
                            })?;
                        g.release().await?;
                        n += 1;
                    }
                    Ok::<_, redquorum::Error>(n)
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        println!(
            "  max_in_flight {permits:>5}: {:>8.0} cycles/s",
            total as f64 / secs as f64
        );
    }
    Ok(())
}
