//! Rounds on a lock we hold: compare-and-delete (release) and compare-and-extend, which touch
//! a key only where our value holds it, decided by a majority.

use std::sync::Arc;

use futures::stream::FuturesUnordered;

use crate::cluster::Cluster;
use crate::error::{Error, NodeCause, NodeFailure, Operation};
use crate::keys::Keys;
use crate::node::{Op, Owned};
use crate::node_states::NodeStates;
use crate::queue::{Holder, Ticket};
use crate::quorum::{self, Decision, Tally, Vote};

/// The outcome of a release or extend round.
#[derive(Debug)]
pub(crate) struct OwnedRound {
    pub(crate) tally: Tally,
    /// Nodes where another value held the key.
    pub(crate) other: usize,
    /// Nodes that had granted the key but no longer hold our value (its lease ran out there,
    /// and maybe another owner took it); without grant records, every node without our value.
    pub(crate) expired: usize,
    /// The most subscribers a release announcement reached on one node.
    pub(crate) listeners: u32,
    pub(crate) causes: Vec<NodeFailure>,
}

impl OwnedRound {
    fn new(nodes: usize) -> Self {
        OwnedRound {
            tally: Tally::new(nodes),
            other: 0,
            expired: 0,
            listeners: 0,
            causes: Vec::new(),
        }
    }

    /// The typed outcome: Ok when a majority did it — for a release, also when every granting
    /// node that answered still had our value (now deleted) and too few nodes are silent for
    /// our value to remain on a majority (a killed master, or contenders' partial grants on
    /// the nodes that never granted us, must not turn a clean release into an error);
    /// NoQuorum when the silent nodes could still hold a majority; otherwise NotOwner if
    /// another owner holds the key somewhere, else NotHeld.
    pub(crate) fn outcome(self, op: Operation, key: &str) -> Result<(), Error> {
        let t = self.tally;
        let released =
            op == Operation::Release && t.yes > 0 && self.expired == 0 && t.failed < t.required();
        if t.yes >= t.required() || released {
            Ok(())
        } else if t.yes + t.failed >= t.required() {
            Err(Error::NoQuorum {
                op,
                key: key.into(),
                answered: t.answered(),
                confirmed: t.yes,
                required: t.required(),
                nodes: t.nodes,
                causes: self.causes,
            })
        } else if self.other > 0 {
            Err(Error::NotOwner {
                op,
                key: key.into(),
            })
        } else {
            Err(Error::NotHeld {
                op,
                key: key.into(),
            })
        }
    }
}

/// A guard's release: a compare-and-delete round (announced if `announce`), which also
/// catches straggling acquires that landed after it (see [`NodeStates`]), and retries in the
/// background every node whose final answer was a failure.
pub(crate) async fn release(
    cluster: &Arc<Cluster>,
    keys: &Keys,
    value: &Arc<str>,
    states: &NodeStates,
    announce: bool,
) -> OwnedRound {
    states.mark_released();
    let op = Arc::new(Op::release(keys, value, announce));
    // The late release is always announced: the release itself, when it is (most are).
    let late = if announce {
        op.clone()
    } else {
        Arc::new(Op::release(keys, value, true))
    };
    round(cluster, op, Some((late, states.clone()))).await
}

/// An extension of `value` under `keys` to `lease_ms` on every node holding it.
pub(crate) async fn extend(
    cluster: &Arc<Cluster>,
    keys: &Keys,
    value: &Arc<str>,
    lease_ms: u64,
) -> OwnedRound {
    round(cluster, Arc::new(Op::extend(keys, value, lease_ms)), None).await
}

/// What happens to each node's final answer to a release, before or after the decision: a
/// failure is retried in the background; a release that did not delete our value where a
/// straggling acquire landed after it is sent once more.
struct FinalAnswers {
    cluster: Arc<Cluster>,
    retry: Arc<Op>,
    /// The release to send after a straggling acquire, and the grant records.
    late_release: Option<(Arc<Op>, NodeStates)>,
}

impl FinalAnswers {
    fn node(&self, i: usize, reply: &Result<Owned, NodeCause>) {
        let Some((late_release, states)) = &self.late_release else {
            return;
        };
        if !matches!(reply, Ok(Owned::Done { .. })) && states.release_missed(i) {
            self.cluster.clean(i, late_release, 0);
        } else if reply.is_err() {
            self.cluster.clean(i, &self.retry, 1);
        }
    }
}

/// Runs `op` (a compare-and-delete or compare-and-extend) on every node. Decides as soon as a
/// majority did it; otherwise hears every node (each bounded by the node timeout) so the
/// outcome does not depend on the order of replies. Stragglers are finished in the background
/// so the change still reaches slow nodes.
///
/// With `late_release` (a guard's release), each node's final answer is acted on (see [`FinalAnswers`]).
async fn round(
    cluster: &Arc<Cluster>,
    op: Arc<Op>,
    late_release: Option<(Arc<Op>, NodeStates)>,
) -> OwnedRound {
    let mut pending: FuturesUnordered<_> = cluster.fan_out(|nodes, i| {
        let op = op.clone();
        async move { nodes.owned(i, &op).await }
    });
    let granted_here = |i: usize| late_release.as_ref().is_none_or(|(_, s)| s.granted_on(i));
    let mut round = OwnedRound::new(cluster.len());
    let answers = FinalAnswers {
        cluster: cluster.clone(),
        retry: op.clone(),
        late_release: late_release.clone(),
    };
    quorum::until(&mut pending, |(i, reply)| {
        answers.node(i, &reply);
        match reply {
            Ok(Owned::Done { listeners }) => {
                round.tally.record(Vote::Yes);
                round.listeners = round.listeners.max(listeners);
            }
            Ok(owned) => {
                round.tally.record(Vote::No);
                round.other += usize::from(matches!(owned, Owned::Other));
                round.expired += usize::from(granted_here(i));
            }
            Err(cause) => {
                round.tally.record(Vote::Failed);
                round.causes.push(cluster.failure(i, cause));
            }
        }
        round.tally.decision() == Decision::Reached
    })
    .await;
    if !pending.is_empty() {
        tokio::spawn(async move {
            quorum::until(&mut pending, |(i, reply)| {
                answers.node(i, &reply);
                false
            })
            .await;
        });
    }
    round
}

/// A guard's release in the background on the current runtime (nodes that did not answer
/// are retried, and late straggling grants are caught, see [`NodeStates`]); with no runtime
/// the keys expire by TTL. The local queue `ticket`, if any, is handed on only after the
/// first round, so the next local waiter finds the key gone.
pub(crate) fn spawn_release<B, H>(
    cluster: Arc<Cluster>,
    keys: Keys,
    value: Arc<str>,
    states: NodeStates,
    ticket: Option<Ticket<B, H>>,
) where
    B: Send + 'static,
    H: Holder + Send + 'static,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            key = %keys,
            "no tokio runtime to release the lock on; it will expire after its TTL"
        );
        return;
    };
    rt.spawn(async move {
        let announce = ticket.as_ref().is_none_or(Ticket::announce_release);
        let round = release(&cluster, &keys, &value, &states, announce).await;
        if let (true, Some(ticket)) = (announce, &ticket) {
            ticket.announced(round.listeners, cluster.others_poll(&keys));
        }
        drop(ticket);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(yes: usize, absent: usize, other: usize, failed: usize) -> OwnedRound {
        let mut r = OwnedRound::new(yes + absent + other + failed);
        (0..yes).for_each(|_| r.tally.record(Vote::Yes));
        (0..absent + other).for_each(|_| r.tally.record(Vote::No));
        (0..failed).for_each(|_| r.tally.record(Vote::Failed));
        r.other = other;
        // Without grant records every node counts as having granted.
        r.expired = absent + other;
        r
    }

    #[test]
    fn release_outcomes() {
        let release = Operation::Release;
        assert!(round(3, 0, 0, 2).outcome(release, "k").is_ok());
        assert!(matches!(
            round(2, 0, 3, 0).outcome(release, "k"),
            Err(Error::NotOwner { .. })
        ));
        assert!(matches!(
            round(1, 4, 0, 0).outcome(release, "k"),
            Err(Error::NotHeld { .. })
        ));
        assert!(matches!(
            round(2, 0, 0, 3).outcome(release, "k"),
            Err(Error::NoQuorum {
                confirmed: 2,
                answered: 2,
                required: 3,
                ..
            })
        ));
    }

    #[test]
    fn an_extension_needs_a_majority_where_a_release_is_done() {
        // Two of four did it, two silent: nothing of ours can be left on a majority (a release
        // is done), but two extended nodes are no majority (an extension is not).
        assert!(round(2, 0, 0, 2).outcome(Operation::Release, "k").is_ok());
        assert!(matches!(
            round(2, 0, 0, 2).outcome(Operation::Extend, "k"),
            Err(Error::NoQuorum { .. })
        ));
    }
}
