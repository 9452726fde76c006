//! How a waiter passes the time between acquisition attempts.
//!
//! This is the one seam the waiting strategy lives behind: `acquire` asks [`Waiter::wait`] to
//! return when the next attempt is worth making, or why it should stop.

use std::time::Duration;

use tokio::time::Instant;

use crate::context::Context;
use crate::retry::Delays;

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

/// Polls with the retry policy's backoff: sleeps for the next delay, cut short by the deadline
/// or cancellation.
pub(crate) struct Waiter {
    delays: Delays,
}

impl Waiter {
    pub(crate) fn new(delays: Delays) -> Self {
        Waiter { delays }
    }

    /// Waits until the next attempt should be made.
    ///
    /// `holder_left` is how long the current holder's lease still runs on enough nodes for a
    /// majority, when the last attempt learned it; polling never needs to sleep past it.
    ///
    /// # Cancel safety
    /// Cancel safe: it only sleeps.
    pub(crate) async fn wait(&mut self, ctx: &Context, holder_left: Option<Duration>) -> WaitEnd {
        let Some(delay) = self.delays.next() else {
            return WaitEnd::Exhausted;
        };
        // Wake when the holder's lease runs out if that comes first (plus a millisecond so the
        // key is gone when we arrive). A zero hint is ignored: it would make contenders spin.
        let delay = match holder_left {
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
        tokio::select! {
            biased;
            () = ctx.cancelled() => WaitEnd::Cancelled,
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
        let mut w = Waiter::new(retry.delays_seeded(1));
        let ctx = Context::with_timeout(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(w.wait(&ctx, None).await, WaitEnd::Retry);
        assert!(start.elapsed() <= 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_stops_at_the_deadline() {
        let retry = Retry::exponential(Duration::from_secs(10), Duration::from_secs(10));
        // Seeded so the jittered delay is well above the deadline.
        let mut w = Waiter::new(retry.delays_seeded(3));
        let ctx = Context::with_timeout(5 * MS);
        let start = Instant::now();
        let end = w.wait(&ctx, None).await;
        // Either the jitter picked < 5 ms (retry) or the deadline ended it at exactly 5 ms.
        if end == WaitEnd::Deadline {
            assert_eq!(start.elapsed(), 5 * MS);
        } else {
            assert!(start.elapsed() < 5 * MS);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_is_cut_short_by_the_holder_lease() {
        let retry = Retry::exponential(Duration::from_secs(10), Duration::from_secs(10));
        let mut w = Waiter::new(retry.delays_seeded(9));
        let ctx = Context::with_timeout(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(w.wait(&ctx, Some(3 * MS)).await, WaitEnd::Retry);
        assert!(start.elapsed() <= 4 * MS);
        // A zero hint does not turn polling into spinning.
        let retry = Retry::exponential(50 * MS, 50 * MS);
        let mut w = Waiter::new(retry.delays_seeded(4));
        let start = Instant::now();
        assert_eq!(w.wait(&ctx, Some(Duration::ZERO)).await, WaitEnd::Retry);
        let delay = retry.delays_seeded(4).next().expect("unlimited");
        // The timer wheel rounds up to the next millisecond.
        assert!(start.elapsed() >= delay && start.elapsed() <= delay + MS);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_wins() {
        let token = tokio_util::sync::CancellationToken::new();
        let ctx = Context::with_timeout(Duration::from_secs(60)).with_cancel(token.clone());
        let mut w = Waiter::new(Retry::default().delays());
        token.cancel();
        assert_eq!(w.wait(&ctx, None).await, WaitEnd::Cancelled);
    }

    #[tokio::test]
    async fn exhausted_policy_ends_the_wait() {
        let ctx = Context::with_timeout(Duration::from_secs(60));
        let mut w = Waiter::new(Retry::default().max_attempts(1).delays());
        assert_eq!(w.wait(&ctx, None).await, WaitEnd::Exhausted);
    }
}
