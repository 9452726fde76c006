//! [`Undo`]: releasing what an acquire round that did not become a guard may have left on the
//! nodes, only where a node granted or did not answer.

use std::future::Future;
use std::sync::Arc;

use futures::stream::FuturesUnordered;

use crate::cluster::Cluster;
use crate::error::NodeCause;
use crate::keys::Keys;
use crate::node::{Grant, Op};
use crate::node_states::NodeStates;
use crate::quorum::{self, Vote};

/// Releases a round's value where a node granted or did not answer when dropped (announced),
/// unless disarmed (the round became a guard) or settled (the round was decided without a
/// grant). A node that refused holds nothing of ours and is left alone.
pub(crate) struct Undo {
    cluster: Option<Arc<Cluster>>,
    keys: Keys,
    value: Arc<str>,
    states: NodeStates,
}

impl Undo {
    /// Armed for the round storing `value` under `keys`, whose replies `states` records.
    pub(crate) fn armed(
        cluster: &Arc<Cluster>,
        keys: &Keys,
        value: &Arc<str>,
        states: &NodeStates,
    ) -> Self {
        Undo {
            cluster: Some(cluster.clone()),
            keys: keys.clone(),
            value: value.clone(),
            states: states.clone(),
        }
    }

    /// The round became a guard: nothing to undo.
    pub(crate) fn disarm(mut self) {
        self.cluster = None;
    }

    /// Undoes a decided round: now on the nodes that granted or failed, and on each node
    /// still `pending` once it answers, only if it granted or failed (a round is decided
    /// before every node has answered, and undoing on the stragglers blindly cost most losers
    /// two useless requests). Everything goes through the background clean-up.
    ///
    /// `announce` off for a split vote that the waiter retries: a waiter of another process
    /// that relies on notifications and was refused by our partial grant needs no message for
    /// it, because whoever of the split contenders wins announces its release in time, and a
    /// contender that gives up announces the key as it leaves (see `LeaveAnnounced`). Silent,
    /// these undos do not wake every other waiter at each split (which made them all try
    /// again, and split again). Dropped instead (a cancelled round), the undo announces.
    pub(crate) fn settle<F>(mut self, mut pending: FuturesUnordered<F>, announce: bool)
    where
        F: Future<Output = (usize, Result<Grant, NodeCause>)> + Send + 'static,
    {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        let op = Arc::new(Op::release(&self.keys, &self.value, announce));
        for i in 0..cluster.len() {
            if self.states.answered(i) && !self.states.refused_on(i) {
                cluster.clean(i, &op, 0);
            }
        }
        if pending.is_empty() {
            return;
        }
        let states = self.states.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            quorum::until(&mut pending, |(i, reply)| {
                if states.record(i, &reply) != Vote::No {
                    cluster.clean(i, &op, 0);
                }
                false
            })
            .await;
        });
    }
}

impl Drop for Undo {
    /// A dropped round: undone, announced, on every node that did not refuse (a request still
    /// out may land after the undo on its node; it expires by TTL there, on a minority).
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            let op = Arc::new(Op::release(&self.keys, &self.value, true));
            for i in 0..cluster.len() {
                if !self.states.refused_on(i) {
                    cluster.clean(i, &op, 0);
                }
            }
        }
    }
}
