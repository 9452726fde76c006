//! The builder, its defaults and the rules it checks before any I/O: the top of the crate
//! (it builds a [`RedLock`]; nothing below imports it).

use std::time::Duration;

use crate::lock::RedLock;
use crate::node::redact;
use crate::retry::Retry;
use crate::wait::WaitStrategy;

/// Default lease per acquisition.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default clock-drift factor (plus [`quorum::DRIFT_FLOOR`](crate::quorum::DRIFT_FLOOR)).
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;
/// Default bound on concurrent node requests across one [`RedLock`] and its clones.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default key prefix.
pub const DEFAULT_NAMESPACE: &str = "redquorum";
pub use crate::settings::DEFAULT_GROUP;
/// Default time `build()` waits for a majority of nodes to answer a first PING.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest time a waiter relying on release notifications goes without checking
/// (see [`RedLockBuilder::safety_poll`]).
pub const DEFAULT_SAFETY_POLL: Duration = Duration::from_secs(30);

/// The default per-node request timeout for a lease of `ttl`: `ttl / 200`, kept within
/// 50 ms ..= 250 ms (50 ms for the default 10 s lease; a loopback round trip is well under a
/// millisecond, but a loaded host's scheduler can add tens). The Redlock spec asks for a timeout much
/// smaller than the TTL so a dead or frozen node costs little of the lease.
///
/// ```
/// use std::time::Duration;
/// use redquorum::config::default_node_timeout;
/// assert_eq!(default_node_timeout(Duration::from_secs(10)), Duration::from_millis(50));
/// assert_eq!(default_node_timeout(Duration::from_secs(1)), Duration::from_millis(50));
/// assert_eq!(default_node_timeout(Duration::from_secs(600)), Duration::from_millis(250));
/// ```
pub fn default_node_timeout(ttl: Duration) -> Duration {
    (ttl / 200).clamp(Duration::from_millis(50), Duration::from_millis(250))
}

/// Configures and connects a [`RedLock`]. Obtained from [`RedLock::builder`].
///
/// | option | default | meaning |
/// |---|---|---|
/// | [`nodes`](Self::nodes) | — (required) | URLs of the independent Redis masters |
/// | [`ttl`](Self::ttl) | 10 s | lease per acquisition |
/// | [`drift_factor`](Self::drift_factor) | 0.01 | clock-drift allowance: `ttl · factor + 2 ms` |
/// | [`node_timeout`](Self::node_timeout) | `ttl / 200` in 50..=250 ms | per-node request timeout |
/// | [`max_in_flight`](Self::max_in_flight) | 1024 | concurrent node requests, all clones together |
/// | [`retry`](Self::retry) | 10 ms doubling to 200 ms, full jitter | wait between attempts |
/// | [`owner`](Self::owner) | `host:pid` | label stored with each grant |
/// | [`namespace`](Self::namespace) | `redquorum` | key prefix |
/// | [`connect_timeout`](Self::connect_timeout) | 2 s | how long `build()` waits for a majority |
/// | [`wait_strategy`](Self::wait_strategy) | PubSub | how a waiter learns of a release |
/// | [`safety_poll`](Self::safety_poll) | 30 s | longest a notified waiter goes without checking |
/// | [`fencing`](Self::fencing) | off | fencing tokens, strictly increasing per key |
/// | [`refuse_unsafe_masters`](Self::refuse_unsafe_masters) | off | `build()` fails on an unsafe master |
/// | `tls_root_certs`, `tls_client_cert` | system trust store, no client certificate | TLS (`tls-rustls` / `tls-native-tls` features) |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use redquorum::{RedLock, Retry, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Every rule is checked before any connection is made:
/// let err = RedLock::builder()
///     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7001"])
///     .ttl(Duration::from_secs(5))
///     .retry(Retry::exponential(Duration::from_millis(20), Duration::from_millis(500)))
///     .build()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, Error::Config { .. }));
/// assert!(err.to_string().contains("more than once"));
/// # }
/// ```
///
/// `Debug` output shows the node URLs without their credentials:
///
/// ```
/// let b = redquorum::RedLock::builder().nodes(["redis://app:s3cret@10.0.0.1:6379/2"]);
/// let shown = format!("{b:?}");
/// assert!(shown.contains("redis://***@10.0.0.1:6379/2") && !shown.contains("s3cret"));
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing itself; call .build().await"]
pub struct RedLockBuilder {
    nodes: Vec<String>,
    ttl: Duration,
    drift_factor: f64,
    node_timeout: Option<Duration>,
    max_in_flight: usize,
    retry: Retry,
    owner: Option<String>,
    namespace: String,
    connect_timeout: Duration,
    wait_strategy: WaitStrategy,
    safety_poll: Duration,
    fencing: bool,
    fencing_unconfirmed: bool,
    semaphore_counting: bool,
    refuse_unsafe: bool,
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    tls: crate::tls::Tls,
}

impl Default for RedLockBuilder {
    fn default() -> Self {
        RedLockBuilder {
            nodes: Vec::new(),
            ttl: DEFAULT_TTL,
            drift_factor: DEFAULT_DRIFT_FACTOR,
            node_timeout: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry: Retry::default(),
            owner: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            wait_strategy: WaitStrategy::default(),
            safety_poll: DEFAULT_SAFETY_POLL,
            fencing: false,
            fencing_unconfirmed: false,
            semaphore_counting: false,
            refuse_unsafe: false,
            #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
            tls: crate::tls::Tls::default(),
        }
    }
}

/// Every field, with the node URLs' credentials replaced by `***`.
impl std::fmt::Debug for RedLockBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|u| redact(u)).collect();
        let mut f = f.debug_struct("RedLockBuilder");
        f.field("nodes", &nodes)
            .field("ttl", &self.ttl)
            .field("drift_factor", &self.drift_factor)
            .field("node_timeout", &self.node_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("retry", &self.retry)
            .field("owner", &self.owner)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_strategy", &self.wait_strategy)
            .field("safety_poll", &self.safety_poll)
            .field("fencing", &self.fencing)
            .field("fencing_unconfirmed", &self.fencing_unconfirmed)
            .field("semaphore_counting", &self.semaphore_counting)
            .field("refuse_unsafe", &self.refuse_unsafe);
        #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
        f.field("tls", &self.tls);
        f.finish()
    }
}

impl RedLock {
    /// Starts configuring a `RedLock`; see [`RedLockBuilder`] for every option and default.
    ///
    /// ```
    /// let builder = redquorum::RedLock::builder().nodes(["redis://127.0.0.1:6379"]);
    /// # drop(builder);
    /// ```
    pub fn builder() -> RedLockBuilder {
        RedLockBuilder::default()
    }
}

mod build;
mod options;
