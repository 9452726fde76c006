//! Read-write locks across the quorum: [`RedLock::read`], [`RedLock::write`] and their `try_`
//! forms. Many readers share a key; a writer excludes readers and writers.
//!
//! They run on the same round engine as the mutex; only the scripts differ (`rw_*.lua`, chosen
//! by the lock's `Kind`). Per node the scripts keep one invariant: **never a live writer and a
//! live reader at once** (readers are members of a sorted set scored by their expiry in server
//! time, pruned before every decision; the writer is a plain value key). A read grant and a
//! write grant each need a majority, two majorities share a node, and on that node the script
//! refused the second while the first was live; so, under the usual Redlock assumptions, a
//! write hold never overlaps another hold of the key. The full argument, and why a waiting
//! writer cannot be starved, is in docs/primitives.md.
//!
//! Read-write locks live in their own key space, `<namespace>::rw:<group>:<key>:writer`
//! (`:readers`, `:intent`): `write("x")` and `acquire("x")` are different locks.

use crate::context::Context;
use crate::error::Error;
use crate::guard::LockGuard;
use crate::keys::{rw_layout, Keys};
use crate::lock::RedLock;

impl RedLock {
    /// The keys of read-write lock `key`: a reader's or the writer's.
    fn rw_keys(&self, key: &str, write: bool) -> Result<Keys, Error> {
        self.redis_key(key)?;
        Ok(Keys::rw(rw_layout(&self.space("rw"), key), write, None))
    }

    /// Takes read-write lock `key` for reading, waiting while a writer holds it or waits for
    /// it (a waiting writer holds new readers back, so it is not starved), until the context's
    /// deadline. Other readers share it: readers do not wait for one another, in this process
    /// or elsewhere.
    ///
    /// The guard behaves like a mutex's ([`LockGuard`]): validity, quorum-verified release,
    /// [`extend`](LockGuard::extend), [`keep_alive`](LockGuard::keep_alive),
    /// [`lost`](LockGuard::lost); dropped, it releases in the background. No fencing token,
    /// no local hand-off. Read-write locks live in their own key space:
    /// `read("x")` never contends with `acquire("x")`.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As for [`acquire`](Self::acquire): a round in flight is undone in the background.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redquorum::{RedLock, Context};
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let ctx = Context::with_timeout(Duration::from_secs(5));
    /// let a = locks.read(&ctx, "catalog").await?;
    /// let b = locks.read(&ctx, "catalog").await?; // readers share the lock
    /// assert!(locks.try_write("catalog").await?.is_none());
    /// a.release().await?;
    /// b.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(&self, ctx: &Context, key: &str) -> Result<LockGuard, Error> {
        let keys = self.rw_keys(key, false)?;
        self.acquire_keys(ctx, key, keys).await
    }

    /// Takes read-write lock `key` for writing, waiting while readers or another writer hold
    /// it, until the context's deadline. While it waits for readers to leave, new readers are
    /// refused (its intent, renewed at each attempt, expires within one TTL if it vanishes).
    ///
    /// The guard behaves like [`read`](Self::read)'s.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use redquorum::{RedLock, Context};
    /// # async fn f(locks: RedLock) -> Result<(), redquorum::Error> {
    /// let ctx = Context::with_timeout(Duration::from_secs(5));
    /// let w = locks.write(&ctx, "catalog").await?;
    /// assert!(locks.try_read("catalog").await?.is_none());
    /// w.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&self, ctx: &Context, key: &str) -> Result<LockGuard, Error> {
        let keys = self.rw_keys(key, true)?;
        self.acquire_keys(ctx, key, keys).await
    }

    /// One attempt to read-lock `key`, no waiting: `None` while a writer holds it or waits.
    ///
    /// # Errors
    /// As for [`try_acquire`](Self::try_acquire).
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) -> Result<(), redquorum::Error> {
    /// if let Some(r) = locks.try_read("catalog").await? {
    ///     // ... read the catalog ...
    ///     r.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_read(&self, key: &str) -> Result<Option<LockGuard>, Error> {
        let keys = self.rw_keys(key, false)?;
        self.try_acquire_keys(key, keys).await
    }

    /// One attempt to write-lock `key`, no waiting: `None` while anybody holds it. A refused
    /// attempt leaves no intent behind for longer than one TTL.
    ///
    /// # Errors
    /// As for [`try_acquire`](Self::try_acquire).
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) -> Result<(), redquorum::Error> {
    /// if let Some(w) = locks.try_write("catalog").await? {
    ///     // ... rewrite the catalog ...
    ///     w.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_write(&self, key: &str) -> Result<Option<LockGuard>, Error> {
        let keys = self.rw_keys(key, true)?;
        self.try_acquire_keys(key, keys).await
    }
}
