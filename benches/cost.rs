//! What one acquire + release costs, redquorum beside rslock on the same five local masters:
//! heap allocations, syscalls, CPU time in the client and CPU time in the five `redis-server`s.
//!
//! ```text
//! cargo bench --features testkit --bench cost
//! ```
//!
//! Two workloads per library: one task cycling on one key (the cost of a single acquire and
//! release, nothing overlapping), and 64 tasks each cycling on its own key (where requests to a
//! node share its connection and its replies). Allocations are counted by a global allocator
//! (everything the process allocates: redis-rs, tokio, the library); syscalls by
//! `perf stat -e raw_syscalls:sys_enter` attached to this process when `perf` is installed;
//! client CPU from `/proc/self/task/*/schedstat`; server CPU from `INFO cpu` of every node.
//! `-- redquorum 1` (a library and a task count) runs only that workload.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{BoxError, Libs, Res, NAMES};
use redquorum::testkit::{LocalCluster, SCRIPT_COMMANDS};
use tokio::time::Instant;

/// Counts allocations (not frees: one malloc is one allocation whoever frees it).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counters read before and after a workload.
#[derive(Clone, Copy, Default)]
struct Reading {
    allocs: u64,
    bytes: u64,
    client_ns: u64,
    server_us: f64,
    requests: u64,
}

impl Reading {
    fn take(cluster: &LocalCluster) -> Res<Reading> {
        Ok(Reading {
            allocs: ALLOCS.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
            client_ns: client_cpu_ns()?,
            server_us: server_cpu_us(cluster)?,
            requests: cluster.command_stats()?.requests(SCRIPT_COMMANDS),
        })
    }
}

/// CPU time of every thread of this process so far, in ns.
fn client_cpu_ns() -> Res<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("unreadable schedstat")?;
    }
    Ok(total)
}

/// CPU time (user + system) of every node's `redis-server`, in µs.
fn server_cpu_us(cluster: &LocalCluster) -> Res<f64> {
    let mut total = 0.0;
    for i in 0..cluster.len() {
        let mut conn = redis::Client::open(cluster.direct_url(i)?)?.get_connection()?;
        let info: String = redis::cmd("INFO").arg("cpu").query(&mut conn)?;
        for line in info.lines() {
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                total += v.trim().parse::<f64>()? * 1e6;
            }
        }
    }
    Ok(total)
}

/// `perf stat` counting this process' syscalls until [`Syscalls::stop`], if perf runs here.
struct Syscalls(Option<Child>);

impl Syscalls {
    fn start() -> Syscalls {
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        // perf needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_millis(300));
        Syscalls(child)
    }

    fn stop(self) -> Option<u64> {
        let child = self.0?;
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .ok()?;
        let out = child.wait_with_output().ok()?;
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("raw_syscalls"))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    }
}

/// `tasks` tasks of `lib`, each on its own key, `cycles` cycles each; per-cycle costs.
async fn measure(
    libs: &Libs,
    cluster: &LocalCluster,
    lib: usize,
    tasks: usize,
    cycles: usize,
) -> Res<Vec<String>> {
    let syscalls = Syscalls::start();
    let before = Reading::take(cluster)?;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let libs = libs.clone();
            let key = format!("cost-{}-{t}", NAMES[lib]);
            tokio::spawn(async move {
                for _ in 0..cycles {
                    libs.cycle(lib, &key).await?;
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    let wall = started.elapsed();
    let after = Reading::take(cluster)?;
    let sys = syscalls.stop();
    let n = (tasks * cycles) as f64;
    Ok(vec![
        format!("{:.0}", n / wall.as_secs_f64()),
        format!("{:.1}", (after.allocs - before.allocs) as f64 / n),
        format!("{:.0}", (after.bytes - before.bytes) as f64 / n),
        sys.map_or("n/a".into(), |s| format!("{:.1}", s as f64 / n)),
        format!(
            "{:.1}",
            (after.client_ns - before.client_ns) as f64 / n / 1e3
        ),
        format!("{:.1}", (after.server_us - before.server_us) / n),
        format!("{:.2}", (after.requests - before.requests) as f64 / n),
    ])
}

#[tokio::main]
async fn main() -> Res<()> {
    let cluster = LocalCluster::start(5)?;
    let urls = cluster.urls();
    let libs = Libs::new(&urls).await?;
    println!(
        "| workload | library | cycles/s | allocations | bytes allocated | syscalls | client CPU µs | servers' CPU µs | requests |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // `-- LIBRARY TASKS` runs only that (e.g. under a heap profiler).
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let only = |lib: usize, tasks: usize| match args.as_slice() {
        [name, n, ..] => name == NAMES[lib] && n.parse() == Ok(tasks),
        _ => true,
    };
    for (tasks, cycles, name) in [(1, 3_000, "1 task"), (64, 300, "64 tasks, distinct keys")] {
        for round in 0..2 {
            for lib in [round % 2, 1 - round % 2]
                .into_iter()
                .filter(|&l| only(l, tasks))
            {
                let cells = measure(&libs, &cluster, lib, tasks, cycles).await?;
                println!("| {name} | {} | {} |", NAMES[lib], cells.join(" | "));
            }
        }
    }
    println!("(per acquire + release cycle except cycles/s; two interleaved rounds per library)");
    Ok(())
}
