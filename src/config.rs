//! The builder, its defaults and the rules it checks before any I/O: the top of the crate
//! (it builds a [`RedLock`]; nothing below imports it).

use std::time::Duration;

use crate::error::Error;
use crate::lock::RedLock;
use crate::node::{redact, NodeSpec};
use crate::retry::Retry;
use crate::settings::{check_ttl, Config};
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
        }
    }
}

/// Every field, with the node URLs' credentials replaced by `***`.
impl std::fmt::Debug for RedLockBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|u| redact(u)).collect();
        f.debug_struct("RedLockBuilder")
            .field("nodes", &nodes)
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
            .finish()
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

impl RedLockBuilder {
    /// The Redis masters, as URLs the redis crate understands: `redis://host:port`,
    /// `redis://user:password@host:port/db`, `rediss://` for TLS (add
    /// `redis = { version = "1", features = ["tokio-rustls-comp"] }` to your Cargo.toml; cargo
    /// unifies the feature into this crate's redis dependency). Use independent masters (no replication between them); 3 or 5 is typical.
    /// Replaces any nodes given before.
    pub fn nodes<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.nodes = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        self
    }

    /// The lease of each acquisition: how long the nodes keep the key if it is never released.
    ///
    /// # Default
    /// 10 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock-drift factor: a grant's validity is reduced by `ttl · factor + 2 ms` to allow
    /// for nodes whose clocks run fast. Must be in `0.0..0.5`.
    ///
    /// # Default
    /// 0.01.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// How long one request to one node may take before that node counts as failed for this
    /// round. Must leave positive validity: `ttl > node_timeout + drift`.
    ///
    /// # Default
    /// [`default_node_timeout`]`(ttl)`: 50 ms for a 10 s TTL.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = Some(timeout);
        self
    }

    /// Bound on concurrent node requests across this `RedLock`, its clones and groups (a
    /// `tokio::sync::Semaphore`). Requests beyond it wait for a permit (the node timeout counts
    /// from when the request is sent; the validity counts the whole round). Must be at least
    /// the number of nodes.
    ///
    /// # Default
    /// 1024.
    pub fn max_in_flight(mut self, permits: usize) -> Self {
        self.max_in_flight = permits;
        self
    }

    /// The backoff between acquisition attempts while the lock is held elsewhere.
    ///
    /// # Default
    /// [`Retry::default`]: 10 ms doubling to 200 ms with full jitter, no attempt limit.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// A human-readable label stored with each grant, returned by [`RedLock::owner`].
    ///
    /// # Default
    /// `<hostname>:<pid>`.
    pub fn owner(mut self, label: impl Into<String>) -> Self {
        self.owner = Some(label.into());
        self
    }

    /// Prefix of every lock key: keys are `<namespace>:<group>:<key>`. Must not contain `:`.
    ///
    /// # Default
    /// `redquorum`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long [`build`](Self::build) waits for a majority of nodes to answer.
    ///
    /// # Default
    /// 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How `acquire` waits while the lock is held elsewhere.
    ///
    /// # Default
    /// [`WaitStrategy::PubSub`]: woken by release notifications; polling only where they
    /// cannot be relied on (see [`safety_poll`](Self::safety_poll)).
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.wait_strategy = strategy;
        self
    }

    /// The longest a waiter that relies on release notifications goes without checking the
    /// lock itself ([`WaitStrategy::PubSub`], subscribed on live connections to a majority).
    ///
    /// Such a waiter sends nothing while it waits, except when the holder's lease could have
    /// run out (it knows the remaining PTTL) and every `safety_poll`. Releases and undone
    /// attempts announce themselves, and a dead or hung subscription connection is found
    /// within about two seconds (a health-check PING each second on each node's subscription
    /// connection) and wakes its waiters; what remains is a key removed by something that does
    /// not publish (`DEL` by hand, `FLUSHALL`, a client of another library, an ACL user that
    /// may not `PUBLISH`), and that is what this bounds. Waiters that are not covered (subscriptions refused by an ACL, nodes down)
    /// poll with the [`retry`](Self::retry) backoff instead.
    ///
    /// # Default
    /// 30 s: three default TTLs, so a waiter also re-checks a holder that keeps renewing; at
    /// 1 000 waiting keys on 5 nodes the safety polls cost the masters about 330 commands/s in
    /// all (two per node per key per poll), against 100 000/s for polling every 100 ms.
    ///
    /// # Errors
    /// `build()` returns [`Error::Config`] for a zero interval.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = redquorum::RedLock::builder().safety_poll(Duration::from_secs(5));
    /// # drop(b);
    /// ```
    pub fn safety_poll(mut self, interval: Duration) -> Self {
        self.safety_poll = interval;
        self
    }

    /// Fencing tokens: every grant gets a number ([`LockGuard::fencing_token`](crate::LockGuard::fencing_token))
    /// that strictly increases for successive holders of a key, as long as a majority of nodes
    /// keeps its data (`appendonly yes`, `appendfsync always`). Give it to the resource you
    /// protect and have it reject any token lower than the highest it has seen: that closes the
    /// gap a paused holder leaves, which no lease can.
    ///
    /// **Every** node must keep its counters across restarts (`appendonly yes`, `appendfsync
    /// always`): a node that loses them can hand out a token that goes back, even while the other
    /// nodes keep theirs, and delaying its restart does not help (the counters are not leases).
    ///
    /// Costs one persistent counter per lock key per node (`<namespace>::fence:<group>:<key>`,
    /// never expired: about 100 bytes each) and, when the granting nodes' counters disagree, a
    /// second round. Sets ([`RedLock::acquire_many`]) get no token.
    ///
    /// # Default
    /// Off (the counters would grow without bound for high-cardinality keys).
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// **Unsafe, for demonstrations only**: fencing tokens as the plain maximum of the granting
    /// nodes' counters, without the confirming round. The test suite uses it to show that such
    /// tokens can go backwards when the nodes' counters disagree.
    #[doc(hidden)]
    pub fn fencing_unconfirmed(mut self) -> Self {
        self.fencing = true;
        self.fencing_unconfirmed = true;
        self
    }

    /// **Unsafe, for demonstrations only**: semaphores as the naive quorum scheme, where each
    /// node counts its holders and refuses beyond the permit count. Across a quorum that
    /// admits more holders than permits (N = 3, 2 permits: holders granted on nodes {1,2},
    /// {2,3} and {1,3} put two on every node, yet three hold it); the test suite uses it to
    /// show that the semaphore checker catches it. See docs/primitives.md.
    #[doc(hidden)]
    pub fn semaphore_counting(mut self) -> Self {
        self.semaphore_counting = true;
        self
    }

    /// Checks every rule, then connects to all nodes in parallel and returns once a majority
    /// answers (and the others answered or had a node timeout more to do so); the others keep
    /// connecting in the background.
    ///
    /// Every connection is identified before it carries a request (`INFO server`: the
    /// server's `run_id`, again after each reconnect, as a restarted server has a new one), so
    /// one server reached by two URLs never counts as two votes. A node that turns out to be
    /// the same server as another only after `build()` (it was down then) never votes: its
    /// failures say [`NodeCause::Duplicate`](crate::NodeCause::Duplicate), and an error is
    /// logged once, naming both nodes. With ACLs, the user needs `+info` as well.
    ///
    /// # Errors
    /// [`Error::Config`] for bad input, before any I/O: no nodes, a node given twice (or the
    /// same host and port with another database), an unparsable URL, a zero or too-short TTL, a
    /// drift factor outside `0.0..0.5`, a zero node or connect timeout, `max_in_flight` below
    /// the number of nodes, an empty owner or namespace; after connecting, two nodes that are
    /// the same server (naming both URLs, without credentials). [`Error::NoQuorum`] when a
    /// majority of nodes does not answer within `connect_timeout`: it lists every node that
    /// did not, each with what to check.
    ///
    /// ```no_run
    /// # use redquorum::{Error, RedLock};
    /// # async fn f() {
    /// // 127.0.0.1 and localhost: one server, found out when the nodes connect.
    /// let err = RedLock::builder()
    ///     .nodes(["redis://127.0.0.1:6379", "redis://localhost:6379", "redis://10.0.0.3:6379"])
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Config { .. }));
    /// assert!(err.to_string().contains("same Redis server"));
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Dropping the future leaves nothing behind: connections are closed with it.
    pub async fn build(self) -> Result<RedLock, Error> {
        let (config, specs) = self.validate()?;
        RedLock::connect(config, specs).await
    }

    /// All rules, as a pure function of the builder: one after another, each a few lines
    /// (long on purpose: the rules read in order, and the tests check each message).
    pub(crate) fn validate(&self) -> Result<(Config, Vec<NodeSpec>), Error> {
        if self.nodes.is_empty() {
            return Err(Error::config(
                "no nodes: pass the URLs of your Redis masters to .nodes([...]) (3 or 5 independent \
                 masters survive the loss of 1 or 2)",
            ));
        }
        let mut specs: Vec<NodeSpec> = Vec::with_capacity(self.nodes.len());
        for url in &self.nodes {
            let spec = NodeSpec::parse(url).map_err(Error::config)?;
            // One host and port is one server, whatever the database (other names for the same
            // server are caught when the nodes connect: see `build`).
            if let Some(first) = specs.iter().find(|s| s.server == spec.server) {
                return Err(Error::config(format!(
                    "nodes {} and {} are the same Redis server ({}): a server listed more than \
                     once (another database is the same server) would count as several votes; \
                     list every master once",
                    first.shown, spec.shown, spec.server
                )));
            }
            specs.push(spec);
        }
        if !(self.drift_factor.is_finite() && (0.0..0.5).contains(&self.drift_factor)) {
            return Err(Error::config(format!(
                "drift_factor {} is out of range; use a value in 0.0..0.5 (default 0.01)",
                self.drift_factor
            )));
        }
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config(
                "ttl must be at least 1 ms (Redis leases are in whole milliseconds); the default is 10 s",
            ));
        }
        if self.ttl > Duration::from_secs(86_400 * 365) {
            return Err(Error::config(format!(
                "ttl {:?} is longer than a year; a lock that outlives its holder that long is a bug \
                 waiting to happen",
                self.ttl
            )));
        }
        let node_timeout = self
            .node_timeout
            .unwrap_or_else(|| default_node_timeout(self.ttl));
        if node_timeout.is_zero() {
            return Err(Error::config("node_timeout must be greater than zero"));
        }
        check_ttl(self.ttl, self.drift_factor, node_timeout)?;
        if self.max_in_flight < specs.len() {
            return Err(Error::config(format!(
                "max_in_flight {} is below the number of nodes ({}): one acquisition could not reach \
                 every node at once",
                self.max_in_flight,
                specs.len()
            )));
        }
        if self.safety_poll.is_zero() {
            return Err(Error::config(
                "safety_poll must be greater than zero (it bounds how long a notified waiter \
                 goes without checking; 30 s is the default)",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout must be greater than zero"));
        }
        if self.namespace.is_empty() || self.namespace.contains(':') {
            return Err(Error::config(format!(
                "namespace {:?} must be non-empty and must not contain ':' (keys are \
                 <namespace>:<group>:<key>); pick a prefix no other data on these servers uses",
                self.namespace
            )));
        }
        let owner =
            match &self.owner {
                Some(o) if o.is_empty() => return Err(Error::config(
                    "owner label is empty; use something that names this process, e.g. host:pid",
                )),
                Some(o) => o.as_str().into(),
                None => default_owner().into(),
            };
        if specs.len() % 2 == 0 {
            tracing::warn!(
                nodes = specs.len(),
                "an even number of nodes tolerates no more failures than one node fewer; prefer 3 or 5"
            );
        }
        let config = Config {
            ttl: self.ttl,
            drift_factor: self.drift_factor,
            retry: self.retry,
            owner,
            namespace: self.namespace.as_str().into(),
            connect_timeout: self.connect_timeout,
            node_timeout,
            max_in_flight: self.max_in_flight,
            wait_strategy: self.wait_strategy,
            safety_poll: self.safety_poll,
            fencing: self.fencing,
            fencing_unconfirmed: self.fencing_unconfirmed,
            semaphore_counting: self.semaphore_counting,
        };
        Ok((config, specs))
    }
}

fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> RedLockBuilder {
        RedLockBuilder::default().nodes([
            "redis://127.0.0.1:7001",
            "redis://127.0.0.1:7002",
            "redis://127.0.0.1:7003",
        ])
    }

    fn reason(b: RedLockBuilder) -> String {
        match b.validate() {
            Err(Error::Config { reason }) => reason,
            Err(other) => panic!("expected Config, got {other}"),
            Ok(_) => panic!("expected Config error"),
        }
    }

    #[test]
    fn defaults_validate() {
        let (c, specs) = three().validate().expect("defaults are valid");
        assert_eq!(specs.len(), 3);
        assert_eq!(c.ttl, DEFAULT_TTL);
        assert_eq!(c.node_timeout, Duration::from_millis(50));
        assert!(c.owner.contains(':'));
    }

    #[test]
    fn every_rule_has_a_clear_error() {
        assert!(reason(RedLockBuilder::default()).contains("no nodes"));
        assert!(reason(three().nodes(["redis://a:1", "redis://a:1/0"])).contains("more than once"));
        assert!(reason(three().nodes(["not a url"])).contains("not a valid Redis URL"));
        assert!(reason(three().ttl(Duration::ZERO)).contains("at least 1 ms"));
        assert!(reason(three().ttl(Duration::from_millis(20))).contains("leaves no validity"));
        assert!(
            reason(three().ttl(Duration::from_secs(86_400 * 400))).contains("longer than a year")
        );
        assert!(reason(three().drift_factor(0.5)).contains("drift_factor"));
        assert!(reason(three().drift_factor(f64::NAN)).contains("drift_factor"));
        assert!(reason(three().drift_factor(-0.1)).contains("drift_factor"));
        assert!(reason(three().node_timeout(Duration::ZERO)).contains("node_timeout"));
        assert!(
            reason(three().node_timeout(Duration::from_secs(10))).contains("leaves no validity")
        );
        assert!(reason(three().max_in_flight(2)).contains("max_in_flight"));
        assert!(reason(three().connect_timeout(Duration::ZERO)).contains("connect_timeout"));
        assert!(reason(three().namespace("")).contains("namespace"));
        assert!(reason(three().owner("")).contains("owner"));
    }

    #[test]
    fn same_host_different_db_is_one_server() {
        let r = reason(three().nodes(["redis://a:1/0", "redis://:pw@a:1/1", "redis://b:1"]));
        assert!(
            r.contains("redis://a:1/0") && r.contains("redis://***@a:1/1") && !r.contains("pw"),
            "{r}"
        );
    }

    #[test]
    fn default_node_timeout_scales_with_ttl() {
        assert_eq!(
            default_node_timeout(Duration::from_secs(20)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn credentials_never_appear_in_errors() {
        let r = reason(three().nodes(["redis://u:hunter2@h:1", "redis://u:hunter2@h:1"]));
        assert!(!r.contains("hunter2"), "{r}");
    }
}
