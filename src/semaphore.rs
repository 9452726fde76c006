//! [`Semaphore`]: at most k holders across the quorum.
//!
//! A semaphore of k permits is k slot keys, each an ordinary Redlock key; a permit is a
//! majority grant on **one** slot (the same slot on every granting node). Two holders of one
//! slot would need two majorities, which share a node, on which both held that slot: the
//! compare-and-set refuses the second. So each slot has at most one holder and the semaphore
//! at most k. The naive scheme — each node counts its holders and refuses beyond k — is unsafe
//! across a quorum (see docs/primitives.md for the counterexample); it exists here only behind
//! a hidden builder knob, so the test suite can show the checker catching it.
//!
//! Rounds run on the same engine as the mutex, with the `sem_*.lua` scripts (extension is the
//! mutex's `extend.lua`: a slot is a plain value key). A round targets one slot, the first a
//! random one; a refusing node reports which slots are free on it, and the next round targets
//! the slot free on the most nodes (at once when that is a majority).

use std::sync::Arc;

use crate::context::Context;
use crate::error::Error;
use crate::guard::LockGuard;
use crate::keys::{rw_layout, slot_layout, Keys};
use crate::lock::RedLock;

/// The most permits a semaphore may have: each acquire round names every slot key, and a
/// refusing node reports the free ones in a 64-bit mask.
pub const MAX_PERMITS: usize = 64;

/// A counting semaphore across the quorum: at most [`permits`](Self::permits) holders at once.
/// Made by [`RedLock::semaphore`]; cheap to clone.
///
/// Every user of one semaphore must give it the same number of permits (with different
/// numbers, the largest bounds the holders). Semaphores live in their own key space
/// (`<namespace>::sem:<group>:<name>:<slot>`): `semaphore("x", 3)` never contends with
/// `acquire("x")` or `write("x")`.
///
/// A permit's guard is a [`LockGuard`] like any other: validity, quorum-verified release,
/// extend, keep-alive, lost signal, release on drop. No fencing token, no local hand-off.
///
/// # Local gate
/// A `Semaphore` and its clones let at most `permits` of their tasks hold a permit or try for
/// one at once; the others wait in a local FIFO until one of those lets go. No process can
/// hold more than `permits` anyway, and this keeps a crowd of local tasks from all waking and
/// racing to Redis at each release. Separate calls of [`RedLock::semaphore`] have separate
/// gates (they still share the bound, in Redis): clone one `Semaphore` for tasks of one
/// process.
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # use redquorum::{RedLock, Context};
/// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
/// let exports = locks.semaphore("exports", 3)?;
/// let ctx = Context::with_timeout(Duration::from_secs(30));
/// let permit = exports.acquire(&ctx).await?; // at most 3 exports run at once
/// // ... run the export while permit.validity() is comfortably positive ...
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    locks: RedLock,
    name: Arc<str>,
    /// `<namespace>::sem:<group>:<name>`: the channel key every slot's release announces on.
    wake: Arc<str>,
    slots: Arc<[Arc<str>]>,
    /// The naive counting scheme's keys (the unsafe demonstration knob).
    counted: Option<[Arc<str>; 3]>,
    /// The local gate: at most `permits` tasks of this `Semaphore` (and its clones) hold a
    /// permit or try for one at once; the others wait here, first come first served.
    gate: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits())
            .finish_non_exhaustive()
    }
}

impl RedLock {
    /// A semaphore named `name` with `permits` permits, in this `RedLock`'s group: at most
    /// `permits` holders at once across every process that uses it. Nothing is sent until a
    /// permit is asked for.
    ///
    /// Each acquire round costs one script call per node naming every slot key (so keep
    /// `permits` modest); holding a permit costs one key per node.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty name, 0 permits, or more than [`MAX_PERMITS`].
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) -> Result<(), redquorum::Error> {
    /// let sem = locks.semaphore("exports", 3)?;
    /// assert_eq!(sem.permits(), 3);
    /// assert!(locks.semaphore("exports", 0).is_err());
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str, permits: usize) -> Result<Semaphore, Error> {
        self.redis_key(name)?;
        if permits == 0 || permits > MAX_PERMITS {
            return Err(Error::config(format!(
                "semaphore {name:?} needs between 1 and {MAX_PERMITS} permits, not {permits}; \
                 use acquire() for a single holder"
            )));
        }
        let space = self.space("sem");
        let counted = self
            .cluster()
            .config
            .semaphore_counting
            .then(|| rw_layout(&self.space("nsem"), name));
        Ok(Semaphore {
            locks: self.clone(),
            name: name.into(),
            wake: format!("{space}{name}").into(),
            slots: slot_layout(&space, name, permits),
            counted,
            gate: Arc::new(tokio::sync::Semaphore::new(permits)),
        })
    }
}

impl Semaphore {
    /// The number of permits.
    pub fn permits(&self) -> usize {
        // One slot key per permit: the count is not stored twice.
        self.slots.len()
    }

    /// The semaphore's name, as given to [`RedLock::semaphore`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keys of one attempt: a permit on a random slot (contenders spread over the slots).
    fn keys(&self) -> Keys {
        match &self.counted {
            Some(rw) => {
                let limit = u32::try_from(self.permits()).unwrap_or(u32::MAX);
                Keys::rw(rw.clone(), false, Some(limit))
            }
            None => Keys::permit(&self.wake, &self.slots, fastrand::usize(..self.permits())),
        }
    }

    /// Takes a permit, waiting while all are held until the context's deadline; woken when a
    /// holder releases (PubSub, on the semaphore's channel) or a holder's lease runs out.
    ///
    /// # Errors
    /// As for [`RedLock::acquire`].
    ///
    /// # Cancel safety
    /// As for [`RedLock::acquire`]: a round in flight is undone in the background.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redquorum::{RedLock, Context};
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let sem = locks.semaphore("exports", 2)?;
    /// let ctx = Context::with_timeout(Duration::from_secs(5));
    /// let a = sem.acquire(&ctx).await?;
    /// let b = sem.acquire(&ctx).await?;
    /// assert!(sem.try_acquire().await?.is_none()); // both permits are held
    /// a.release().await?;
    /// b.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, ctx: &Context) -> Result<LockGuard, Error> {
        let started = tokio::time::Instant::now();
        let gate = tokio::select! {
            biased;
            () = ctx.cancelled() => return Err(Error::Cancelled { key: self.name.to_string() }),
            gate = self.gate.clone().acquire_owned() => gate,
            () = tokio::time::sleep_until(ctx.deadline()) => {
                return Err(Error::Timeout {
                    key: self.name.to_string(),
                    waited: started.elapsed(),
                    attempts: 0,
                })
            }
        };
        let gate = gate.map_err(|_| Error::config("the semaphore's local gate was closed"))?;
        let guard = self
            .locks
            .acquire_keys(ctx, &self.name, self.keys())
            .await?;
        Ok(guard.with_gate(gate))
    }

    /// One attempt at a permit, no waiting: `None` when none is free. An attempt refused on
    /// its slot tries at once a slot the nodes reported free on a majority.
    ///
    /// # Errors
    /// As for [`RedLock::try_acquire`].
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) -> Result<(), redquorum::Error> {
    /// let sem = locks.semaphore("exports", 3)?;
    /// match sem.try_acquire().await? {
    ///     Some(permit) => permit.release().await?,
    ///     None => println!("three exports are running; try later"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>, Error> {
        // All k places taken locally: k permits are held or being tried for by this process.
        let Ok(gate) = self.gate.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let guard = self.locks.try_acquire_keys(&self.name, self.keys()).await?;
        Ok(guard.map(|g| g.with_gate(gate)))
    }
}
