//! The floor under one uncontended acquire + release: redquorum and rslock against bare
//! redis-rs (a `MultiplexedConnection` per node: `SET NX PX` on every node at once, then a
//! compare-and-delete `EVALSHA` on every node at once, which is all the Redis work either
//! library does), and a raw socket per node written and read by the caller's own task (no
//! connection driver task: the floor below redis-rs), at N = 1, 3 and 5, in batches
//! interleaved in time (the order rotated every round) so that machine noise hits all four
//! alike. Prints p50 and p90 per N and redquorum's ratio to rslock.
//!
//! rslock costs what bare redis-rs costs: whatever beats rslock by more than noise must either
//! wait for fewer nodes (redquorum's early quorum, N >= 3) or not go through redis-rs'
//! connection driver at all.
//!
//! ```text
//! cargo bench --features testkit --bench floor [-- ROUNDS]
//! ```
mod common;

use std::time::Duration;

use common::{Libs, Res, NAMES};
use futures::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redquorum::testkit::LocalCluster;
use tokio::time::Instant;

/// Cycles per batch; each round runs one batch of each client.
const BATCH: usize = 50;
const UNLOCK: &str = r#"if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) else return 0 end"#;

/// Bare redis-rs: what both libraries do on the wire, with nothing around it.
struct Bare {
    conns: Vec<MultiplexedConnection>,
    unlock: redis::Script,
}

impl Bare {
    async fn new(urls: &[String]) -> Res<Bare> {
        let mut conns = Vec::new();
        for url in urls {
            let client = redis::Client::open(url.as_str())?;
            conns.push(client.get_multiplexed_async_connection().await?);
        }
        let unlock = redis::Script::new(UNLOCK);
        for c in &mut conns {
            unlock.prepare_invoke().load_async(c).await?;
        }
        Ok(Bare { conns, unlock })
    }

    async fn cycle(&self, key: &str) -> Res<()> {
        let value = uuid::Uuid::new_v4().to_string();
        let set = self.conns.iter().map(|c| {
            let mut c = c.clone();
            let cmd = redis::cmd("SET")
                .arg(key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(10_000)
                .to_owned();
            async move { cmd.query_async::<Option<String>>(&mut c).await }
        });
        let got = try_join_all(set).await?;
        if got.iter().any(Option::is_none) {
            return Err("key was held".into());
        }
        let del = self.conns.iter().map(|c| {
            let mut c = c.clone();
            let cmd = redis::cmd("EVALSHA")
                .arg(self.unlock.get_hash())
                .arg(1)
                .arg(key)
                .arg(&value)
                .to_owned();
            async move { cmd.query_async::<i64>(&mut c).await }
        });
        try_join_all(del).await?;
        Ok(())
    }
}

/// A raw socket per node, written and read by the caller's own task (no connection driver
/// task at all): the floor below redis-rs itself. Single-line replies only.
struct Raw {
    socks: Vec<tokio::sync::Mutex<tokio::io::BufStream<tokio::net::TcpStream>>>,
    sha: String,
}

impl Raw {
    async fn new(urls: &[String]) -> Res<Raw> {
        let mut socks = Vec::new();
        for url in urls {
            let addr = url.trim_start_matches("redis://").trim_end_matches('/');
            let addr = addr.split('/').next().unwrap_or(addr);
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            socks.push(tokio::sync::Mutex::new(tokio::io::BufStream::new(s)));
        }
        Ok(Raw {
            socks,
            sha: redis::Script::new(UNLOCK).get_hash().to_owned(),
        })
    }

    async fn call(&self, i: usize, cmd: &redis::Cmd) -> Res<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut s = self.socks[i].lock().await;
        s.write_all(&cmd.get_packed_command()).await?;
        s.flush().await?;
        let mut line = String::new();
        s.read_line(&mut line).await?;
        Ok(line)
    }

    async fn cycle(&self, key: &str) -> Res<()> {
        let value = uuid::Uuid::new_v4().to_string();
        let set = redis::cmd("SET")
            .arg(key)
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(10_000)
            .to_owned();
        let got = try_join_all((0..self.socks.len()).map(|i| self.call(i, &set))).await?;
        if got.iter().any(|l| !l.starts_with("+OK")) {
            return Err(format!("key was held: {got:?}").into());
        }
        let del = redis::cmd("EVALSHA")
            .arg(&self.sha)
            .arg(1)
            .arg(key)
            .arg(&value)
            .to_owned();
        let got = try_join_all((0..self.socks.len()).map(|i| self.call(i, &del))).await?;
        if got.iter().any(|l| !l.starts_with(':')) {
            return Err(format!("unlock: {got:?}").into());
        }
        Ok(())
    }
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> Res<()> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    println!(
        "uncontended acquire + release, {rounds} rounds x {BATCH} cycles per client: {}, {}, \
         bare redis-rs, raw socket",
        NAMES[0], NAMES[1]
    );
    println!("| N | redquorum p50 | rslock p50 | bare p50 | rq/rslock | raw socket p50 | rq p90 | rslock p90 | bare p90 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [1, 3, 5] {
        let cluster = LocalCluster::start(n)?;
        let urls = cluster.urls();
        let libs = Libs::new(&urls).await?;
        let bare = Bare::new(&urls).await?;
        for _ in 0..200 {
            bare.cycle("warm-up").await?;
        }
        let raw = Raw::new(&urls).await?;
        for _ in 0..200 {
            raw.cycle("warm-up-raw").await?;
        }
        let mut samples: [Vec<Duration>; 4] = Default::default();
        for round in 0..rounds {
            for k in 0..4 {
                let lib = (round + k) % 4;
                for _ in 0..BATCH {
                    let t = Instant::now();
                    match lib {
                        2 => bare.cycle("floor").await?,
                        3 => raw.cycle("floor").await?,
                        _ => libs.cycle(lib, "floor").await?,
                    }
                    samples[lib].push(t.elapsed());
                }
            }
        }
        for s in &mut samples {
            s.sort_unstable();
        }
        let p50 = |i: usize| us(pct(&samples[i], 50));
        let p90 = |i: usize| us(pct(&samples[i], 90));
        println!(
            "| {n} | {:.0} µs | {:.0} µs | {:.0} µs | {:.2}x | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
            p50(0),
            p50(1),
            p50(2),
            p50(1) / p50(0),
            p50(3),
            p90(0),
            p90(1),
            p90(2),
        );
    }
    Ok(())
}
