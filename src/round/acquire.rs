//! One acquire round: `SET NX PX` (a script) on every node at once, decided as soon as a
//! majority granted or became impossible; the grant stands only with positive validity
//! (and, with fencing, a token confirmed by a majority); anything else is undone where a node
//! granted or did not answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::error::{Error, NodeCause, NodeFailure, Operation};
use crate::keys::{Keys, Kind};
use crate::node::{Grant, Op, Owned};
use crate::node_states::NodeStates;
use crate::quorum::{self, millis, Decision, Tally};
use crate::round::undo::Undo;
use crate::wait::{self, Busy};

/// The result of one acquire round.
pub(crate) enum Attempt {
    /// A majority granted, with validity left.
    Granted(Won),
    /// Held by someone else (or our grant came too late to be valid).
    Busy(Busy),
    /// A majority of nodes did not answer (the error, and what the round saw).
    Unreachable(Error, Busy),
}

/// A granted round: what the guard of the lock is made of.
pub(crate) struct Won {
    /// The value stored under the keys on the granting nodes.
    pub(crate) value: Arc<str>,
    /// The confirmed fencing token, with fencing on.
    pub(crate) token: Option<u64>,
    /// When the validity runs out: `ttl − drift` from the instant the requests went out.
    pub(crate) expires_at: Instant,
    /// The lease the nodes got (the TTL in whole milliseconds).
    pub(crate) lease: Duration,
    /// Each node's reply, kept up to date by the stragglers.
    pub(crate) states: NodeStates,
}

/// What an acquire round's tally means: a pure function of plain values (see the table test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A majority granted with this much validity left: the lock is ours.
    Granted(Duration),
    /// A majority granted but no validity is left (a slow round, or a fencing token not
    /// confirmed in time): undo, announced (our own grant stood in the way of others).
    TooLate,
    /// Too few nodes answered to tell: undo, [`Error::NoQuorum`]. `split`: some granted.
    Unreachable { split: bool },
    /// Held elsewhere (a majority answered and refused). `split`: some granted us.
    Refused { split: bool },
}

/// The verdict of a round whose replies are `tally`, given the validity its grant would have
/// (`None`: none left, or no grant).
pub(crate) fn verdict(tally: &Tally, validity: Option<Duration>) -> Verdict {
    let split = tally.yes > 0;
    match tally.decision() {
        Decision::Reached => validity.map_or(Verdict::TooLate, Verdict::Granted),
        _ if tally.answered() < tally.required() => Verdict::Unreachable { split },
        _ => Verdict::Refused { split },
    }
}

/// Whether a round has heard enough: a majority granted; or it became impossible and enough
/// nodes answered to tell "held elsewhere" from "too few nodes answered" (each reply is
/// bounded by the node timeout, so the wait for that is too).
pub(crate) fn heard_enough(tally: &Tally) -> bool {
    match tally.decision() {
        Decision::Reached => true,
        Decision::Impossible => tally.answered() >= tally.required() || tally.complete(),
        Decision::Pending => false,
    }
}

/// What the replies said, as they came in.
struct Replies {
    tally: Tally,
    /// The holders' remaining leases, from the nodes that refused.
    pttls: Vec<Option<Duration>>,
    causes: Vec<NodeFailure>,
    /// The fencing counters of the nodes that granted.
    fences: Vec<(usize, u64)>,
    /// The free slots of a semaphore on each node that refused (bit `s`: slot `s`).
    free: Vec<u64>,
}

impl Replies {
    fn record(
        &mut self,
        cluster: &Cluster,
        states: &NodeStates,
        i: usize,
        reply: Result<Grant, NodeCause>,
    ) {
        self.tally.record(states.record(i, &reply));
        let node = &**cluster.nodes.addr(i);
        match reply {
            Ok(Grant::Granted { fence }) => {
                tracing::trace!(node, outcome = "granted", fence);
                self.fences.push((i, fence));
            }
            Ok(Grant::Held { pttl, free }) => {
                tracing::trace!(node, outcome = "taken", ?pttl);
                self.pttls.push(pttl);
                self.free.push(free);
            }
            Err(cause) => {
                tracing::trace!(node, outcome = "failed", %cause);
                self.causes.push(cluster.failure(i, cause));
            }
        }
    }
}

/// One round in progress: what its decision and its clean-up need.
struct Round<'a> {
    cluster: &'a Arc<Cluster>,
    key: &'a str,
    keys: &'a Keys,
    value: Arc<str>,
    /// The lease the nodes get, in whole milliseconds; validity is computed from it.
    lease: Duration,
    /// When the requests went out.
    start: Instant,
    states: NodeStates,
}

/// One Redlock round for lock `keys` (named `key` in errors and logs). `hint`: a refusal also
/// tells the holder's remaining lease. `retrying`: the caller tries again after a split vote
/// (`acquire`), so the undo of its partial grant need not be announced (see [`Undo::settle`]).
///
/// # Cancel safety
/// Dropping the future undoes the round in the background on every node that granted or did
/// not answer (announced).
pub(crate) async fn attempt(
    cluster: &Arc<Cluster>,
    key: &str,
    keys: &Keys,
    hint: bool,
    retrying: bool,
) -> Attempt {
    let config = &cluster.config;
    let round = Round {
        cluster,
        key,
        keys,
        value: format!("{}:{}", uuid::Uuid::new_v4().simple(), config.owner).into(),
        lease: Duration::from_millis(millis(config.ttl)),
        start: Instant::now(),
        states: NodeStates::new(cluster.len()),
    };
    // Only a single-key mutex has a fencing counter.
    let fenced = config.fencing && keys.fence().is_some();
    let op = Arc::new(Op::acquire(
        keys,
        &round.value,
        millis(round.lease),
        fenced,
        (hint, retrying),
    ));
    // Armed until the grant becomes a guard: a failed or dropped round is undone where a node
    // granted or did not answer (as `states` records them).
    let undo = Undo::armed(cluster, keys, &round.value, &round.states);
    let mut pending = cluster.fan_out(|nodes, i| {
        let op = op.clone();
        async move { nodes.acquire(i, &op).await }
    });
    let mut replies = Replies {
        tally: Tally::new(cluster.len()),
        pttls: Vec::new(),
        causes: Vec::new(),
        fences: Vec::new(),
        free: Vec::new(),
    };
    quorum::until(&mut pending, |(i, reply)| {
        replies.record(cluster, &round.states, i, reply);
        heard_enough(&replies.tally)
    })
    .await;
    let t = &replies.tally;
    let elapsed = round.start.elapsed();
    tracing::debug!(
        granted = t.yes,
        taken = t.no,
        failed = t.failed,
        ?elapsed,
        "acquire round"
    );
    let (validity, token) = round.validity(&replies, fenced).await;
    let verdict = verdict(t, validity);
    round.conclude(verdict, replies, token, pending, undo, retrying)
}

impl Round<'_> {
    /// Acts on the round's verdict: a grant becomes [`Won`] (its stragglers watched); anything
    /// else is undone where a node granted or did not answer.
    fn conclude<F>(
        self,
        verdict: Verdict,
        mut replies: Replies,
        token: Option<u64>,
        pending: FuturesUnordered<F>,
        undo: Undo,
        retrying: bool,
    ) -> Attempt
    where
        F: Future<Output = (usize, Result<Grant, NodeCause>)> + Send + 'static,
    {
        let key = self.key;
        let failed = replies.tally.failed;
        match verdict {
            Verdict::Granted(validity) => {
                undo.disarm();
                watch_stragglers(self.cluster, pending, &self.states, self.keys, &self.value);
                tracing::debug!(key, granted = replies.tally.yes, ?validity, "lock acquired");
                Attempt::Granted(self.won(token))
            }
            Verdict::TooLate => {
                let ttl = self.cluster.config.ttl;
                tracing::warn!(
                    key,
                    ?ttl,
                    "grant came too late to leave any validity; undoing"
                );
                undo.settle(pending, true);
                // Our own grant stood in the way; its undo is announced. Not a refusal to trust.
                Attempt::Busy(Busy {
                    split: true,
                    ..Busy::default()
                })
            }
            Verdict::Unreachable { split } => {
                undo.settle(pending, true);
                self.unreachable(replies, split)
            }
            Verdict::Refused { split } => {
                // The partial grant is released where a node granted or did not answer:
                // announced, or quietly after a mutex's split vote that the caller will retry.
                undo.settle(pending, !quiet_undo(self.keys.kind(), split, retrying));
                let open = match self.keys.kind() {
                    Kind::Permit { .. } => {
                        let slots = self.keys.script_keys().len();
                        // The nodes that granted this round's slot count as worth a try.
                        let wanted = replies.tally.required().saturating_sub(replies.tally.yes);
                        open_slot(&replies.free, slots, wanted)
                    }
                    _ => None,
                };
                Attempt::Busy(Busy {
                    holder_left: wait::majority_free_in(self.cluster.len(), &mut replies.pttls),
                    split,
                    failed,
                    open,
                })
            }
        }
    }

    /// The validity a grant would have now, and its fencing token (with fencing): `None`
    /// without a majority of grants, or with no validity left.
    async fn validity(&self, replies: &Replies, fenced: bool) -> (Option<Duration>, Option<u64>) {
        if replies.tally.decision() != Decision::Reached {
            return (None, None);
        }
        let drift_factor = self.cluster.config.drift_factor;
        let valid = quorum::validity(self.lease, self.start.elapsed(), drift_factor);
        match (valid, fenced.then(|| self.keys.fence()).flatten()) {
            (Some(_), Some(counter)) => {
                let (token, valid) = confirm_token(self, counter, replies).await;
                (valid, Some(token))
            }
            (valid, _) => (valid, None),
        }
    }

    /// The granted round's lock: valid until `ttl − drift` from when the requests went out.
    fn won(self, token: Option<u64>) -> Won {
        let drift = quorum::drift(self.lease, self.cluster.config.drift_factor);
        Won {
            value: self.value,
            token,
            expires_at: self.start + self.lease.saturating_sub(drift),
            lease: self.lease,
            states: self.states,
        }
    }

    /// Too few nodes answered: [`Error::NoQuorum`] naming each failed node. Nodes that did not
    /// answer may free up without a word: the next wait polls.
    fn unreachable(&self, replies: Replies, split: bool) -> Attempt {
        let t = replies.tally;
        let (answered, required) = (t.answered(), t.required());
        tracing::warn!(
            key = self.key,
            answered,
            required,
            "no quorum: too few nodes answered"
        );
        let error = Error::NoQuorum {
            op: Operation::Acquire,
            key: self.key.into(),
            answered,
            confirmed: t.yes,
            required,
            nodes: t.nodes,
            causes: replies.causes,
        };
        let busy = Busy {
            split,
            failed: t.failed,
            holder_left: None,
            open: None,
        };
        Attempt::Unreachable(error, busy)
    }
}

/// The fencing token of a grant and the validity left once it is confirmed: the highest
/// counter among the granting nodes, `t`; nodes whose counter is lower are raised to `t`,
/// only where our value still holds the key. The token stands only if a majority then holds
/// a counter `>= t` under our value, confirmed within the validity.
///
/// Why this is monotonic: any later majority shares a node with the confirming one, whose
/// counter reached `t` before our key there could expire or be released; a later grant on
/// that node increments past `t`.
async fn confirm_token(
    round: &Round<'_>,
    counter: &Arc<str>,
    replies: &Replies,
) -> (u64, Option<Duration>) {
    let cluster = round.cluster;
    let fences = &replies.fences;
    let t = fences.iter().map(|(_, f)| *f).max().unwrap_or(0);
    let mut confirmed = fences.len();
    if !cluster.config.fencing_unconfirmed {
        let lagging: Vec<usize> = fences
            .iter()
            .filter(|(_, f)| *f < t)
            .map(|(i, _)| *i)
            .collect();
        confirmed -= lagging.len();
        if !lagging.is_empty() {
            let op = &Arc::new(Op::fence(round.keys, counter, &round.value, t));
            let nodes = &cluster.nodes;
            let raised =
                futures::future::join_all(lagging.iter().map(|&i| nodes.owned(i, op))).await;
            confirmed += raised
                .iter()
                .filter(|r| matches!(r, Ok(Owned::Done { .. })))
                .count();
        }
    }
    let required = replies.tally.required();
    let valid = quorum::validity(
        round.lease,
        round.start.elapsed(),
        cluster.config.drift_factor,
    )
    .filter(|_| confirmed >= required);
    if valid.is_none() {
        tracing::debug!(
            t,
            confirmed,
            "fencing token not confirmed by a majority; retrying"
        );
    }
    (t, valid)
}

/// Whether a refused round's undo goes unannounced: only a mutex's split vote that its caller
/// retries (see [`Undo::settle`]). A reader or permit that split may go on to wait for
/// something else (a writer's intent, another slot) and never announce the key, while a
/// writer or permit waiter refused by its partial grant sleeps until a notification: announced,
/// or that waiter would sleep until the lease ran out.
pub(crate) fn quiet_undo(kind: Kind, split: bool, retrying: bool) -> bool {
    split && retrying && kind == Kind::Mutex
}

/// A semaphore's slot to try next after a refused round, from the free slots each refusing
/// node reported (`free`, bit `s` for slot `s` of `slots`): the slot free on the most of them
/// (ties: a random one of those, so contenders spread), and whether that is at least
/// `required` nodes (with the nodes that granted this round's slot, which may well have it
/// free too, a majority could grant it now: worth a try at once). `None` when no refusing node had a free
/// slot. A pure function of plain values (the random tie-break aside).
pub(crate) fn open_slot(free: &[u64], slots: usize, required: usize) -> Option<(usize, bool)> {
    let slots = slots.min(64);
    let count = |s: usize| free.iter().filter(|m| *m & (1 << s) != 0).count();
    let best = (0..slots).map(count).max().filter(|c| *c > 0)?;
    let ties: Vec<usize> = (0..slots).filter(|s| count(*s) == best).collect();
    let slot = ties[fastrand::usize(..ties.len())];
    Some((slot, best >= required))
}

/// Lets the stragglers of a granted round land and records whether they granted; one that
/// may have granted after the guard was let go is released again (see [`NodeStates`]).
fn watch_stragglers<F>(
    cluster: &Arc<Cluster>,
    mut pending: FuturesUnordered<F>,
    states: &NodeStates,
    keys: &Keys,
    value: &Arc<str>,
) where
    F: Future<Output = (usize, Result<Grant, NodeCause>)> + Send + 'static,
{
    if pending.is_empty() {
        return;
    }
    let (cluster, states) = (cluster.clone(), states.clone());
    let (keys, value) = (keys.clone(), value.clone());
    tokio::spawn(async move {
        // Built only when a straggler did grant late (rare), not for every granted round.
        let mut op = None;
        quorum::until(&mut pending, |(i, reply)| {
            states.record(i, &reply);
            if states.acquired_late(i, &reply) {
                let op = op.get_or_insert_with(|| Arc::new(Op::release(&keys, &value, true)));
                cluster.clean(i, op, 0);
            }
            false
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::Vote;

    fn tally(yes: usize, no: usize, failed: usize, nodes: usize) -> Tally {
        let mut t = Tally::new(nodes);
        (0..yes).for_each(|_| t.record(Vote::Yes));
        (0..no).for_each(|_| t.record(Vote::No));
        (0..failed).for_each(|_| t.record(Vote::Failed));
        t
    }

    #[test]
    fn the_verdict_is_a_function_of_the_tally_and_the_validity() {
        let v = Some(Duration::from_secs(9));
        let table = [
            // (yes, no, failed) of 5, validity, verdict
            ((3, 0, 0), v, Verdict::Granted(Duration::from_secs(9))),
            ((3, 2, 0), None, Verdict::TooLate),
            ((5, 0, 0), None, Verdict::TooLate),
            ((0, 3, 0), None, Verdict::Refused { split: false }),
            ((2, 3, 0), None, Verdict::Refused { split: true }),
            ((1, 2, 2), None, Verdict::Refused { split: true }),
            ((2, 0, 3), None, Verdict::Unreachable { split: true }),
            ((0, 2, 3), None, Verdict::Unreachable { split: false }),
            ((0, 0, 5), None, Verdict::Unreachable { split: false }),
            // A validity without a majority grants nothing.
            ((2, 3, 0), v, Verdict::Refused { split: true }),
        ];
        for ((yes, no, failed), validity, expected) in table {
            let t = tally(yes, no, failed, 5);
            assert_eq!(
                verdict(&t, validity),
                expected,
                "{yes}/{no}/{failed} {validity:?}"
            );
        }
    }

    #[test]
    fn only_a_mutex_undoes_a_split_vote_quietly() {
        assert!(quiet_undo(Kind::Mutex, true, true));
        assert!(!quiet_undo(Kind::Mutex, true, false));
        assert!(!quiet_undo(Kind::Mutex, false, true));
        for kind in [Kind::Read, Kind::Write, Kind::Permit { slot: 0 }] {
            assert!(!quiet_undo(kind, true, true), "{kind:?}");
        }
    }

    #[test]
    fn the_next_slot_is_the_one_free_on_the_most_nodes() {
        // Slot 1 free on three nodes, slot 0 on one: try 1, a majority of five could grant it.
        assert_eq!(open_slot(&[0b011, 0b010, 0b110], 3, 3), Some((1, true)));
        assert_eq!(open_slot(&[0b011, 0b010], 3, 3), Some((1, false)));
        assert_eq!(open_slot(&[0, 0, 0], 3, 2), None);
        // Slots past the semaphore's count are ignored.
        assert_eq!(open_slot(&[0b1000], 3, 1), None);
        let (slot, on_majority) = open_slot(&[0b101, 0b101], 3, 2).expect("a slot");
        assert!(on_majority && (slot == 0 || slot == 2));
    }

    #[test]
    fn a_round_waits_until_it_can_tell_busy_from_unreachable() {
        // Decided: a majority granted.
        assert!(heard_enough(&tally(3, 0, 0, 5)));
        // Undecided.
        assert!(!heard_enough(&tally(2, 0, 0, 5)));
        assert!(!heard_enough(&tally(2, 1, 1, 5)));
        // Impossible, but only two answered: wait for a third answer (or its timeout).
        assert!(!heard_enough(&tally(0, 2, 1, 5)));
        assert!(!heard_enough(&tally(0, 0, 3, 5)));
        // Impossible and a majority answered: held elsewhere.
        assert!(heard_enough(&tally(0, 3, 0, 5)));
        assert!(heard_enough(&tally(1, 2, 2, 5)));
        // Impossible and every node heard.
        assert!(heard_enough(&tally(0, 2, 3, 5)));
    }
}
