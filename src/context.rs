//! The deadline (and optional cancellation) every wait runs under.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long [`RedLock::acquire`](crate::RedLock::acquire) may wait: a deadline that always
/// exists (waiting forever is not expressible), plus an optional cancellation token.
///
/// Cheap to clone; share one context between several acquisitions to give them a common deadline.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use redquorum::{CancellationToken, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shutdown = CancellationToken::new();
/// let ctx = Context::with_timeout(Duration::from_secs(5)).with_cancel(shutdown.clone());
/// assert!(ctx.remaining() <= Duration::from_secs(5));
/// shutdown.cancel();
/// assert!(ctx.is_cancelled());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    deadline: Instant,
    cancel: Option<CancellationToken>,
}

impl Context {
    /// A context whose deadline is `timeout` from now.
    ///
    /// # Panics
    /// Never: a timeout too large for the clock is clamped to about 30 years.
    pub fn with_timeout(timeout: Duration) -> Self {
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        Context {
            deadline,
            cancel: None,
        }
    }

    /// A context with the given deadline. A deadline in the past makes `acquire` fail with
    /// [`Error::Timeout`](crate::Error::Timeout) without contacting Redis.
    ///
    /// Accepts `tokio::time::Instant` or `std::time::Instant`.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use redquorum::Context;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let ctx = Context::with_deadline(Instant::now() + Duration::from_millis(250));
    /// assert!(ctx.remaining() <= Duration::from_millis(250));
    /// # }
    /// ```
    pub fn with_deadline(deadline: impl Into<Instant>) -> Self {
        Context {
            deadline: deadline.into(),
            cancel: None,
        }
    }

    /// The same deadline, cancelled when `token` is. Cancellation ends a wait with
    /// [`Error::Cancelled`](crate::Error::Cancelled).
    #[must_use]
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Whether the cancellation token (if any) has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Completes when the token is cancelled; never if there is none.
    pub(crate) async fn cancelled(&self) {
        match &self.cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }
}
