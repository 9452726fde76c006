//! Metrics (feature `metrics`) served to Prometheus: a recorder from
//! `metrics-exporter-prometheus` with its HTTP listener, a few locks taken, and the page a
//! Prometheus server would scrape, fetched and printed.
//!
//! ```text
//! cargo run --features testkit,metrics --example metrics       # starts 3 local masters itself
//! REDQUORUM_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run --features testkit,metrics --example metrics   # uses your masters
//! METRICS_ADDR=127.0.0.1:9184 cargo run --features testkit,metrics --example metrics
//! ```
//!
//! (`cargo run --features testkit --example metrics` builds it without the feature: it then
//! says so and exits.)
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use redquorum::{Context, RedLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !cfg!(feature = "metrics") {
        println!(
            "built without the `metrics` feature: nothing is recorded (add --features metrics)"
        );
        return Ok(());
    }
    // Where Prometheus scrapes: METRICS_ADDR, or a free local port.
    let addr: SocketAddr = match std::env::var("METRICS_ADDR") {
        Ok(addr) => addr.parse()?,
        Err(_) => TcpListener::bind("127.0.0.1:0")?.local_addr()?,
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;

    let (urls, _cluster) = redquorum::testkit::env_or_local(3)?;
    let locks = RedLock::builder()
        .nodes(&urls)
        // Generous: a busy laptop or CI machine running a debug build.
        .node_timeout(Duration::from_millis(250))
        .build()
        .await?;
    let ctx = Context::with_timeout(Duration::from_secs(5));
    for i in 0..10 {
        let guard = locks.acquire(&ctx, &format!("job:{}", i % 3)).await?;
        guard.release().await?;
    }
    let held = locks.acquire(&ctx, "job:busy").await?;
    assert!(locks.try_acquire("job:busy").await?.is_none());
    held.release().await?;

    // What a Prometheus server scraping http://{addr}/metrics gets.
    let page = scrape(addr)?;
    for line in page
        .lines()
        .filter(|l| l.starts_with("redquorum_") && !l.contains("_bucket"))
    {
        println!("{line}");
    }
    assert!(page.contains("redquorum_acquisitions_total{outcome=\"granted\"} 11"));
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.1, retried while the listener starts.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut last = None;
    for _ in 0..50 {
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                write!(
                    stream,
                    "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )?;
                let mut page = String::new();
                stream.read_to_string(&mut page)?;
                return Ok(page);
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no listener")))
}
