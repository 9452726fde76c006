//! The chaos soak: clients contend for a few keys on 5 local masters (behind fault proxies,
//! AOF with fsync always) while a seeded nemesis kills/restarts, pauses/resumes, slows down and
//! partitions a minority of them; then the safety checks run.
//!
//! ```text
//! cargo run --release --features testkit --example soak -- SECONDS SEED [CLIENTS] [KEYS] [PROCESSES]
//! cargo run --features testkit --example soak -- 10 1    # a quick debug-build run
//! SOAK_PRIMITIVE=rw cargo run --features testkit --example soak -- 10 1     # read-write locks
//! SOAK_PRIMITIVE=sem:3 cargo run --features testkit --example soak -- 10 1  # semaphores, 3 permits
//! ```
//! `SOAK_PRIMITIVE` (`mutex` by default, `rw`, `sem:<permits>`) picks what the clients take:
//! the report's "max holders" then shows the readers' or permits' concurrency.
//! With PROCESSES > 0 the clients run in that many separate OS processes (CLIENTS each), with
//! the oracle in a separate redis-server. Prints grants, faults by kind, errors, violations
//! (must be 0), the longest stall and acquire latency p50/p99 with and without an active
//! fault; exits 1 on any violation.
use std::time::Duration;

use redquorum::testkit::{LocalCluster, Primitive, Workload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--child") {
        Workload::run_child(&raw[1..]).await?;
        return Ok(());
    }
    let args: Vec<u64> = raw
        .iter()
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("usage: soak SECONDS SEED [CLIENTS] [KEYS] [PROCESSES] ({e})"))?;
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
    let processes = usize::try_from(args.get(4).copied().unwrap_or(0))?;
    if let Ok(p) = std::env::var("SOAK_PRIMITIVE") {
        workload.primitive = Primitive::parse(&p)
            .ok_or_else(|| format!("SOAK_PRIMITIVE={p:?}: use mutex, rw or sem:<permits>"))?;
    }
    println!(
        "soak: {secs} s, seed {seed}, {:?}, {} clients x {} processes, {} keys, 5 masters (AOF, fsync always), ttl {:?}",
        workload.primitive,
        workload.clients,
        processes.max(1),
        workload.keys,
        workload.ttl
    );
    let report = if processes == 0 {
        workload.run(&cluster).await?
    } else {
        let exe = std::env::current_exe()?;
        workload
            .run_processes(&cluster, processes, || {
                let mut cmd = std::process::Command::new(&exe);
                cmd.arg("--child");
                cmd
            })
            .await?
    };
    println!("{report}");
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
