//! [`NodeStates`]: what each node said to the round that granted a lock (updated by the
//! stragglers that answer after the decision), and the bookkeeping that keeps a straggling
//! acquire from outliving the release.
//!
//! # The straggler protocol
//! A straggler's request can be overtaken by the release on its node (both wait for a
//! reconnect, and either may be sent first), so its SET may land after the DEL. The node then
//! needs one more release exactly when both happened: the straggler's reply (granted, or no
//! reply at all) came after the guard was let go, *and* the release did not delete our value
//! there. Each of the two observers sets its own bit in the node's [`Late`] flags; whichever
//! comes second sees the other's bit in the value its read-modify-write returns, and sends
//! that release. Replies heard before the guard was let go need nothing: the release is sent
//! after them.
//!
//! # Memory ordering
//! - `votes`: each is written once per reply (from "not heard" to final) by whoever hears its
//!   node (the round's task, then its straggler task) and read by the release and undo paths.
//!   No other memory is published through a vote, so `Relaxed` suffices: a read that misses a
//!   concurrent write sees the node as not (yet) answered, which every reader allows for (a
//!   release treats it as not granted there, and the straggler protocol covers that node; an
//!   undo reads only votes its own task wrote, and leaves the rest to the straggler task).
//! - `late[i]`: the two observers meet only through `fetch_or` on this one byte. Read-modify-
//!   writes of one atomic are totally ordered whatever the ordering, so exactly the second one
//!   sees the first one's bit.
//! - `released`: stored before the release round is sent; the straggler path loads it after
//!   its reply arrived. If that reply (a SET that landed) came after the DEL on its node, it
//!   came causally after the release was sent — through the connection and the server, not
//!   through memory — and the load sees the store. A reply that came before the DEL needs
//!   nothing (see above). These accesses use `SeqCst`: no ordering is needed for the memory
//!   model's sake, it costs nothing at a few accesses per lock, and it keeps the argument
//!   about one order of events.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::NodeCause;
use crate::node::Grant;
use crate::quorum::Vote;

/// What the grant records of one lock say, shared by every owner of the grant (a guard, and
/// whoever a local hand-off passes it to) and by the round's straggler task.
#[derive(Debug, Clone)]
pub(crate) struct NodeStates(Arc<States>);

#[derive(Debug)]
struct States {
    votes: Box<[AtomicReply]>,
    late: Box<[Late]>,
    released: AtomicBool,
}

/// A node's reply to the acquire round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reply {
    /// Not heard (yet).
    Unheard = 0,
    Granted = 1,
    /// Another value held the key: nothing of ours is there.
    Refused = 2,
    /// An error or a timeout: the request may still have landed.
    Failed = 3,
}

/// A [`Reply`] in an atomic byte (only valid discriminants are ever stored).
#[derive(Debug)]
struct AtomicReply(AtomicU8);

impl AtomicReply {
    fn new() -> Self {
        AtomicReply(AtomicU8::new(Reply::Unheard as u8))
    }

    fn load(&self) -> Reply {
        match self.0.load(Ordering::Relaxed) {
            1 => Reply::Granted,
            2 => Reply::Refused,
            3 => Reply::Failed,
            _ => Reply::Unheard,
        }
    }

    fn store(&self, reply: Reply) {
        self.0.store(reply as u8, Ordering::Relaxed);
    }
}

/// A node's flags in the straggler protocol.
#[derive(Debug)]
struct Late(AtomicU8);

impl Late {
    /// The acquire's reply (granted or none) was heard after the guard was let go.
    const ACQUIRED_LATE: u8 = 1;
    /// The release did not delete our value on this node.
    const RELEASE_MISSED: u8 = 2;

    /// Sets `bit`; returns whether `other` was already set.
    fn set_and_check(&self, bit: u8, other: u8) -> bool {
        self.0.fetch_or(bit, Ordering::SeqCst) & other != 0
    }
}

impl NodeStates {
    /// Nothing heard from any of `n` nodes yet.
    pub(crate) fn new(n: usize) -> Self {
        NodeStates(Arc::new(States {
            votes: (0..n).map(|_| AtomicReply::new()).collect(),
            late: (0..n).map(|_| Late(AtomicU8::new(0))).collect(),
            released: AtomicBool::new(false),
        }))
    }

    /// Records node `i`'s reply and returns its vote.
    pub(crate) fn record(&self, i: usize, reply: &Result<Grant, NodeCause>) -> Vote {
        let (state, vote) = match reply {
            Ok(Grant::Granted { .. }) => (Reply::Granted, Vote::Yes),
            Ok(Grant::Held { .. }) => (Reply::Refused, Vote::No),
            Err(_) => (Reply::Failed, Vote::Failed),
        };
        if let Some(slot) = self.0.votes.get(i) {
            slot.store(state);
        }
        vote
    }

    fn reply(&self, i: usize) -> Reply {
        self.0
            .votes
            .get(i)
            .map_or(Reply::Unheard, AtomicReply::load)
    }

    /// Whether node `i` is known to have granted.
    pub(crate) fn granted_on(&self, i: usize) -> bool {
        self.reply(i) == Reply::Granted
    }

    /// Whether node `i`'s reply (or failure) has been recorded.
    pub(crate) fn answered(&self, i: usize) -> bool {
        self.reply(i) != Reply::Unheard
    }

    /// Whether node `i` is known to have refused (another value held the key): nothing of
    /// ours can be there, so an undo skips it.
    pub(crate) fn refused_on(&self, i: usize) -> bool {
        self.reply(i) == Reply::Refused
    }

    /// Nodes known to have granted.
    pub(crate) fn granted(&self) -> usize {
        (0..self.0.votes.len())
            .filter(|&i| self.granted_on(i))
            .count()
    }

    /// Marks the guard as let go; called before the release round is sent.
    pub(crate) fn mark_released(&self) {
        self.0.released.store(true, Ordering::SeqCst);
    }

    /// Whether a release round was sent for this grant.
    pub(crate) fn is_released(&self) -> bool {
        self.0.released.load(Ordering::SeqCst)
    }

    /// A straggler's reply: whether node `i` now needs one more release.
    pub(crate) fn acquired_late(&self, i: usize, reply: &Result<Grant, NodeCause>) -> bool {
        let maybe_set = !matches!(reply, Ok(Grant::Held { .. }));
        maybe_set
            && self.is_released()
            && self
                .0
                .late
                .get(i)
                .is_some_and(|late| late.set_and_check(Late::ACQUIRED_LATE, Late::RELEASE_MISSED))
    }

    /// The release did not delete our value on node `i`: whether it needs one more release.
    pub(crate) fn release_missed(&self, i: usize) -> bool {
        self.0
            .late
            .get(i)
            .is_some_and(|late| late.set_and_check(Late::RELEASE_MISSED, Late::ACQUIRED_LATE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> Result<Grant, NodeCause> {
        Ok(Grant::Granted { fence: 0 })
    }

    #[test]
    fn replies_are_recorded_per_node() {
        let s = NodeStates::new(3);
        assert_eq!(s.record(0, &granted()), Vote::Yes);
        assert_eq!(
            s.record(
                1,
                &Ok(Grant::Held {
                    pttl: None,
                    free: 0
                })
            ),
            Vote::No
        );
        assert!(s.granted_on(0) && s.refused_on(1) && !s.answered(2));
        assert_eq!(s.record(2, &Err(NodeCause::Timeout)), Vote::Failed);
        assert!(s.answered(2) && !s.granted_on(2) && !s.refused_on(2));
        assert_eq!(s.granted(), 1);
        // Out of range: never a panic, never a grant.
        assert!(!s.granted_on(7) && !s.answered(7));
    }

    #[test]
    fn one_more_release_exactly_when_a_late_grant_meets_a_missed_release() {
        // Release missed first, then the straggler's grant: the straggler path sends it.
        let s = NodeStates::new(1);
        s.mark_released();
        assert!(!s.release_missed(0));
        assert!(s.acquired_late(0, &granted()));
        // The straggler first, then the release that missed: the release path sends it.
        let s = NodeStates::new(1);
        s.mark_released();
        assert!(!s.acquired_late(0, &granted()));
        assert!(s.release_missed(0));
        // A reply heard before the guard let go needs nothing (the release follows it).
        let s = NodeStates::new(1);
        assert!(!s.acquired_late(0, &granted()));
        s.mark_released();
        assert!(!s.release_missed(0));
        // A refusal put nothing there.
        let s = NodeStates::new(1);
        s.mark_released();
        assert!(!s.release_missed(0));
        assert!(!s.acquired_late(
            0,
            &Ok(Grant::Held {
                pttl: None,
                free: 0
            })
        ));
    }
}
