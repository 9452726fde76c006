//! [`Lease`]: the shared, time-bound part of a held lock: its validity, its extension, the
//! background renewal, and the lost-lock signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::error::{Error, Operation};
use crate::keys::Keys;
use crate::quorum::{self, millis};
use crate::round::owned;
use crate::settings::check_ttl;
use crate::telemetry;

/// A handle on a held lock's lease, cheap to clone and `Send + Sync`: what work running under
/// the lock needs to know (how long it may still act, whether the lock was lost, its fencing
/// token). Obtained from [`LockGuard::lease`](crate::LockGuard::lease) or handed to the work by
/// [`RedLock::with_lock`](crate::RedLock::with_lock).
///
/// # The lost signal and its limits
/// [`lost`](Self::lost) fires when the lock can no longer be trusted: an extension failed to
/// reach a majority before the validity ran out, the validity ran out (with no renewal), or
/// the key was found gone or with another owner. From then on the validity is zero: a loss
/// that a round confirmed leaves no time to act under the lock. Work that selects on it stops
/// before it acts without the lock. It cannot stop a process that pauses (GC, swap, SIGSTOP) *after* checking it and
/// *before* acting: that gap is what fencing tokens close.
///
/// # When the guard lets go
/// A handle describes one holder's lease, and that lease ends when its guard lets go: on
/// [`release`](crate::LockGuard::release), on drop, or when the guard hands the lock to
/// another task of this process (a local hand-off; the new holder gets a handle of its own).
/// From then on [`has_ended`](Self::has_ended) is true, [`validity`](Self::validity) is zero
/// and [`lost`](Self::lost) has fired (without the warning a real loss logs), so work still
/// holding the handle stops instead of acting without the lock.
///
/// ```no_run
/// # use std::time::Duration;
/// # use redquorum::{RedLock, Context};
/// # async fn step() {}
/// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
/// let guard = locks.acquire(&Context::with_timeout(Duration::from_secs(5)), "job").await?;
/// guard.keep_alive(); // renewed in the background from now on
/// let lost = guard.lost();
/// tokio::select! {
///     () = lost.cancelled() => eprintln!("lock lost: stopping before the next step"),
///     () = step() => {}
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lease(Arc<State>);

struct State {
    cluster: Arc<Cluster>,
    key: Box<str>,
    keys: Keys,
    value: Arc<str>,
    fence: Option<u64>,
    /// When the validity runs out, and the lease (TTL) of the round that set it.
    expiry: Mutex<(Instant, Duration)>,
    lost: CancellationToken,
    /// Fired when the guard is released or dropped: ends the background task.
    done: CancellationToken,
    renew: AtomicBool,
    /// Wakes the background task when the schedule changed.
    changed: Notify,
    task: Once,
    /// The runtime the lock was acquired on: the background task is spawned there even when
    /// `lost()`/`keep_alive()` are first called from outside it.
    runtime: Option<tokio::runtime::Handle>,
    /// One extension at a time (user's and renewal's), so an older round never overwrites the
    /// expiry set by a newer one.
    extending: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.0.key)
            .field("validity", &self.validity())
            .field("lost", &self.is_lost())
            .field("fencing_token", &self.0.fence)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The lease of a grant of `keys` (named `key`) under `value`, valid until
    /// `schedule.0`, set on the nodes for `schedule.1`.
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        key: Box<str>,
        keys: Keys,
        value: Arc<str>,
        fence: Option<u64>,
        schedule: (Instant, Duration),
    ) -> Self {
        Lease(Arc::new(State {
            cluster,
            key,
            keys,
            value,
            fence,
            expiry: Mutex::new(schedule),
            lost: CancellationToken::new(),
            done: CancellationToken::new(),
            renew: AtomicBool::new(false),
            changed: Notify::new(),
            task: Once::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            extending: tokio::sync::Mutex::new(()),
        }))
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
    /// let lease = guard.lease();
    /// assert_eq!(lease.key(), "orders:42");
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// The masters the lock is held on.
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.0.cluster
    }

    /// The Redis keys of the lock.
    pub(crate) fn keys(&self) -> &Keys {
        &self.0.keys
    }

    /// The value stored under the keys.
    pub(crate) fn value(&self) -> &Arc<str> {
        &self.0.value
    }

    /// Stops the background task (the guard is letting go; [`end`](Self::end) follows once
    /// any hand-off decision, which reads the schedule and the lost signal, is made).
    pub(crate) fn stop(&self) {
        self.0.done.cancel();
    }

    /// Ends the lease as its guard lets go; see [`State::end`].
    pub(crate) fn end(&self) {
        self.0.end();
    }

    /// The lock can no longer be trusted; see [`State::lose`].
    pub(crate) fn lose(&self, why: &str) {
        self.0.lose(why);
    }

    /// How long the lock is still safe to act under: `ttl − elapsed − drift` since the round
    /// that granted (or last extended) it; zero once it has run out or the lease has ended
    /// (see [`has_ended`](Self::has_ended)).
    ///
    /// A local, monotonic-clock estimate: it assumes the nodes' clocks do not run faster than
    /// `drift_factor` allows and that this process is not paused between reading it and acting.
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
    /// use redquorum::Lease;
    ///
    /// // Work done under the lock gets the lease, not the guard.
    /// fn safe_to_write(lease: &Lease) -> bool {
    ///     lease.validity() > Duration::from_millis(500)
    /// }
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// assert!(safe_to_write(&guard.lease()));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn validity(&self) -> Duration {
        if self.has_ended() {
            return Duration::ZERO;
        }
        self.expires_at().saturating_duration_since(Instant::now())
    }

    /// The instant the validity runs out (for an ended lease, no later than when it ended).
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
    /// let lease = guard.lease();
    /// assert_eq!(lease.expires_at(), guard.expires_at());
    /// tokio::time::timeout_at(lease.expires_at(), async { /* the work */ }).await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn expires_at(&self) -> Instant {
        self.0.expiry().0
    }

    /// Whether this lease has ended because its guard let go (released, dropped, or handed the
    /// lock to another local task); see [When the guard lets go](Self#when-the-guard-lets-go).
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
    /// let guard = locks.try_acquire("job").await?.expect("free");
    /// let lease = guard.lease();
    /// guard.release().await?;
    /// assert!(lease.has_ended() && lease.validity().is_zero() && lease.is_lost());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn has_ended(&self) -> bool {
        self.0.done.is_cancelled()
    }

    /// When the validity runs out and the lease (TTL) of the round that set it, read together.
    pub(crate) fn schedule(&self) -> (Instant, Duration) {
        *self.0.expiry()
    }

    /// The fencing token of this acquisition, if fencing is on (see
    /// [`RedLockBuilder::fencing`](crate::RedLockBuilder::fencing)): strictly greater than the
    /// token of every earlier holder of the key, as long as every node keeps its counters
    /// (AOF with fsync always).
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
    /// let lease = guard.lease();
    /// // Send it with every write; the store refuses tokens lower than the highest it has seen.
    /// let token = lease.fencing_token().expect("fencing is on");
    /// assert_eq!(Some(token), guard.fencing_token());
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        self.0.fence
    }

    /// A token that is cancelled when the lock can no longer be trusted (see the type's docs),
    /// including when the guard lets go (see [`has_ended`](Self::has_ended), which tells the
    /// two apart). Watching it starts a small background task (one per guard) that also fires
    /// it when the validity runs out.
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
    /// use redquorum::Context;
    ///
    /// let ctx = Context::with_timeout(Duration::from_secs(5));
    /// let copied = locks
    ///     .with_lock(&ctx, "nightly-backup", |lease| async move {
    ///         let lost = lease.lost();
    ///         tokio::select! {
    ///             () = lost.cancelled() => None, // stop before acting without the lock
    ///             n = async { 42 } => Some(n),  // the work
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(copied, Some(42));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn lost(&self) -> CancellationToken {
        self.ensure_task();
        self.0.lost.clone()
    }

    /// Whether the lost signal has fired: the lock was lost, or the lease has ended.
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
    /// let lease = guard.lease();
    /// assert!(!lease.is_lost());
    /// guard.release().await?;
    /// assert!(lease.is_lost() && lease.has_ended()); // ended with its guard, not lost to another
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn is_lost(&self) -> bool {
        self.0.lost.is_cancelled()
    }

    /// Keeps the lease alive in the background until the guard is released or dropped: when
    /// half of the TTL is left (or three node timeouts, if more), the lease is extended by one
    /// TTL; a failed extension is retried
    /// every node timeout until the validity runs out, when [`lost`](Self::lost) fires. An
    /// extension that finds the key gone or with another owner fires it at once. A failed
    /// extension never releases anything.
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
    /// let lease = guard.lease();
    /// tokio::spawn(async move {
    ///     lease.keep_alive(); // the same as guard.keep_alive(), from the work's side
    /// })
    /// .await?;
    /// tokio::time::sleep(Duration::from_millis(1500)).await; // longer than the 1 s TTL
    /// assert!(guard.is_held().await?);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    pub fn keep_alive(&self) {
        self.0.renew.store(true, Ordering::SeqCst);
        self.ensure_task();
        self.0.changed.notify_one();
    }

    fn ensure_task(&self) {
        let state = self.0.clone();
        let runtime = self
            .0
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        match runtime {
            Some(rt) => self.0.task.call_once(|| {
                rt.spawn(watch(state));
            }),
            None => tracing::warn!(
                key = &*state.key,
                "no tokio runtime: the lease can neither be renewed nor watched"
            ),
        }
    }

    /// See [`LockGuard::extend`](crate::LockGuard::extend).
    pub(crate) async fn extend(&self, ttl: Duration) -> Result<(), Error> {
        let state = &self.0;
        let cluster = &state.cluster;
        let config = &cluster.config;
        check_ttl(ttl, config.drift_factor, config.node_timeout)?;
        let op = Operation::Extend;
        let lost = |state: &State| {
            state.lose("an extension found the lease gone or held by another owner");
        };
        if self.validity().is_zero() {
            lost(state);
            return Err(Error::NotHeld {
                op,
                key: state.key.to_string(),
            });
        }
        let _one_at_a_time = state.extending.lock().await;
        // The lease the nodes get, in whole milliseconds; validity is computed from it.
        let lease = Duration::from_millis(millis(ttl));
        let start = Instant::now();
        // The nodes may apply this extension even if the round fails or is dropped (a request
        // that went out still lands): from now on the keys may expire as early as
        // `start + lease`, so the validity (and any grant handed on) never counts on more.
        let floor = start + lease.saturating_sub(quorum::drift(lease, config.drift_factor));
        let shortened = {
            let mut expiry = state.expiry();
            let shortened = floor < expiry.0;
            if shortened {
                expiry.0 = floor;
            }
            shortened
        };
        if shortened {
            state.changed.notify_one();
        }
        let round = owned::extend(cluster, &state.keys, &state.value, millis(lease)).await;
        let decided = Instant::now();
        if let Err(e) = round.outcome(op, &state.key) {
            if e.is_lost() {
                lost(state);
            }
            return Err(e);
        }
        // The majority must have confirmed while the old lease was still trusted.
        let mut expiry = state.expiry();
        match quorum::validity(lease, decided - start, config.drift_factor) {
            // A lease that ended meanwhile (its guard let go) stays ended.
            Some(_) if state.done.is_cancelled() => Ok(()),
            Some(validity) if decided < expiry.0 => {
                *expiry = (decided + validity, lease);
                drop(expiry);
                state.changed.notify_one();
                tracing::debug!(key = &*state.key, ?validity, "lock extended");
                Ok(())
            }
            _ => {
                drop(expiry);
                lost(state);
                Err(Error::NotHeld {
                    op,
                    key: state.key.to_string(),
                })
            }
        }
    }
}

impl State {
    fn expiry(&self) -> std::sync::MutexGuard<'_, (Instant, Duration)> {
        self.expiry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the lease as its guard lets go (after any hand-off decision, which reads the
    /// schedule and the lost signal): stops the background task, caps the validity at now and
    /// fires `lost` without the warning a loss logs.
    fn end(&self) {
        self.done.cancel();
        let now = Instant::now();
        let mut expiry = self.expiry();
        expiry.0 = expiry.0.min(now);
        drop(expiry);
        self.lost.cancel();
    }

    /// The lock can no longer be trusted: the validity ends now (a loss that an extension or
    /// a query confirmed must not leave work the rest of its old validity) and `lost` fires.
    fn lose(&self, why: &str) {
        if !self.lost.is_cancelled() && !self.done.is_cancelled() {
            tracing::warn!(key = &*self.key, why, "lock lost");
            telemetry::lease_lost();
            let now = Instant::now();
            let mut expiry = self.expiry();
            expiry.0 = expiry.0.min(now);
            drop(expiry);
            self.lost.cancel();
        }
    }
}

/// When a renewal is due: once half of the TTL is left, or three node timeouts if that is
/// more (so a slow but healthy round still ends before the validity does).
pub(crate) fn renew_at(expires_at: Instant, ttl: Duration, node_timeout: Duration) -> Instant {
    let margin = (ttl / 2).max(node_timeout * 3);
    expires_at.checked_sub(margin).unwrap_or(expires_at)
}

/// The per-guard background task: fires `lost` when the validity runs out and, with
/// keep-alive on, renews the lease on schedule. Ends with the guard.
async fn watch(state: Arc<State>) {
    let lease = Lease(state.clone());
    let mut retry_at: Option<Instant> = None;
    loop {
        let (expires_at, ttl) = *state.expiry();
        let renew = state.renew.load(Ordering::SeqCst);
        let node_timeout = state.cluster.nodes.timeout();
        let wake = match (renew, retry_at) {
            (true, Some(at)) => at.min(expires_at),
            (true, None) => renew_at(expires_at, ttl, node_timeout),
            (false, _) => expires_at,
        };
        tokio::select! {
            biased;
            () = state.done.cancelled() => return,
            () = state.changed.notified() => continue,
            () = tokio::time::sleep_until(wake) => {}
        }
        if Instant::now() >= lease.expires_at() {
            state.lose("its validity ran out");
            return;
        }
        if !state.renew.load(Ordering::SeqCst) {
            continue;
        }
        // The renewal races the validity: `lost` fires the moment the validity ends, not when
        // a slow round finally gives up. The TTL is re-read: a user's extend may have changed it.
        let ttl = state.expiry().1;
        let renewal = tokio::select! {
            biased;
            () = state.done.cancelled() => return,
            () = tokio::time::sleep_until(lease.expires_at()) => {
                state.lose("its validity ran out while a renewal was in flight");
                return;
            }
            renewal = lease.extend(ttl) => renewal,
        };
        match renewal {
            Ok(()) => retry_at = None,
            Err(e) if e.is_lost() => return, // `extend` fired `lost`
            Err(e) => {
                tracing::warn!(key = &*state.key, error = %e, "lease renewal failed; retrying");
                retry_at = Some(Instant::now() + node_timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_half_the_ttl() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let exp = now + Duration::from_millis(9_800);
        let nt = Duration::from_millis(50);
        assert_eq!(renew_at(exp, ttl, nt), now + Duration::from_millis(4_800));
        // A short lease with a slow node timeout renews earlier than half-way.
        let ttl = Duration::from_millis(300);
        let exp = now + Duration::from_millis(290);
        assert_eq!(
            renew_at(exp, ttl, Duration::from_millis(80)),
            now + Duration::from_millis(50)
        );
    }
}
