//! [`LockGuard`]: a held lock, released explicitly or on drop.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cluster::Cluster;
use crate::error::{Error, Operation};
use crate::keys::{Keys, Kind};
use crate::lease::Lease;
use crate::node_states::NodeStates;
use crate::queue::{Holder, Queues, Ticket};
use crate::round::acquire::Won;
use crate::round::owned;
use crate::round::query::{self, query};
use crate::telemetry;

/// A lock held on a majority of nodes.
///
/// Act under it only while [`validity`](Self::validity) is comfortably positive. Release it with
/// [`release`](Self::release) to learn whether the release reached a majority; if the guard is
/// simply dropped, a release is spawned on the current tokio runtime (best effort: with no
/// runtime, or if it fails, the keys expire after the TTL).
///
/// # Local hand-off
/// When another task of the same [`RedLock`](crate::RedLock) is queued for the same key, a
/// release (explicit or by drop) may hand the grant itself to that task instead of going to
/// Redis: the keys stay held in Redis under the same value, and the next owner's guard inherits
/// the remaining validity (see the README's "Waiting without spinning"). This happens only
/// without fencing tokens, while the lease is not lost and at least half the TTL is left, and at
/// most 8 times in a row per key; otherwise the release goes through Redis as usual.
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # use redquorum::{RedLock, Context};
/// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
/// let ctx = Context::with_timeout(Duration::from_secs(5));
/// {
///     let guard = locks.acquire(&ctx, "orders:42").await?;
///     assert!(guard.validity() > Duration::ZERO);
///     // ... critical section ...
/// } // dropped: released in the background
/// let mut guard = locks.acquire(&ctx, "orders:42").await?;
/// guard.extend(Duration::from_secs(30)).await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    lease: Lease,
    states: NodeStates,
    released: bool,
    /// This process's turn for the key; handed to the next local waiter after release.
    ticket: Option<Turn>,
    /// A semaphore's local gate, held until the guard is released or dropped (see
    /// `Semaphore`); declared last, so it is let go after the release was sent.
    gate: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The local queues of a lock manager: they hand on [`Baton`]s and know holders by their
/// [`Lease`].
pub(crate) type LocalQueues = Queues<Baton, Lease>;

/// A place in a [`LocalQueues`] queue.
pub(crate) type Turn = Ticket<Baton, Lease>;

/// Local waiters go past a holder whose validity ran out while it kept its guard; never past
/// one whose lease ended because its guard let go (its ticket hands the turn on).
impl Holder for Lease {
    fn stale_at(&self) -> Option<Instant> {
        (!self.has_ended()).then(|| self.expires_at())
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key())
            .field("validity", &self.validity())
            .field("granted_nodes", &self.granted_nodes())
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    pub(crate) fn new(lease: Lease, states: NodeStates) -> Self {
        LockGuard {
            lease,
            states,
            released: false,
            ticket: None,
            gate: None,
        }
    }

    /// The guard keeps `gate` (a place at a semaphore's local gate) until it lets go.
    pub(crate) fn with_gate(mut self, gate: tokio::sync::OwnedSemaphorePermit) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The guard of a granted round for lock `keys`, named `key`.
    pub(crate) fn granted(cluster: &Arc<Cluster>, key: &str, keys: &Keys, won: Won) -> Self {
        let lease = Lease::new(
            cluster.clone(),
            key.into(),
            keys.clone(),
            won.value,
            won.token,
            (won.expires_at, won.lease),
        );
        LockGuard::new(lease, won.states)
    }

    pub(crate) fn with_ticket(mut self, mut ticket: Turn) -> Self {
        ticket.hold(&self.lease);
        self.ticket = Some(ticket);
        self
    }

    /// The key as passed to `acquire`.
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// assert_eq!(guard.key(), "orders:42");
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn key(&self) -> &str {
        self.lease.key()
    }

    /// The unique value this acquisition stored on the nodes (`<uuid>:<owner>`).
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
    /// #     .owner("billing-3")
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// // `<uuid>:<owner>`: what a majority of the nodes holds under the key.
    /// assert!(guard.value().ends_with(":billing-3"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn value(&self) -> &str {
        self.lease.value()
    }

    /// How long the lock is still safe to act under: `ttl − elapsed − drift` since the round
    /// that granted (or last extended) it. Zero once it has run out.
    ///
    /// This is a local, monotonic-clock estimate. It assumes that the nodes' clocks do not run
    /// faster than `drift_factor` allows and that this process is not paused between reading
    /// it and acting on it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// # let locks = redquorum::RedLock::builder()
    /// #     .nodes(cluster.urls())
    /// #     .node_timeout(std::time::Duration::from_millis(250))
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// // Act only while the lease comfortably covers what you are about to do.
    /// assert!(guard.validity() > Duration::from_secs(1));
    /// assert!(guard.validity() < locks.ttl()); // less the round trip and the drift allowance
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn validity(&self) -> Duration {
        self.lease.validity()
    }

    /// The instant the validity runs out.
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// // Give the work no more time than the lock is safe for.
    /// let work = async { /* the critical section */ };
    /// tokio::time::timeout_at(guard.expires_at(), work).await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn expires_at(&self) -> Instant {
        self.lease.expires_at()
    }

    /// The fencing token of this acquisition, when fencing is on (see [`Lease::fencing_token`]).
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
    /// let first = locks.try_acquire("ledger").await?.expect("the lock is free");
    /// let token = first.fencing_token().expect("fencing is on");
    /// first.release().await?;
    /// let second = locks.try_acquire("ledger").await?.expect("the lock is free");
    /// // The resource rejects writes that carry a token below the highest it has seen.
    /// assert!(second.fencing_token().expect("fencing is on") > token);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.lease.fencing_token()
    }

    /// A cheap handle on this lock's lease (validity, lost signal, fencing token) to hand to
    /// the work done under it.
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("report").await?.expect("the lock is free");
    /// let lease = guard.lease(); // Clone + Send: hand it to the work done under the lock
    /// let work = tokio::spawn(async move { !lease.validity().is_zero() });
    /// assert!(work.await?);
    /// guard.release().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// A token cancelled when the lock can no longer be trusted; see [`Lease::lost`].
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("report").await?.expect("the lock is free");
    /// let lost = guard.lost();
    /// tokio::select! {
    ///     () = lost.cancelled() => { /* stop: acting now could overlap with another holder */ }
    ///     () = async { /* the work */ } => {}
    /// }
    /// guard.release().await?;
    /// assert!(lost.is_cancelled()); // it also fires when the guard lets go
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn lost(&self) -> CancellationToken {
        self.lease.lost()
    }

    /// Renews the lease in the background until release or drop; see [`Lease::keep_alive`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// # let locks = redquorum::RedLock::builder()
    /// #     .nodes(cluster.urls())
    /// #     .node_timeout(std::time::Duration::from_millis(250))
    /// #     .ttl(Duration::from_secs(1))
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("long-job").await?.expect("the lock is free");
    /// guard.keep_alive();
    /// // Work that outlasts the 1 s TTL: the lease is renewed while it runs.
    /// tokio::time::sleep(Duration::from_millis(1500)).await;
    /// assert!(guard.is_held().await?);
    /// guard.release().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn keep_alive(&self) {
        self.lease.keep_alive();
    }

    /// Nodes known to have granted this lock: the majority that decided, plus any straggler that
    /// granted after the decision.
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// // A majority at least; fewer than all when some node is down or slow.
    /// assert!(guard.granted_nodes() >= locks.quorum());
    /// assert!(guard.granted_nodes() <= locks.nodes());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn granted_nodes(&self) -> usize {
        self.states.granted()
    }

    /// Whether the lock is still ours: validity left and our value on a majority of nodes. A
    /// `false` answer also fires [`lost`](Self::lost).
    ///
    /// # Errors
    /// [`Error::NoQuorum`] when too few nodes answer to tell.
    ///
    /// # Cancel safety
    /// Read only: dropping it changes nothing.
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// assert!(guard.is_held().await?); // asks the nodes: our value on a majority
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub async fn is_held(&self) -> Result<bool, Error> {
        let lease = &self.lease;
        if self.validity().is_zero() {
            lease.lose("its validity ran out");
            return Ok(false);
        }
        // Every key of the lock must hold our value on a majority; the weakest key decides.
        let mut weakest = None;
        let reader = matches!(lease.keys().kind(), Kind::Read | Kind::Counted { .. });
        for key in lease.keys().iter() {
            let q = if reader {
                query::query_reader(lease.cluster(), key, lease.value()).await
            } else {
                query(lease.cluster(), key).await
            };
            let count = q.count(lease.value());
            if weakest.as_ref().is_none_or(|(c, _)| count < *c) {
                weakest = Some((count, q));
            }
        }
        let Some((ours, q)) = weakest else {
            return Ok(false);
        };
        match query::majority(ours, &q.tally) {
            Some(true) if !self.validity().is_zero() => Ok(true),
            // The nodes that did not answer may still hold our value.
            None if !self.validity().is_zero() => Err(q.no_quorum(self.key(), ours)),
            _ => {
                lease.lose("our value is no longer on a majority of nodes");
                Ok(false)
            }
        }
    }

    /// Resets the lease to `ttl` on every node that still holds our value; succeeds when a
    /// majority did so before the current validity ran out. Nodes holding another owner's value
    /// are never touched. On success the validity restarts from this round.
    ///
    /// A failed extension does not release anything: nodes that were extended keep the lease
    /// until it expires or the guard is released. As the nodes may apply an extension even when
    /// the round fails or is dropped, a `ttl` shorter than the validity left shortens the
    /// validity as soon as the round starts, whatever its outcome.
    ///
    /// # Errors
    /// - [`Error::Config`]: `ttl` too short to leave validity (nothing is sent).
    /// - [`Error::NotHeld`]: the validity had already run out, or our value is gone from too
    ///   many nodes (fires [`lost`](Self::lost)).
    /// - [`Error::NotOwner`]: another owner holds the key on some node and we lack a majority
    ///   (fires [`lost`](Self::lost)).
    /// - [`Error::NoQuorum`]: too few nodes answered.
    ///
    /// # Cancel safety
    /// If dropped, some nodes may have been extended; the guard keeps its old validity, or the
    /// shorter one a shorter `ttl` gives.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// # let locks = redquorum::RedLock::builder()
    /// #     .nodes(cluster.urls())
    /// #     .node_timeout(std::time::Duration::from_millis(250))
    /// #     .build()
    /// #     .await?;
    /// let mut guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// // The work needs longer than the 10 s TTL it was taken with.
    /// guard.extend(Duration::from_secs(60)).await?;
    /// assert!(guard.validity() > Duration::from_secs(50));
    /// guard.release().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    #[tracing::instrument(name = "extend", level = "debug", skip_all, fields(key = %self.key(), ?ttl))]
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        self.lease.extend(ttl).await
    }

    /// Releases the lock on every node (compare-and-delete: another owner's key is never
    /// touched); succeeds when a majority confirms the deletion.
    ///
    /// If another task of this process is queued for the key, the lock may instead be handed
    /// to it without any Redis request (see [Local hand-off](Self#local-hand-off)): this
    /// returns `Ok(())` at once, the lock has left this guard, and the keys remain held in
    /// Redis by this process for the next owner.
    ///
    /// # Errors
    /// [`Error::NotOwner`] when the lease had expired and another owner holds the key;
    /// [`Error::NotHeld`] when the key was already gone (expired); [`Error::NoQuorum`] when too
    /// few nodes answered. Whatever the outcome, a node that did not answer (even one that
    /// timed out after a majority answered) is retried in the background (pauses doubling to
    /// 1 s) while the key could still be there; a node unreachable all that time loses it by TTL.
    ///
    /// # Cancel safety
    /// If the future is dropped before it completes, the guard's drop spawns the release again.
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
    /// #     .build()
    /// #     .await?;
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// guard.release().await?; // confirmed by a majority
    /// assert!(locks.try_acquire("orders:42").await?.is_some()); // free again
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub async fn release(mut self) -> Result<(), Error> {
        let span = tracing::debug_span!("release", key = %self.key());
        self.release_round().instrument(span).await
    }

    async fn release_round(&mut self) -> Result<(), Error> {
        let lease = self.lease.clone();
        lease.stop();
        let passed = self.pass_baton();
        lease.end();
        if passed {
            telemetry::release(true);
            self.released = true;
            return Ok(());
        }
        let announce = self.ticket.as_ref().is_none_or(Ticket::announce_release);
        let cluster = lease.cluster();
        let round =
            owned::release(cluster, lease.keys(), lease.value(), &self.states, announce).await;
        if let (true, Some(ticket)) = (announce, &self.ticket) {
            ticket.announced(round.listeners, cluster.others_poll(lease.keys()));
        }
        telemetry::release(false); // with `released`: a cut future is counted by the drop
        self.released = true;
        let outcome = round.outcome(Operation::Release, lease.key());
        tracing::debug!(key = lease.key(), ok = outcome.is_ok(), "lock released");
        outcome
    }

    /// Hands the grant to the next local waiter of the key, with no Redis request, when that
    /// is safe: no fencing token (each owner would need a new one from Redis), the lease not
    /// lost, at least half the configured TTL of validity left, and a local waiter queued
    /// behind our turn (see [`Ticket::pass_baton`]). Called after `done` was cancelled, so the
    /// keep-alive has stopped and `lost` can no longer fire; on success our ticket is dropped,
    /// which hands the turn (and with it the baton) on.
    fn pass_baton(&mut self) -> bool {
        let Some(ticket) = self.ticket.as_mut() else {
            return false;
        };
        let (expires_at, lease) = self.lease.schedule();
        let cluster = self.lease.cluster();
        let half = cluster.config.ttl / 2;
        let left = expires_at.saturating_duration_since(Instant::now());
        // Once a release round was sent (even one whose future was then dropped: its deletes
        // still go out), the grant is gone and must never be handed on.
        if self.lease.fencing_token().is_some()
            || self.lease.is_lost()
            || left < half
            || self.states.is_released()
        {
            return false;
        }
        let passed = ticket.pass_baton(|| {
            Baton(Some(Box::new(Handed {
                cluster: cluster.clone(),
                keys: self.lease.keys().clone(),
                value: self.lease.value().clone(),
                states: self.states.clone(),
                expires_at,
                lease,
            })))
        });
        if passed {
            tracing::debug!(
                key = self.lease.key(),
                validity = ?left,
                "lock handed to a local waiter without a Redis round trip"
            );
            drop(self.ticket.take());
        }
        passed
    }
}

/// A still-valid grant handed from a releasing guard to the next local waiter of the same key
/// (see [`Ticket::pass_baton`]): the keys stay held in Redis under the same value meanwhile.
/// Whoever owns it last either turns it into a guard ([`into_guard`](Self::into_guard)) or
/// lets it drop, which releases the keys in Redis (announced, as another process may wait).
pub(crate) struct Baton(Option<Box<Handed>>);

struct Handed {
    cluster: Arc<Cluster>,
    keys: Keys,
    value: Arc<str>,
    /// Shared with every owner of this grant, so a straggling acquire of the original round
    /// is still caught by whichever owner finally releases.
    states: NodeStates,
    /// The validity end of the grant as the last owner had it (after any extension).
    expires_at: Instant,
    /// The lease of the round that set `expires_at`.
    lease: Duration,
}

impl Baton {
    /// The new owner's guard for `keys`, labelled `key`, with a fresh lease (no keep-alive,
    /// fresh lost signal) inheriting the validity; or the baton back if it holds other keys
    /// than `keys` (the local queue should make that impossible; this check makes it so) or if
    /// less than half the configured TTL is left (release it and go to Redis instead).
    pub(crate) fn into_guard(mut self, key: &str, keys: &Keys) -> Result<LockGuard, Baton> {
        let Some(h) = self.0.take() else {
            return Err(self);
        };
        let left = h.expires_at.saturating_duration_since(Instant::now());
        if h.keys != *keys || left.is_zero() || left < h.cluster.config.ttl / 2 {
            self.0 = Some(h);
            return Err(self);
        }
        let lease = Lease::new(
            h.cluster,
            key.into(),
            h.keys,
            h.value,
            None,
            (h.expires_at, h.lease),
        );
        Ok(LockGuard::new(lease, h.states))
    }

    /// Releases the keys in Redis and waits for the round's decision. The round runs in its
    /// own task: if this future is dropped, the release still completes.
    pub(crate) async fn release(mut self) {
        let Some(h) = self.0.take() else {
            return;
        };
        let task = tokio::spawn(async move {
            owned::release(&h.cluster, &h.keys, &h.value, &h.states, true).await;
        });
        let _ = task.await;
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            tracing::debug!(
                key = %h.keys,
                "handed lock not taken by any local waiter; releasing it"
            );
            owned::spawn_release::<Baton, Lease>(h.cluster, h.keys, h.value, h.states, None);
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.lease.stop();
        let passed = !self.released && self.pass_baton();
        self.lease.end();
        if !self.released {
            telemetry::release(passed);
        }
        if !self.released && !passed {
            owned::spawn_release(
                self.lease.cluster().clone(),
                self.lease.keys().clone(),
                self.lease.value().clone(),
                self.states.clone(),
                self.ticket.take(),
            );
        }
    }
}
