//! Fencing tokens: a storage layer that rejects writes from a holder whose lease ran out.
//!
//! Client A takes the lock, then "pauses" (think GC or a stalled VM) past its lease; client B
//! takes the lock and writes; A wakes up and writes too, still believing it holds the lock.
//! The lock cannot stop A, but its token is lower than B's, so the storage refuses it.
//!
//! ```text
//! cargo run --features testkit --example fencing
//! ```
use std::sync::Mutex;
use std::time::Duration;

use redquorum::testkit::LocalCluster;
use redquorum::{Context, RedLock};

/// The protected resource: remembers the highest token it has accepted.
#[derive(Default)]
struct Storage {
    highest: Mutex<u64>,
    value: Mutex<String>,
}

impl Storage {
    fn write(&self, token: u64, value: &str) -> Result<(), String> {
        let mut highest = self.highest.lock().map_err(|e| e.to_string())?;
        if token < *highest {
            return Err(format!("rejected: token {token} < {}", *highest));
        }
        *highest = token;
        *self.value.lock().map_err(|e| e.to_string())? = value.to_owned();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = LocalCluster::start(5)?;
    let client = |owner: &'static str| {
        RedLock::builder()
            .nodes(cluster.urls())
            .ttl(Duration::from_millis(500))
            .fencing(true)
            .owner(owner)
            .build()
    };
    let (a, b) = (client("A").await?, client("B").await?);
    let storage = Storage::default();
    let ctx = Context::with_timeout(Duration::from_secs(5));

    let guard_a = a.acquire(&ctx, "invoice-7").await?;
    let token_a = guard_a.fencing_token().ok_or("fencing is on")?;
    println!("A holds the lock with token {token_a}, then pauses for 1 s...");
    std::mem::forget(guard_a); // A is frozen: it neither releases nor renews
    tokio::time::sleep(Duration::from_secs(1)).await;

    let guard_b = b.acquire(&ctx, "invoice-7").await?;
    let token_b = guard_b.fencing_token().ok_or("fencing is on")?;
    println!("B holds the lock with token {token_b}");
    storage.write(token_b, "written by B")?;
    println!("B writes: accepted");

    match storage.write(token_a, "written by A") {
        Ok(()) => println!("A writes: accepted (this must not happen)"),
        Err(why) => println!("A wakes up and writes: {why}"),
    }
    guard_b.release().await?;
    println!(
        "stored value: {:?}",
        storage.value.lock().map_err(|e| e.to_string())?
    );
    Ok(())
}
