//! The Redlock arithmetic: majorities, vote counting and lease validity.
//!
//! Everything here is a pure function of plain numbers so it can be tested without Redis or a
//! clock; the async fan-out only feeds it replies.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

/// The fixed part of the clock-drift allowance, added to `ttl * drift_factor` (Redlock spec).
pub const DRIFT_FLOOR: Duration = Duration::from_millis(2);

/// Number of nodes that must agree among `n`: a strict majority, `n / 2 + 1`.
///
/// ```
/// assert_eq!(redquorum::quorum::majority(5), 3);
/// assert_eq!(redquorum::quorum::majority(4), 3);
/// assert_eq!(redquorum::quorum::majority(1), 1);
/// ```
pub const fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// How many node failures `n` nodes tolerate while a majority is still reachable.
///
/// ```
/// assert_eq!(redquorum::quorum::tolerated_failures(5), 2);
/// assert_eq!(redquorum::quorum::tolerated_failures(4), 1);
/// ```
pub const fn tolerated_failures(n: usize) -> usize {
    n - majority(n)
}

/// The clock-drift allowance for a lease of `ttl`: `ttl * drift_factor + 2 ms`.
///
/// ```
/// use std::time::Duration;
/// let d = redquorum::quorum::drift(Duration::from_secs(10), 0.01);
/// assert_eq!(d, Duration::from_millis(102));
/// ```
pub fn drift(ttl: Duration, drift_factor: f64) -> Duration {
    ttl.mul_f64(drift_factor) + DRIFT_FLOOR
}

/// The time a lease of `ttl` is still safe to act under, `elapsed` after the request was sent:
/// `ttl − elapsed − drift`. `None` when that is not positive: such a grant must be treated as a
/// failure.
///
/// ```
/// use std::time::Duration;
/// use redquorum::quorum::validity;
/// let ttl = Duration::from_secs(10);
/// assert_eq!(validity(ttl, Duration::from_millis(8), 0.01), Some(Duration::from_millis(9_890)));
/// assert_eq!(validity(ttl, Duration::from_millis(9_898), 0.01), None);
/// ```
pub fn validity(ttl: Duration, elapsed: Duration, drift_factor: f64) -> Option<Duration> {
    ttl.checked_sub(elapsed)?
        .checked_sub(drift(ttl, drift_factor))
        .filter(|v| !v.is_zero())
}

/// One node's contribution to a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// The node did what was asked (granted, deleted, extended).
    Yes,
    /// The node answered and refused (held by another value, key missing).
    No,
    /// The node did not answer usefully (timeout, connection or server error).
    Failed,
}

/// Where a round stands after the votes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A majority said yes.
    Reached,
    /// So many said no or failed that a majority can no longer say yes.
    Impossible,
    /// Not decided yet: wait for more votes.
    Pending,
}

/// Counts the votes of one round over `n` nodes and decides as early as the votes allow.
///
/// ```
/// use redquorum::quorum::{Tally, Vote, Decision};
/// let mut t = Tally::new(5);
/// t.record(Vote::Yes);
/// t.record(Vote::Failed);
/// t.record(Vote::Yes);
/// assert_eq!(t.decision(), Decision::Pending);
/// t.record(Vote::Yes);
/// assert_eq!(t.decision(), Decision::Reached); // two nodes still unheard: no need to wait
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Number of nodes in the round.
    pub nodes: usize,
    /// Yes votes so far.
    pub yes: usize,
    /// No votes so far.
    pub no: usize,
    /// Failures so far.
    pub failed: usize,
}

impl Tally {
    /// An empty tally over `nodes` nodes.
    pub const fn new(nodes: usize) -> Self {
        Tally {
            nodes,
            yes: 0,
            no: 0,
            failed: 0,
        }
    }

    /// Adds one node's vote.
    pub fn record(&mut self, vote: Vote) {
        match vote {
            Vote::Yes => self.yes += 1,
            Vote::No => self.no += 1,
            Vote::Failed => self.failed += 1,
        }
    }

    /// Votes the majority still needs.
    pub const fn required(&self) -> usize {
        majority(self.nodes)
    }

    /// Nodes that answered at all (yes or no).
    pub const fn answered(&self) -> usize {
        self.yes + self.no
    }

    /// The decision the votes so far allow.
    pub const fn decision(&self) -> Decision {
        if self.yes >= self.required() {
            Decision::Reached
        } else if self.no + self.failed > tolerated_failures(self.nodes) {
            Decision::Impossible
        } else {
            Decision::Pending
        }
    }

    /// Whether every node has been heard from.
    pub const fn complete(&self) -> bool {
        self.yes + self.no + self.failed >= self.nodes
    }
}

/// Whole milliseconds of `d` (what Redis leases are set in), at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Feeds replies from `pending` to `on_reply` as they arrive, until it returns `true` or every
/// future has finished. Futures still running stay in `pending` for the caller to finish in the
/// background or drop.
///
/// # Cancel safety
/// Cancel safe: a reply is either handed to `on_reply` or still inside `pending`.
pub(crate) async fn until<F, T>(
    pending: &mut FuturesUnordered<F>,
    mut on_reply: impl FnMut(T) -> bool,
) where
    F: Future<Output = T>,
{
    while let Some(reply) = pending.next().await {
        if on_reply(reply) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};
    use std::pin::Pin;

    #[test]
    fn millis_rounds_down_but_never_to_zero() {
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(10)), 10_000);
    }

    #[test]
    fn majority_of_small_clusters() {
        let got: Vec<_> = (1..=8).map(majority).collect();
        assert_eq!(got, [1, 2, 2, 3, 3, 4, 4, 5]);
        let tolerated: Vec<_> = (1..=8).map(tolerated_failures).collect();
        assert_eq!(tolerated, [0, 0, 1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn any_two_majorities_intersect() {
        for n in 1..=15 {
            assert!(2 * majority(n) > n, "n={n}");
        }
    }

    #[test]
    fn validity_subtracts_elapsed_and_drift() {
        let ttl = Duration::from_millis(1_000);
        // drift = 10 ms + 2 ms
        assert_eq!(
            validity(ttl, Duration::ZERO, 0.01),
            Some(Duration::from_millis(988))
        );
        assert_eq!(
            validity(ttl, Duration::from_millis(987), 0.01),
            Some(Duration::from_millis(1))
        );
        assert_eq!(validity(ttl, Duration::from_millis(988), 0.01), None);
        assert_eq!(validity(ttl, Duration::from_secs(5), 0.01), None);
        assert_eq!(
            validity(Duration::from_millis(2), Duration::ZERO, 0.0),
            None
        );
    }

    #[test]
    fn validity_is_monotonic_in_elapsed() {
        let ttl = Duration::from_millis(500);
        let mut last = validity(ttl, Duration::ZERO, 0.05);
        for ms in 1..600 {
            let v = validity(ttl, Duration::from_millis(ms), 0.05);
            assert!(v <= last, "validity grew at {ms} ms");
            if let Some(v) = v {
                assert!(v + Duration::from_millis(ms) < ttl);
            }
            last = v;
        }
    }

    #[test]
    fn tally_decides_as_early_as_possible() {
        // Exhaustive over every vote sequence for n = 1..=5, against a specification written
        // out independently of `Tally`: Reached exactly when a majority said yes, Impossible
        // exactly when even every unheard node saying yes would leave it short, else Pending.
        fn expected(t: &Tally) -> Decision {
            let majority = t.nodes / 2 + 1;
            let unheard = t.nodes - t.yes - t.no - t.failed;
            if t.yes >= majority {
                Decision::Reached
            } else if t.yes + unheard < majority {
                Decision::Impossible
            } else {
                Decision::Pending
            }
        }
        fn walk(t: Tally, seen: &mut [usize; 3]) {
            let d = t.decision();
            assert_eq!(d, expected(&t), "{t:?}");
            seen[d as usize] += 1;
            if t.complete() {
                assert_ne!(d, Decision::Pending, "complete but undecided: {t:?}");
                return;
            }
            // Keep walking past a decision: no further vote may change it.
            for v in [Vote::Yes, Vote::No, Vote::Failed] {
                let mut next = t;
                next.record(v);
                if d != Decision::Pending {
                    assert_eq!(next.decision(), d, "decision changed: {t:?} then {v:?}");
                }
                walk(next, seen);
            }
        }
        let mut seen = [0; 3];
        for n in 1..=5 {
            walk(Tally::new(n), &mut seen);
        }
        // The walk met every outcome, so the comparison above was not vacuous.
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
    }

    #[test]
    fn impossible_once_a_majority_cannot_say_yes() {
        let mut t = Tally::new(5);
        t.record(Vote::No);
        t.record(Vote::Failed);
        assert_eq!(t.decision(), Decision::Pending);
        t.record(Vote::No);
        assert_eq!(t.decision(), Decision::Impossible);
        assert_eq!(t.answered(), 2);
    }

    type Boxed = Pin<Box<dyn Future<Output = usize> + Send>>;

    #[tokio::test(start_paused = true)]
    async fn until_returns_without_waiting_for_stragglers() {
        let mut pending: FuturesUnordered<Boxed> = FuturesUnordered::new();
        pending.push(Box::pin(ready(0)));
        pending.push(Box::pin(ready(1)));
        pending.push(Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            2
        }));
        pending.push(Box::pin(pending_forever()));
        let mut seen = Vec::new();
        let start = tokio::time::Instant::now();
        until(&mut pending, |i| {
            seen.push(i);
            seen.len() == 2
        })
        .await;
        seen.sort_unstable();
        assert_eq!(seen, [0, 1]);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(pending.len(), 2, "stragglers stay pending");
    }

    async fn pending_forever() -> usize {
        pending::<()>().await;
        unreachable!()
    }
}
