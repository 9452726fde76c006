//! [`RedLock`]: the Redlock algorithm over N independent masters.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Config, RedLockBuilder, DEFAULT_GROUP};
use crate::context::Context;
use crate::error::{Error, NodeCause, NodeFailure};
use crate::guard::{LockGuard, NodeStates};
use crate::lease::Lease;
use crate::node::{Grant, Keys, NodeSpec, Nodes, Op, Owned, Script};
use crate::queue::{Queues, Ticket};
use crate::quorum::{self, Decision, Tally, Vote};
use crate::wait::{self, Busy, WaitEnd, WaitStrategy, Waiter};
use crate::wake::Wakeups;

/// After this many consecutive attempts in which a majority of nodes could not be reached,
/// `acquire` stops waiting and returns [`Error::NoQuorum`]: waiting is for a lock held by
/// somebody else, not for a cluster that is down.
pub const UNREACHABLE_ATTEMPTS: u32 = 3;

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
    shared: Arc<Shared>,
    /// `<namespace>:<group>:`
    prefix: Arc<str>,
    /// `<namespace>::fence:<group>:`: fencing counters, which no lock key can be (groups are
    /// never empty).
    fence_prefix: Arc<str>,
}

/// What every clone and group shares.
pub(crate) struct Shared {
    pub(crate) nodes: Nodes,
    pub(crate) config: Config,
    pub(crate) queues: Arc<Queues>,
    pub(crate) wakeups: Wakeups,
    /// Releases still to be confirmed by some node (undos, retries), sent in the background.
    cleanup: Cleanup,
}

impl std::fmt::Debug for RedLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<&str> = (0..self.shared.nodes.len())
            .map(|i| &**self.shared.nodes.addr(i))
            .collect();
        f.debug_struct("RedLock")
            .field("nodes", &nodes)
            .field("prefix", &self.prefix)
            .field("ttl", &self.shared.config.ttl)
            .finish_non_exhaustive()
    }
}

/// The result of one acquisition round.
enum Attempt {
    Granted(LockGuard),
    /// Held by someone else (or our grant came too late to be valid).
    Busy(Busy),
    /// A majority of nodes did not answer (the error, and what the round saw).
    Unreachable(Error, Busy),
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

    pub(crate) async fn connect(config: Config, specs: Vec<NodeSpec>) -> Result<Self, Error> {
        let clients = specs.iter().map(|s| s.client.clone()).collect();
        let nodes = Nodes::new(specs, config.node_timeout, config.max_in_flight);
        let prefix = format!("{}:{DEFAULT_GROUP}:", config.namespace).into();
        let fence_prefix = format!("{}::fence:{DEFAULT_GROUP}:", config.namespace).into();
        let wakeups = Wakeups::new(clients, config.node_timeout);
        let cleanup = Cleanup::new(nodes.len());
        let shared = Arc::new(Shared {
            nodes,
            config,
            queues: Arc::default(),
            wakeups,
            cleanup,
        });
        let weak = Arc::downgrade(&shared);
        shared.queues.set_announcer(Box::new(move |keys| {
            if let (Some(shared), Ok(rt)) = (weak.upgrade(), tokio::runtime::Handle::try_current())
            {
                rt.spawn(async move { shared.announce(&keys).await });
            }
        }));
        // First contact: a majority must answer; every node is identified as it connects.
        let causes = shared
            .nodes
            .first_contact(shared.config.connect_timeout)
            .await?;
        for c in &causes {
            tracing::warn!(node = %c.node, cause = %c.cause, "node unreachable at startup; will keep trying");
        }
        Ok(RedLock {
            shared,
            prefix,
            fence_prefix,
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
            shared: self.shared.clone(),
            prefix: format!("{}:{name}:", self.shared.config.namespace).into(),
            fence_prefix: format!("{}::fence:{name}:", self.shared.config.namespace).into(),
        })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.shared.nodes.len()
    }

    /// Grants needed for a lock: `nodes / 2 + 1`.
    pub fn quorum(&self) -> usize {
        quorum::majority(self.nodes())
    }

    /// The lease of each acquisition.
    pub fn ttl(&self) -> Duration {
        self.shared.config.ttl
    }

    /// The per-node request timeout in force.
    pub fn node_timeout(&self) -> Duration {
        self.shared.nodes.timeout()
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
        crate::check::check_nodes(&self.shared.config, &self.shared.nodes).await
    }

    /// The settings check at the end of `build()` (see [`RedLockBuilder::refuse_unsafe_masters`]).
    pub(crate) async fn preflight(&self, refusing: bool) -> Result<(), Error> {
        crate::check::preflight(&self.shared.config, &self.shared.nodes, refusing).await
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
    ///   [`UNREACHABLE_ATTEMPTS`] consecutive attempts (or at the deadline).
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

    /// A single-key lock's keys: the lock key and, with fencing on, its counter (no
    /// allocation for it otherwise: this runs on every acquire).
    fn single(&self, key: &str) -> Result<Keys, Error> {
        let lock = self.redis_key(key)?.into();
        let fence = self
            .shared
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
    async fn acquire_keys(&self, ctx: &Context, key: &str, keys: Keys) -> Result<LockGuard, Error> {
        let started = Instant::now();
        let timeout = |attempts| Error::Timeout {
            key: key.into(),
            waited: started.elapsed(),
            attempts,
        };
        if ctx.is_expired() {
            return Err(timeout(0));
        }
        // Local waiters of the same key queue here, first come first served; only the head
        // talks to Redis.
        let mut ticket = self.shared.queues.join(&keys);
        let hold_back = tokio::select! {
            biased;
            () = ctx.cancelled() => None,
            hold_back = ticket.turn() => Some(hold_back),
            () = tokio::time::sleep_until(ctx.deadline()) => None,
        };
        let hold_back = match hold_back {
            Some(hold_back) if !ctx.is_cancelled() && !ctx.is_expired() => hold_back,
            _ => {
                // A grant handed to us stays for the next local waiter, if any.
                leave(ticket).await;
                return Err(if ctx.is_cancelled() {
                    Error::Cancelled { key: key.into() }
                } else {
                    timeout(0)
                });
            }
        };
        if let Some(guard) = self.take_baton(key, &keys, &ticket).await {
            return Ok(guard.with_ticket(ticket));
        }
        let config = &self.shared.config;
        ticket.attempting();
        if hold_back {
            // Waiters of other processes were just told of the release (or may poll for it):
            // let them go first.
            let pause = Duration::from_micros(fastrand::u64(1_000..3_000));
            tokio::time::sleep(pause.min(ctx.remaining())).await;
        }
        // Sets poll: a release of any one key is not worth waking for.
        let wake = match (config.wait_strategy, keys.single()) {
            (WaitStrategy::PubSub, Some(key)) => Some((&self.shared.wakeups, key)),
            _ => None,
        };
        let mut waiter = Waiter::new(
            config.retry.delays(),
            wake,
            ticket.take_subscription(),
            (
                self.shared.nodes.len(),
                config.safety_poll,
                config.ttl.min(wait::LOST_RACE_RECHECK),
            ),
        );
        let mut attempts = 0u32;
        let mut unreachable = 0u32;
        let mut last_error = None;
        // Armed by a split vote's quiet undo, until we hold the lock (see `Undo::quietly`).
        let mut leaving = LeaveAnnounced(None);
        let result = loop {
            if ctx.is_cancelled() {
                break Err(Error::Cancelled { key: key.into() });
            }
            if ctx.is_expired() {
                break Err(last_error.unwrap_or_else(|| timeout(attempts)));
            }
            attempts += 1;
            waiter.before_attempt();
            // A refusal may also tell how long the holder has left (see `wants_hint`).
            let busy = match self
                .attempt(key, &keys, waiter.wants_hint(attempts), true)
                .await
            {
                Attempt::Granted(guard) => break Ok(guard),
                Attempt::Busy(busy) => {
                    unreachable = 0;
                    last_error = None;
                    if busy.split {
                        leaving.arm(&self.shared, &keys);
                    }
                    busy
                }
                Attempt::Unreachable(e, busy) => {
                    unreachable += 1;
                    if unreachable >= UNREACHABLE_ATTEMPTS {
                        break Err(e);
                    }
                    last_error = Some(e);
                    busy
                }
            };
            tracing::debug!(key, attempts, ?busy, "lock busy; waiting to retry");
            match waiter.wait(ctx, busy).await {
                WaitEnd::Retry => {}
                WaitEnd::Cancelled => break Err(Error::Cancelled { key: key.into() }),
                WaitEnd::Deadline => break Err(last_error.unwrap_or_else(|| timeout(attempts))),
                WaitEnd::Exhausted => {
                    break Err(last_error.unwrap_or_else(|| Error::RetriesExhausted {
                        key: key.into(),
                        attempts,
                    }))
                }
            }
        };
        tracing::Span::current().record("attempts", attempts);
        ticket.keep_subscription(waiter.into_subscription());
        if result.is_ok() {
            leaving.0 = None;
        }
        result.map(|guard| guard.with_ticket(ticket))
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
    async fn try_acquire_keys(&self, key: &str, keys: Keys) -> Result<Option<LockGuard>, Error> {
        let mut ticket = self.shared.queues.join(&keys);
        if !ticket.try_turn() {
            // Held, or about to be, by another task of this process.
            return Ok(None);
        }
        if let Some(guard) = self.take_baton(key, &keys, &ticket).await {
            return Ok(Some(guard.with_ticket(ticket)));
        }
        ticket.attempting();
        match self.attempt(key, &keys, false, false).await {
            Attempt::Granted(guard) => Ok(Some(guard.with_ticket(ticket))),
            Attempt::Busy(_) => Ok(None),
            Attempt::Unreachable(e, _) => Err(e),
        }
    }

    /// The grant the previous local holder handed to whoever gets the turn next (see
    /// [`LockGuard`]'s local hand-off), as our guard, if it holds exactly our `keys` and still
    /// has at least half the TTL of validity; any other baton is released in Redis first (so
    /// the attempt that follows can win). No Redis request when the baton is used.
    ///
    /// # Cancel safety
    /// Taking the baton and building the guard do not await; the release of a stale baton runs
    /// in its own task, which completes if this future is dropped.
    async fn take_baton(&self, key: &str, keys: &Keys, ticket: &Ticket) -> Option<LockGuard> {
        match ticket.take_baton()?.into_guard(key, keys) {
            Ok(guard) => {
                tracing::debug!(key, validity = ?guard.validity(), "lock taken over from a local holder");
                Some(guard)
            }
            Err(stale) => {
                tracing::debug!(
                    key,
                    "handed lock has too little validity left (or other keys); releasing it"
                );
                stale.release().await;
                None
            }
        }
    }

    /// One Redlock round.
    ///
    /// `retrying`: the caller tries again after a split vote (`acquire`), so the undo of its
    /// partial grant need not be announced (see [`Undo::quietly`]).
    async fn attempt(&self, key: &str, keys: &Keys, hint: bool, retrying: bool) -> Attempt {
        let shared = &self.shared;
        let config = &shared.config;
        let n = shared.nodes.len();
        let value: Arc<str> = format!("{}:{}", uuid::Uuid::new_v4().simple(), config.owner).into();
        // The lease the nodes get, in whole milliseconds; validity is computed from it.
        let lease = Duration::from_millis(millis(config.ttl));
        let fenced = config.fencing && keys.single().is_some();
        let op = Arc::new(Op::acquire(keys, &value, millis(lease), fenced, hint));

        let states = NodeStates::new(n);
        // Armed until the grant is handed to a guard: a failed or dropped round is undone
        // where a node granted or did not answer (as `states` records them).
        let undo = Undo {
            shared: Some(shared.clone()),
            keys: keys.clone(),
            value: value.clone(),
            states: states.clone(),
        };
        let start = Instant::now();
        let mut pending: FuturesUnordered<_> = (0..n)
            .map(|i| {
                let shared = shared.clone();
                let op = op.clone();
                async move { (i, shared.nodes.acquire(i, &op).await) }
            })
            .collect();
        let mut tally = Tally::new(n);
        let mut pttls = Vec::new();
        let mut causes = Vec::new();
        let mut fences = Vec::new();
        quorum::until(&mut pending, |(i, reply)| {
            tally.record(states.record(i, &reply));
            let node = &**shared.nodes.addr(i);
            match reply {
                Ok(Grant::Granted { fence }) => {
                    tracing::trace!(node, outcome = "granted", fence);
                    fences.push((i, fence));
                }
                Ok(Grant::Held { pttl }) => {
                    tracing::trace!(node, outcome = "taken", ?pttl);
                    pttls.push(pttl);
                }
                Err(cause) => {
                    tracing::trace!(node, outcome = "failed", %cause);
                    causes.push(shared.failure(i, cause));
                }
            }
            match tally.decision() {
                Decision::Reached => true,
                // Lost, but tell "held elsewhere" from "too few nodes answered": wait for
                // enough answers (each bounded by the node timeout) to know which.
                Decision::Impossible => tally.answered() >= tally.required(),
                Decision::Pending => false,
            }
        })
        .await;
        let elapsed = start.elapsed();
        tracing::debug!(
            granted = tally.yes,
            taken = tally.no,
            failed = tally.failed,
            ?elapsed,
            "acquire round"
        );

        if tally.decision() == Decision::Reached {
            let mut valid = quorum::validity(lease, elapsed, config.drift_factor);
            let mut token = None;
            if let (true, Some(counter), Some(_)) = (fenced, keys.fence(), valid) {
                let (t, confirmed) = self.fence(keys, counter, &value, &fences).await;
                // The token stands only if a majority holds a counter >= t while our value is
                // there, confirmed within the validity.
                valid = quorum::validity(lease, start.elapsed(), config.drift_factor)
                    .filter(|_| confirmed >= tally.required());
                token = Some(t);
                if valid.is_none() {
                    tracing::debug!(
                        key,
                        t,
                        confirmed,
                        "fencing token not confirmed by a majority; retrying"
                    );
                }
            }
            if let Some(validity) = valid {
                undo.disarm();
                if !pending.is_empty() {
                    // Let stragglers land and record whether they granted. One that may have
                    // granted after the guard was let go is released again (see NodeStates).
                    let (shared, states, keys, value) =
                        (shared.clone(), states.clone(), keys.clone(), value.clone());
                    tokio::spawn(async move {
                        let op = Arc::new(release_op(&keys, &value, true));
                        quorum::until(&mut pending, |(i, reply)| {
                            states.record(i, &reply);
                            if states.acquired_late(i, &reply) {
                                shared.clean(i, &op, 0);
                            }
                            false
                        })
                        .await;
                    });
                }
                // ttl − elapsed − drift from the instant the requests went out.
                let expires_at =
                    start + lease.saturating_sub(quorum::drift(lease, config.drift_factor));
                tracing::debug!(
                    key,
                    granted = tally.yes,
                    ?elapsed,
                    ?validity,
                    "lock acquired"
                );
                let lease = Lease::new(
                    shared.clone(),
                    key.into(),
                    keys.clone(),
                    value,
                    token,
                    expires_at,
                    lease,
                );
                return Attempt::Granted(LockGuard::new(lease, states));
            }
            tracing::warn!(key, ?elapsed, ttl = ?config.ttl, "grant came too late to leave any validity; undoing");
            undo.settle(pending, true);
            // Our own grant stood in the way; its undo is announced. Not a refusal to trust.
            return Attempt::Busy(Busy {
                split: true,
                ..Busy::default()
            });
        }
        // The partial grant is released where a node granted or did not answer (not where it
        // refused): announced, or quietly after a split vote that the caller will retry.
        if tally.answered() < tally.required() {
            undo.settle(pending, true);
            tracing::warn!(
                key,
                answered = tally.answered(),
                required = tally.required(),
                "no quorum: too few nodes answered"
            );
            // Nodes that did not answer may free up without a word: the next wait polls.
            let busy = Busy {
                split: tally.yes > 0,
                failed: tally.failed,
                holder_left: None,
            };
            return Attempt::Unreachable(
                Error::NoQuorum {
                    op: "acquire",
                    key: key.into(),
                    ok: tally.yes,
                    required: tally.required(),
                    nodes: n,
                    causes,
                },
                busy,
            );
        }
        let split = tally.yes > 0;
        undo.settle(pending, !(split && retrying));
        Attempt::Busy(Busy {
            holder_left: wait::majority_free_in(n, &mut pttls),
            split,
            failed: tally.failed,
        })
    }

    /// The fencing token of a grant: the highest counter among the granting nodes, `t`. Nodes
    /// whose counter is lower are raised to `t`, only where our value still holds the key.
    /// Returns `t` and how many granting nodes now hold a counter `>= t` under our value.
    ///
    /// Why this is monotonic: any later majority shares a node with the confirming one, whose
    /// counter reached `t` before our key there could expire or be released; a later grant on
    /// that node increments past `t`.
    async fn fence(
        &self,
        keys: &Keys,
        counter: &Arc<str>,
        value: &Arc<str>,
        fences: &[(usize, u64)],
    ) -> (u64, usize) {
        let t = fences.iter().map(|(_, f)| *f).max().unwrap_or(0);
        if self.shared.config.fencing_unconfirmed {
            return (t, fences.len());
        }
        let lagging: Vec<usize> = fences
            .iter()
            .filter(|(_, f)| *f < t)
            .map(|(i, _)| *i)
            .collect();
        let mut confirmed = fences.len() - lagging.len();
        if lagging.is_empty() {
            return (t, confirmed);
        }
        let op = &Arc::new(Op::fence(keys, counter, value, t));
        let nodes = &self.shared.nodes;
        let replies = futures::future::join_all(
            lagging
                .iter()
                .map(|&i| async move { nodes.owned(i, op).await }),
        )
        .await;
        confirmed += replies
            .iter()
            .filter(|r| matches!(r, Ok(Owned::Done { .. })))
            .count();
        (t, confirmed)
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
    /// [`owner`](RedLockBuilder::owner)), or `None` if no value is on a majority of nodes.
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
        let full = self.redis_key(key)?;
        let (values, tally, causes) = self.shared.query(&full).await;
        let best = values.iter().max_by_key(|(_, count)| *count);
        if let Some((v, count)) = best {
            if *count >= tally.required() {
                return Ok(Some(v.clone()));
            }
        }
        // The nodes that did not answer could have given some value a majority.
        if best.map_or(0, |(_, c)| *c) + tally.failed >= tally.required() {
            return Err(Error::NoQuorum {
                op: "query",
                key: key.into(),
                ok: tally.answered(),
                required: tally.required(),
                nodes: tally.nodes,
                causes,
            });
        }
        Ok(None)
    }
}

impl Shared {
    pub(crate) fn failure(&self, i: usize, cause: NodeCause) -> NodeFailure {
        self.nodes.failure(i, cause)
    }

    /// Runs a compare-and-delete or compare-and-extend on every node. Decides as soon as a
    /// majority did it; otherwise hears every node (each bounded by the node timeout) so the
    /// outcome does not depend on the order of replies. Stragglers are finished in the
    /// background so the change still reaches slow nodes.
    ///
    /// With `states` (a guard's release), every node where the release did not delete our
    /// value is checked against a straggling acquire that may have landed after it.
    ///
    /// With `key_value` (a release), every node whose *final* outcome is a failure is retried
    /// by the background clean-up: a node that failed before the decision, and a straggler
    /// that fails after it (a frozen node times out only once the round has been decided).
    pub(crate) async fn owned_round(
        self: &Arc<Self>,
        op: Op,
        states: Option<NodeStates>,
        key_value: Option<(Keys, Arc<str>)>,
    ) -> OwnedRound {
        let n = self.nodes.len();
        let op = Arc::new(op);
        let mut pending: FuturesUnordered<_> = (0..n)
            .map(|i| {
                let shared = self.clone();
                let op = op.clone();
                async move { (i, shared.nodes.owned(i, &op).await) }
            })
            .collect();
        let mut round = OwnedRound {
            tally: Tally::new(n),
            other: 0,
            expired: 0,
            listeners: 0,
            causes: Vec::new(),
        };
        let grants = states.clone();
        let granted_here = move |i: usize| grants.as_ref().is_none_or(|s| s.granted_on(i));
        // What each node finally reported, as it comes in, before or after the decision: a
        // failed release is retried there; a straggling acquire that landed after the release
        // is released once more.
        let again = key_value
            .as_ref()
            .map(|(keys, value)| Arc::new(release_op(keys, value, true)));
        let retry = op.clone();
        let settle = move |shared: &Arc<Self>, i: usize, reply: &Result<Owned, NodeCause>| {
            let Some(again) = &again else {
                return;
            };
            if let Some(states) = &states {
                if !matches!(reply, Ok(Owned::Done { .. })) && states.release_missed(i) {
                    shared.clean(i, again, 0);
                    return;
                }
            }
            if reply.is_err() {
                shared.clean(i, &retry, 1);
            }
        };
        quorum::until(&mut pending, |(i, reply)| {
            settle(self, i, &reply);
            match reply {
                Ok(Owned::Done { listeners }) => {
                    round.tally.record(Vote::Yes);
                    round.listeners = round.listeners.max(listeners);
                }
                Ok(Owned::Absent) => {
                    round.tally.record(Vote::No);
                    if granted_here(i) {
                        round.expired += 1;
                    }
                }
                Ok(Owned::Other) => {
                    round.tally.record(Vote::No);
                    round.other += 1;
                    if granted_here(i) {
                        round.expired += 1;
                    }
                }
                Err(cause) => {
                    round.tally.record(Vote::Failed);
                    round.causes.push(self.failure(i, cause));
                }
            }
            round.tally.decision() == Decision::Reached
        })
        .await;
        if !pending.is_empty() {
            let shared = self.clone();
            tokio::spawn(async move {
                quorum::until(&mut pending, |(i, reply)| {
                    settle(&shared, i, &reply);
                    false
                })
                .await;
            });
        }
        round
    }

    /// Undoes an attempt that did not become a guard: a compare-and-delete of `value` on
    /// every node that granted or did not answer, in the background (see
    /// [`clean`](Self::clean)); a node that refused holds nothing of ours and is left alone.
    /// Without `states`, every node. `announce`: publish where it deletes (see
    /// [`Undo::quietly`] for when it need not).
    pub(crate) fn undo(
        self: &Arc<Self>,
        keys: &Keys,
        value: &Arc<str>,
        states: Option<&NodeStates>,
        announce: bool,
    ) {
        let op = Arc::new(release_op(keys, value, announce));
        for i in 0..self.nodes.len() {
            if !states.is_some_and(|s| s.refused_on(i)) {
                self.clean(i, &op, 0);
            }
        }
    }

    /// Hands the release `op` on node `i` to the background clean-up, which has already sent
    /// it `failed` times (0: not yet). It goes out at once (0), then after pauses doubling from
    /// 50 ms to 1 s, until retrying any longer would outlast the key itself (one TTL of pauses,
    /// see [`cleanup_pause`]); then the key is left to expire by TTL. Per node, everything due goes
    /// out together in one pass under a single in-flight permit, held for at most one node
    /// timeout: a frozen node costs one permit however many releases wait for it. With no
    /// runtime the keys expire by TTL.
    fn clean(self: &Arc<Self>, i: usize, op: &Arc<Op>, failed: usize) {
        let Some(pause) = cleanup_pause(failed, self.config.ttl) else {
            tracing::debug!(
                node = &**self.nodes.addr(i),
                "release did not reach the node; the key expires by TTL there"
            );
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                node = &**self.nodes.addr(i),
                "no tokio runtime to release on; the key expires by TTL there"
            );
            return;
        };
        let Some(node) = self.cleanup.nodes.get(i) else {
            return;
        };
        let start = {
            let mut pending = node.lock();
            pending.ops.push(Cleaning {
                op: op.clone(),
                failed,
                due: Instant::now() + pause,
            });
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            rt.spawn(self.clone().cleaner(i));
        } else {
            node.wake.notify_one();
        }
    }

    /// Node `i`'s clean-up task: runs while releases are pending for the node, one pass at a
    /// time (see [`clean`](Self::clean)).
    async fn cleaner(self: Arc<Self>, i: usize) {
        let Some(node) = self.cleanup.nodes.get(i) else {
            return;
        };
        loop {
            let next = {
                let mut pending = node.lock();
                match pending.ops.iter().map(|c| c.due).min() {
                    Some(due) => due,
                    None => {
                        pending.running = false;
                        return;
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = node.wake.notified() => continue,
            }
            let now = Instant::now();
            let due: Vec<Cleaning> = {
                let mut pending = node.lock();
                let (due, later) = std::mem::take(&mut pending.ops)
                    .into_iter()
                    .partition(|c| c.due <= now);
                pending.ops = later;
                due
            };
            if due.is_empty() {
                continue;
            }
            let ops: Vec<Arc<Op>> = due.iter().map(|c| c.op.clone()).collect();
            let replies = self.nodes.owned_batch(i, &ops).await;
            for (cleaning, reply) in due.into_iter().zip(replies) {
                if reply.is_err() {
                    self.clean(i, &cleaning.op, cleaning.failed + 1);
                }
            }
        }
    }

    /// A guard's release: like [`release`](Self::release), and also catches straggling
    /// acquires that landed after it (see [`NodeStates`]).
    pub(crate) async fn release_guard(
        self: &Arc<Self>,
        keys: &Keys,
        value: &Arc<str>,
        states: &NodeStates,
        announce: bool,
    ) -> OwnedRound {
        states.mark_released();
        let round = self
            .owned_round(
                release_op(keys, value, announce),
                Some(states.clone()),
                Some((keys.clone(), value.clone())),
            )
            .await;
        round
    }

    /// Whether waiters of other processes for `keys` learn of a release only by polling:
    /// assumed when we poll (the same setting on every process), and always for sets.
    pub(crate) fn others_poll(&self, keys: &Keys) -> bool {
        keys.single().is_none() || self.config.wait_strategy == WaitStrategy::Poll
    }

    /// Tells waiters of other processes that `keys` may be free: a bare PUBLISH of
    /// [`RECHECK`](crate::wake::RECHECK) on each key's channel on every node (it deleted
    /// nothing itself, so a waiter woken by it reads the holder's lease on its next attempt).
    async fn announce(&self, keys: &Keys) {
        let channels: Vec<String> = keys.iter().map(|k| crate::wake::channel(k)).collect();
        let nodes = 0..self.nodes.len();
        let each = nodes.flat_map(|i| channels.iter().map(move |c| (i, c)));
        futures::future::join_all(each.map(|(i, c)| self.nodes.publish(i, c))).await;
    }

    /// `GET key` on every node: the distinct values with their counts.
    pub(crate) async fn query(
        self: &Arc<Self>,
        key: &str,
    ) -> (Vec<(String, usize)>, Tally, Vec<NodeFailure>) {
        let n = self.nodes.len();
        let mut pending: FuturesUnordered<_> = (0..n)
            .map(|i| {
                let shared = self.clone();
                async move { (i, shared.nodes.get(i, key).await) }
            })
            .collect();
        let mut tally = Tally::new(n);
        let mut values: Vec<(String, usize)> = Vec::new();
        let mut causes = Vec::new();
        quorum::until(&mut pending, |(i, reply)| {
            match reply {
                Ok(Some(v)) => {
                    tally.record(Vote::Yes);
                    match values.iter_mut().find(|(seen, _)| *seen == v) {
                        Some((_, count)) => *count += 1,
                        None => values.push((v, 1)),
                    }
                }
                Ok(None) => tally.record(Vote::No),
                Err(cause) => {
                    tally.record(Vote::Failed);
                    causes.push(self.failure(i, cause));
                }
            }
            // Done once some value has a majority, or every node has been heard.
            values.iter().any(|(_, c)| *c >= tally.required())
        })
        .await;
        (values, tally, causes)
    }
}

/// The outcome of a release or extend round.
#[derive(Debug)]
pub(crate) struct OwnedRound {
    pub(crate) tally: Tally,
    /// Nodes where another value held the key.
    pub(crate) other: usize,
    /// Nodes that had granted the key but no longer hold our value (its lease ran out there,
    /// and maybe another owner took it); without grant records, every node without our value.
    pub(crate) expired: usize,
    /// The most subscribers a release announcement reached on one node.
    pub(crate) listeners: u32,
    pub(crate) causes: Vec<NodeFailure>,
}

impl OwnedRound {
    /// The typed outcome: Ok when a majority did it — for a release, also when every granting
    /// node that answered still had our value (now deleted) and too few nodes are silent for
    /// our value to remain on a majority (a killed master, or contenders' partial grants on
    /// the nodes that never granted us, must not turn a clean release into an error);
    /// NoQuorum when the silent nodes could still hold a majority; otherwise NotOwner if
    /// another owner holds the key somewhere, else NotHeld.
    pub(crate) fn outcome(self, script: Script, key: &str) -> Result<(), Error> {
        let op = script.name();
        let t = self.tally;
        let released =
            script == Script::Release && t.yes > 0 && self.expired == 0 && t.failed < t.required();
        if t.yes >= t.required() || released {
            Ok(())
        } else if t.yes + t.failed >= t.required() {
            Err(Error::NoQuorum {
                op,
                key: key.into(),
                ok: t.yes,
                required: t.required(),
                nodes: t.nodes,
                causes: self.causes,
            })
        } else if self.other > 0 {
            Err(Error::NotOwner {
                op,
                key: key.into(),
            })
        } else {
            Err(Error::NotHeld {
                op,
                key: key.into(),
            })
        }
    }
}

/// A waiter leaving the local queue without the lock: if the previous holder handed it a grant,
/// the grant is released in Redis before the waiter returns (any other local waiter then goes
/// to Redis too), so a caller whose last acquire gave up can exit without leaving the key
/// behind until its TTL. (Dropped instead, the grant is released in the background.) The
/// turn is kept until the release is done, so no other waiter can be handed the grant.
///
/// # Cancel safety
/// The release runs in its own task and completes if this future is dropped.
async fn leave(mut ticket: Ticket) {
    if ticket.try_turn() {
        if let Some(baton) = ticket.take_baton() {
            baton.release().await;
        }
    }
}

/// A waiter that undid a split vote's partial grant quietly and then leaves without the lock
/// (an error, or its future dropped) announces the key on every node as it goes, so that
/// waiters of other processes refused by that grant do not sleep on (see [`Undo::quietly`]).
struct LeaveAnnounced(Option<(Arc<Shared>, Keys)>);

impl LeaveAnnounced {
    fn arm(&mut self, shared: &Arc<Shared>, keys: &Keys) {
        if self.0.is_none() {
            self.0 = Some((shared.clone(), keys.clone()));
        }
    }
}

impl Drop for LeaveAnnounced {
    fn drop(&mut self) {
        if let (Some((shared, keys)), Ok(rt)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move { shared.announce(&keys).await });
        }
    }
}

/// Releases a round's value where a node granted or did not answer when dropped, unless
/// disarmed (see [`Shared::undo`]).
struct Undo {
    shared: Option<Arc<Shared>>,
    keys: Keys,
    value: Arc<str>,
    states: NodeStates,
}

impl Undo {
    fn disarm(mut self) {
        self.shared = None;
    }

    /// Undoes a decided round: now on the nodes that granted or failed, and on each node
    /// still `pending` once it answers, only if it granted or failed (a node that refused holds
    /// nothing of ours; a round is decided before every node has answered, and undoing on the
    /// stragglers blindly cost most losers two useless requests).
    ///
    /// `announce` off for a split vote that the waiter retries: a waiter of another process
    /// that relies on notifications and was refused by our partial grant needs no message for
    /// it, because whoever of the split contenders wins announces its release in time, and a
    /// contender that gives up announces the key as it leaves (`acquire_keys`). Silent, these
    /// undos do not wake every other waiter at each split (which made them all try again, and
    /// split again). Dropped instead (a cancelled round), the undo announces, on every node
    /// that did not refuse.
    fn settle<F>(mut self, mut pending: FuturesUnordered<F>, announce: bool)
    where
        F: std::future::Future<Output = (usize, Result<Grant, NodeCause>)> + Send + 'static,
    {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let op = Arc::new(release_op(&self.keys, &self.value, announce));
        for i in 0..shared.nodes.len() {
            if self.states.answered(i) && !self.states.refused_on(i) {
                shared.clean(i, &op, 0);
            }
        }
        if pending.is_empty() {
            return;
        }
        let states = self.states.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            quorum::until(&mut pending, |(i, reply)| {
                if states.record(i, &reply) != Vote::No {
                    shared.clean(i, &op, 0);
                }
                false
            })
            .await;
        });
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.undo(&self.keys, &self.value, Some(&self.states), true);
        }
    }
}

/// A guard's release in the background on the current runtime (nodes that did not answer
/// are retried, see `Shared::clean`, and late straggling grants are caught, see
/// [`NodeStates`]); with no runtime the keys expire by TTL. The local queue `ticket`, if any,
/// is handed on only after the first round, so the next local waiter finds the key gone.
pub(crate) fn spawn_release(
    shared: Arc<Shared>,
    keys: Keys,
    value: Arc<str>,
    states: NodeStates,
    ticket: Option<Ticket>,
) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            key = %keys,
            "no tokio runtime to release the lock on; it will expire after its TTL"
        );
        return;
    };
    rt.spawn(async move {
        let announce = ticket.as_ref().is_none_or(Ticket::announce_release);
        let round = shared.release_guard(&keys, &value, &states, announce).await;
        if let (true, Some(ticket)) = (announce, &ticket) {
            ticket.announced(round.listeners, shared.others_poll(&keys));
        }
        drop(ticket);
    });
}

/// The pause before the next background send of a release that failed `failed` times
/// before (0: the first send, at once), doubling from 50 ms to at most 1 s; `None` once the
/// pauses so far add up to more than `ttl`: a key is never set for longer than a lease (the
/// release was sent after the last extension, usually of one `ttl`), so by then it has expired
/// by itself (an extension to a longer TTL is the exception, and expires by TTL). A node that
/// comes back within that time (a reconnect on a loaded machine can take seconds) still loses
/// the key at once; each send is bounded by the node timeout, and a frozen node costs one
/// batch per pause, whatever the number of releases waiting for it.
fn cleanup_pause(failed: usize, ttl: Duration) -> Option<Duration> {
    let pause = |k: usize| match k {
        0 => Duration::ZERO,
        k => Duration::from_millis(50 << (k - 1).min(5)).min(Duration::from_secs(1)),
    };
    let waited: Duration = (0..failed).map(pause).sum();
    (waited <= ttl).then(|| pause(failed))
}

/// Background clean-up, per node: releases waiting to be sent (see [`Shared::clean`]).
struct Cleanup {
    nodes: Box<[CleanupNode]>,
}

struct CleanupNode {
    pending: Mutex<Pending>,
    /// Wakes the node's clean-up task for a release due before the one it sleeps for.
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    ops: Vec<Cleaning>,
    /// Whether the node's clean-up task is running (it ends when nothing is pending).
    running: bool,
}

/// One release waiting to be sent to a node.
struct Cleaning {
    op: Arc<Op>,
    /// Sends that failed so far.
    failed: usize,
    due: Instant,
}

impl Cleanup {
    fn new(nodes: usize) -> Self {
        Cleanup {
            nodes: (0..nodes)
                .map(|_| CleanupNode {
                    pending: Mutex::default(),
                    wake: Notify::new(),
                })
                .collect(),
        }
    }
}

impl CleanupNode {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A compare-and-delete of `value`, announced on each deleted key's channel (`<key>:released`,
/// see [`crate::wake::channel`]; the script builds the names) unless `publish` is off (a
/// release handed to a local waiter, a split vote's quiet undo). A set's release is announced
/// too: its waiters poll, but a single-key waiter of one of its keys listens.
fn release_op(keys: &Keys, value: &Arc<str>, publish: bool) -> Op {
    Op::new(Script::Release, keys)
        .text(value)
        .number(u64::from(publish))
}

/// Whole milliseconds of `d`, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_releases_back_off_and_stop_after_one_ttl() {
        let ms = Duration::from_millis;
        let ttl = Duration::from_secs(10);
        let pauses: Vec<Duration> = (0..)
            .map_while(|failed| cleanup_pause(failed, ttl))
            .collect();
        assert_eq!(
            &pauses[..8],
            [
                ms(0),
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        let total: Duration = pauses.iter().sum();
        // Retries cover the whole TTL, and stop within one more pause of its end.
        assert!(total > ttl && total <= ttl + ms(1000), "{total:?}");
        // A short lease stops sooner: sends at 0, 50, 150 and 350 ms, none once 350 > 300.
        assert_eq!((0..).map_while(|f| cleanup_pause(f, ms(300))).count(), 4);
    }

    #[test]
    fn millis_rounds_down_but_never_to_zero() {
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(10)), 10_000);
    }

    fn round(yes: usize, absent: usize, other: usize, failed: usize) -> OwnedRound {
        let mut tally = Tally::new(yes + absent + other + failed);
        (0..yes).for_each(|_| tally.record(Vote::Yes));
        (0..absent + other).for_each(|_| tally.record(Vote::No));
        (0..failed).for_each(|_| tally.record(Vote::Failed));
        OwnedRound {
            tally,
            other,
            // Without grant records every node counts as having granted.
            expired: absent + other,
            listeners: 0,
            causes: Vec::new(),
        }
    }

    #[test]
    fn release_outcomes() {
        assert!(round(3, 0, 0, 2).outcome(Script::Release, "k").is_ok());
        assert!(matches!(
            round(2, 0, 3, 0).outcome(Script::Release, "k"),
            Err(Error::NotOwner { .. })
        ));
        assert!(matches!(
            round(1, 4, 0, 0).outcome(Script::Release, "k"),
            Err(Error::NotHeld { .. })
        ));
        assert!(matches!(
            round(2, 0, 0, 3).outcome(Script::Release, "k"),
            Err(Error::NoQuorum {
                ok: 2,
                required: 3,
                ..
            })
        ));
    }

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
