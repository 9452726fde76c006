//! redquorum against rslock (an async Redlock crate on the same redis-rs), in one process, on
//! the same local `redis-server` masters, with the two libraries' batches interleaved
//! (alternating, the order swapped every round) so machine noise hits both alike. Prints a
//! table with both figures and their ratio; docs/benchmarks.md has a run and reads it.
//!
//! ```text
//! cargo bench --features testkit --bench compare
//! ```
//!
//! Both libraries use their defaults and a 10 s TTL. rslock's `lock` makes up to 3 attempts
//! 0-200 ms apart and waits for every node (redis-rs' 500 ms response timeout bounds a silent
//! one); redquorum returns as soon as a majority has answered (50 ms node timeout).
mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{BoxError, Libs, Res, NAMES, TTL};
use redquorum::testkit::LocalCluster;
use redquorum::testkit::SCRIPT_COMMANDS;
use redquorum::Context;
use tokio::time::Instant;

const HOLD: Duration = Duration::from_millis(1);

/// How much of a latency scenario each library runs: `cycles` in batches of `batch`, or fewer
/// if its measured time reaches `cap`.
#[derive(Clone, Copy)]
struct Plan {
    cycles: usize,
    batch: usize,
    cap: Duration,
}

impl Plan {
    const fn new(cycles: usize, batch: usize, cap_secs: u64) -> Plan {
        Plan {
            cycles,
            batch,
            cap: Duration::from_secs(cap_secs),
        }
    }
}

/// Latency samples of acquire + release, the libraries' batches alternating.
async fn interleaved(libs: &Libs, key: &str, plans: [Plan; 2]) -> Res<[Vec<Duration>; 2]> {
    let mut samples: [Vec<Duration>; 2] = Default::default();
    let mut spent = [Duration::ZERO; 2];
    let open = |s: &[Vec<Duration>; 2], spent: &[Duration; 2], lib: usize| {
        s[lib].len() < plans[lib].cycles && spent[lib] < plans[lib].cap
    };
    for round in 0.. {
        if !open(&samples, &spent, 0) && !open(&samples, &spent, 1) {
            break;
        }
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for lib in order {
            if !open(&samples, &spent, lib) {
                continue;
            }
            let n = plans[lib].batch.min(plans[lib].cycles - samples[lib].len());
            for _ in 0..n {
                let t = Instant::now();
                libs.cycle(lib, key).await?;
                let took = t.elapsed();
                samples[lib].push(took);
                spent[lib] += took;
            }
        }
    }
    for s in &mut samples {
        s.sort_unstable();
    }
    Ok(samples)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// One row of the table: both figures, rslock ÷ redquorum, and which is better.
struct Table {
    out: String,
}

impl Table {
    fn new() -> Table {
        let mut out = String::new();
        out.push_str("| scenario | redquorum | rslock | redquorum's advantage | better |\n");
        out.push_str("|---|---|---|---|---|\n");
        Table { out }
    }

    fn row(&mut self, scenario: &str, rq: f64, rs: f64, unit: &str, lower_is_better: bool) {
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}{unit}")
            } else {
                format!("{v:.1}{unit}")
            }
        };
        self.cells(scenario, rq, rs, fmt(rq), fmt(rs), lower_is_better);
    }

    fn latency(&mut self, scenario: &str, rq: Duration, rs: Duration) {
        let fmt = |d: Duration| {
            let us = d.as_secs_f64() * 1e6;
            if us < 10_000.0 {
                format!("{us:.0} µs")
            } else {
                format!("{:.1} ms", us / 1000.0)
            }
        };
        let (a, b) = (rq.as_secs_f64(), rs.as_secs_f64());
        self.cells(scenario, a, b, fmt(rq), fmt(rs), true);
    }

    fn cells(&mut self, scenario: &str, rq: f64, rs: f64, a: String, b: String, lower: bool) {
        // How many times better redquorum is (below 1: rslock is better).
        let ratio = if lower { rs / rq } else { rq / rs };
        let better = match ratio {
            r if (0.95..=1.05).contains(&r) => "tie (within 5 %)",
            r if r > 1.0 => "redquorum",
            _ => "rslock",
        };
        let _ = writeln!(
            self.out,
            "| {scenario} | {a} | {b} | {ratio:.2}x | {better} |"
        );
        println!("    -> {scenario}: redquorum {a}, rslock {b}, ratio {ratio:.2}");
    }
}

/// Notes for every library that stopped at its time cap before its planned cycles.
fn cap_notes(notes: &mut Vec<String>, scenario: &str, plans: [Plan; 2], s: &[Vec<Duration>; 2]) {
    for lib in 0..2 {
        if s[lib].len() < plans[lib].cycles {
            notes.push(format!(
                "{scenario}: {} stopped at its {:?} cap after {} of {} cycles",
                NAMES[lib],
                plans[lib].cap,
                s[lib].len(),
                plans[lib].cycles
            ));
        }
    }
}

fn counts(samples: &[Vec<Duration>; 2]) -> String {
    format!("({} / {} cycles)", samples[0].len(), samples[1].len())
}

#[tokio::main]
async fn main() -> Res<()> {
    let started = Instant::now();
    let mut table = Table::new();
    let mut notes = Vec::new();

    // 1. Uncontended latency, N=5.
    let cluster = LocalCluster::start(5)?;
    let urls = cluster.urls();
    let libs = Libs::new(&urls).await?;
    println!("1. uncontended acquire + release, N=5");
    let plans = [Plan::new(3_000, 200, 30); 2];
    let s = interleaved(&libs, "uncontended", plans).await?;
    cap_notes(&mut notes, "scenario 1", plans, &s);
    table.latency(
        &format!("uncontended acquire+release, N=5, p50 {}", counts(&s)),
        pct(&s[0], 50),
        pct(&s[1], 50),
    );
    table.latency(
        "uncontended acquire+release, N=5, p99",
        pct(&s[0], 99),
        pct(&s[1], 99),
    );

    // 2. Two of five nodes 20 ms away each way, through the fault proxies.
    println!("2. 2 of 5 nodes +20 ms each way");
    {
        let slow = LocalCluster::builder().nodes(5).proxied(true).start()?;
        let libs = Libs::new(&slow.urls()).await?;
        for i in 0..2 {
            slow.proxy(i)?.set_latency(Duration::from_millis(20));
        }
        let plans = [Plan::new(200, 25, 10); 2];
        let s = interleaved(&libs, "slow-nodes", plans).await?;
        cap_notes(&mut notes, "scenario 2", plans, &s);
        table.latency(
            &format!("2 of 5 nodes +20 ms each way, p50 {}", counts(&s)),
            pct(&s[0], 50),
            pct(&s[1], 50),
        );
    }

    // 3. One of five nodes frozen with SIGSTOP (connections open, nothing answered).
    println!("3. 1 of 5 nodes SIGSTOPped");
    {
        let frozen = LocalCluster::start(5)?;
        let libs = Libs::new(&frozen.urls()).await?;
        frozen.pause(4)?;
        let plans = [Plan::new(400, 50, 10), Plan::new(10, 2, 15)];
        let s = interleaved(&libs, "paused-node", plans).await;
        frozen.resume(4)?;
        let s = s?;
        cap_notes(&mut notes, "scenario 3", plans, &s);
        table.latency(
            &format!("1 of 5 nodes SIGSTOPped, p50 {}", counts(&s)),
            pct(&s[0], 50),
            pct(&s[1], 50),
        );
        notes.push(
            "scenario 3: rslock runs a fixed 10 cycles: each waits out redis-rs' 500 ms \
             response timeout on the frozen node, once acquiring and once releasing"
                .into(),
        );
    }

    // 4. Eight tasks contending for one key, 1 ms hold.
    println!("4. 8 tasks, one key, 1 ms hold");
    let (rounds, secs) = (8, 1.25);
    let mut acq = [0u64; 2];
    let mut cmds = [(0u64, 0u64); 2];
    let mut exhausted = 0;
    let mut busiest = [0u64; 2];
    let mut held_ns = 0u64;
    for round in 0..rounds {
        let lib = round % 2;
        let key = format!("contend-{}-{round}", NAMES[lib]);
        let before = cluster.command_stats()?;
        let (per_task, gave_up, held) = contend(&libs, lib, &key, 8, secs).await?;
        held_ns += held;
        let used = cluster.command_stats()?.since(&before);
        let n: u64 = per_task.iter().sum();
        busiest[lib] += per_task.iter().max().copied().unwrap_or(0);
        acq[lib] += n;
        exhausted += gave_up;
        cmds[lib].0 += used.total();
        cmds[lib].1 += used.requests(internal(lib));
        println!("  round {round} {:<9}: {n} acquisitions", NAMES[lib]);
    }
    let rate = |lib: usize| acq[lib] as f64 / ((rounds / 2) as f64 * secs);
    let per = |lib: usize, x: u64| x as f64 / acq[lib].max(1) as f64;
    table.row(
        "8 tasks, one key, 1 ms hold: acquisitions/s",
        rate(0),
        rate(1),
        " /s",
        false,
    );
    // One holder at a time: no library can beat one acquisition per hold.
    let mean_hold = held_ns as f64 / 1e9 / (acq[0] + acq[1]).max(1) as f64;
    let ceiling = 1.0 / mean_hold;
    table.row(
        "same: share of the ceiling (1 / mean hold)",
        100.0 * rate(0) / ceiling,
        100.0 * rate(1) / ceiling,
        " %",
        false,
    );
    notes.push(format!(
        "scenario 4: the 1 ms hold (a blocking sleep) took {:.3} ms on average, so at most \
         {ceiling:.0} acquisitions/s are possible",
        mean_hold * 1e3
    ));
    table.row(
        "same: share of the busiest of the 8 tasks (fair: 12.5 %)",
        100.0 * busiest[0] as f64 / acq[0].max(1) as f64,
        100.0 * busiest[1] as f64 / acq[1].max(1) as f64,
        " %",
        true,
    );
    table.row(
        "same: client requests per acquisition",
        per(0, cmds[0].1),
        per(1, cmds[1].1),
        "",
        true,
    );
    table.row(
        "same: total_commands_processed per acquisition",
        per(0, cmds[0].0),
        per(1, cmds[1].0),
        "",
        true,
    );
    notes.push(format!(
        "scenario 4: rslock via its retrying `lock` (3 attempts, random 0-200 ms apart, every \
         failed attempt unlocks on all nodes), called again when it gives up: it gave up \
         {exhausted} times; redquorum `acquire` with its default PubSub wait"
    ));

    // 5. 64 tasks on distinct keys.
    println!("5. 64 tasks, distinct keys");
    let (rounds, secs) = (12, 0.5);
    let mut cycles = [0u64; 2];
    for round in 0..rounds {
        let lib = round % 2;
        let n = distinct(&libs, lib, 64, secs).await?;
        cycles[lib] += n;
        println!("  round {round:>2} {:<9}: {n} cycles", NAMES[lib]);
    }
    table.row(
        "64 tasks, distinct keys: cycles/s",
        cycles[0] as f64 / ((rounds / 2) as f64 * secs),
        cycles[1] as f64 / ((rounds / 2) as f64 * secs),
        " /s",
        false,
    );
    drop(libs);
    drop(cluster);

    // 6. Cluster size.
    println!("6. uncontended p50 by N");
    for n in [1, 3, 5, 7] {
        let c = LocalCluster::start(n)?;
        let libs = Libs::new(&c.urls()).await?;
        let plans = [Plan::new(1_000, 200, 15); 2];
        let s = interleaved(&libs, "by-n", plans).await?;
        cap_notes(&mut notes, &format!("scenario 6, N={n}"), plans, &s);
        table.latency(
            &format!("uncontended p50, N={n} {}", counts(&s)),
            pct(&s[0], 50),
            pct(&s[1], 50),
        );
    }

    println!("\n{}", table.out);
    println!("Machine: {}", machine());
    println!("Settings: both libraries at their defaults with a 10 s TTL; nothing else changed.");
    for note in notes {
        println!("- {note}");
    }
    println!("total run time {:.0?}", started.elapsed());
    Ok(())
}

/// `tasks` tasks of library `lib` contend for `key` for `secs` seconds, each holding it for
/// 1 ms. Returns each task's acquisitions, how often rslock's `lock` gave up after its
/// retries, and the time spent holding the key in all (in ns).
async fn contend(
    libs: &Libs,
    lib: usize,
    key: &str,
    tasks: usize,
    secs: f64,
) -> Res<(Vec<u64>, u64, u64)> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let gave_up = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (rq, rs) = (libs.rq.clone(), libs.rs.clone());
            let (key, gave_up, held) = (key.to_owned(), gave_up.clone(), held.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    if lib == 0 {
                        match rq.acquire(&Context::with_deadline(end), &key).await {
                            Ok(g) => {
                                hold(&held); // the critical section
                                g.release().await?;
                                n += 1;
                            }
                            Err(e) if e.is_timeout() => break,
                            Err(e) => return Err(BoxError::from(e)),
                        }
                    } else {
                        match tokio::time::timeout_at(end, rs.lock(key.as_str(), TTL)).await {
                            Ok(Ok(lock)) => {
                                hold(&held);
                                rs.unlock(&lock).await;
                                n += 1;
                            }
                            Ok(Err(rslock::LockError::Unavailable)) => {
                                gave_up.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => return Err(BoxError::from(e)),
                            Err(_elapsed) => break,
                        }
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let mut per_task = Vec::with_capacity(tasks);
    for h in handles {
        per_task.push(h.await??);
    }
    Ok((
        per_task,
        gave_up.load(Ordering::Relaxed),
        held.load(Ordering::Relaxed),
    ))
}

/// The critical section: a blocking 1 ms sleep (it takes a little longer), timed into `held`.
fn hold(held: &AtomicU64) {
    let t = std::time::Instant::now();
    std::thread::sleep(HOLD);
    let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    held.fetch_add(ns, Ordering::Relaxed);
}

/// `tasks` tasks of library `lib`, each on its own key, for `secs` seconds: cycles done.
async fn distinct(libs: &Libs, lib: usize, tasks: usize, secs: f64) -> Res<u64> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let libs = Arc::new(libs.clone());
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let libs = libs.clone();
            tokio::spawn(async move {
                let key = format!("distinct-{}-{t}", NAMES[lib]);
                let mut n = 0u64;
                while Instant::now() < end {
                    libs.cycle(lib, &key).await?;
                    n += 1;
                }
                Ok::<_, BoxError>(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total)
}

/// The commands that run inside Redis without a client sending them: redquorum's scripts
/// ([`SCRIPT_COMMANDS`]); rslock sends SET itself and its script runs GET + DEL.
fn internal(lib: usize) -> &'static [&'static str] {
    if lib == 0 {
        SCRIPT_COMMANDS
    } else {
        &["get", "del"]
    }
}

/// CPUs, CPU model, `redis-server` and `rustc` versions, for the table's caption.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let version = |cmd: &str| {
        std::process::Command::new(cmd)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| format!("{cmd}: not found"))
    };
    format!(
        "{cpus} CPUs ({model}); {}; {}",
        version("redis-server"),
        version("rustc")
    )
}
