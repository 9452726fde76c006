//! The round engine: one request fanned out to every node and tallied until a majority
//! decides — an acquire ([`acquire`]: grant, validity, fencing token, undo of a partial
//! grant), a compare-and-delete or compare-and-extend ([`owned`]), a read ([`query`]).
//!
//! Each decision is a pure function of the tally ([`acquire::verdict`],
//! [`owned::OwnedRound::outcome`], [`query::majority`]), table-tested without Redis; the code
//! around it only sends, collects and cleans up. What a round leaves behind when it is
//! decided before every node answered (stragglers) is finished in a task of its own, so that
//! a slow node never delays the caller and never keeps a key of ours.

pub(crate) mod acquire;
pub(crate) mod owned;
pub(crate) mod query;
mod undo;
