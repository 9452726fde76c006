//! Test support: real `redis-server` processes on free loopback ports.
//!
//! Enabled by the `testkit` cargo feature. [`LocalCluster`] starts one
//! independent `redis-server` per node (no replication, no Redis Cluster mode,
//! exactly what Redlock expects), each with its own data directory under a
//! per-cluster temp directory. You can kill, restart, pause and resume single
//! nodes to simulate crashes, crash-restarts and network partitions / GC
//! pauses. Dropping the cluster kills every process and removes the temp
//! directory, also while a failing test unwinds.
//!
//! The binary is `$REDQUORUM_REDIS_SERVER` if that is set, otherwise
//! `redis-server` found on `PATH`. All methods are synchronous and take
//! `&self`, so a cluster can be shared (e.g. in an `Arc`) with a task that
//! injects faults while other tasks take locks. Calling them from async tests
//! is fine; `start`/`restart` block for up to a few seconds.
//!
//! # Writing a chaos test
//!
//! ```no_run
//! use std::time::Duration;
//! use redquorum::testkit::LocalCluster;
//! use redquorum::{Context, RedLock};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Five redis-server processes; all gone again when `cluster` drops.
//!     let cluster = LocalCluster::builder().nodes(5).start()?;
//!     let locks = RedLock::builder()
//!         .nodes(cluster.urls())
//!         .ttl(Duration::from_secs(2))
//!         .build()
//!         .await?;
//!
//!     // A minority failure must not stop locking: crash one node, freeze another.
//!     cluster.kill(0)?;
//!     cluster.pause(1)?; // SIGSTOP: connections hang, like a partition
//!     let ctx = Context::with_timeout(Duration::from_secs(1));
//!     let guard = locks.acquire(&ctx, "orders:42").await?;
//!     guard.release().await?;
//!
//!     // Without a majority (2 of 5 reachable) acquisition must fail.
//!     cluster.kill(2)?;
//!     let ctx = Context::with_timeout(Duration::from_secs(1));
//!     assert!(locks.acquire(&ctx, "orders:42").await.is_err());
//!
//!     // Heal: same ports, same data dirs (empty unless `.appendonly(true)`).
//!     cluster.resume(1)?;
//!     cluster.restart(0)?;
//!     cluster.restart(2)?;
//!     Ok(())
//! }
//! ```
//!
//! # Slow and partitioned nodes
//!
//! Built with `.proxied(true)`, every node sits behind a [`FaultProxy`] and
//! [`LocalCluster::urls`] point at the proxies: `cluster.proxy(i)?.set_latency(..)`,
//! `.blackhole()` (a silent partition), `.cut()`, `.reset()`, `.heal()` act on the path
//! between clients and a node that keeps running. [`LocalCluster::direct_url`] still reaches
//! the node itself.
//!
//! # TLS
//!
//! With the `testkit-tls` feature, `.tls(true)` starts TLS-only nodes (no plain TCP port) with
//! certificates from a CA generated at start: [`LocalCluster::urls`] are `rediss://` URLs,
//! and [`LocalCluster::tls_ca_pem`] is what a client must trust (a client also needs the
//! `tls-rustls` or `tls-native-tls` feature). See `tests/tls.rs`.
//!
//! ```no_run
//! # #[cfg(feature = "testkit-tls")]
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use redquorum::testkit::LocalCluster;
//! let cluster = LocalCluster::builder().nodes(3).tls(true).start()?;
//! assert!(cluster.urls()[0].starts_with("rediss://127.0.0.1:"));
//! # #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
//! let locks = redquorum::RedLock::builder()
//!     .nodes(cluster.urls())
//!     .tls_root_certs(cluster.tls_ca_pem().unwrap_or_default())
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # A full safety check
//!
//! [`Workload`] runs contending clients against a seeded nemesis that kills, pauses, slows down
//! and partitions a minority of masters, and [`check_holds`] verifies mutual exclusion and
//! fencing on the recorded holds (see `examples/soak.rs` and `tests/chaos.rs`).

mod chaos;
mod permits;
mod proxy;
mod stats;
#[cfg(feature = "testkit-tls")]
mod tls;

pub use chaos::{check_holds, HoldRecord, Primitive, Report, Workload};
pub use permits::check_permits;
pub use proxy::FaultProxy;
pub use stats::{CommandStats, SCRIPT_COMMANDS};

/// The node URLs in `$REDQUORUM_NODES` (comma-separated) if it is set, else those of `n` local
/// masters started here (returned too: they live as long as it does). For examples and tools
/// that should run against real masters when given some, and against local ones otherwise.
///
/// # Errors
/// As for [`LocalCluster::start`].
///
/// ```
/// let (urls, local) = redquorum::testkit::env_or_local(3)?;
/// // Your masters when REDQUORUM_NODES is set, else 3 local ones (kept alive by `local`).
/// assert_eq!(local.is_some(), std::env::var("REDQUORUM_NODES").map_or(true, |l| l.trim().is_empty()));
/// assert!(!urls.is_empty());
/// # Ok::<(), redquorum::testkit::TestkitError>(())
/// ```
pub fn env_or_local(n: usize) -> Result<(Vec<String>, Option<LocalCluster>), TestkitError> {
    match std::env::var("REDQUORUM_NODES") {
        Ok(list) if !list.trim().is_empty() => {
            Ok((list.split(',').map(|s| s.trim().to_owned()).collect(), None))
        }
        _ => {
            let cluster = LocalCluster::start(n)?;
            Ok((cluster.urls(), Some(cluster)))
        }
    }
}

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that overrides the `redis-server` binary to use.
const BINARY_ENV: &str = "REDQUORUM_REDIS_SERVER";
/// How long a freshly spawned server gets to answer `PING`: a hang guard (a start takes
/// milliseconds, an AOF replay of a test's data little more), generous because test machines
/// are often busy with other builds.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Fresh ports tried by `start` when a server exits early (port race).
const START_ATTEMPTS: usize = 5;
/// Attempts made by `restart` when the fixed port is briefly unavailable.
const RESTART_ATTEMPTS: usize = 20;
/// Pause between `restart` attempts.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Number of log lines included in [`TestkitError::NotReady`].
const LOG_TAIL_LINES: usize = 30;
/// Name of each node's log file inside its data directory.
const LOG_FILE: &str = "redis.log";

/// Errors returned by [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// No usable `redis-server` binary was found.
    #[error(
        "redis-server was not found on PATH (or at $REDQUORUM_REDIS_SERVER); install it with \
         `sudo apt-get install redis-server` or point REDQUORUM_REDIS_SERVER at the binary"
    )]
    RedisServerMissing,
    /// A node index was out of range.
    #[error("no node with index {index}: the cluster has {len} node(s)")]
    NoSuchNode {
        /// The index that was asked for.
        index: usize,
        /// Number of nodes in the cluster.
        len: usize,
    },
    /// The operation needs a running node, but it was killed or has exited.
    #[error("node {index} is not running (killed or exited); call restart({index}) first")]
    NotRunning {
        /// Index of the node.
        index: usize,
    },
    /// An I/O operation (creating dirs, spawning, signalling, ...) failed.
    #[error("{context}: {source}")]
    Io {
        /// What the testkit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A `redis-server` did not answer `PING` in time or exited during startup.
    #[error("redis-server on 127.0.0.1:{port} did not become ready; tail of its log:\n{log_tail}")]
    NotReady {
        /// Port the server was started on (the last one tried).
        port: u16,
        /// The last lines of the node's `redis.log`.
        log_tail: String,
    },
}

fn io_error(context: impl Into<String>, source: io::Error) -> TestkitError {
    TestkitError::Io {
        context: context.into(),
        source,
    }
}

/// Builder for a [`LocalCluster`]; see [`LocalCluster::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LocalClusterBuilder {
    nodes: usize,
    appendonly: bool,
    base_dir: Option<PathBuf>,
    proxied: bool,
    password: Option<Password>,
    server_args: Vec<String>,
    #[cfg(feature = "testkit-tls")]
    tls: Option<ClientAuth>,
}

/// Whether a TLS node asks clients for a certificate (`tls-auth-clients`).
#[cfg(feature = "testkit-tls")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// `optional`: a client may present the cluster's client certificate, and it is checked.
    Optional,
    /// `yes`: every client must.
    Required,
}

/// A `requirepass` password: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Default for LocalClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: 5,
            appendonly: false,
            base_dir: None,
            proxied: false,
            password: None,
            server_args: Vec::new(),
            #[cfg(feature = "testkit-tls")]
            tls: None,
        }
    }
}

impl LocalClusterBuilder {
    /// Number of independent `redis-server` processes (default 5).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(3).start()?;
    /// assert_eq!(cluster.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Persist with `--appendonly yes --appendfsync always` (default `false`:
    /// no persistence at all, so a restarted node comes back empty).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// // Nodes that keep their data across a restart, as Redlock's safety needs.
    /// let cluster = LocalCluster::builder().nodes(3).appendonly(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// let guard = locks.try_acquire("k").await?.expect("free");
    /// cluster.restart(0)?; // the key is back from the AOF
    /// assert!(guard.is_held().await?);
    /// # Ok(()) }
    /// ```
    pub fn appendonly(mut self, enabled: bool) -> Self {
        self.appendonly = enabled;
        self
    }

    /// Where the cluster's temp directory is created (default: `std::env::temp_dir()`). A
    /// tmpfs such as `/dev/shm` makes `appendfsync always` cheap while data still survives a
    /// node's restart.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // On tmpfs where there is one: `appendfsync always` costs little there.
    /// let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    /// let cluster = LocalCluster::builder().nodes(1).appendonly(true).base_dir(dir).start()?;
    /// assert!(cluster.is_running(0));
    /// # Ok(()) }
    /// ```
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// Puts a [`FaultProxy`] in front of every node: [`urls`](LocalCluster::urls) then point
    /// at the proxies (so clients can be slowed down or partitioned from a node that keeps
    /// running), and [`proxy`](LocalCluster::proxy) gives access to them. Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls()) // through the proxies
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.proxy(0)?.blackhole(); // node 0 keeps running, but nothing reaches it
    /// let guard = locks.try_acquire("k").await?.expect("a majority is still reachable");
    /// assert_eq!(guard.granted_nodes(), 2);
    /// # Ok(()) }
    /// ```
    pub fn proxied(mut self, on: bool) -> Self {
        self.proxied = on;
        self
    }

    /// Starts every node with `--requirepass password` (default: no password). Every URL the
    /// cluster hands out then carries it (`redis://:password@127.0.0.1:<port>`); `Debug`
    /// output of the builder and the cluster does not show it.
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().nodes(1).requirepass("s3cret").start()?;
    /// assert!(cluster.urls()[0].starts_with("redis://:s3cret@127.0.0.1:"));
    /// assert!(!format!("{cluster:?}").contains("s3cret"));
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    pub fn requirepass(mut self, password: impl Into<String>) -> Self {
        self.password = Some(Password(password.into()));
        self
    }

    /// Extra command-line arguments for every node's `redis-server`, after the testkit's own
    /// (so they override them): a server run the way yours is, e.g. with an unsafe setting to
    /// see [`RedLock::check`](crate::RedLock::check) flag it. Kept across
    /// [`restart`](LocalCluster::restart). The testkit's readiness probe sends `AUTH`, `PING`
    /// and `INFO server`: do not rename or disable those.
    ///
    /// ```no_run
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder()
    ///     .nodes(3)
    ///     .server_args(["--appendonly", "yes", "--appendfsync", "everysec"])
    ///     .server_args(["--rename-command", "CONFIG", ""])
    ///     .start()?;
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    pub fn server_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.server_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// TLS-only nodes (feature `testkit-tls`): each `redis-server` listens on its port with TLS
    /// only (`port 0`, `tls-port`), with a certificate for `127.0.0.1` and `localhost` signed by
    /// a CA generated at start ([`tls_ca_pem`](LocalCluster::tls_ca_pem)). Clients need not
    /// present a certificate, but one they present must be signed by that CA
    /// (`tls-auth-clients optional`). [`urls`](LocalCluster::urls) are `rediss://` URLs; a
    /// [`proxied`](Self::proxied) cluster works too (the proxies pass the TLS bytes on).
    /// Default: off.
    ///
    /// The testkit's own readiness checks and command statistics use a Unix socket in each
    /// node's directory.
    ///
    /// ```no_run
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().nodes(1).tls(true).start()?;
    /// assert!(cluster.url(0)?.starts_with("rediss://127.0.0.1:"));
    /// assert!(cluster.tls_ca_pem().is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")));
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    #[cfg(feature = "testkit-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testkit-tls")))]
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on.then_some(ClientAuth::Optional);
        self
    }

    /// Mutual TLS (feature `testkit-tls`): as [`tls`](Self::tls), but every client must present
    /// a certificate signed by the cluster's CA (`tls-auth-clients yes`), such as
    /// [`tls_client_cert_pem`](LocalCluster::tls_client_cert_pem) with
    /// [`tls_client_key_pem`](LocalCluster::tls_client_key_pem).
    ///
    /// ```no_run
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().nodes(1).tls_client_auth(true).start()?;
    /// assert!(cluster.tls_client_key_pem().is_some());
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    #[cfg(feature = "testkit-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testkit-tls")))]
    pub fn tls_client_auth(mut self, required: bool) -> Self {
        self.tls = Some(if required {
            ClientAuth::Required
        } else {
            ClientAuth::Optional
        });
        self
    }

    /// Starts every node and waits until each answers `PING`.
    ///
    /// On error, the nodes started so far are killed and the temp dir removed.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(3).start()?; // every node answers PING now
    /// assert!((0..3).all(|i| cluster.is_running(i)));
    /// # Ok(()) }
    /// ```
    pub fn start(self) -> Result<LocalCluster, TestkitError> {
        let binary = resolve_binary(std::env::var_os(BINARY_ENV), std::env::var_os("PATH"))?;
        let root = create_root_dir(self.base_dir.unwrap_or_else(std::env::temp_dir))?;
        // Built before any process exists, so `Drop` cleans up on early return.
        let mut cluster = LocalCluster {
            binary,
            appendonly: self.appendonly,
            password: self.password,
            server_args: self.server_args,
            root,
            nodes: Vec::with_capacity(self.nodes),
            proxies: Vec::new(),
            #[cfg(feature = "testkit-tls")]
            tls: None,
        };
        #[cfg(feature = "testkit-tls")]
        if let Some(auth) = self.tls {
            cluster.tls = Some((tls::TlsFiles::generate(&cluster.root)?, auth));
        }
        for index in 0..self.nodes {
            let dir = cluster.root.join(format!("node-{index}"));
            fs::create_dir(&dir).map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
            let (port, child) = cluster.launch_on_free_port(&dir)?;
            cluster.nodes.push(Node {
                port,
                dir,
                state: Mutex::new(NodeState {
                    child: Some(child),
                    paused: false,
                }),
                conn: CachedConn::default(),
            });
            if self.proxied {
                cluster.proxies.push(FaultProxy::start(port)?);
            }
        }
        Ok(cluster)
    }
}

/// A set of independent local `redis-server` processes for tests.
///
/// Nodes are addressed by index `0..len()`. An index out of range yields
/// [`TestkitError::NoSuchNode`] (or `false` from [`is_running`](Self::is_running)),
/// never a panic. Dropping the cluster resumes paused nodes, SIGKILLs and reaps
/// every process and deletes the data directories.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    appendonly: bool,
    password: Option<Password>,
    /// Extra `redis-server` arguments (see [`LocalClusterBuilder::server_args`]).
    server_args: Vec<String>,
    root: PathBuf,
    nodes: Vec<Node>,
    /// One per node when built with `proxied(true)`.
    proxies: Vec<FaultProxy>,
    /// The certificates of a TLS cluster.
    #[cfg(feature = "testkit-tls")]
    tls: Option<(tls::TlsFiles, ClientAuth)>,
}

#[derive(Debug)]
struct Node {
    /// Fixed for the node's lifetime; `restart` reuses it.
    port: u16,
    dir: PathBuf,
    state: Mutex<NodeState>,
    /// A connection to the node itself, kept for the testkit's own readings (command stats).
    conn: CachedConn,
}

/// A lazily opened connection, replaced when it fails (e.g. after the node's restart).
#[derive(Default)]
struct CachedConn(Mutex<Option<redis::Connection>>);

impl std::fmt::Debug for CachedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CachedConn")
    }
}

#[derive(Debug)]
struct NodeState {
    /// `None` once killed (or observed to have exited).
    child: Option<Child>,
    /// Whether we sent SIGSTOP without a matching SIGCONT.
    paused: bool,
}

impl NodeState {
    /// The pid of the live process, reaping it if it has exited on its own.
    fn live_pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            Ok(Some(_)) | Err(_) => {
                self.child = None;
                self.paused = false;
                None
            }
        }
    }
}

impl LocalCluster {
    /// Returns a builder (5 nodes, no persistence by default).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(3).appendonly(true).start()?;
    /// # drop(cluster);
    /// # Ok(()) }
    /// ```
    #[must_use = "the builder does nothing until `.start()` is called"]
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Starts `n` nodes with default settings; shortcut for
    /// `LocalCluster::builder().nodes(n).start()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(3)?; // no persistence, no proxies
    /// assert_eq!(cluster.urls().len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn start(n: usize) -> Result<LocalCluster, TestkitError> {
        Self::builder().nodes(n).start()
    }

    /// `redis://127.0.0.1:<port>` for every node, in index order (`rediss://` for a
    /// [`tls`](LocalClusterBuilder::tls) cluster).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::start(3)?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// assert_eq!(locks.nodes(), 3);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len())
            .filter_map(|i| self.url(i).ok())
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of node `index`: its proxy's when the cluster is proxied
    /// (with the password, for a cluster started with
    /// [`requirepass`](LocalClusterBuilder::requirepass)).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(3)?;
    /// let url = cluster.url(0)?;
    /// assert_eq!(url, format!("redis://127.0.0.1:{}", cluster.port(0)?));
    /// assert!(cluster.url(3).is_err()); // no such node: an error, never a panic
    /// # Ok(()) }
    /// ```
    pub fn url(&self, index: usize) -> Result<String, TestkitError> {
        let node = self.node(index)?;
        Ok(match self.proxies.get(index) {
            Some(proxy) => self.node_url(proxy.port()),
            None => self.node_url(node.port),
        })
    }

    /// `redis://127.0.0.1:<port>` of node `index` itself, never through a proxy (for looking
    /// at a node's data while it is partitioned from the clients).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// cluster.proxy(0)?.cut(); // clients cannot reach node 0 ...
    /// let direct = cluster.direct_url(0)?; // ... but the test can still look at its data
    /// assert_ne!(direct, cluster.url(0)?);
    /// # Ok(()) }
    /// ```
    pub fn direct_url(&self, index: usize) -> Result<String, TestkitError> {
        Ok(self.node_url(self.node(index)?.port))
    }

    fn node_url(&self, port: u16) -> String {
        let scheme = if self.is_tls() { "rediss" } else { "redis" };
        match &self.password {
            Some(Password(pw)) => format!("{scheme}://:{pw}@127.0.0.1:{port}"),
            None => format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// Whether the nodes speak TLS only.
    fn is_tls(&self) -> bool {
        #[cfg(feature = "testkit-tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "testkit-tls"))]
        false
    }

    /// The Unix socket of a TLS node, which the testkit's own connections use.
    fn socket(dir: &Path) -> PathBuf {
        dir.join("redis.sock")
    }

    /// The PEM certificate of the CA that signed a [`tls`](LocalClusterBuilder::tls) cluster's
    /// server and client certificates: what a client must trust
    /// ([`RedLockBuilder::tls_root_certs`](crate::RedLockBuilder)). `None` without TLS.
    ///
    /// ```no_run
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().nodes(1).tls(true).start()?;
    /// std::fs::write("ca.crt", cluster.tls_ca_pem().unwrap_or_default()).ok();
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    #[cfg(feature = "testkit-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testkit-tls")))]
    #[must_use]
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|(files, _)| files.ca_pem.as_str())
    }

    /// A PEM client certificate signed by the cluster's CA, for mutual TLS
    /// ([`tls_client_auth`](LocalClusterBuilder::tls_client_auth)). `None` without TLS.
    ///
    /// ```no_run
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().nodes(1).tls_client_auth(true).start()?;
    /// assert!(cluster.tls_client_cert_pem().is_some());
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    #[cfg(feature = "testkit-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testkit-tls")))]
    #[must_use]
    pub fn tls_client_cert_pem(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .map(|(files, _)| files.client_cert_pem.as_str())
    }

    /// The PEM (PKCS#8) private key of [`tls_client_cert_pem`](Self::tls_client_cert_pem).
    /// `None` without TLS.
    ///
    /// ```no_run
    /// use redquorum::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().nodes(1).tls_client_auth(true).start()?;
    /// assert!(cluster.tls_client_key_pem().is_some_and(|k| k.contains("PRIVATE KEY")));
    /// # Ok::<(), redquorum::testkit::TestkitError>(())
    /// ```
    #[cfg(feature = "testkit-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testkit-tls")))]
    #[must_use]
    pub fn tls_client_key_pem(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .map(|(files, _)| files.client_key_pem.as_str())
    }

    /// The fault proxy in front of node `index` (clusters built with `proxied(true)`).
    ///
    /// # Errors
    /// [`TestkitError::NoSuchNode`] for an index out of range or a cluster without proxies.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let cluster = LocalCluster::builder().nodes(3).proxied(true).start()?;
    /// cluster.proxy(2)?.set_latency(Duration::from_millis(20)); // a slow link to node 2
    /// assert!(LocalCluster::start(1)?.proxy(0).is_err()); // not proxied
    /// # Ok(()) }
    /// ```
    pub fn proxy(&self, index: usize) -> Result<&FaultProxy, TestkitError> {
        self.proxies.get(index).ok_or(TestkitError::NoSuchNode {
            index,
            len: self.proxies.len(),
        })
    }

    /// Port of node `index` (unchanged across restarts).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(1)?;
    /// let port = cluster.port(0)?;
    /// assert!(cluster.url(0)?.ends_with(&format!(":{port}")));
    /// # Ok(()) }
    /// ```
    pub fn port(&self, index: usize) -> Result<u16, TestkitError> {
        Ok(self.node(index)?.port)
    }

    /// Number of nodes (running or not).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(LocalCluster::start(3)?.len(), 3);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes at all.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert!(!LocalCluster::start(1)?.is_empty());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Crashes node `index` with SIGKILL and reaps it. Data not persisted is
    /// lost. Killing a node that is not running is a no-op.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::start(3)?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.kill(0)?; // SIGKILL: a crashed master
    /// assert!(!cluster.is_running(0));
    /// assert!(locks.try_acquire("k").await?.is_some()); // 2 of 3 still grant
    /// # Ok(()) }
    /// ```
    pub fn kill(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.node(index)?;
        let mut state = lock(&node.state);
        state.paused = false; // SIGKILL also ends a stopped process
        if let Some(mut child) = state.child.take() {
            // Err only if it was already reaped; `wait` below is what matters.
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| io_error(format!("waiting for killed node {index}"), e))?;
        }
        Ok(())
    }

    /// Starts node `index` again on the same port and data directory and waits
    /// until it answers `PING`. A running (or paused) node is killed first.
    /// Retries for about two seconds if the port is briefly unavailable.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(3)?;
    /// cluster.kill(1)?;
    /// cluster.restart(1)?; // same port and data directory (empty without appendonly)
    /// assert!(cluster.is_running(1));
    /// # Ok(()) }
    /// ```
    pub fn restart(&self, index: usize) -> Result<(), TestkitError> {
        self.kill(index)?;
        let node = self.node(index)?;
        let mut state = lock(&node.state);
        for attempt in 1..=RESTART_ATTEMPTS {
            match self.launch(node.port, &node.dir)? {
                Launch::Ready(child) => {
                    state.child = Some(child);
                    state.paused = false;
                    return Ok(());
                }
                Launch::Exited if attempt < RESTART_ATTEMPTS => thread::sleep(RESTART_BACKOFF),
                Launch::Exited | Launch::TimedOut => break,
            }
        }
        Err(not_ready(node.port, &node.dir))
    }

    /// Freezes node `index` with SIGSTOP: it keeps its port and connections
    /// are accepted by the kernel, but nothing is answered (a partition or a
    /// long GC pause, as seen by clients). Pausing a paused node is a no-op.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use redquorum::{Context, RedLock};
    ///
    /// let cluster = LocalCluster::start(3)?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// cluster.pause(2)?; // SIGSTOP: connections hang, like a GC pause or a partition
    /// let ctx = Context::with_timeout(Duration::from_secs(5));
    /// let guard = locks.acquire(&ctx, "k").await?; // decided by the other two, without waiting
    /// guard.release().await?;
    /// cluster.resume(2)?;
    /// # Ok(()) }
    /// ```
    pub fn pause(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.node(index)?;
        let mut state = lock(&node.state);
        let pid = state.live_pid().ok_or(TestkitError::NotRunning { index })?;
        if !state.paused {
            send_signal(pid, "STOP")?;
            state.paused = true;
            wait_for_proc_state(pid, true);
        }
        Ok(())
    }

    /// Continues node `index` with SIGCONT after [`pause`](Self::pause).
    /// Resuming a node that is not paused (or not running) is a no-op.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(1)?;
    /// cluster.pause(0)?;
    /// cluster.resume(0)?; // SIGCONT: it answers again
    /// assert!(cluster.is_running(0));
    /// # Ok(()) }
    /// ```
    pub fn resume(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.node(index)?;
        let mut state = lock(&node.state);
        if let Some(pid) = state.live_pid() {
            if state.paused {
                send_signal(pid, "CONT")?;
                state.paused = false;
                wait_for_proc_state(pid, false);
            }
        }
        Ok(())
    }

    /// Whether node `index`'s process is alive (paused nodes count as alive).
    /// `false` for an out-of-range index.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(2)?;
    /// cluster.kill(1)?;
    /// assert!(cluster.is_running(0) && !cluster.is_running(1));
    /// assert!(!cluster.is_running(7)); // no such node
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn is_running(&self, index: usize) -> bool {
        self.node(index)
            .map(|node| lock(&node.state).live_pid().is_some())
            .unwrap_or(false)
    }

    /// Contents of node `index`'s `redis.log` (all of its runs, appended).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(1)?;
    /// let log = cluster.log(0)?; // the node's redis.log, e.g. to print when a test fails
    /// assert!(log.contains("Ready to accept connections"));
    /// # Ok(()) }
    /// ```
    pub fn log(&self, index: usize) -> Result<String, TestkitError> {
        let path = self.node(index)?.dir.join(LOG_FILE);
        fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| io_error(format!("reading {}", path.display()), e))
    }

    /// Runs `f` on the kept connection to node `index` itself (opened on first use). If it
    /// fails, the connection is replaced by a fresh one and `f` runs once more (a node's
    /// restart breaks the kept connection), so `f` should be safe to repeat.
    fn with_direct_conn<T>(
        &self,
        index: usize,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, TestkitError> {
        let node = self.node(index)?;
        let url = if self.is_tls() {
            // The node's Unix socket: the testkit's connections need no TLS client.
            let socket = Self::socket(&node.dir);
            match &self.password {
                Some(Password(pw)) => format!("redis+unix://{}?pass={pw}", socket.display()),
                None => format!("redis+unix://{}", socket.display()),
            }
        } else {
            self.direct_url(index)?
        };
        let io = |e: redis::RedisError| {
            io_error(
                format!("talking to node {index}"),
                io::Error::other(e.to_string()),
            )
        };
        let mut kept = node.conn.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = kept.as_mut() {
            match f(conn) {
                Ok(value) => return Ok(value),
                Err(_) => *kept = None,
            }
        }
        let mut conn = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .map_err(io)?;
        // Named, so that tests counting a node's clients can leave it out.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("redquorum-testkit")
            .query::<()>(&mut conn)
            .map_err(io)?;
        let value = f(&mut conn).map_err(io)?;
        *kept = Some(conn);
        Ok(value)
    }

    fn node(&self, index: usize) -> Result<&Node, TestkitError> {
        self.nodes.get(index).ok_or(TestkitError::NoSuchNode {
            index,
            len: self.nodes.len(),
        })
    }

    /// Picks free ports until a server comes up (another process may grab a
    /// port between our probe and redis binding it).
    fn launch_on_free_port(&self, dir: &Path) -> Result<(u16, Child), TestkitError> {
        let mut port = free_port()?;
        for attempt in 1..=START_ATTEMPTS {
            match self.launch(port, dir)? {
                Launch::Ready(child) => return Ok((port, child)),
                Launch::Exited if attempt < START_ATTEMPTS => port = free_port()?,
                Launch::Exited | Launch::TimedOut => break,
            }
        }
        Err(not_ready(port, dir))
    }

    /// Spawns one server and waits for it to become ready.
    fn launch(&self, port: u16, dir: &Path) -> Result<Launch, TestkitError> {
        let log_path = dir.join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(format!("opening {}", log_path.display()), e))?;
        // Startup errors that happen before redis opens its logfile (bad
        // arguments, ...) go to stdout/stderr, so send those to the log too.
        let log_err = log
            .try_clone()
            .map_err(|e| io_error(format!("opening {}", log_path.display()), e))?;
        let mut cmd = Command::new(&self.binary);
        #[cfg(feature = "testkit-tls")]
        if let Some((files, auth)) = &self.tls {
            // TLS only on TCP; a Unix socket (owner only) for the testkit's own probes.
            cmd.args(["--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&files.cert_file)
                .arg("--tls-key-file")
                .arg(&files.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca_file)
                .arg("--tls-auth-clients")
                .arg(match auth {
                    ClientAuth::Optional => "optional",
                    ClientAuth::Required => "yes",
                })
                .arg("--unixsocket")
                .arg(Self::socket(dir))
                .args(["--unixsocketperm", "700"]);
        }
        if !self.is_tls() {
            cmd.arg("--port").arg(port.to_string());
        }
        cmd.args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }]);
        if self.appendonly {
            cmd.args(["--appendfsync", "always"]);
        }
        cmd.arg("--dir")
            .arg(dir)
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--logfile")
            .arg(&log_path)
            .args(["--maxmemory-policy", "noeviction"]);
        if let Some(Password(pw)) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        cmd.args(&self.server_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let mut child = match spawn_tied(cmd) {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TestkitError::RedisServerMissing)
            }
            Err(e) => return Err(io_error(format!("spawning {}", self.binary.display()), e)),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(_)) => return Ok(Launch::Exited),
                Err(e) => {
                    kill_and_reap(&mut child);
                    return Err(io_error(format!("polling redis-server on port {port}"), e));
                }
            }
            let password = self.password.as_ref().map(|p| p.0.as_str());
            let ready = if self.is_tls() {
                is_ready_on(unix_connect(&Self::socket(dir)), child.id(), password)
            } else {
                is_ready(port, child.id(), password)
            };
            if ready {
                return Ok(Launch::Ready(child));
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                return Ok(Launch::TimedOut);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Must not panic: this also runs while a failed test unwinds.
        for node in &self.nodes {
            let mut state = lock(&node.state);
            if let Some(mut child) = state.child.take() {
                if state.paused {
                    let _ = send_signal(child.id(), "CONT");
                }
                kill_and_reap(&mut child);
            }
            state.paused = false;
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

enum Launch {
    Ready(Child),
    /// The process exited during startup (usually: port already in use).
    Exited,
    /// Still running but not ready by the deadline (already killed).
    TimedOut,
}

fn lock(state: &Mutex<NodeState>) -> MutexGuard<'_, NodeState> {
    // A panic while holding the lock cannot leave `NodeState` inconsistent.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns a node's `redis-server` so that it does not outlive this process.
///
/// On Linux the child asks for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`): a test,
/// example or CLI run that is killed outright (no unwinding, no `Drop`) takes its servers with
/// it instead of leaving them running. The kernel ties that signal to the *thread* that forked
/// the child, not the process, so every spawn goes through one thread that lives as long as
/// the process (a test's thread, or a blocking-pool thread that restarts a node, ends long
/// before the servers it started should).
#[cfg(target_os = "linux")]
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::OnceLock;

    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();

    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (prctl,
    // getppid) and builds errors without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would send the signal any more.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        return cmd.spawn(); // no spawner thread: spawn here, tied to this thread
    };
    let (reply, answer) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the testkit's spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the testkit's spawner thread is gone"))?
}

#[cfg(not(target_os = "linux"))]
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    cmd.spawn()
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn not_ready(port: u16, dir: &Path) -> TestkitError {
    TestkitError::NotReady {
        port,
        log_tail: log_tail(&dir.join(LOG_FILE)),
    }
}

fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

/// `$REDQUORUM_REDIS_SERVER` if set (and non-empty), else `redis-server` on `PATH`.
fn resolve_binary(
    override_path: Option<OsString>,
    path_var: Option<OsString>,
) -> Result<PathBuf, TestkitError> {
    if let Some(explicit) = override_path.filter(|p| !p.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if is_executable(&explicit) {
            Ok(explicit)
        } else {
            Err(TestkitError::RedisServerMissing)
        };
    }
    let path_var = path_var.ok_or(TestkitError::RedisServerMissing)?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| is_executable(candidate))
        .ok_or(TestkitError::RedisServerMissing)
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

fn create_root_dir(base: PathBuf) -> Result<PathBuf, TestkitError> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("redquorum-{pid}-{n}-{nanos}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left over from an earlier process with the same pid: try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(format!("creating {}", dir.display()), e)),
        }
    }
}

/// Lowest port handed out to test nodes (well above the well-known and registered services
/// most machines run).
const TEST_PORT_FLOOR: u16 = 20_000;
/// Fewest ports a range below the ephemeral one must offer to be used at all.
const TEST_PORT_MIN_SPAN: u16 = 1_000;

/// A free port on 127.0.0.1 for a node, chosen *outside* the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`) when there is room below it.
///
/// A node keeps its port for the cluster's life and `restart` binds it again. A port from the
/// ephemeral range (what binding port 0 gives) can be taken, while the node is down, by any
/// outgoing connection or by another test's port-0 bind, and the restart then fails. Ports
/// below the ephemeral range are never handed out by the kernel; among test processes, each
/// starts at a random place in the range and walks through it (so parallel test binaries
/// rarely meet, and a process never reuses a port it gave out until it has gone round the
/// whole range), and a port is only given out after binding it succeeded.
fn free_port() -> Result<u16, TestkitError> {
    if let Some((low, high)) = test_port_range(ephemeral_range()) {
        static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
        let span = usize::from(high - low) + 1;
        // First use: a per-process random start. Racing first uses both store a random start,
        // which is fine.
        if NEXT.load(Ordering::Relaxed) == usize::MAX {
            let _ = NEXT.compare_exchange(
                usize::MAX,
                fastrand::usize(..span),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        for _ in 0..span {
            let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
            let Ok(port) = u16::try_from(usize::from(low) + offset) else {
                continue;
            };
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range (or all of it taken): let the kernel choose.
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| io_error("finding a free port on 127.0.0.1", e))
}

/// The kernel's ephemeral port range, if it can be read (Linux).
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) => Some((low, high)),
        _ => None,
    }
}

/// Ports for test nodes: from [`TEST_PORT_FLOOR`] up to just below the ephemeral range. Without
/// a readable ephemeral range, the usual Linux default (32768–60999) is assumed.
fn test_port_range(ephemeral: Option<(u16, u16)>) -> Option<(u16, u16)> {
    let (ephemeral_low, _) = ephemeral.unwrap_or((32_768, 60_999));
    let high = ephemeral_low.checked_sub(1)?;
    (high >= TEST_PORT_FLOOR + TEST_PORT_MIN_SPAN).then_some((TEST_PORT_FLOOR, high))
}

/// `PING` answers `+PONG` and the server on `port` is our process `pid` (not
/// some other server that won a port race against it). With `password`, authenticates first.
fn is_ready(port: u16, pid: u32, password: Option<&str>) -> bool {
    is_ready_on(connect(port, Duration::from_millis(500)), pid, password)
}

/// A Unix socket connection with the probes' timeouts.
#[cfg(unix)]
fn unix_connect(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    Ok(stream)
}

#[cfg(not(unix))]
fn unix_connect(_path: &Path) -> io::Result<TcpStream> {
    Err(io::Error::other("TLS nodes need Unix sockets"))
}

/// [`is_ready`] on an open connection to the server (TCP or its Unix socket).
fn is_ready_on(stream: io::Result<impl Read + Write>, pid: u32, password: Option<&str>) -> bool {
    let probe = || -> io::Result<bool> {
        let mut reader = BufReader::new(stream?);
        let mut line = String::new();
        if let Some(pw) = password {
            // RESP, so that any byte of the password goes through.
            let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len());
            reader.get_mut().write_all(auth.as_bytes())?;
            reader.read_line(&mut line)?;
            if !line.starts_with("+OK") {
                return Ok(false);
            }
            line.clear();
        }
        reader.get_mut().write_all(b"PING\r\nINFO server\r\n")?;
        reader.read_line(&mut line)?;
        if !line.starts_with("+PONG") {
            return Ok(false); // e.g. -LOADING while replaying the AOF
        }
        line.clear();
        reader.read_line(&mut line)?;
        let Some(len) = line
            .strip_prefix('$')
            .and_then(|n| n.trim_end().parse::<usize>().ok())
        else {
            return Ok(false);
        };
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let expected = format!("process_id:{pid}");
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l.trim_end() == expected))
    };
    probe().unwrap_or(false)
}

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends `SIG<signal>` via the `kill` binary, falling back to the shell builtin.
fn send_signal(pid: u32, signal: &str) -> Result<(), TestkitError> {
    let context = || format!("sending SIG{signal} to pid {pid}");
    let quiet = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let status = match quiet(
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string()),
    ) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => quiet(
            Command::new("sh")
                .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
                .arg(pid.to_string()),
        ),
        other => other,
    }
    .map_err(|e| io_error(context(), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(io_error(
            context(),
            io::Error::other(format!("`kill` exited with {status}")),
        ))
    }
}

/// Best effort (Linux only): wait up to 1 s until `/proc/<pid>/stat` shows the
/// process as stopped (or no longer stopped), so callers observe the effect.
fn wait_for_proc_state(pid: u32, stopped: bool) {
    let path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let Ok(mut file) = File::open(&path) else {
            return;
        };
        let mut stat = String::new();
        if file.read_to_string(&mut stat).is_err() {
            return;
        }
        // Format: "<pid> (<comm>) <state> ...", and comm may contain ')'.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        match state {
            Some('T' | 't') if stopped => return,
            Some('T' | 't') => {}
            Some(_) if !stopped => return,
            Some(_) => {}
            None => return,
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one inline command and returns the first reply line.
    fn command(port: u16, cmd: &str, timeout: Duration) -> io::Result<String> {
        let stream = connect(port, timeout)?;
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    fn pings(port: u16) -> bool {
        command(port, "PING", Duration::from_millis(200)).is_ok_and(|reply| reply == "+PONG")
    }

    fn pid(cluster: &LocalCluster, index: usize) -> u32 {
        lock(&cluster.nodes[index].state)
            .child
            .as_ref()
            .expect("node is running")
            .id()
    }

    #[test]
    fn lifecycle_kill_restart_pause_resume() -> Result<(), TestkitError> {
        let cluster = LocalCluster::start(3)?;
        assert_eq!(cluster.len(), 3);
        assert!(!cluster.is_empty());
        for (i, url) in cluster.urls().into_iter().enumerate() {
            let port = cluster.port(i)?;
            assert!(pings(port), "node {i} should answer PING");
            assert!(cluster.is_running(i));
            assert_eq!(cluster.url(i)?, format!("redis://127.0.0.1:{port}"));
            assert_eq!(url, cluster.url(i)?);
            assert!(cluster.log(i)?.contains("Ready to accept connections"));
        }

        let port = cluster.port(1)?;
        cluster.kill(1)?;
        assert!(!cluster.is_running(1));
        assert!(!pings(port));
        cluster.kill(1)?; // no-op
        assert!(matches!(
            cluster.pause(1),
            Err(TestkitError::NotRunning { index: 1 })
        ));

        cluster.restart(1)?;
        assert!(cluster.is_running(1));
        assert_eq!(cluster.port(1)?, port);
        assert!(pings(port));

        let port = cluster.port(2)?;
        cluster.pause(2)?;
        assert!(cluster.is_running(2), "a paused node is still alive");
        assert!(!pings(port), "a paused node must not answer");
        cluster.resume(2)?;
        assert!(pings(port));
        cluster.resume(2)?; // no-op
        Ok(())
    }

    #[test]
    fn out_of_range_index_is_an_error() -> Result<(), TestkitError> {
        let cluster = LocalCluster::start(1)?;
        let no_such = |r: Result<(), TestkitError>| {
            matches!(r, Err(TestkitError::NoSuchNode { index: 7, len: 1 }))
        };
        assert!(no_such(cluster.kill(7)));
        assert!(no_such(cluster.restart(7)));
        assert!(no_such(cluster.pause(7)));
        assert!(no_such(cluster.resume(7)));
        assert!(no_such(cluster.url(7).map(drop)));
        assert!(no_such(cluster.port(7).map(drop)));
        assert!(no_such(cluster.log(7).map(drop)));
        assert!(!cluster.is_running(7));
        let message = cluster.kill(7).map_err(|e| e.to_string()).err();
        assert_eq!(
            message.as_deref(),
            Some("no node with index 7: the cluster has 1 node(s)")
        );
        Ok(())
    }

    #[test]
    fn drop_kills_processes_and_removes_dir() -> Result<(), TestkitError> {
        let cluster = LocalCluster::builder().nodes(2).start()?;
        let pids = [pid(&cluster, 0), pid(&cluster, 1)];
        let root = cluster.root.clone();
        cluster.pause(1)?; // drop must cope with stopped processes
        for pid in pids {
            assert!(Path::new(&format!("/proc/{pid}")).exists());
        }
        drop(cluster);
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} survived drop"
            );
        }
        assert!(!root.exists(), "{} survived drop", root.display());
        Ok(())
    }

    #[test]
    fn appendonly_survives_restart() -> Result<(), TestkitError> {
        let cluster = LocalCluster::builder().nodes(1).appendonly(true).start()?;
        let port = cluster.port(0)?;
        let timeout = Duration::from_secs(2);
        let set = command(port, "SET testkit-key v1", timeout).map_err(|e| io_error("SET", e))?;
        assert_eq!(set, "+OK");
        cluster.kill(0)?;
        cluster.restart(0)?;
        let get = command(port, "GET testkit-key", timeout).map_err(|e| io_error("GET", e))?;
        assert_eq!(
            get, "$2",
            "value should survive a crash with appendfsync always"
        );
        Ok(())
    }

    #[test]
    fn node_ports_lie_below_the_ephemeral_range() -> Result<(), TestkitError> {
        assert_eq!(
            test_port_range(Some((32_768, 60_999))),
            Some((TEST_PORT_FLOOR, 32_767))
        );
        assert_eq!(test_port_range(Some((20_500, 60_999))), None, "no room");
        assert_eq!(test_port_range(Some((1_024, 65_535))), None);
        let Some((low, high)) = test_port_range(ephemeral_range()) else {
            return Ok(()); // this machine leaves no room: ports come from the kernel
        };
        let cluster = LocalCluster::start(3)?;
        for i in 0..cluster.len() {
            let port = cluster.port(i)?;
            assert!((low..=high).contains(&port), "node {i} on port {port}");
        }
        // A killed node's port is not given out again by this process, so its restart gets it.
        let port = cluster.port(0)?;
        cluster.kill(0)?;
        for _ in 0..50 {
            assert_ne!(free_port()?, port);
        }
        cluster.restart(0)?;
        assert!(pings(port));
        Ok(())
    }

    #[cfg(feature = "testkit-tls")]
    #[test]
    fn tls_nodes_take_no_plain_connections_and_restart() -> Result<(), TestkitError> {
        let cluster = LocalCluster::builder()
            .nodes(1)
            .requirepass("pw")
            .tls(true)
            .start()?;
        let port = cluster.port(0)?;
        assert_eq!(cluster.url(0)?, format!("rediss://:pw@127.0.0.1:{port}"));
        assert!(cluster
            .tls_ca_pem()
            .is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----")));
        assert!(!format!("{cluster:?}").contains("PRIVATE KEY"));
        // Plain RESP on the TLS port gets no answer: the node speaks TLS only.
        assert!(!pings(port));
        // The testkit's own connection (its Unix socket) reads the node's statistics, also
        // after a restart on the same port.
        cluster.command_stats()?;
        cluster.restart(0)?;
        assert_eq!(cluster.port(0)?, port);
        assert!(!pings(port));
        cluster.command_stats()?;
        Ok(())
    }

    #[test]
    fn binary_resolution() {
        let missing = resolve_binary(Some("/nonexistent/redis-server".into()), None);
        assert!(matches!(missing, Err(TestkitError::RedisServerMissing)));
        let empty_path = resolve_binary(None, Some("/nonexistent-dir".into()));
        assert!(matches!(empty_path, Err(TestkitError::RedisServerMissing)));
        let message = TestkitError::RedisServerMissing.to_string();
        assert!(message.contains("sudo apt-get install redis-server"));
        if Path::new("/usr/bin/redis-server").exists() {
            let found = resolve_binary(None, Some("/nonexistent-dir:/usr/bin".into()));
            assert_eq!(found.ok(), Some(PathBuf::from("/usr/bin/redis-server")));
        }
    }
}
