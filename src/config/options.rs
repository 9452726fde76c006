//! The builder's options: one setter each, with its default and an example.

use std::time::Duration;

use super::RedLockBuilder;
use crate::retry::Retry;
use crate::wait::WaitStrategy;

impl RedLockBuilder {
    /// The Redis masters, as URLs the redis crate understands: `redis://host:port`,
    /// `redis://user:password@host:port/db`, `rediss://` for TLS (with this crate's
    /// `tls-rustls` or `tls-native-tls` feature; see [`tls_root_certs`](Self::tls_root_certs)
    /// for a private CA). Use independent masters (no replication between them); 3 or 5 is
    /// typical. Replaces any nodes given before.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::RedLock;
    ///
    /// let builder = RedLock::builder().nodes([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://app:s3cret@10.0.0.2:6379/0", // user and password, database 0
    ///     "redis+unix:///run/redis/redis.sock",
    /// ]);
    /// // No URL shows its credentials, in Debug output as in errors.
    /// assert!(!format!("{builder:?}").contains("s3cret"));
    /// // Comma-separated, from the environment (as the CLI and the examples read them):
    /// let list = std::env::var("REDQUORUM_NODES").unwrap_or_default();
    /// let from_env = RedLock::builder().nodes(list.split(',').map(str::trim));
    /// # drop(from_env);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::{Error, RedLock};
    ///
    /// let builder = RedLock::builder().nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"]).ttl(Duration::from_secs(30));
    /// # drop(builder);
    /// // Checked before any connection: a lease too short to leave time to act is refused.
    /// let err = RedLock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .ttl(Duration::from_millis(20))
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Config { .. }) && err.to_string().contains("leaves no validity"));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock-drift factor: a grant's validity is reduced by `ttl · factor + 2 ms` to allow
    /// for nodes whose clocks run fast. Must be in `0.0..0.5`.
    ///
    /// # Default
    /// 0.01.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// // Masters whose clocks may run up to 2 % fast: 30 s leases lose 602 ms of validity.
    /// let builder = RedLock::builder().nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"]).drift_factor(0.02);
    /// # drop(builder);
    /// assert_eq!(redquorum::quorum::drift(Duration::from_secs(30), 0.02), Duration::from_millis(602));
    /// let err = RedLock::builder().nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"]).drift_factor(0.5).build().await.unwrap_err();
    /// assert!(err.to_string().contains("drift_factor"));
    /// # Ok(()) }
    /// ```
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// How long one request to one node may take before that node counts as failed for this
    /// round. Must leave positive validity: `ttl > node_timeout + drift`.
    ///
    /// # Default
    /// [`default_node_timeout`](super::default_node_timeout)`(ttl)`: 50 ms for a 10 s TTL.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// // Masters in another data centre: a round trip of 30 ms, so more than the default 50 ms.
    /// let builder = RedLock::builder().nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"]).node_timeout(Duration::from_millis(150));
    /// # drop(builder);
    /// // One node timeout must leave validity within the lease.
    /// let err = RedLock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .ttl(Duration::from_millis(100))
    ///     .node_timeout(Duration::from_millis(200))
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("node_timeout"));
    /// # Ok(()) }
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let builder = RedLock::builder().nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"]).max_in_flight(256);
    /// # drop(builder);
    /// // At least one request per node, or an acquisition could not reach every node at once.
    /// let err = RedLock::builder().nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"]).max_in_flight(2).build().await.unwrap_err();
    /// assert!(err.to_string().contains("max_in_flight"));
    /// # Ok(()) }
    /// ```
    pub fn max_in_flight(mut self, permits: usize) -> Self {
        self.max_in_flight = permits;
        self
    }

    /// The backoff between acquisition attempts while the lock is held elsewhere.
    ///
    /// # Default
    /// [`Retry::default`]: 10 ms doubling to 200 ms with full jitter, no attempt limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::{RedLock, Retry};
    ///
    /// // Wait 20 ms doubling to 1 s between attempts, and give up after 10 attempts
    /// // (Error::RetriesExhausted) if the context's deadline has not ended the wait before.
    /// let builder = RedLock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .retry(Retry::exponential(Duration::from_millis(20), Duration::from_secs(1)).max_attempts(10));
    /// # drop(builder);
    /// ```
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// A human-readable label stored with each grant, returned by [`RedLock::owner`](crate::RedLock::owner).
    ///
    /// # Default
    /// `<hostname>:<pid>`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// # let locks = redquorum::RedLock::builder()
    /// #     .nodes(cluster.urls())
    /// #     .node_timeout(std::time::Duration::from_millis(250))
    /// #     .owner("billing-worker-3")
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("invoice-7").await?.expect("the lock is free");
    /// // Anyone can ask who holds a lock.
    /// assert_eq!(locks.owner("invoice-7").await?.as_deref(), Some("billing-worker-3"));
    /// guard.release().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn owner(mut self, label: impl Into<String>) -> Self {
        self.owner = Some(label.into());
        self
    }

    /// Prefix of every lock key: keys are `<namespace>:<group>:<key>`. Must not contain `:`.
    ///
    /// # Default
    /// `redquorum`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// # let locks = redquorum::RedLock::builder()
    /// #     .nodes(cluster.urls())
    /// #     .node_timeout(std::time::Duration::from_millis(250))
    /// #     .namespace("myapp")
    /// #     .build()
    /// #     .await?;
    /// assert_eq!(locks.redis_key("invoice-7")?, "myapp:default:invoice-7");
    /// assert_eq!(locks.group("billing")?.redis_key("invoice-7")?, "myapp:billing:invoice-7");
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long [`build`](Self::build) waits for a majority of nodes to answer.
    ///
    /// # Default
    /// 2 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::{Error, RedLock};
    ///
    /// // Nothing listens on these ports: build() gives up without a majority.
    /// let err = RedLock::builder()
    ///     .nodes(["redis://127.0.0.1:1", "redis://127.0.0.1:2", "redis://127.0.0.1:3"])
    ///     .connect_timeout(Duration::from_millis(500))
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::NoQuorum { .. }));
    /// assert!(err.to_string().contains("connection refused")); // one line per node, what to check
    /// # Ok(()) }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How `acquire` waits while the lock is held elsewhere.
    ///
    /// # Default
    /// [`WaitStrategy::PubSub`]: woken by release notifications; polling only where they
    /// cannot be relied on (see [`safety_poll`](Self::safety_poll)).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::{RedLock, WaitStrategy};
    ///
    /// // Masters whose ACL forbids SUBSCRIBE: poll with the retry policy instead.
    /// let builder = RedLock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .wait_strategy(WaitStrategy::Poll);
    /// # drop(builder);
    /// ```
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
    /// `build()` returns [`Error::Config`](crate::Error::Config) for a zero interval.
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
    /// second round. Sets ([`RedLock::acquire_many`](crate::RedLock::acquire_many)) get no token.
    ///
    /// # Default
    /// Off (the counters would grow without bound for high-cardinality keys).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// # let locks = redquorum::RedLock::builder()
    /// #     .nodes(cluster.urls())
    /// #     .node_timeout(std::time::Duration::from_millis(250))
    /// #     .fencing(true)
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("ledger").await?.expect("the lock is free");
    /// let token = guard.fencing_token().expect("fencing is on");
    /// // Hand `token` to the resource with every write; it rejects lower tokens.
    /// assert!(token >= 1);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more `-----BEGIN CERTIFICATE-----` blocks)
    /// for the `rediss://` nodes, *instead of* the system's trust store: for servers whose
    /// certificates an internal or self-signed CA issued. The servers' certificates must name
    /// the host of their URL (a DNS name or IP address in their subjectAltName).
    ///
    /// Needs the `tls-rustls` or `tls-native-tls` feature.
    ///
    /// # Errors
    /// `build()` returns [`Error::Config`](crate::Error::Config) when `pem` holds no certificate or one that does not
    /// parse, or when a node's URL is a plain `redis://` one. A server whose certificate this
    /// CA did not sign fails to connect: [`Error::NoQuorum`](crate::Error::NoQuorum) names the certificate problem for
    /// each such node.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let locks = redquorum::RedLock::builder()
    ///     .nodes(["rediss://:pw@redis-a:6380", "rediss://:pw@redis-b:6380", "rediss://:pw@redis-c:6380"])
    ///     .tls_root_certs(ca)
    ///     .build()
    ///     .await?;
    /// # drop(locks); Ok(()) }
    /// ```
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "tls-rustls", feature = "tls-native-tls")))
    )]
    pub fn tls_root_certs(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certs = Some(pem.into());
        self
    }

    /// Mutual TLS: presents this client certificate (a PEM chain, the client's own certificate
    /// first) and its private key (PEM, PKCS#8: `-----BEGIN PRIVATE KEY-----`) to the
    /// `rediss://` nodes, for servers run with `tls-auth-clients yes`. The key never appears in
    /// `Debug` output or errors.
    ///
    /// Needs the `tls-rustls` or `tls-native-tls` feature.
    ///
    /// # Errors
    /// `build()` returns [`Error::Config`](crate::Error::Config) when the certificate or key does not parse, or when
    /// a node's URL is a plain `redis://` one.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let locks = redquorum::RedLock::builder()
    ///     .nodes(["rediss://redis-a:6380", "rediss://redis-b:6380", "rediss://redis-c:6380"])
    ///     .tls_root_certs(std::fs::read("ca.crt")?)
    ///     .tls_client_cert(std::fs::read("client.crt")?, std::fs::read("client.key")?)
    ///     .build()
    ///     .await?;
    /// # drop(locks); Ok(()) }
    /// ```
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "tls-rustls", feature = "tls-native-tls")))
    )]
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert_pem.into(), key_pem.into()));
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
}
