//! `redquorum demo`: 5 local masters, a few workers handing one lock to each other, and a
//! master killed half-way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redquorum::testkit::LocalCluster;
use redquorum::{Context, RedLock};
use tokio::time::Instant;

use crate::cli::DemoArgs;
use crate::exit::{self, Failure};

const NODES: usize = 5;
const KEY: &str = "demo-job";
/// How long each worker holds the lock.
const HOLD: Duration = Duration::from_millis(150);
const TTL: Duration = Duration::from_secs(3);

/// What the workers share.
struct Board {
    start: Instant,
    /// The last holder, to print hand-offs.
    last: Mutex<Option<String>>,
    grants: AtomicUsize,
    inside: AtomicUsize,
    cluster: LocalCluster,
    kill_after: usize,
}

pub async fn demo(args: DemoArgs) -> Result<i32, Failure> {
    let cluster = LocalCluster::start(NODES).map_err(|e| {
        Failure::new(
            exit::UNAVAILABLE,
            format!("cannot start {NODES} local redis-server masters: {e}"),
        )
    })?;
    let urls = cluster.urls();
    println!(
        "started {NODES} local redis-server masters: {}",
        urls.join(" ")
    );
    println!(
        "{} workers take lock {KEY:?} {} times each (TTL {TTL:?}, kept alive; fencing on); master 0 \
         is killed half-way\n",
        args.workers, args.rounds
    );
    let workers = usize::from(args.workers);
    let rounds = usize::from(args.rounds);
    let board = Arc::new(Board {
        start: Instant::now(),
        last: Mutex::new(None),
        grants: AtomicUsize::new(0),
        inside: AtomicUsize::new(0),
        cluster,
        kill_after: workers * rounds / 2,
    });
    let mut tasks = Vec::new();
    for w in 1..=workers {
        let locks = RedLock::builder()
            .nodes(&urls)
            .ttl(TTL)
            // Generous, so that a busy machine does not look like a failed master.
            .node_timeout(Duration::from_millis(250))
            .owner(format!("worker-{w}"))
            .fencing(true)
            .build()
            .await?;
        tasks.push(tokio::spawn(worker(w, rounds, locks, board.clone())));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failure::new(exit::SOFTWARE, format!("a worker failed: {e}")))??;
    }
    println!(
        "\n{} grants between {workers} workers in {:.1?}, never two holders at once; the lock \
         kept working with 4 of 5 masters",
        board.grants.load(Ordering::SeqCst),
        board.start.elapsed()
    );
    println!(
        "try the real thing: redquorum run --nodes redis://h1:6379,redis://h2:6379,redis://h3:6379 \
         --key backup --wait 10s -- ./backup.sh"
    );
    Ok(0)
}

async fn worker(w: usize, rounds: usize, locks: RedLock, board: Arc<Board>) -> Result<(), Failure> {
    let me = format!("worker-{w}");
    for _ in 0..rounds {
        let asked = Instant::now();
        let ctx = Context::with_timeout(Duration::from_secs(20));
        let guard = locks.acquire(&ctx, KEY).await?;
        guard.keep_alive();
        if board.inside.fetch_add(1, Ordering::SeqCst) != 0 {
            return Err(Failure::new(exit::SOFTWARE, "two holders at once"));
        }
        let n = board.grants.fetch_add(1, Ordering::SeqCst) + 1;
        let from = board
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(me.clone());
        let from = match from {
            Some(prev) if prev == me => "again".to_owned(),
            Some(prev) => format!("from {prev}"),
            None => "first".to_owned(),
        };
        let token = guard
            .fencing_token()
            .map_or_else(|| "-".to_owned(), |t| t.to_string());
        println!(
            "{:>7.3}s  {me} got the lock {from:<16} waited {:>4} ms  fencing token {token:>3}  {} of {NODES} masters granted",
            board.start.elapsed().as_secs_f64(),
            asked.elapsed().as_millis(),
            guard.granted_nodes(),
        );
        if n == board.kill_after {
            board
                .cluster
                .kill(0)
                .map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;
            println!(
                "{:>7.3}s  -- killed master 0: 4 of 5 left, locking goes on --",
                board.start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(HOLD).await; // the critical section
        board.inside.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = guard.release().await {
            println!("{me}: release failed, the lock expires after its TTL: {e}");
        }
    }
    Ok(())
}
