//! [`RedLock`]: the public face of the lock manager — key names, groups, and the calls that
//! take a lock or look at one. The work happens below: [`Acquisition`] (the local queue and
//! the wait), the round engine (`round`), the cluster (`cluster`).

use std::sync::Arc;
use std::time::Duration;

use crate::acquisition::Acquisition;
use crate::cluster::Cluster;
use crate::context::Context;
use crate::error::Error;
use crate::guard::{LocalQueues, LockGuard};
use crate::keys::Keys;
use crate::lease::Lease;
use crate::node::NodeSpec;
use crate::quorum;
use crate::round::query::{self, query};
use crate::settings::{Config, DEFAULT_GROUP};
use crate::telemetry;

/// A distributed lock manager over N independent Redis masters (the Redlock algorithm).
///
/// Cheap to clone (an `Arc`); clones and [groups](Self::group) share the connections and the
/// in-flight semaphore. `Send + Sync`.
///
/// # How a lock is taken
/// 1. A fresh random value (UUID v4 plus the owner label) is generated for the attempt.
/// 2. `SET key value NX PX ttl` runs on every node in parallel (a Lua script), each request
///    bounded by the node timeout.
/// 3. As soon as a majority has granted, the grant is decided; stragglers finish in the
///    background. As soon as a majority becomes impossible, the attempt fails.
/// 4. The grant stands only if `validity = ttl − elapsed − (ttl·drift_factor + 2 ms)` is positive.
/// 5. A failed attempt is undone on every node that granted or did not answer
///    (compare-and-delete, so only our value goes).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use redquorum::{RedLock, Context};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), redquorum::Error> {
/// let locks = RedLock::builder()
///     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
///     .ttl(Duration::from_secs(10))
///     .build()
///     .await?;
/// let ctx = Context::with_timeout(Duration::from_secs(5));
/// let guard = locks.acquire(&ctx, "orders:42").await?;
/// // ... act only while guard.validity() is comfortably positive ...
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedLock {
    /// The masters and settings, shared with every guard.
    cluster: Arc<Cluster>,
    /// Local waiters per lock, beside the cluster (they hold leases that hold the cluster, so
    /// the cluster must not hold them).
    queues: Arc<LocalQueues>,
    /// `<namespace>:<group>:`
    prefix: Arc<str>,
    /// `<namespace>::fence:<group>:`: fencing counters, which no lock key can be (groups are
    /// never empty).
    fence_prefix: Arc<str>,
    /// The group's name (read-write locks and semaphores build their key spaces from it).
    group: Arc<str>,
}

impl std::fmt::Debug for RedLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<&str> = (0..self.cluster.nodes.len())
            .map(|i| &**self.cluster.nodes.addr(i))
            .collect();
        f.debug_struct("RedLock")
            .field("nodes", &nodes)
            .field("prefix", &self.prefix)
            .field("ttl", &self.cluster.config.ttl)
            .finish_non_exhaustive()
    }
}

impl RedLock {
    /// Connects to `specs` (see [`RedLockBuilder::build`](crate::RedLockBuilder::build)): a
    /// majority must answer a first PING; the others keep connecting in the background.
    pub(crate) async fn connect(config: Config, specs: Vec<NodeSpec>) -> Result<Self, Error> {
        telemetry::describe();
        let cluster = Cluster::new(config, specs);
        let prefix = format!("{}:{DEFAULT_GROUP}:", cluster.config.namespace).into();
        let fence_prefix = format!("{}::fence:{DEFAULT_GROUP}:", cluster.config.namespace).into();
        let announcer = cluster.clone();
        let queues = LocalQueues::new(Box::new(move |keys| announcer.spawn_announce(keys)));
        // First contact: a majority must answer; every node is identified as it connects.
        let causes = cluster
            .nodes
            .first_contact(cluster.config.connect_timeout)
            .await?;
        for c in &causes {
            tracing::warn!(node = %c.node, cause = %c.cause, "node unreachable at startup; will keep trying");
        }
        Ok(RedLock {
            cluster,
            queues,
            prefix,
            fence_prefix,
            group: DEFAULT_GROUP.into(),
        })
    }

    /// A `RedLock` sharing these connections and settings whose keys live in group `name`
    /// (keys become `<namespace>:<name>:<key>`), so equal key names in different groups are
    /// different locks. The group of a plain `RedLock` is called `default`.
    ///
    /// # Errors
    /// [`Error::Config`] if `name` is empty or contains `:` (which would make keys of
    /// different groups collide).
    ///
    /// ```no_run
    /// # use redquorum::RedLock;
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let billing = locks.group("billing")?;
    /// let shipping = locks.group("shipping")?;
    /// let a = billing.try_acquire("invoice-7").await?;
    /// let b = shipping.try_acquire("invoice-7").await?; // a different lock
    /// assert!(a.is_some() && b.is_some());
    /// # Ok(()) }
    /// ```
    pub fn group(&self, name: &str) -> Result<RedLock, Error> {
        if name.is_empty() || name.contains(':') {
            return Err(Error::config(format!(
                "group name {name:?} must be non-empty and must not contain ':'"
            )));
        }
        Ok(RedLock {
            cluster: self.cluster.clone(),
            queues: self.queues.clone(),
            prefix: format!("{}:{name}:", self.cluster.config.namespace).into(),
            fence_prefix: format!("{}::fence:{name}:", self.cluster.config.namespace).into(),
            group: name.into(),
        })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.cluster.len()
    }

    /// Grants needed for a lock: `nodes / 2 + 1`.
    pub fn quorum(&self) -> usize {
        quorum::majority(self.nodes())
    }

    /// The lease of each acquisition.
    pub fn ttl(&self) -> Duration {
        self.cluster.config.ttl
    }

    /// The per-node request timeout in force.
    pub fn node_timeout(&self) -> Duration {
        self.cluster.nodes.timeout()
    }

    /// Checks how every master is run (persistence, eviction, role, one server under two
    /// URLs, ACL permissions, round trip, clock rate), on connections of its own: see
    /// [`check`](crate::check). Takes about a second (the clock sample). A node that cannot
    /// be reached is a finding, not an error.
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) {
    /// let report = locks.check().await;
    /// if !report.is_safe() {
    ///     eprint!("{report}");
    /// }
    /// # }
    /// ```
    pub async fn check(&self) -> crate::check::Report {
        crate::check::check_nodes(&self.cluster.config, &self.cluster.nodes).await
    }

    /// The settings check at the end of `build()` (see [`RedLockBuilder::refuse_unsafe_masters`]).
    pub(crate) async fn preflight(&self, refusing: bool) -> Result<(), Error> {
        crate::check::preflight(&self.cluster.config, &self.cluster.nodes, refusing).await
    }

    /// The Redis key that holds lock `key` on every node: `<namespace>:<group>:<key>`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty key.
    pub fn redis_key(&self, key: &str) -> Result<String, Error> {
        if key.is_empty() {
            return Err(Error::config(
                "lock key is empty; name the resource you are locking",
            ));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// Acquires lock `key`, waiting while somebody else holds it until the context's deadline
    /// (polling with the retry policy).
    ///
    /// # Errors
    /// - [`Error::Config`]: empty key (nothing is sent).
    /// - [`Error::Timeout`]: the deadline passed while the lock stayed held elsewhere.
    /// - [`Error::RetriesExhausted`]: the retry policy's attempt limit was reached.
    /// - [`Error::Cancelled`]: the context's token fired.
    /// - [`Error::NoQuorum`]: a majority of nodes could not be reached in
    ///   [`UNREACHABLE_ATTEMPTS`](crate::UNREACHABLE_ATTEMPTS) consecutive attempts (or at the deadline).
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaves no key behind for longer than the clean-up
    /// takes: a round in flight is undone in the background on every node that granted or
    /// did not answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redquorum::{RedLock, Context, Error};
    /// # async fn f(locks: RedLock) -> Result<(), Error> {
    /// let ctx = Context::with_timeout(Duration::from_secs(2));
    /// match locks.acquire(&ctx, "report").await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(e) if e.is_timeout() => println!("someone else is generating the report"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, ctx: &Context, key: &str) -> Result<LockGuard, Error> {
        let keys = self.single(key)?;
        self.acquire_keys(ctx, key, keys).await
    }

    /// Acquires several locks as one: on each node all of `keys` are taken atomically (one
    /// script) or none is, with the same quorum rule, validity, release and extend semantics as
    /// a single key, and one guard for the set. Two sets that overlap are never both granted.
    /// Waiting polls with the retry policy (and the holder's remaining lease); fencing tokens
    /// are not provided for sets.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire); [`Error::Config`] for an empty list or an empty key.
    ///
    /// # Cancel safety
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redquorum::{RedLock, Context};
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let ctx = Context::with_timeout(Duration::from_secs(5));
    /// let both = locks.acquire_many(&ctx, &["account:1", "account:2"]).await?;
    /// // ... move money between the two accounts ...
    /// both.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_many(&self, ctx: &Context, keys: &[&str]) -> Result<LockGuard, Error> {
        let (label, keys) = self.key_set(keys)?;
        self.acquire_keys(ctx, &label, keys).await
    }

    /// One attempt at a set of keys, no waiting; see [`acquire_many`](Self::acquire_many).
    ///
    /// # Errors
    /// As for [`try_acquire`](Self::try_acquire).
    pub async fn try_acquire_many(&self, keys: &[&str]) -> Result<Option<LockGuard>, Error> {
        let (label, keys) = self.key_set(keys)?;
        self.try_acquire_keys(&label, keys).await
    }

    /// The Redis key of lock `key`'s fencing counter on every node:
    /// `<namespace>::fence:<group>:<key>` (never a lock key: groups are never empty).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty key.
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) -> Result<(), redquorum::Error> {
    /// assert_eq!(locks.fence_key("job")?, "redquorum::fence:default:job");
    /// # Ok(()) }
    /// ```
    pub fn fence_key(&self, key: &str) -> Result<String, Error> {
        self.redis_key(key)?;
        Ok(format!("{}{key}", self.fence_prefix))
    }

    /// The key space `<namespace>::<space>:<group>:` of the other lock kinds (read-write
    /// locks, semaphores): never a mutex's key or a fencing counter, as groups are never empty
    /// and never contain `:`.
    pub(crate) fn space(&self, space: &str) -> String {
        format!("{}::{space}:{}:", self.cluster.config.namespace, self.group)
    }

    /// The shared cluster (nodes and settings).
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// A single-key lock's keys: the lock key and, with fencing on, its counter (no
    /// allocation for it otherwise: this runs on every acquire).
    fn single(&self, key: &str) -> Result<Keys, Error> {
        let lock = self.redis_key(key)?.into();
        let fence = self
            .cluster
            .config
            .fencing
            .then(|| format!("{}{key}", self.fence_prefix).into());
        Ok(Keys::one(lock, fence))
    }

    /// The Redis keys of a set, sorted and distinct, and a label naming the set in errors.
    fn key_set(&self, keys: &[&str]) -> Result<(String, Keys), Error> {
        if keys.is_empty() {
            return Err(Error::config("acquire_many needs at least one key"));
        }
        let mut full = keys
            .iter()
            .map(|k| self.redis_key(k).map(Arc::<str>::from))
            .collect::<Result<Vec<_>, _>>()?;
        full.sort_unstable();
        full.dedup();
        let label = keys.join(",");
        Ok(match full.len() {
            1 => (label, self.single(keys[0])?),
            _ => (label, Keys::many(full)),
        })
    }

    #[tracing::instrument(name = "acquire", level = "debug", skip_all, fields(key = %key, attempts = tracing::field::Empty))]
    pub(crate) async fn acquire_keys(
        &self,
        ctx: &Context,
        key: &str,
        keys: Keys,
    ) -> Result<LockGuard, Error> {
        let started = tokio::time::Instant::now();
        let result = self.acquisition(key, keys).wait(ctx).await;
        measured(result.as_ref().map(Some), started);
        result
    }

    fn acquisition<'a>(&'a self, key: &'a str, keys: Keys) -> Acquisition<'a> {
        Acquisition {
            cluster: &self.cluster,
            queues: &self.queues,
            key,
            keys,
        }
    }

    /// Runs `work` while holding lock `key`: acquires it (waiting as [`acquire`](Self::acquire)
    /// does), keeps the lease alive in the background (see [`Lease::keep_alive`]), and releases
    /// it when the work ends, errors or panics. `work` gets the [`Lease`]: select on
    /// [`Lease::lost`] to stop before acting without the lock, and pass
    /// [`Lease::fencing_token`] to the resource.
    ///
    /// # Errors
    /// Those of [`acquire`](Self::acquire) (nothing ran); [`Error::LockLost`] when the lock was
    /// lost while the work ran (its output is dropped: it may have overlapped another holder;
    /// work that wants to report partial results should stop on [`Lease::lost`] and return
    /// them through a channel of its own). A release that fails after the work completed under
    /// the lock is only logged: the output is returned and the keys expire by TTL.
    ///
    /// # Cancel safety
    /// Dropping the future drops the work and the guard: the lock is released in the background.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redquorum::{RedLock, Context};
    /// # async fn backup() -> u64 { 0 }
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let ctx = Context::with_timeout(Duration::from_secs(10));
    /// let bytes: u64 = locks
    ///     .with_lock(&ctx, "nightly-backup", |lease| async move {
    ///         let lost = lease.lost();
    ///         tokio::select! {
    ///             // Stop: someone else may hold it; with_lock then returns Error::LockLost.
    ///             () = lost.cancelled() => 0,
    ///             n = backup() => n,
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<F, Fut, T>(&self, ctx: &Context, key: &str, work: F) -> Result<T, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let guard = self.acquire(ctx, key).await?;
        guard.keep_alive();
        let lease = guard.lease();
        let out = work(lease.clone()).await;
        let lost = lease.is_lost() || lease.validity().is_zero();
        let released = guard.release().await;
        if lost {
            return Err(Error::LockLost { key: key.into() });
        }
        if let Err(e) = released {
            // The work finished under the lock; only the clean-up failed (the keys expire
            // by TTL). Its output is still the caller's.
            tracing::warn!(key, error = %e, "release after with_lock failed; the lease will expire");
        }
        Ok(out)
    }

    /// One attempt, no waiting: `Some(guard)` if acquired, `None` if somebody else holds it.
    ///
    /// It behaves like one attempt of [`acquire`](Self::acquire): `None` at once while another
    /// task of this `RedLock` holds the key (or is taking it), but a local guard kept past its
    /// validity does not count: the attempt goes to Redis, which decides.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty key; [`Error::NoQuorum`] when a majority of nodes did not
    /// answer.
    ///
    /// # Cancel safety
    /// As for [`acquire`](Self::acquire): a dropped attempt is undone in the background.
    ///
    /// ```no_run
    /// # use redquorum::RedLock;
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// if let Some(guard) = locks.try_acquire("nightly-backup").await? {
    ///     // only one instance gets here
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self, key: &str) -> Result<Option<LockGuard>, Error> {
        let keys = self.single(key)?;
        self.try_acquire_keys(key, keys).await
    }

    #[tracing::instrument(name = "try_acquire", level = "debug", skip_all, fields(key = %key))]
    pub(crate) async fn try_acquire_keys(
        &self,
        key: &str,
        keys: Keys,
    ) -> Result<Option<LockGuard>, Error> {
        let started = tokio::time::Instant::now();
        let result = self.acquisition(key, keys).try_once().await;
        measured(result.as_ref().map(Option::as_ref), started);
        result
    }

    /// Whether lock `key` is held: the same owner's value is on a majority of nodes.
    ///
    /// A key on a minority (an attempt in progress, or leftovers of one) does not count.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty key; [`Error::NoQuorum`] when too few nodes answer to
    /// tell.
    ///
    /// ```no_run
    /// # use redquorum::RedLock;
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let guard = locks.try_acquire("k").await?.expect("free");
    /// assert!(locks.is_locked("k").await?);
    /// guard.release().await?;
    /// assert!(!locks.is_locked("k").await?);
    /// # Ok(()) }
    /// ```
    pub async fn is_locked(&self, key: &str) -> Result<bool, Error> {
        Ok(self.majority_value(key).await?.is_some())
    }

    /// The owner label of the current holder of `key` (what the holder's builder passed to
    /// [`owner`](crate::RedLockBuilder::owner)), or `None` if no value is on a majority of nodes.
    ///
    /// # Errors
    /// As for [`is_locked`](Self::is_locked).
    ///
    /// ```no_run
    /// # use redquorum::RedLock;
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// if let Some(who) = locks.owner("nightly-backup").await? {
    ///     println!("backup is running on {who}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn owner(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .majority_value(key)
            .await?
            .map(|v| v.split_once(':').map_or(v.as_str(), |(_, o)| o).to_owned()))
    }

    /// The value a majority of nodes agrees on for `key`, if any.
    async fn majority_value(&self, key: &str) -> Result<Option<String>, Error> {
        let q = query(&self.cluster, &self.redis_key(key)?).await;
        let (value, count) = q.most_held().unwrap_or(("", 0));
        match query::majority(count, &q.tally) {
            Some(true) => Ok(Some(value.to_owned())),
            Some(false) => Ok(None),
            // The nodes that did not answer could have given some value a majority.
            None => Err(q.no_quorum(key, count)),
        }
    }
}

/// Records an acquisition's outcome, wait and granted validity (see `telemetry`).
fn measured(result: Result<Option<&LockGuard>, &Error>, started: tokio::time::Instant) {
    telemetry::acquisition(telemetry::outcome(result), started.elapsed());
    if let Ok(Some(guard)) = result {
        telemetry::granted(guard.validity());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn bounds(locks: RedLock, ctx: Context) {
        assert_send_sync::<RedLock>();
        assert_send_sync::<LockGuard>();
        assert_send_sync::<Error>();
        assert_send(&locks.acquire(&ctx, "k"));
        assert_send(&locks.try_acquire("k"));
        assert_send(&locks.is_locked("k"));
    }
}
