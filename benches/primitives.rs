//! Read-write locks and semaphores beside the mutex, on 5 local masters: how many grants a
//! second each gets under contention, and what each grant costs in Redis commands; with
//! `distributed-lock-redis`'s read-write lock (its multi-server RedLock mode) on the same
//! masters for comparison.
//!
//! ```text
//! cargo bench --features testkit --bench primitives [-- SECONDS]
//! ```
//!
//! Workloads (each for SECONDS, default 3, every task acquiring and releasing in a loop with
//! nothing held in between):
//! - one key, 8 readers and 1 writer (`read`/`write`), and the mutex with the same 9 tasks
//!   (in one `RedLock`, where local hand-off serves most grants, and as 9 separate clients);
//! - a semaphore of 4 permits with 16 tasks, and the mutex with the same 16 tasks;
//! - `distributed-lock-redis`: one key, 8 readers and 1 writer.
//!
//! A grant costs at least 2 requests per master (acquire and release), 10 on 5 masters, except
//! a mutex grant handed on locally (no request). "requests/grant": commands the clients sent per grant (scripts count once; the mutex's
//! plain `SET NX`/`PTTL` too), "commands/grant": everything Redis ran per grant, the commands
//! inside scripts included, summed over the 5 masters.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distributed_lock_core::traits::{
    DistributedReaderWriterLock, LockHandle, ReaderWriterLockProvider,
};
use redquorum::testkit::{CommandStats, LocalCluster};
use redquorum::{Context, RedLock};
use tokio::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TTL: Duration = Duration::from_secs(10);

/// What one workload did: grants of each kind (reads or permits first, then writes), failed
/// acquisitions, and the commands it cost.
struct Run {
    grants: [u64; 3],
    used: CommandStats,
    /// Mutex acquires: plain commands, not scripts.
    plain: bool,
    secs: f64,
}

impl Run {
    fn print(&self, label: &str, kinds: [&str; 2]) {
        let total = (self.grants[0] + self.grants[1]).max(1);
        let failed = self.grants[2];
        // A mutex's acquire is a plain SET NX (and PTTL) the client sends; everything else
        // redquorum sends is one EVALSHA (the SETs and PTTLs inside scripts are not requests);
        // distributed-lock-redis sends its scripts with EVALSHA or EVAL.
        let mut requests = self.used.calls("evalsha") + self.used.calls("eval");
        if self.plain {
            requests += self.used.calls("set") + self.used.calls("pttl");
        }
        let mut line = format!(
            "{label:<44} {:>8.0} {}/s",
            self.grants[0] as f64 / self.secs,
            kinds[0]
        );
        if self.grants[1] > 0 || !kinds[1].is_empty() {
            line += &format!(
                "  {:>6.0} {}/s",
                self.grants[1] as f64 / self.secs,
                kinds[1]
            );
        }
        line += &format!(
            "   requests/grant {:>5.1}  commands/grant {:>5.1}",
            requests as f64 / total as f64,
            self.used.total() as f64 / total as f64
        );
        if failed > 0 {
            line += &format!("  ({failed} acquisitions failed)");
        }
        println!("{line}");
    }
}

/// Runs `tasks` loops of `cycle(task)` (each returns which counter a grant goes to) for
/// `secs` and counts the commands the masters ran meanwhile.
async fn run<F, Fut>(cluster: &LocalCluster, secs: u64, tasks: usize, cycle: F) -> Res<Run>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<usize>> + Send,
{
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let cycle = Arc::new(cycle);
    let before = cluster.command_stats()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (counts, cycle) = (counts.clone(), cycle.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    // A failed acquisition is counted, not fatal (the first is shown).
                    let which = match cycle(t).await {
                        Ok(which) => which,
                        Err(e) => {
                            if counts[2].load(Ordering::Relaxed) < 2 {
                                let e = e.to_string();
                                eprintln!("  failure: {}", e.lines().next().unwrap_or(""));
                            }
                            2
                        }
                    };
                    counts[which].fetch_add(1, Ordering::Relaxed);
                }
                Res::Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let background releases land before reading the counters.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let used = cluster.command_stats()?.since(&before);
    Ok(Run {
        grants: [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed)),
        used,
        secs,
        plain: false,
    })
}

#[tokio::main]
async fn main() -> Res<()> {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let cluster = LocalCluster::start(5)?;
    let urls = cluster.urls();
    let locks = RedLock::builder().nodes(&urls).ttl(TTL).build().await?;
    let ctx = || Context::with_timeout(Duration::from_secs(30));
    println!("5 local masters, ttl {TTL:?}, {secs} s per workload");

    // Uncontended: one task, try_read + release (compared with distributed-lock-redis below).
    let start = Instant::now();
    for _ in 0..200 {
        locks
            .try_read("solo")
            .await?
            .ok_or("held")?
            .release()
            .await?;
    }
    println!(
        "redquorum rw, uncontended try_read: 200 granted of 200 ({:.0} µs each)",
        start.elapsed().as_micros() as f64 / 200.0
    );

    // Read-write lock: 8 readers, 1 writer, one key.
    let l = locks.clone();
    let rw = run(&cluster, secs, 9, move |t| {
        let l = l.clone();
        async move {
            if t == 0 {
                l.write(&ctx(), "catalog").await?.release().await?;
                Ok(1)
            } else {
                l.read(&ctx(), "catalog").await?.release().await?;
                Ok(0)
            }
        }
    })
    .await?;
    rw.print(
        "redquorum read-write, 8 readers + 1 writer",
        ["reads", "writes"],
    );

    let l = locks.clone();
    let mutex9 = run(&cluster, secs, 9, move |_| {
        let l = l.clone();
        async move {
            l.acquire(&ctx(), "m9").await?.release().await?;
            Ok(0)
        }
    })
    .await?;
    let mutex9 = Run {
        plain: true,
        ..mutex9
    };
    mutex9.print("redquorum mutex, 9 tasks on one key", ["grants", ""]);

    // The same without local hand-off: 9 clients (one RedLock each), as 9 processes would be.
    let mut clients = Vec::new();
    for _ in 0..9 {
        clients.push(RedLock::builder().nodes(&urls).ttl(TTL).build().await?);
    }
    let clients = Arc::new(clients);
    let mutex9x = run(&cluster, secs, 9, move |t| {
        let l = clients[t].clone();
        async move {
            l.acquire(&ctx(), "m9x").await?.release().await?;
            Ok(0)
        }
    })
    .await?;
    let mutex9x = Run {
        plain: true,
        ..mutex9x
    };
    mutex9x.print("redquorum mutex, 9 clients on one key", ["grants", ""]);

    // distributed-lock-redis: its read-write lock over the same 5 masters (RedLock mode).
    let provider = distributed_lock_redis::RedisLockProvider::builder()
        .urls(&urls)
        .expiry(TTL)
        // Its default ratio (90 % of the expiry; the default 27 s assumes a 30 s expiry).
        .min_validity(TTL * 9 / 10)
        .build()
        .await?;
    let lock = Arc::new(provider.create_reader_writer_lock("catalog"));
    // Uncontended first: one task, try_acquire_read + release.
    let (mut ok, mut none, mut err) = (0, 0, 0);
    let start = Instant::now();
    for _ in 0..200 {
        match lock.try_acquire_read().await {
            Ok(Some(h)) => {
                ok += 1;
                h.release().await?;
            }
            Ok(None) => none += 1,
            Err(_) => err += 1,
        }
    }
    println!(
        "distributed-lock-redis rw, uncontended try_read: {ok} granted, {none} refused, {err} errors of 200 ({:.0} µs each)",
        start.elapsed().as_micros() as f64 / 200.0
    );
    let dlr = run(&cluster, secs, 9, move |t| {
        let lock = lock.clone();
        async move {
            let wait = Some(Duration::from_secs(30));
            if t == 0 {
                lock.acquire_write(wait).await?.release().await?;
                Ok(1)
            } else {
                lock.acquire_read(wait).await?.release().await?;
                Ok(0)
            }
        }
    })
    .await?;
    dlr.print(
        "distributed-lock-redis rw, 8 readers + 1 writer",
        ["reads", "writes"],
    );

    // Semaphore: 4 permits, 16 tasks.
    let sem = locks.semaphore("exports", 4)?;
    let semaphore = run(&cluster, secs, 16, move |_| {
        let sem = sem.clone();
        async move {
            sem.acquire(&ctx()).await?.release().await?;
            Ok(0)
        }
    })
    .await?;
    semaphore.print("redquorum semaphore k=4, 16 tasks", ["grants", ""]);

    let l = locks.clone();
    let mutex16 = run(&cluster, secs, 16, move |_| {
        let l = l.clone();
        async move {
            l.acquire(&ctx(), "m16").await?.release().await?;
            Ok(0)
        }
    })
    .await?;
    let mutex16 = Run {
        plain: true,
        ..mutex16
    };
    mutex16.print("redquorum mutex, 16 tasks on one key", ["grants", ""]);
    Ok(())
}
