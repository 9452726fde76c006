//! Ten thousand waiters: N = 5 local masters, KEYS keys held by another client, PER_KEY tasks
//! of one process waiting for each. What the masters pay while they wait (commands/s), what
//! the waiting process pays (RSS per waiter, connections), and the hand-off once the holder
//! releases every key (grants/s, commands per grant). redquorum and rslock run on the same
//! masters, each in a fresh child process (so one's memory does not hide the other's),
//! alternating, REPS times each.
//!
//! ```text
//! cargo bench --features testkit --bench waiters [-- KEYS PER_KEY WINDOW_SECS REPS]
//! ```
//! Defaults: 1000 keys, 10 waiters per key, a 5 s window, 2 repetitions.
#[allow(dead_code)] // the rest of common is for compare and cost
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Res, NAMES};
use redquorum::testkit::LocalCluster;
use redquorum::{Context, RedLock};
use rslock::LockManager;
use tokio::time::Instant;

/// The holder's lease: longer than a whole run, so only its release frees the keys.
const HOLD_TTL: Duration = Duration::from_secs(600);
/// The waiters' lease (both libraries' default-like 10 s).
const TTL: Duration = Duration::from_secs(10);
/// Time for the waiters to settle (first attempts, subscriptions) before the window.
const SETTLE: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let a = &args[pos + 1..];
        let urls: Vec<String> = a[1].split(',').map(str::to_owned).collect();
        let (keys, per_key, window) = (a[2].parse()?, a[3].parse()?, a[4].parse()?);
        let r = child(&a[0], &urls, keys, per_key, Duration::from_secs(window)).await?;
        println!("{}", r.line());
        return Ok(());
    }
    let nums: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let keys = nums.first().copied().unwrap_or(1000);
    let per_key = nums.get(1).copied().unwrap_or(10);
    let window = nums.get(2).copied().unwrap_or(5);
    let reps = nums.get(3).copied().unwrap_or(2);
    let cluster = LocalCluster::start(5)?;
    let urls = cluster.urls().join(",");
    println!(
        "waiters: N=5, {keys} keys held by another client, {per_key} waiting tasks per key ({} \
         waiters in one process), {window} s window, {reps} runs each, alternating",
        keys * per_key
    );
    let mut results: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..reps {
        for (lib, name) in NAMES.iter().enumerate() {
            let out = Command::new(std::env::current_exe()?)
                .args(["--child", name, &urls])
                .args([keys, per_key, window].map(|n| n.to_string()))
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().last().unwrap_or_default();
            let figures = Figures::parse(line).ok_or_else(|| {
                format!(
                    "{name} run failed: {line:?} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            println!("  {name:<10} {}", figures.show());
            results[lib].push(figures);
        }
    }
    println!("\nranges over {reps} runs:");
    println!(
        "| while {} tasks wait | {} | {} |",
        keys * per_key,
        NAMES[0],
        NAMES[1]
    );
    println!("|---|---|---|");
    let row = |label: &str, f: &dyn Fn(&Figures) -> f64, digits: usize| {
        let cell = |v: &[Figures]| {
            let xs: Vec<f64> = v.iter().map(f).collect();
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = (format!("{lo:.digits$}"), format!("{hi:.digits$}"));
            if lo == hi {
                lo
            } else {
                format!("{lo}-{hi}")
            }
        };
        println!(
            "| {label} | {} | {} |",
            cell(&results[0]),
            cell(&results[1])
        );
    };
    row("commands/s on the 5 masters", &|f| f.idle_cmds_per_s, 0);
    row("RSS per waiter (KiB)", &|f| f.rss_per_waiter_kib, 2);
    row(
        "connections opened to wait (5 masters)",
        &|f| f.connections,
        0,
    );
    row("after release: grants/s", &|f| f.grants_per_s, 0);
    row("commands per grant", &|f| f.cmds_per_grant, 1);
    Ok(())
}

/// One run's figures.
struct Figures {
    idle_cmds_per_s: f64,
    rss_per_waiter_kib: f64,
    connections: f64,
    grants_per_s: f64,
    cmds_per_grant: f64,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.idle_cmds_per_s,
            self.rss_per_waiter_kib,
            self.connections,
            self.grants_per_s,
            self.cmds_per_grant
        )
    }

    fn parse(line: &str) -> Option<Figures> {
        let v: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        match v[..] {
            [a, b, c, d, e] => Some(Figures {
                idle_cmds_per_s: a,
                rss_per_waiter_kib: b,
                connections: c,
                grants_per_s: d,
                cmds_per_grant: e,
            }),
            _ => None,
        }
    }

    fn show(&self) -> String {
        format!(
            "{:>8.0} commands/s waiting  {:>5.2} KiB/waiter  {:>4.0} connections  {:>7.0} \
             grants/s  {:>6.1} commands/grant",
            self.idle_cmds_per_s,
            self.rss_per_waiter_kib,
            self.connections,
            self.grants_per_s,
            self.cmds_per_grant
        )
    }
}

/// The holder and the waiters of one library.
enum Lib {
    Rq {
        holder: RedLock,
        waiters: RedLock,
    },
    Rs {
        holder: LockManager,
        waiters: LockManager,
    },
}

/// A held key, to release when the window is over.
enum Held {
    Rq(redquorum::LockGuard),
    Rs(rslock::Lock),
}

async fn child(
    name: &str,
    urls: &[String],
    keys: usize,
    per_key: usize,
    window: Duration,
) -> Res<Figures> {
    let lib = if name == NAMES[0] {
        let build = |ttl| RedLock::builder().nodes(urls).ttl(ttl).build();
        Lib::Rq {
            holder: build(HOLD_TTL).await?,
            waiters: build(TTL).await?,
        }
    } else {
        Lib::Rs {
            holder: LockManager::new(urls.to_vec()),
            waiters: LockManager::new(urls.to_vec()),
        }
    };
    let key = |k: usize| format!("waiters:{k}");
    let mut held = Vec::with_capacity(keys);
    for k in 0..keys {
        held.push(match &lib {
            Lib::Rq { holder, .. } => {
                Held::Rq(holder.acquire(&Context::with_timeout(TTL), &key(k)).await?)
            }
            Lib::Rs { holder, .. } => Held::Rs(holder.lock(key(k).as_str(), HOLD_TTL).await?),
        });
    }
    let rss_before = rss_kib()?;
    let clients_before = clients(urls)?;
    let granted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(keys * per_key);
    for k in 0..keys {
        for _ in 0..per_key {
            let (granted, key) = (granted.clone(), key(k));
            tasks.push(match &lib {
                Lib::Rq { waiters, .. } => {
                    let locks = waiters.clone();
                    tokio::spawn(async move {
                        let ctx = Context::with_timeout(HOLD_TTL);
                        let g = locks.acquire(&ctx, &key).await.map_err(|e| e.to_string())?;
                        granted.fetch_add(1, Ordering::SeqCst);
                        g.release().await.map_err(|e| e.to_string())
                    })
                }
                Lib::Rs { waiters, .. } => {
                    let locks = waiters.clone();
                    tokio::spawn(async move {
                        let l = locks
                            .acquire_no_guard(key.as_str(), TTL)
                            .await
                            .map_err(|e| e.to_string())?;
                        granted.fetch_add(1, Ordering::SeqCst);
                        locks.unlock(&l).await;
                        Ok::<(), String>(())
                    })
                }
            });
        }
    }
    tokio::time::sleep(SETTLE).await;
    let c0 = commands(urls)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let idle = (commands(urls)? - c0) as f64 / t0.elapsed().as_secs_f64();
    let rss = (rss_kib()? - rss_before) as f64 / (keys * per_key) as f64;
    let connections = clients(urls)?.saturating_sub(clients_before) as f64;
    if granted.load(Ordering::SeqCst) != 0 {
        return Err("a waiter was granted a held key".into());
    }
    let c1 = commands(urls)?;
    let t1 = Instant::now();
    for h in held {
        match (h, &lib) {
            (Held::Rq(g), _) => g.release().await?,
            (Held::Rs(l), Lib::Rs { holder, .. }) => holder.unlock(&l).await,
            (Held::Rs(_), Lib::Rq { .. }) => return Err("one library per run".into()),
        }
    }
    for t in tasks {
        t.await?.map_err(|e| format!("waiter: {e}"))?;
    }
    let drain = t1.elapsed().as_secs_f64();
    let waiters = (keys * per_key) as f64;
    Ok(Figures {
        idle_cmds_per_s: idle,
        rss_per_waiter_kib: rss,
        connections,
        grants_per_s: waiters / drain,
        cmds_per_grant: (commands(urls)? - c1) as f64 / waiters,
    })
}

/// This process's resident memory, KiB.
fn rss_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

/// One INFO field summed over the masters.
fn info_sum(urls: &[String], section: &str, field: &str) -> Res<u64> {
    let mut sum = 0;
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        let info: String = redis::cmd("INFO").arg(section).query(&mut conn)?;
        sum += info
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {field} in INFO {section}"))?;
    }
    Ok(sum)
}

/// Commands the masters processed (the readings' own INFO calls, five each, are noise here).
fn commands(urls: &[String]) -> Res<u64> {
    info_sum(urls, "stats", "total_commands_processed")
}

/// Clients connected to the masters, not counting the reading's own connection.
fn clients(urls: &[String]) -> Res<u64> {
    Ok(info_sum(urls, "clients", "connected_clients")?.saturating_sub(1))
}
