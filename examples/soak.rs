//! The chaos soak: clients contend for a few keys on 5 local masters (behind fault proxies,
//! AOF with fsync always) while a seeded nemesis kills/restarts, pauses/resumes, slows down and
//! partitions a minority of them; then the safety checks run.
//!
//! ```text
//! cargo run --release --features testkit --example soak -- SECONDS SEED [CLIENTS] [KEYS]
//! ```
//! Prints grants, faults by kind, errors, violations (must be 0), the longest stall and
//! acquire latency p50/p99 with and without an active fault; exits 1 on any violation.
use std::time::Duration;

use redquorum::testkit::{LocalCluster, Workload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("usage: soak SECONDS SEED [CLIENTS] [KEYS] ({e})"))?;
    let secs = args.first().copied().unwrap_or(60);
    let seed = args.get(1).copied().unwrap_or(1);
    let mut builder = LocalCluster::builder()
        .nodes(5)
        .proxied(true)
        .appendonly(true);
    if std::path::Path::new("/dev/shm").is_dir() {
        builder = builder.base_dir("/dev/shm");
    }
    let cluster = builder.start()?;
    let mut workload = Workload::new(Duration::from_secs(secs), seed);
    if let Some(&clients) = args.get(2) {
        workload.clients = usize::try_from(clients)?;
    }
    if let Some(&keys) = args.get(3) {
        workload.keys = usize::try_from(keys)?.max(1);
    }
    println!(
        "soak: {secs} s, seed {seed}, {} clients, {} keys, 5 masters (AOF, fsync always), ttl {:?}",
        workload.clients, workload.keys, workload.ttl
    );
    let report = workload.run(&cluster).await?;
    println!("{report}");
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
