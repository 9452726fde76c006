//! An acquisition: a turn in the local queue, then the grant a local holder handed on or
//! acquire rounds until one grants, the wait for the lock ends, or the caller gives up.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::context::Context;
use crate::error::Error;
use crate::guard::{LocalQueues, LockGuard, Turn};
use crate::keys::{Keys, Kind};
use crate::round::acquire::{attempt, quiet_undo, Attempt};
use crate::wait::{self, Busy, WaitEnd, WaitStrategy, Waiter};

/// After this many consecutive attempts in which a majority of nodes could not be reached,
/// `acquire` stops waiting and returns [`Error::NoQuorum`]: waiting is for a lock held by
/// somebody else, not for a cluster that is down.
pub const UNREACHABLE_ATTEMPTS: u32 = 3;

/// One caller's acquisition of one lock.
pub(crate) struct Acquisition<'a> {
    pub(crate) cluster: &'a Arc<Cluster>,
    pub(crate) queues: &'a Arc<LocalQueues>,
    /// The lock as the caller named it (errors, logs).
    pub(crate) key: &'a str,
    pub(crate) keys: Keys,
}

impl Acquisition<'_> {
    /// Waits for the lock until the context's deadline or cancellation: local waiters of the
    /// same lock queue first come first served, and only the head talks to Redis.
    ///
    /// # Cancel safety
    /// A round in flight is undone in the background; a grant handed to us is released (or
    /// kept for the next local waiter).
    pub(crate) async fn wait(self, ctx: &Context) -> Result<LockGuard, Error> {
        let started = Instant::now();
        if ctx.is_expired() {
            return Err(self.timeout(started, 0));
        }
        if !self.keys.queued_locally() {
            // Readers, writers and permits wait in Redis only (see `Keys::queued_locally`).
            return self.contend(ctx, None, started).await;
        }
        let mut ticket = self.queues.join(&self.keys);
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
                    self.cancelled()
                } else {
                    self.timeout(started, 0)
                });
            }
        };
        if let Some(guard) = self.take_baton(&ticket).await {
            return Ok(guard.with_ticket(ticket));
        }
        ticket.attempting();
        if hold_back {
            // Waiters of other processes were just told of the release (or may poll for it):
            // let them go first.
            let pause = Duration::from_micros(fastrand::u64(1_000..3_000));
            tokio::time::sleep(pause.min(ctx.remaining())).await;
        }
        self.contend(ctx, Some(ticket), started).await
    }

    /// Acquire rounds until one grants, waiting between them as the [`Waiter`] decides.
    ///
    /// Longer than most (about 80 lines): one loop whose state (attempts, the unreachable
    /// streak, the last error, the waiter, the leave announcement) spans both halves of each
    /// turn, the round and the wait.
    async fn contend(
        &self,
        ctx: &Context,
        ticket: Option<Turn>,
        started: Instant,
    ) -> Result<LockGuard, Error> {
        let config = &self.cluster.config;
        // Sets poll: a release of any one key is not worth waking for.
        let wake = match (config.wait_strategy, self.keys.wake_key()) {
            (WaitStrategy::PubSub, Some(key)) => Some((&self.cluster.wakeups, key)),
            _ => None,
        };
        let assumptions = (
            self.cluster.len(),
            config.safety_poll,
            config.ttl.min(wait::LOST_RACE_RECHECK),
        );
        let mut waiter = Waiter::new(
            config.retry.delays(),
            wake,
            ticket.as_ref().and_then(Turn::take_subscription),
            assumptions,
        );
        let (mut attempts, mut unreachable) = (0u32, 0u32);
        // A semaphore's permit tries another slot after a refusal (see `Busy::open`); it
        // retries at once while one is free on a majority, at most once per slot in a row.
        let mut keys = self.keys.clone();
        let mut at_once = 0;
        let mut last_error = None;
        // Armed by a split vote's quiet undo, until we hold the lock (see `Undo::settle`).
        let mut leaving = LeaveAnnounced(None);
        // A waiting writer's intent holds readers back: withdrawn if it leaves without the lock.
        let mut withdraw = Withdraw(
            (self.keys.kind() == Kind::Write).then(|| (self.cluster.clone(), self.keys.clone())),
        );
        let result = loop {
            if ctx.is_cancelled() {
                break Err(self.cancelled());
            }
            if ctx.is_expired() {
                break Err(last_error.unwrap_or_else(|| self.timeout(started, attempts)));
            }
            attempts += 1;
            waiter.before_attempt();
            // A refusal may also tell how long the holder has left (see `wants_hint`).
            let hint = waiter.wants_hint(attempts);
            let busy: Busy = match attempt(self.cluster, self.key, &keys, hint, true).await {
                Attempt::Granted(won) => {
                    break Ok(LockGuard::granted(self.cluster, self.key, &keys, won))
                }
                Attempt::Busy(busy) => {
                    (unreachable, last_error) = (0, None);
                    // Only a quiet undo needs announcing on the way out: the other kinds'
                    // undos were announced already (see `quiet_undo`).
                    if quiet_undo(self.keys.kind(), busy.split, true) {
                        leaving.arm(self.cluster, &self.keys);
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
            if let Some((slot, free_on_majority)) = busy.open {
                keys = keys.other_slot(slot);
                if free_on_majority && at_once < keys.script_keys().len() {
                    at_once += 1;
                    continue;
                }
            }
            at_once = 0;
            tracing::debug!(
                key = self.key,
                attempts,
                ?busy,
                "lock busy; waiting to retry"
            );
            match waiter.wait(ctx, busy).await {
                WaitEnd::Retry => {}
                WaitEnd::Cancelled => break Err(self.cancelled()),
                WaitEnd::Deadline => {
                    break Err(last_error.unwrap_or_else(|| self.timeout(started, attempts)))
                }
                WaitEnd::Exhausted => {
                    break Err(last_error.unwrap_or_else(|| Error::RetriesExhausted {
                        key: self.key.into(),
                        attempts,
                    }))
                }
            }
        };
        tracing::Span::current().record("attempts", attempts);
        if result.is_ok() {
            leaving.0 = None;
            withdraw.0 = None;
        }
        match ticket {
            Some(ticket) => {
                ticket.keep_subscription(waiter.into_subscription());
                result.map(|guard| guard.with_ticket(ticket))
            }
            None => result,
        }
    }

    /// One attempt, no waiting: `None` at once while another task of this process holds the
    /// lock (or is taking it), unless its guard is kept past its validity.
    ///
    /// # Cancel safety
    /// A dropped attempt is undone in the background.
    pub(crate) async fn try_once(self) -> Result<Option<LockGuard>, Error> {
        if !self.keys.queued_locally() {
            return self.try_unqueued().await;
        }
        let mut ticket = self.queues.join(&self.keys);
        if !ticket.try_turn() {
            // Held, or about to be, by another task of this process.
            return Ok(None);
        }
        if let Some(guard) = self.take_baton(&ticket).await {
            return Ok(Some(guard.with_ticket(ticket)));
        }
        ticket.attempting();
        match attempt(self.cluster, self.key, &self.keys, false, false).await {
            Attempt::Granted(won) => {
                let guard = LockGuard::granted(self.cluster, self.key, &self.keys, won);
                Ok(Some(guard.with_ticket(ticket)))
            }
            Attempt::Busy(_) => Ok(None),
            Attempt::Unreachable(e, _) => Err(e),
        }
    }

    /// [`try_once`](Self::try_once) for readers, writers and permits: no local queue. A
    /// permit refused on its slot tries the slot free on the most nodes next, while one is free
    /// on a majority (at most once per slot).
    async fn try_unqueued(self) -> Result<Option<LockGuard>, Error> {
        let mut keys = self.keys.clone();
        for _ in 0..=keys.script_keys().len() {
            match attempt(self.cluster, self.key, &keys, false, false).await {
                Attempt::Granted(won) => {
                    return Ok(Some(LockGuard::granted(self.cluster, self.key, &keys, won)))
                }
                Attempt::Busy(Busy {
                    open: Some((slot, true)),
                    ..
                }) => keys = keys.other_slot(slot),
                Attempt::Busy(_) => return Ok(None),
                Attempt::Unreachable(e, _) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The grant the previous local holder handed to whoever gets the turn next (see
    /// [`LockGuard`]'s local hand-off), as our guard, if it holds exactly our keys and still
    /// has at least half the TTL of validity; any other baton is released in Redis first (so
    /// the attempt that follows can win). No Redis request when the baton is used.
    ///
    /// # Cancel safety
    /// Taking the baton and building the guard do not await; the release of a stale baton runs
    /// in its own task, which completes if this future is dropped.
    async fn take_baton(&self, ticket: &Turn) -> Option<LockGuard> {
        match ticket.take_baton()?.into_guard(self.key, &self.keys) {
            Ok(guard) => {
                tracing::debug!(key = self.key, validity = ?guard.validity(), "lock taken over from a local holder");
                Some(guard)
            }
            Err(stale) => {
                tracing::debug!(
                    key = self.key,
                    "handed lock has too little validity left (or other keys); releasing it"
                );
                stale.release().await;
                None
            }
        }
    }

    fn timeout(&self, started: Instant, attempts: u32) -> Error {
        Error::Timeout {
            key: self.key.into(),
            waited: started.elapsed(),
            attempts,
        }
    }

    fn cancelled(&self) -> Error {
        Error::Cancelled {
            key: self.key.into(),
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
async fn leave(mut ticket: Turn) {
    if ticket.try_turn() {
        if let Some(baton) = ticket.take_baton() {
            baton.release().await;
        }
    }
}

/// A waiter that undid a split vote's partial grant quietly and then leaves without the lock
/// (an error, or its future dropped) announces the key on every node as it goes, so that
/// waiters of other processes refused by that grant do not sleep on (see `Undo::settle`).
struct LeaveAnnounced(Option<(Arc<Cluster>, Keys)>);

impl LeaveAnnounced {
    fn arm(&mut self, cluster: &Arc<Cluster>, keys: &Keys) {
        if self.0.is_none() {
            self.0 = Some((cluster.clone(), keys.clone()));
        }
    }
}

impl Drop for LeaveAnnounced {
    fn drop(&mut self) {
        if let Some((cluster, keys)) = self.0.take() {
            cluster.spawn_announce(keys);
        }
    }
}

/// A writer that waited and leaves without the lock (an error, or its future dropped)
/// withdraws its intent on every node (a write release under a value it never held: it only
/// removes the intent, announced), so readers it held back need not wait for the intent to
/// expire.
struct Withdraw(Option<(Arc<Cluster>, Keys)>);

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some((cluster, keys)) = self.0.take() {
            let op = Arc::new(crate::node::Op::release(&keys, &Arc::from(""), true));
            for i in 0..cluster.len() {
                cluster.clean(i, &op, 0);
            }
        }
    }
}
