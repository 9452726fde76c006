//! How a waiter passes the time between acquisition attempts.
//!
//! This is the one seam the waiting strategy lives behind: `acquire` asks [`Waiter::wait`] to
//! return when the next attempt is worth making, or why it should stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::context::Context;
use crate::retry::Delays;
use crate::wake::{Subscription, Wakeups};

/// How a waiter learns that the lock may be free again.
///
/// ```
/// use redquorum::{RedLock, WaitStrategy};
/// let b = RedLock::builder().wait_strategy(WaitStrategy::Poll);
/// # drop(b);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Subscribe to the key's release channel on every node (one shared PubSub connection per
    /// node) and retry at once when any node announces a release; also retry when the holder's
    /// lease runs out and, as a safety net for lost notifications, after each backoff interval
    /// of the retry policy.
    #[default]
    PubSub,
    /// Retry after each backoff interval of the retry policy (or when the holder's lease runs
    /// out), with no subscription: a spin lock with backoff.
    Poll,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// Time to try again.
    Retry,
    /// The context's deadline came first.
    Deadline,
    /// The context was cancelled.
    Cancelled,
    /// The retry policy allows no more attempts.
    Exhausted,
}

/// What the waiter knows after a failed attempt.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Busy {
    /// How long until the holder's lease has run out on enough nodes for a majority.
    pub(crate) holder_left: Option<Duration>,
    /// Some nodes granted us but not a majority: another process is contending right now.
    pub(crate) split: bool,
}

/// Passes the time between attempts for one `acquire`.
pub(crate) struct Waiter {
    delays: Delays,
    /// PubSub: the hub and the key whose release channel to subscribe to (only when needed).
    wake: Option<(Wakeups, Arc<str>)>,
    sub: Option<Subscription>,
}

impl Waiter {
    /// `wake`: the release channel of this Redis key to subscribe to; `None` polls.
    pub(crate) fn new(
        delays: Delays,
        wake: Option<(&Wakeups, &Arc<str>)>,
        sub: Option<Subscription>,
    ) -> Self {
        let wake = wake.map(|(wakeups, key)| (wakeups.clone(), key.clone()));
        Waiter { delays, wake, sub }
    }

    /// Called right before each attempt: notifications seen so far are accounted for by it.
    pub(crate) fn before_attempt(&mut self) {
        if let Some(sub) = &mut self.sub {
            sub.mark_seen();
        }
    }

    /// The subscription, to hand on to the next local waiter of the same key.
    pub(crate) fn into_subscription(self) -> Option<Subscription> {
        self.sub
    }

    /// Waits until the next attempt should be made.
    ///
    /// With PubSub, the first failed attempt subscribes and returns at once: the retry that
    /// follows re-checks after the subscription is in place, so a release in between cannot be
    /// missed. Later waits end at the first of: a release notification, the holder's lease
    /// running out, the next backoff interval, the deadline, cancellation.
    ///
    /// # Cancel safety
    /// Cancel safe: it only sleeps (and subscribes).
    pub(crate) async fn wait(&mut self, ctx: &Context, busy: Busy) -> WaitEnd {
        if self.sub.is_none() {
            if let Some((hub, key)) = &self.wake {
                // The re-check after subscribing is an attempt of the retry policy.
                if self.delays.next().is_none() {
                    return WaitEnd::Exhausted;
                }
                let channel = crate::wake::channel(key);
                tokio::select! {
                    biased;
                    () = ctx.cancelled() => return WaitEnd::Cancelled,
                    () = tokio::time::sleep_until(ctx.deadline()) => return WaitEnd::Deadline,
                    sub = hub.subscribe(&channel) => self.sub = Some(sub),
                }
                return WaitEnd::Retry;
            }
        }
        let Some(delay) = self.delays.next() else {
            return WaitEnd::Exhausted;
        };
        // Wake when the holder's lease runs out if that comes first (plus a millisecond so the
        // key is gone when we arrive). A zero hint is ignored: it would make contenders spin.
        let delay = match busy.holder_left {
            Some(left) if !left.is_zero() => delay.min(left + Duration::from_millis(1)),
            _ => delay,
        };
        let now = Instant::now();
        let wake = now.checked_add(delay).unwrap_or(ctx.deadline());
        let (until, end) = if wake >= ctx.deadline() {
            (ctx.deadline(), WaitEnd::Deadline)
        } else {
            (wake, WaitEnd::Retry)
        };
        let notified = async {
            match &mut self.sub {
                Some(sub) => {
                    sub.notified().await;
                    // Contenders in other processes woken by the same message: spread them out
                    // a little after a split vote so one of them wins the next round.
                    if busy.split {
                        let jitter = Duration::from_micros(fastrand::u64(0..1_000));
                        tokio::time::sleep(jitter).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = ctx.cancelled() => WaitEnd::Cancelled,
            () = notified => {
                tracing::debug!("woken by a release notification");
                WaitEnd::Retry
            }
            () = tokio::time::sleep_until(until) => end,
        }
    }
}

/// How long until a majority of nodes could be free, from the remaining leases (`pttls`) of the
/// nodes that refused. Nodes that did not refuse (granted us, failed, or unknown) are taken as
/// free. `None` when the refusing nodes have no expiry or the answer is unknown.
///
/// ```text
/// 5 nodes, majority 3; refused with 40, 10, 90 ms left; 2 others free:
/// one more must free up → the smallest lease, 10 ms.
/// ```
pub(crate) fn majority_free_in(nodes: usize, pttls: &mut [Option<Duration>]) -> Option<Duration> {
    let required = crate::quorum::majority(nodes);
    let free = nodes - pttls.len();
    if free >= required {
        return Some(Duration::ZERO);
    }
    let need = required - free;
    // None (no expiry) sorts first in Option's order: move those to the end.
    pttls.sort_unstable_by_key(|p| p.map_or((1, Duration::ZERO), |d| (0, d)));
    pttls.get(need - 1).copied().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Retry;

    const MS: Duration = Duration::from_millis(1);

    fn poll(delays: Delays) -> Waiter {
        Waiter::new(delays, None, None)
    }

    fn left(d: Duration) -> Busy {
        Busy {
            holder_left: Some(d),
            split: false,
        }
    }

    #[test]
    fn majority_free_in_picks_the_needed_lease() {
        let mut p = [Some(40 * MS), Some(10 * MS), Some(90 * MS)];
        assert_eq!(majority_free_in(5, &mut p), Some(10 * MS));
        // Four refused, one free: two more must free up, the second-smallest lease.
        let mut p = [Some(40 * MS), Some(10 * MS), Some(90 * MS), Some(5 * MS)];
        assert_eq!(majority_free_in(5, &mut p), Some(10 * MS));
        let mut p = [Some(40 * MS), None, None];
        assert_eq!(majority_free_in(3, &mut p), None);
        let mut p = [None, Some(7 * MS)];
        assert_eq!(majority_free_in(3, &mut p), Some(7 * MS));
        let mut p = [Some(40 * MS)];
        assert_eq!(majority_free_in(3, &mut p), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_at_most_the_backoff_ceiling() {
        let retry = Retry::exponential(100 * MS, 100 * MS);
        let mut w = poll(retry.delays_seeded(1));
        let ctx = Context::with_timeout(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(w.wait(&ctx, Busy::default()).await, WaitEnd::Retry);
        assert!(start.elapsed() <= 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_stops_at_the_deadline() {
        let retry = Retry::exponential(Duration::from_secs(10), Duration::from_secs(10));
        // Seeded so the jittered delay is well above the deadline.
        let mut w = poll(retry.delays_seeded(3));
        let ctx = Context::with_timeout(5 * MS);
        let start = Instant::now();
        let end = w.wait(&ctx, Busy::default()).await;
        let delay = retry.delays_seeded(3).next().expect("unlimited");
        if delay >= 5 * MS {
            assert_eq!(end, WaitEnd::Deadline);
            assert_eq!(start.elapsed(), 5 * MS);
        } else {
            assert_eq!(end, WaitEnd::Retry);
            assert!(start.elapsed() < 6 * MS);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_is_cut_short_by_the_holder_lease() {
        let retry = Retry::exponential(Duration::from_secs(10), Duration::from_secs(10));
        let mut w = poll(retry.delays_seeded(9));
        let ctx = Context::with_timeout(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(w.wait(&ctx, left(3 * MS)).await, WaitEnd::Retry);
        assert!(start.elapsed() <= 4 * MS);
        // A zero hint does not turn polling into spinning.
        let retry = Retry::exponential(50 * MS, 50 * MS);
        let mut w = poll(retry.delays_seeded(4));
        let start = Instant::now();
        assert_eq!(w.wait(&ctx, left(Duration::ZERO)).await, WaitEnd::Retry);
        let delay = retry.delays_seeded(4).next().expect("unlimited");
        // The timer wheel rounds up to the next millisecond.
        assert!(start.elapsed() >= delay && start.elapsed() <= delay + MS);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_wins() {
        let token = tokio_util::sync::CancellationToken::new();
        let ctx = Context::with_timeout(Duration::from_secs(60)).with_cancel(token.clone());
        let mut w = poll(Retry::default().delays());
        token.cancel();
        assert_eq!(w.wait(&ctx, Busy::default()).await, WaitEnd::Cancelled);
    }

    #[tokio::test]
    async fn exhausted_policy_ends_the_wait() {
        let ctx = Context::with_timeout(Duration::from_secs(60));
        let mut w = poll(Retry::default().max_attempts(1).delays());
        assert_eq!(w.wait(&ctx, Busy::default()).await, WaitEnd::Exhausted);
    }
}
