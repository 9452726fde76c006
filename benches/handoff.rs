//! Hand-off under contention on N = 5 masters: tasks contend for one key, each holding it for
//! 1 ms. Reports acquisitions per second and Redis commands per acquisition (from INFO stats
//! `total_commands_processed`), in one process (8 tasks) and across 4 processes × 4 tasks.
//!
//! ```text
//! cargo bench --features testkit --bench handoff [-- SECONDS]
//! ```
use std::process::{Command, Stdio};
use std::time::Duration;

use redquorum::testkit::{CommandStats, LocalCluster, SCRIPT_COMMANDS};
use redquorum::{Context, RedLock, WaitStrategy};
use tokio::time::Instant;

const HOLD: Duration = Duration::from_millis(1);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        // Child process: <urls> <tasks> <secs> <strategy>; prints its acquisition count.
        let urls: Vec<String> = args[pos + 1].split(',').map(str::to_owned).collect();
        let tasks: usize = args[pos + 2].parse()?;
        let secs: u64 = args[pos + 3].parse()?;
        let strategy = strategy(&args[pos + 4]);
        let (n, held) = contend(&urls, tasks, secs, strategy).await?;
        println!("{n} {}", held.as_nanos());
        return Ok(());
    }
    let secs: u64 = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let cluster = LocalCluster::start(5)?;
    let urls = cluster.urls();
    println!("hand-off, N=5, 1 ms hold, {secs} s per run");
    for name in ["pubsub", "poll"] {
        let before = cluster.command_stats()?;
        let (n, held) = contend(&urls, 8, secs, strategy(name)).await?;
        let cmds = cluster.command_stats()?.since(&before);
        report(
            &format!("1 process  x 8 tasks, {name}"),
            n,
            cmds,
            secs,
            held,
        );

        let before = cluster.command_stats()?;
        let exe = std::env::current_exe()?;
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(&exe)
                    .args(["--child", &urls.join(","), "4", &secs.to_string(), name])
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut per_process = Vec::new();
        let mut held = Duration::ZERO;
        for child in children {
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut fields = text.split_whitespace();
            let n: u64 = fields.next().ok_or("no count from a child")?.parse()?;
            let ns: u64 = fields.next().ok_or("no hold time from a child")?.parse()?;
            per_process.push(n);
            held += Duration::from_nanos(ns);
        }
        let n = per_process.iter().sum();
        let cmds = cluster.command_stats()?.since(&before);
        report(
            &format!("4 processes x 4 tasks, {name}"),
            n,
            cmds,
            secs,
            held,
        );
        println!("  {:<30} per process: {per_process:?}", "");
    }
    Ok(())
}

fn strategy(name: &str) -> WaitStrategy {
    if name == "poll" {
        WaitStrategy::Poll
    } else {
        WaitStrategy::PubSub
    }
}

/// `held`: the time all holders spent in the critical section together, for the ceiling
/// (one holder at a time: at most 1 / mean hold acquisitions per second).
fn report(label: &str, acquisitions: u64, used: CommandStats, secs: u64, held: Duration) {
    let (commands, requests) = (used.total(), used.requests(SCRIPT_COMMANDS));
    let per = |x: u64| x as f64 / acquisitions.max(1) as f64;
    println!(
        "  {label:<30} {:>7.0} acquisitions/s  {:>5.1} requests/acquisition  {:>5.1} commands/acquisition",
        acquisitions as f64 / secs as f64,
        per(requests),
        per(commands),
    );
    let mean_hold = held.as_secs_f64() / acquisitions.max(1) as f64;
    let ceiling = 1.0 / mean_hold;
    let rate = acquisitions as f64 / secs as f64;
    println!(
        "  {:<30} mean hold {:.3} ms: ceiling {ceiling:.0}/s, reached {:.0} %",
        "",
        mean_hold * 1e3,
        100.0 * rate / ceiling
    );
    let calls: Vec<String> = ["set", "pttl", "evalsha", "publish", "del"]
        .iter()
        .map(|c| format!("{c} {:.2}", per(used.calls(c))))
        .collect();
    println!("  {:<30} per acquisition: {}", "", calls.join(", "));
}

/// `tasks` tasks on one RedLock contend for one key for `secs` seconds.
async fn contend(
    urls: &[String],
    tasks: usize,
    secs: u64,
    strategy: WaitStrategy,
) -> Result<(u64, Duration), redquorum::Error> {
    let locks = RedLock::builder()
        .nodes(urls)
        .ttl(Duration::from_secs(10))
        .wait_strategy(strategy)
        .build()
        .await?;
    let end = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let locks = locks.clone();
            tokio::spawn(async move {
                let (mut n, mut held) = (0u64, Duration::ZERO);
                while Instant::now() < end {
                    let ctx = Context::with_deadline(end);
                    match locks.acquire(&ctx, "handoff").await {
                        Ok(g) => {
                            let started = Instant::now();
                            std::thread::sleep(HOLD); // the critical section
                            held += started.elapsed();
                            g.release().await?;
                            n += 1;
                        }
                        Err(e) if e.is_timeout() => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok((n, held))
            })
        })
        .collect();
    let (mut total, mut held) = (0, Duration::ZERO);
    for h in handles {
        let (n, h) = h.await.map_err(|e| redquorum::Error::Config {
            reason: e.to_string(),
        })??;
        total += n;
        held += h;
    }
    Ok((total, held))
}
