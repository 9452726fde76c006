//! [`LockGuard`]: a held lock, released explicitly or on drop.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, NodeCause};
use crate::lease::Lease;
use crate::lock::{spawn_release, Shared};
use crate::node::{Grant, Keys, Script};
use crate::queue::Ticket;
use crate::quorum::Vote;

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
    ticket: Option<Ticket>,
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
        }
    }

    pub(crate) fn with_ticket(mut self, mut ticket: Ticket) -> Self {
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
        &self.lease.0.key
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
        &self.lease.0.value
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
        let state = &self.lease.0;
        if self.validity().is_zero() {
            state.lose("its validity ran out");
            return Ok(false);
        }
        // Every key of the lock must hold our value on a majority; the weakest key decides.
        let mut ours = usize::MAX;
        let mut failed = 0;
        let mut tally = None;
        let mut causes = Vec::new();
        for key in state.keys.iter() {
            let (values, t, c) = state.shared.query(key).await;
            let count = values
                .iter()
                .find(|(v, _)| **v == *state.value)
                .map_or(0, |(_, c)| *c);
            if count < ours {
                (ours, failed, causes) = (count, t.failed, c);
                tally = Some(t);
            }
        }
        let Some(tally) = tally else {
            return Ok(false);
        };
        if ours >= tally.required() && !self.validity().is_zero() {
            return Ok(true);
        }
        // The nodes that did not answer may still hold our value.
        if ours + failed >= tally.required() && !self.validity().is_zero() {
            return Err(Error::NoQuorum {
                op: "query",
                key: self.key().to_owned(),
                ok: tally.answered(),
                required: tally.required(),
                nodes: tally.nodes,
                causes,
            });
        }
        state.lose("our value is no longer on a majority of nodes");
        Ok(false)
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
    /// timed out after a majority had answered) is tried again in the background (pauses doubling
    /// to 1 s) for as long as the key could still be there; a node unreachable all that time
    /// loses it by TTL.
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
        let state = self.lease.0.clone();
        state.done.cancel();
        let passed = self.pass_baton();
        state.end();
        if passed {
            self.released = true;
            return Ok(());
        }
        let announce = self.ticket.as_ref().is_none_or(Ticket::announce_release);
        let round = state
            .shared
            .release_guard(&state.keys, &state.value, &self.states, announce)
            .await;
        if let (true, Some(ticket)) = (announce, &self.ticket) {
            ticket.announced(round.listeners, state.shared.others_poll(&state.keys));
        }
        self.released = true;
        let outcome = round.outcome(Script::Release, &state.key);
        tracing::debug!(key = &*state.key, ok = outcome.is_ok(), "lock released");
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
        let state = &self.lease.0;
        let (expires_at, lease) = self.lease.schedule();
        let half = state.shared.config.ttl / 2;
        let left = expires_at.saturating_duration_since(Instant::now());
        // Once a release round was sent (even one whose future was then dropped: its deletes
        // still go out), the grant is gone and must never be handed on.
        if state.fence.is_some() || self.lease.is_lost() || left < half || self.states.is_released()
        {
            return false;
        }
        let passed = ticket.pass_baton(|| {
            Baton(Some(Handed {
                shared: state.shared.clone(),
                keys: state.keys.clone(),
                value: state.value.clone(),
                states: self.states.clone(),
                expires_at,
                lease,
            }))
        });
        if passed {
            tracing::debug!(
                key = &*state.key,
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
pub(crate) struct Baton(Option<Handed>);

struct Handed {
    shared: Arc<Shared>,
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
        if h.keys != *keys || left.is_zero() || left < h.shared.config.ttl / 2 {
            self.0 = Some(h);
            return Err(self);
        }
        let lease = Lease::new(
            h.shared,
            key.into(),
            h.keys,
            h.value,
            None,
            h.expires_at,
            h.lease,
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
            h.shared
                .release_guard(&h.keys, &h.value, &h.states, true)
                .await;
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
            spawn_release(h.shared, h.keys, h.value, h.states, None);
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.lease.0.done.cancel();
        let passed = !self.released && self.pass_baton();
        self.lease.0.end();
        if !self.released && !passed {
            let state = &self.lease.0;
            spawn_release(
                state.shared.clone(),
                state.keys.clone(),
                state.value.clone(),
                self.states.clone(),
                self.ticket.take(),
            );
        }
    }
}

/// What each node said to the round that granted a guard (updated by stragglers after the
/// decision), and the bookkeeping that keeps a straggling acquire from outliving the release.
///
/// A straggler's request can be overtaken by the release on its node (both wait for a
/// reconnect, and either may be sent first), so its SET may land after the DEL. The node then
/// needs one more release exactly when both happened: the straggler's reply (granted, or no
/// reply at all) came after the guard was let go, *and* the release did not delete our value
/// there. Whichever of the two observers comes second sees the other's bit (`fetch_or`) and
/// sends that release; replies heard before the guard was let go need nothing, as the release
/// is sent after them on the same connection.
#[derive(Debug, Clone)]
pub(crate) struct NodeStates(Arc<States>);

#[derive(Debug)]
struct States {
    votes: Box<[AtomicU8]>,
    late: Box<[AtomicU8]>,
    released: AtomicBool,
}

const UNKNOWN: u8 = 0;
const GRANTED: u8 = 1;
const REFUSED: u8 = 2;
const FAILED: u8 = 3;

/// The acquire's reply (granted or none) was heard after the guard was let go.
const ACQUIRED_LATE: u8 = 1;
/// The release did not delete our value on this node.
const RELEASE_MISSED: u8 = 2;

impl NodeStates {
    pub(crate) fn new(n: usize) -> Self {
        let zeros = || (0..n).map(|_| AtomicU8::new(UNKNOWN)).collect();
        NodeStates(Arc::new(States {
            votes: zeros(),
            late: zeros(),
            released: AtomicBool::new(false),
        }))
    }

    /// Records node `i`'s reply and returns its vote.
    pub(crate) fn record(&self, i: usize, reply: &Result<Grant, NodeCause>) -> Vote {
        let (state, vote) = match reply {
            Ok(Grant::Granted { .. }) => (GRANTED, Vote::Yes),
            Ok(Grant::Held { .. }) => (REFUSED, Vote::No),
            Err(_) => (FAILED, Vote::Failed),
        };
        if let Some(slot) = self.0.votes.get(i) {
            slot.store(state, Ordering::SeqCst);
        }
        vote
    }

    /// Whether node `i` is known to have granted.
    pub(crate) fn granted_on(&self, i: usize) -> bool {
        self.0
            .votes
            .get(i)
            .is_some_and(|s| s.load(Ordering::SeqCst) == GRANTED)
    }

    /// Whether node `i`'s reply (or failure) has been recorded.
    pub(crate) fn answered(&self, i: usize) -> bool {
        self.0
            .votes
            .get(i)
            .is_some_and(|s| s.load(Ordering::SeqCst) != UNKNOWN)
    }

    /// Whether node `i` is known to have refused (another value held the key): nothing of
    /// ours can be there, so an undo skips it.
    pub(crate) fn refused_on(&self, i: usize) -> bool {
        self.0
            .votes
            .get(i)
            .is_some_and(|s| s.load(Ordering::SeqCst) == REFUSED)
    }

    pub(crate) fn granted(&self) -> usize {
        self.0
            .votes
            .iter()
            .filter(|s| s.load(Ordering::SeqCst) == GRANTED)
            .count()
    }

    /// Marks the guard as let go; called before the release round is sent.
    pub(crate) fn mark_released(&self) {
        self.0.released.store(true, Ordering::SeqCst);
    }

    /// Whether a release round was sent for this grant.
    pub(crate) fn is_released(&self) -> bool {
        self.0.released.load(Ordering::SeqCst)
    }

    /// A straggler's reply: whether node `i` now needs one more release.
    pub(crate) fn acquired_late(&self, i: usize, reply: &Result<Grant, NodeCause>) -> bool {
        let maybe_set = !matches!(reply, Ok(Grant::Held { .. }));
        maybe_set
            && self.0.released.load(Ordering::SeqCst)
            && self.flag(i, ACQUIRED_LATE) & RELEASE_MISSED != 0
    }

    /// The release did not delete our value on node `i`: whether it needs one more release.
    pub(crate) fn release_missed(&self, i: usize) -> bool {
        self.flag(i, RELEASE_MISSED) & ACQUIRED_LATE != 0
    }

    fn flag(&self, i: usize, bit: u8) -> u8 {
        self.0
            .late
            .get(i)
            .map_or(0, |f| f.fetch_or(bit, Ordering::SeqCst))
    }
}
