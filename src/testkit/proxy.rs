//! A TCP fault proxy in front of one node: added latency, blackhole, reset and cut, so a node
//! can be made slow or partitioned from the client without being stopped.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::TestkitError;

const NORMAL: u8 = 0;
const BLACKHOLE: u8 = 1;
const CUT: u8 = 2;

/// A loopback TCP proxy that forwards to one port and injects faults on demand. Every method
/// takes `&self`, so a nemesis can drive it while clients talk through it. Dropping it closes
/// every connection and stops its threads.
///
/// | method | what the client sees |
/// |---|---|
/// | [`set_latency`](Self::set_latency) | every chunk delayed by the given time, each way |
/// | [`blackhole`](Self::blackhole) | connections stay open but nothing gets through either way (a silent partition: requests time out); held bytes are delivered in order after [`heal`](Self::heal), as TCP would |
/// | [`cut`](Self::cut) | every connection closed, new ones closed at once (a rejecting firewall) |
/// | [`reset`](Self::reset) | every current connection closed once (a reconnect) |
/// | [`hang_subscribers`](Self::hang_subscribers) | the PubSub connections open now stop delivering, silently, either way (a half-open socket); other and new connections flow |
/// | [`heal`](Self::heal) | traffic flows again (latency is kept) |
///
/// ```no_run
/// use std::time::Duration;
/// use redquorum::testkit::FaultProxy;
/// # fn main() -> Result<(), redquorum::testkit::TestkitError> {
/// let proxy = FaultProxy::start(6379)?;
/// proxy.set_latency(Duration::from_millis(20));
/// let url = proxy.url(); // give this to RedLock::builder().nodes(...)
/// proxy.blackhole();
/// proxy.heal();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: u16,
    mode: AtomicU8,
    latency_us: AtomicU64,
    stop: AtomicBool,
    /// Every open connection, to close them on reset/cut/drop.
    conns: Mutex<Vec<Conn>>,
}

/// Both ends of one connection, and what the pumps know of it.
#[derive(Debug)]
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    flags: Arc<ConnFlags>,
}

#[derive(Debug, Default)]
struct ConnFlags {
    /// The client sent a SUBSCRIBE on it.
    subscriber: AtomicBool,
    /// Held like a blackhole, for this connection only.
    hung: AtomicBool,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close_all(&self) {
        for c in self.conns().drain(..) {
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.upstream.shutdown(Shutdown::Both);
        }
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `127.0.0.1:target`.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when no port can be bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(1)?;
    /// let proxy = FaultProxy::start(cluster.port(0)?)?; // in front of node 0
    /// assert_ne!(proxy.port(), cluster.port(0)?);
    /// # Ok(()) }
    /// ```
    pub fn start(target: u16) -> Result<FaultProxy, TestkitError> {
        let io = |context: &str, e: io::Error| TestkitError::Io {
            context: context.to_owned(),
            source: e,
        };
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| io("binding the fault proxy", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| io("reading the proxy's port", e))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| io("configuring the proxy listener", e))?;
        let shared = Arc::new(Shared {
            target,
            mode: AtomicU8::new(NORMAL),
            latency_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(|e| io("spawning the proxy thread", e))?
        };
        Ok(FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The proxy's port.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(1).proxied(true).start()?;
    /// let proxy = cluster.proxy(0)?;
    /// assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
    /// # Ok(()) }
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(1).proxied(true).start()?;
    /// assert_eq!(cluster.proxy(0)?.url(), cluster.url(0)?); // the URL clients are given
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Delays every chunk of data by `each_way` in both directions (zero: none).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.proxy(0)?.set_latency(Duration::from_secs(1)); // far beyond the 50 ms node timeout
    /// let guard = locks.try_acquire("k").await?.expect("the other two grant");
    /// assert_eq!(guard.granted_nodes(), 2);
    /// cluster.proxy(0)?.set_latency(Duration::ZERO);
    /// # Ok(()) }
    /// ```
    pub fn set_latency(&self, each_way: Duration) {
        let us = u64::try_from(each_way.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(us, Ordering::SeqCst);
    }

    /// Holds all traffic silently, on current and new connections, until [`heal`](Self::heal)
    /// (then delivers it in order, as TCP retransmission would).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.proxy(1)?.blackhole(); // a silent partition: requests time out
    /// let guard = locks.try_acquire("k").await?.expect("a majority is reachable");
    /// assert_eq!(guard.granted_nodes(), 2);
    /// cluster.proxy(1)?.heal();
    /// # Ok(()) }
    /// ```
    pub fn blackhole(&self) {
        self.shared.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Closes every connection and closes new ones at once, until [`heal`](Self::heal).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.proxy(0)?.cut(); // connections closed, new ones refused at once
    /// let guard = locks.try_acquire("k").await?.expect("a majority is reachable");
    /// assert_eq!(guard.granted_nodes(), 2);
    /// # Ok(()) }
    /// ```
    pub fn cut(&self) {
        self.shared.mode.store(CUT, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Closes every current connection once; new connections work.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.proxy(0)?.reset(); // every connection closed once: the client reconnects
    /// locks.try_acquire("k").await?.expect("free").release().await?;
    /// # Ok(()) }
    /// ```
    pub fn reset(&self) {
        self.shared.close_all();
    }

    /// Lets traffic through again (the latency setting stays).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(1).proxied(true).start()?;
    /// let proxy = cluster.proxy(0)?;
    /// proxy.cut();
    /// proxy.heal(); // traffic flows again
    /// let mut con = redis::Client::open(proxy.url())?.get_connection()?;
    /// assert_eq!(redis::cmd("PING").query::<String>(&mut con)?, "PONG");
    /// # Ok(()) }
    /// ```
    pub fn heal(&self) {
        self.shared.mode.store(NORMAL, Ordering::SeqCst);
        for c in self.shared.conns().iter() {
            c.flags.hung.store(false, Ordering::SeqCst);
        }
    }

    /// Silently stops every PubSub connection open now (one on which the client sent a
    /// SUBSCRIBE), both ways, while other connections, and connections made later, flow: a
    /// subscription connection that hangs without closing. Held bytes are delivered after
    /// [`heal`](Self::heal). Returns how many connections it stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::{Context, RedLock};
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let holder = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// let waiter = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// let held = holder.try_acquire("k").await?.expect("free");
    /// let waiting = tokio::spawn(async move {
    ///     waiter.acquire(&Context::with_timeout(Duration::from_secs(60)), "k").await
    /// });
    /// // Wait until the waiter has subscribed on every node (the release channel has a subscriber).
    /// let subscribed = |i: usize| -> redis::RedisResult<bool> {
    ///     let mut con = redis::Client::open(cluster.direct_url(i).expect("node"))?.get_connection()?;
    ///     let (_, n): (String, i64) = redis::cmd("PUBSUB")
    ///         .arg("NUMSUB")
    ///         .arg("redquorum:default:k:released")
    ///         .query(&mut con)?;
    ///     Ok(n == 1)
    /// };
    /// let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    /// while !(subscribed(0)? && subscribed(1)? && subscribed(2)?) {
    ///     assert!(tokio::time::Instant::now() < give_up, "the waiter never subscribed");
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    /// }
    /// for i in 0..3 {
    ///     // The waiter's subscription connection to node i, now silent (on a loaded machine
    ///     // a health check may have replaced one meanwhile: then both).
    ///     assert!(cluster.proxy(i)?.hang_subscribers() >= 1);
    /// }
    /// // The release is announced on hung connections only: the waiter's health check finds them
    /// // dead within about two seconds, and it gets the lock all the same.
    /// held.release().await?;
    /// let guard = waiting.await??;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn hang_subscribers(&self) -> usize {
        let conns = self.shared.conns();
        let mut hung = 0;
        for c in conns.iter() {
            if c.flags.subscriber.load(Ordering::SeqCst) {
                c.flags.hung.store(true, Ordering::SeqCst);
                hung += 1;
            }
        }
        hung
    }

    /// Open connections through the proxy.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{FaultProxy, LocalCluster};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// assert!(cluster.proxy(0)?.connections() >= 1); // the client's connection to node 0
    /// # drop(locks);
    /// # Ok(()) }
    /// ```
    pub fn connections(&self) -> usize {
        self.shared.conns().len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.mode.load(Ordering::SeqCst) == CUT {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = connect(client, shared);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn connect(client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, shared.target)),
        Duration::from_secs(1),
    )?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let flags = Arc::new(ConnFlags::default());
    shared.conns().push(Conn {
        client: client.try_clone()?,
        upstream: upstream.try_clone()?,
        flags: flags.clone(),
    });
    for (from, to, requests) in [
        (client.try_clone()?, upstream.try_clone()?, true),
        (upstream, client, false),
    ] {
        let (shared, flags) = (shared.clone(), flags.clone());
        thread::Builder::new()
            .name("fault-proxy-pump".into())
            .spawn(move || pump(from, to, &shared, &flags, requests))?;
    }
    Ok(())
}

/// Whether a chunk the client sent holds a SUBSCRIBE (any case).
fn subscribes(chunk: &[u8]) -> bool {
    chunk
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"subscribe"))
}

/// Copies `from` to `to`, applying the current mode and latency to each chunk; `requests`:
/// the client-to-server direction.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    flags: &ConnFlags,
    requests: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if requests && subscribes(&buf[..n]) {
            flags.subscriber.store(true, Ordering::SeqCst);
        }
        let mut read_at = Instant::now();
        // A partition holds the bytes (as TCP would, retransmitting) and delivers them in order
        // once healed; dropping them would desynchronise the stream, which TCP never does.
        while (shared.mode.load(Ordering::SeqCst) == BLACKHOLE || flags.hung.load(Ordering::SeqCst))
            && !shared.stop.load(Ordering::SeqCst)
        {
            thread::sleep(Duration::from_millis(2));
            read_at = Instant::now();
        }
        if shared.mode.load(Ordering::SeqCst) == CUT {
            break;
        }
        let latency = Duration::from_micros(shared.latency_us.load(Ordering::SeqCst));
        if let Some(left) = (read_at + latency).checked_duration_since(Instant::now()) {
            thread::sleep(left);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (u16, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = thread::spawn(move || {
            for s in l.incoming().take(8) {
                let Ok(mut s) = s else { continue };
                thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, t)
    }

    fn round_trip(port: u16, timeout: Duration) -> io::Result<Duration> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(timeout))?;
        let t = Instant::now();
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        Ok(t.elapsed())
    }

    #[test]
    fn latency_blackhole_cut_and_heal() {
        let (target, _server) = echo_server();
        let proxy = FaultProxy::start(target).expect("proxy");
        let fast = round_trip(proxy.port(), Duration::from_secs(1)).expect("normal");
        proxy.set_latency(Duration::from_millis(30));
        let slow = round_trip(proxy.port(), Duration::from_secs(1)).expect("slow");
        assert!(
            slow >= Duration::from_millis(60),
            "{slow:?} (fast was {fast:?})"
        );
        proxy.set_latency(Duration::ZERO);
        proxy.blackhole();
        assert!(
            round_trip(proxy.port(), Duration::from_millis(200)).is_err(),
            "blackholed"
        );
        proxy.cut();
        assert!(
            round_trip(proxy.port(), Duration::from_millis(200)).is_err(),
            "cut"
        );
        proxy.heal();
        assert!(
            round_trip(proxy.port(), Duration::from_secs(1)).is_ok(),
            "healed"
        );
    }
}
