//! How a waiter passes the time between acquisition attempts.
//!
//! This is the one seam the waiting strategy lives behind: `acquire` asks [`Waiter::wait`] to
//! return when the next attempt is worth making, or why it should stop.
//!
//! # When a subscribed waiter polls, and why that is safe
//! The lock becomes free in one of three ways: the holder releases it (a compare-and-delete on
//! every node it reaches, which publishes on the key's channel wherever it deleted), an attempt
//! that did not win is undone, or leases expire (which publishes nothing). A waiter whose
//! channel is subscribed on live connections (see `wake.rs` for what "live" means and how a
//! dead or hung connection is found) hears every deletion announced on those nodes, so it
//! needs no poll when the covered nodes form a majority and its last attempt was refused by
//! every node (no grant of ours, no failure): what refused us must free up on a majority for
//! us to win, and a majority intersects the covered one.
//!
//! Undos: an attempt that is not retried (`try_acquire`, a cancelled or failed `acquire`)
//! announces its undo. A split vote's loser undoes quietly and polls with the backoff instead
//! of trusting notifications (all contenders may have lost); whoever of the contenders wins
//! announces its release in time, and one that leaves without the lock announces the key as
//! it goes. So a waiter refused by a contender's partial grant is told, without every split
//! waking every waiter (which made them all try again, and split again).
//!
//! What remains is expiry, which the refusing nodes' PTTLs date (the waiter wakes when a
//! majority's leases could have run out), and what nothing announces — a key deleted by hand,
//! a release by a client that does not publish — which the safety poll
//! ([`RedLockBuilder::safety_poll`](crate::RedLockBuilder::safety_poll)) bounds. A waiter that
//! is not covered (subscriptions refused by an ACL, nodes down or reconnecting, a failed node
//! in the last round, no PTTL hint) polls with the retry policy's backoff, as a spin lock would.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::context::Context;
use crate::retry::Delays;
use crate::wake::{Subscription, Wake, Wakeups};

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
    /// node, health-checked) and retry at once when any node announces a release; also retry
    /// when the holder's lease runs out and after the safety poll. Where notifications cannot
    /// be relied on (subscriptions refused or down, a node that did not
    /// answer), poll with the retry policy's backoff.
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
    /// Nodes that did not answer the attempt (they may free up without telling anyone).
    pub(crate) failed: usize,
    /// A semaphore's slot to try next (the one free on the most refusing nodes), and whether
    /// it is free on enough of them for a majority: then the next attempt need not wait.
    pub(crate) open: Option<(usize, bool)>,
}

/// How long a waiter woken by a release's first announcement waits at most for a majority of
/// nodes to announce it (each node that deleted the key does): a release reaches the nodes
/// within a round trip; a key that had already expired on some nodes announces itself on
/// fewer.
pub(crate) const RELEASE_SPREAD: Duration = Duration::from_millis(2);

/// How long a waiter that lost a race right after a release announcement (and so did not
/// read the winner's remaining lease: see [`Waiter::wants_hint`]) waits before it checks again,
/// at most: the winner's lease is unknown (another client may use a shorter TTL than ours, and
/// may die at once). It costs one attempt per such loser when the winner holds longer, and
/// bounds the oversleep after a short-lived winner's crash to about this.
pub(crate) const LOST_RACE_RECHECK: Duration = Duration::from_secs(1);

/// When the next attempt is due after `busy`, waiting with notifications from `covered` of
/// `nodes` nodes (see the module's docs): the holder's lease end, bounded by `safety`, when the
/// notifications cover the waiter; otherwise the retry policy's `backoff`, cut short by the
/// holder's lease end. A covered waiter whose attempt read no PTTL (one made right after a
/// release announcement skips it) checks again after `assumed` (our TTL, at most
/// [`LOST_RACE_RECHECK`]), and that attempt reads it. A pure function of plain values.
pub(crate) fn next_check(
    nodes: usize,
    covered: usize,
    busy: Busy,
    backoff: Duration,
    safety: Duration,
    assumed: Duration,
) -> Duration {
    // A millisecond past the lease end, so the key is gone when we arrive. A zero hint (a
    // majority looked free, yet we lost) is no hint: it would make contenders spin.
    let holder_end = busy
        .holder_left
        .filter(|d| !d.is_zero())
        .map(|d| d + Duration::from_millis(1));
    let trusted = busy.failed == 0 && covered >= crate::quorum::majority(nodes) && !busy.split;
    match (trusted, holder_end) {
        (true, Some(end)) => end.min(safety),
        (true, None) => assumed.min(safety),
        (false, Some(end)) => backoff.min(end),
        (false, None) => backoff,
    }
}

/// Passes the time between attempts for one `acquire`.
pub(crate) struct Waiter {
    delays: Delays,
    /// PubSub: the hub and the key whose release channel to subscribe to (only when needed).
    wake: Option<(Wakeups, Arc<str>)>,
    sub: Option<Subscription>,
    /// The number of nodes, the safety poll and the lease assumed without a hint (see
    /// [`next_check`]).
    nodes: usize,
    safety: Duration,
    assumed: Duration,
    /// The last wait ended with a release announcement (not a mere re-check).
    notified: bool,
}

impl Waiter {
    /// `wake`: the release channel of this Redis key to subscribe to; `None` polls. `nodes`,
    /// `safety` and `assumed`: see [`next_check`].
    pub(crate) fn new(
        delays: Delays,
        wake: Option<(&Wakeups, &Arc<str>)>,
        sub: Option<Subscription>,
        (nodes, safety, assumed): (usize, Duration, Duration),
    ) -> Self {
        let wake = wake.map(|(wakeups, key)| (wakeups.clone(), key.clone()));
        Waiter {
            delays,
            wake,
            sub,
            nodes,
            safety,
            assumed,
            notified: false,
        }
    }

    /// Whether attempt number `attempt` should also read the holder's remaining lease (a
    /// pipelined PTTL): from the second attempt on, except right after a release announcement, where
    /// a loss means a contender has just won with a fresh lease (see [`next_check`]). Saves
    /// the losers of a herd one command per node.
    pub(crate) fn wants_hint(&self, attempt: u32) -> bool {
        attempt > 1 && !self.notified
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
    /// missed. Later waits end at the first of: a release notification, the time
    /// [`next_check`] gives, the deadline, cancellation.
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
        let Some(backoff) = self.delays.next() else {
            return WaitEnd::Exhausted;
        };
        self.notified = false;
        let covered = self.sub.as_ref().map_or(0, Subscription::covered);
        let delay = next_check(
            self.nodes,
            covered,
            busy,
            backoff,
            self.safety,
            self.assumed,
        );
        let now = Instant::now();
        let wake = now.checked_add(delay).unwrap_or(ctx.deadline());
        let (until, end) = if wake >= ctx.deadline() {
            (ctx.deadline(), WaitEnd::Deadline)
        } else {
            (wake, WaitEnd::Retry)
        };
        let notified = async {
            match &mut self.sub {
                Some(sub) => sub.notified().await,
                None => std::future::pending::<Wake>().await,
            }
        };
        tokio::select! {
            biased;
            () = ctx.cancelled() => WaitEnd::Cancelled,
            wake = notified => {
                tracing::debug!(?wake, "woken by the subscription");
                self.notified = wake == Wake::Release;
                if self.notified {
                    // A release announces itself from each node as it deletes the key there:
                    // go once a majority has, so the attempt does not race the release itself
                    // on the nodes it has not reached yet (and collide there with the other
                    // waiters woken by the first message).
                    if let Some(sub) = &mut self.sub {
                        let want = crate::quorum::majority(self.nodes) as u64;
                        let most = sub.releases_at_least(want);
                        let _ = tokio::time::timeout(RELEASE_SPREAD, most).await;
                    }
                }
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
        Waiter::new(
            delays,
            None,
            None,
            (3, Duration::from_secs(30), Duration::from_secs(10)),
        )
    }

    fn left(d: Duration) -> Busy {
        Busy {
            holder_left: Some(d),
            ..Busy::default()
        }
    }

    #[test]
    fn a_covered_waiter_polls_only_at_the_lease_end_or_the_safety_poll() {
        let (backoff, safety, assumed) =
            (20 * MS, Duration::from_secs(30), Duration::from_secs(10));
        let lease = Duration::from_secs(8);
        let refused = left(lease);
        let at_lease_end = lease + MS;
        // Table: (nodes, covered, busy) -> next check.
        let split = Busy {
            split: true,
            ..refused
        };
        let failed = Busy {
            failed: 1,
            ..refused
        };
        let cases = [
            // Refused everywhere, a majority covered: notifications suffice.
            (5, 3, refused, at_lease_end),
            (5, 5, refused, at_lease_end),
            // Not a majority covered: poll.
            (5, 2, refused, backoff),
            (5, 0, refused, backoff),
            // A split vote: its undo is quiet, and the contenders may all have lost: poll.
            (5, 4, split, backoff),
            (5, 5, split, backoff),
            // A node that did not answer may come back free without a word.
            (5, 5, failed, backoff),
            // No hint: covered, assume a fresh lease of our TTL; else poll.
            (5, 5, Busy::default(), assumed),
            (5, 5, left(Duration::ZERO), assumed),
            (5, 2, Busy::default(), backoff),
            // The lease ends before the next backoff interval: wake then, covered or not.
            (5, 0, left(5 * MS), 6 * MS),
        ];
        for (nodes, covered, busy, want) in cases {
            assert_eq!(
                next_check(nodes, covered, busy, backoff, safety, assumed),
                want,
                "{nodes} nodes, {covered} covered, {busy:?}"
            );
        }
        // The safety poll bounds a long lease.
        let long = left(Duration::from_secs(600));
        assert_eq!(next_check(3, 3, long, backoff, safety, assumed), safety);
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
