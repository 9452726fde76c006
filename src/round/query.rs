//! A read round: `GET key` on every node, and whether a value is on a majority of them.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::error::{Error, NodeFailure, Operation};
use crate::quorum::{self, Tally, Vote};

/// What the nodes hold under one key.
pub(crate) struct Query {
    /// The distinct values seen, each with the number of nodes holding it.
    pub(crate) values: Vec<(String, usize)>,
    /// Yes: a value; no: no key; failed: no answer.
    pub(crate) tally: Tally,
    pub(crate) causes: Vec<NodeFailure>,
}

impl Query {
    /// How many nodes hold `value`.
    pub(crate) fn count(&self, value: &str) -> usize {
        self.values
            .iter()
            .find(|(v, _)| v == value)
            .map_or(0, |(_, c)| *c)
    }

    /// The value held by the most nodes, and how many.
    pub(crate) fn most_held(&self) -> Option<(&str, usize)> {
        self.values
            .iter()
            .max_by_key(|(_, count)| *count)
            .map(|(v, c)| (v.as_str(), *c))
    }

    /// The error of a read that could not tell whether the value it asks about, seen on
    /// `confirmed` nodes, is on a majority.
    pub(crate) fn no_quorum(self, key: &str, confirmed: usize) -> Error {
        Error::NoQuorum {
            op: Operation::Query,
            key: key.into(),
            answered: self.tally.answered(),
            confirmed,
            required: self.tally.required(),
            nodes: self.tally.nodes,
            causes: self.causes,
        }
    }
}

/// Whether a value seen on `count` nodes of a read whose replies are `tally` is on a majority:
/// `Some(true)` it is; `Some(false)` it is not, whatever the silent nodes hold; `None`: the
/// silent nodes could make it one (too few answered to tell).
pub(crate) fn majority(count: usize, tally: &Tally) -> Option<bool> {
    if count >= tally.required() {
        Some(true)
    } else if count + tally.failed >= tally.required() {
        None
    } else {
        Some(false)
    }
}

/// `GET key` on every node; done once some value has a majority, or every node was heard.
pub(crate) async fn query(cluster: &Arc<Cluster>, key: &str) -> Query {
    read(cluster, key, None).await
}

/// Whether reader `member` is in the readers' set `key` on each node (`ZSCORE`): the
/// [`Query`] of a read-write lock's reader, whose value is `member` where it is there. (An
/// expired member still there counts: a holder asks only while its validity, which ends
/// before its expiry on the nodes, is left.)
pub(crate) async fn query_reader(cluster: &Arc<Cluster>, key: &str, member: &str) -> Query {
    read(cluster, key, Some(member)).await
}

async fn read(cluster: &Arc<Cluster>, key: &str, member: Option<&str>) -> Query {
    let key: Arc<str> = key.into();
    let member: Option<Arc<str>> = member.map(Into::into);
    let mut pending = cluster.fan_out(|nodes, i| {
        let (key, member) = (key.clone(), member.clone());
        async move {
            match member {
                Some(m) => nodes.member(i, &key, &m).await,
                None => nodes.get(i, &key).await,
            }
        }
    });
    let mut q = Query {
        values: Vec::new(),
        tally: Tally::new(cluster.len()),
        causes: Vec::new(),
    };
    quorum::until(&mut pending, |(i, reply)| {
        match reply {
            Ok(Some(v)) => {
                q.tally.record(Vote::Yes);
                match q.values.iter_mut().find(|(seen, _)| *seen == v) {
                    Some((_, count)) => *count += 1,
                    None => q.values.push((v, 1)),
                }
            }
            Ok(None) => q.tally.record(Vote::No),
            Err(cause) => {
                q.tally.record(Vote::Failed);
                q.causes.push(cluster.failure(i, cause));
            }
        }
        q.values.iter().any(|(_, c)| *c >= q.tally.required())
    })
    .await;
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_on_a_majority_only_when_the_silent_nodes_cannot_change_it() {
        let t = |yes, no, failed| Tally {
            nodes: 5,
            yes,
            no,
            failed,
        };
        assert_eq!(majority(3, &t(3, 2, 0)), Some(true));
        assert_eq!(majority(2, &t(4, 1, 0)), Some(false));
        // Two hold it, one is silent: it may be on three.
        assert_eq!(majority(2, &t(2, 2, 1)), None);
        // One holds it, two are silent: at most three... still undecided.
        assert_eq!(majority(1, &t(1, 2, 2)), None);
        assert_eq!(majority(0, &t(0, 3, 2)), Some(false));
    }
}
