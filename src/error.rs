//! The one error type of the crate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong when locking, releasing or extending.
///
/// Each variant carries the facts behind it and its message says what to do. Use the predicates
/// ([`Error::is_retryable`], [`Error::is_timeout`], ...) rather than matching on messages.
///
/// # Examples
///
/// ```
/// use redquorum::Error;
///
/// fn report(err: &Error) -> &'static str {
///     match err {
///         Error::Timeout { .. } => "busy, try later",
///         Error::NoQuorum { .. } => "lock service degraded",
///         e if e.is_retryable() => "transient",
///         _ => "bug or misconfiguration",
///     }
/// }
/// assert_eq!(report(&Error::Cancelled { key: "k".into() }), "bug or misconfiguration");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder or a call got input that can never work (no nodes, a bad URL, an empty key,
    /// a TTL too short to leave any validity, ...). Nothing was sent to Redis.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The context's deadline passed while the lock stayed held by another owner.
    #[error(
        "timed out after {waited:?} waiting for lock {key:?} ({attempts} attempts): it stayed held by \
         another owner; give the context a later deadline or make the holder's critical section shorter"
    )]
    Timeout {
        /// The key as the caller named it.
        key: String,
        /// How long the caller waited.
        waited: Duration,
        /// How many acquisition rounds were made.
        attempts: u32,
    },

    /// The retry policy's `max_attempts` ran out before the lock was acquired.
    #[error(
        "gave up on lock {key:?} after {attempts} attempts (the retry policy's max_attempts): it stayed \
         held by another owner; allow more attempts or use a context deadline instead"
    )]
    RetriesExhausted {
        /// The key as the caller named it.
        key: String,
        /// How many acquisition rounds were made.
        attempts: u32,
    },

    /// The context's cancellation token fired while waiting.
    #[error("waiting for lock {key:?} was cancelled; nothing is held")]
    Cancelled {
        /// The key as the caller named it.
        key: String,
    },

    /// Too few nodes answered for a decision either way: the nodes that did not answer could
    /// have tipped it.
    ///
    /// The message lists every failed node on a line of its own, each saying what to check:
    ///
    /// ```
    /// use redquorum::{Error, NodeCause, NodeFailure, Operation};
    /// let err = Error::NoQuorum {
    ///     op: Operation::Acquire,
    ///     key: "k".into(),
    ///     answered: 1,
    ///     confirmed: 1,
    ///     required: 2,
    ///     nodes: 3,
    ///     causes: vec![
    ///         NodeFailure { node: "10.0.0.1:6379/0".into(), cause: NodeCause::Refused },
    ///         NodeFailure { node: "10.0.0.2:6379/0".into(), cause: NodeCause::Auth("WRONGPASS".into()) },
    ///     ],
    /// };
    /// let msg = err.to_string();
    /// assert!(msg.starts_with(
    ///     "no quorum for acquire of \"k\": 1 of 3 nodes answered in time (1 granted); a decision needs a majority, 2"
    /// ));
    /// assert!(msg.contains("\n  10.0.0.1:6379/0: connection refused"));
    /// assert!(msg.contains("\n  10.0.0.2:6379/0: authentication failed"));
    /// ```
    #[error(
        "no quorum for {what}: {answered} of {nodes} nodes answered in time{confirmed}; a \
         decision needs a majority, {required}{causes}",
        what = Subject(*op, key),
        confirmed = Confirmed(*op, *confirmed),
        causes = NodeFailures(causes)
    )]
    NoQuorum {
        /// What was being done.
        op: Operation,
        /// The key as the caller named it (empty for [`Operation::Connect`]).
        key: String,
        /// Nodes that answered at all (a grant or a refusal, a value or none).
        answered: usize,
        /// Nodes that did what was asked: granted (acquire), deleted or extended our value
        /// (release, extend), held the value most of them agreed on (query); for connect, the
        /// nodes that answered.
        confirmed: usize,
        /// The majority needed.
        required: usize,
        /// Number of nodes.
        nodes: usize,
        /// Why each failing node failed.
        causes: Vec<NodeFailure>,
    },

    /// Release or extend found the key held by another owner: this guard's lease ran out and
    /// somebody else acquired the lock. Their key was left untouched.
    #[error(
        "lock {key:?} is now held by another owner: this lease expired before {op}; keep the critical \
         section shorter than the guard's validity or extend it earlier"
    )]
    NotOwner {
        /// [`Operation::Release`] or [`Operation::Extend`].
        op: Operation,
        /// The key as the caller named it.
        key: String,
    },

    /// The lock was lost while work ran under [`RedLock::with_lock`](crate::RedLock::with_lock):
    /// an extension failed to reach a majority in time, or the key was found with another owner.
    /// What the work did may have overlapped with another holder.
    #[error(
        "lock {key:?} was lost while the work ran (its lease could not be kept alive); what the \
         work did may have overlapped with another holder: have the resource check fencing tokens \
         and stop work when `lease.lost()` fires"
    )]
    LockLost {
        /// The key as the caller named it.
        key: String,
    },

    /// Release or extend found no key of ours: the lease expired (or it was already released).
    #[error(
        "lock {key:?} is no longer held (its lease expired or it was already released) so {op} had \
         nothing to act on; keep the critical section shorter than the guard's validity"
    )]
    NotHeld {
        /// [`Operation::Release`] or [`Operation::Extend`].
        op: Operation,
        /// The key as the caller named it.
        key: String,
    },
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }

    /// Whether trying the same operation again later can succeed (timeouts, quorum loss).
    ///
    /// ```
    /// # use redquorum::Error;
    /// assert!(!Error::Cancelled { key: "k".into() }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::RetriesExhausted { .. } | Error::NoQuorum { .. }
        )
    }

    /// Whether the wait ended because the deadline or the retry budget ran out.
    ///
    /// ```
    /// # use redquorum::Error;
    /// # use std::time::Duration;
    /// let e = Error::Timeout { key: "k".into(), waited: Duration::from_secs(1), attempts: 3 };
    /// assert!(e.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::RetriesExhausted { .. })
    }

    /// Whether the lease was lost: the lock expired or passed to another owner.
    ///
    /// ```
    /// # use redquorum::Error;
    /// # use redquorum::Operation;
    /// assert!(Error::NotHeld { op: Operation::Release, key: "k".into() }.is_lost());
    /// ```
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            Error::NotOwner { .. } | Error::NotHeld { .. } | Error::LockLost { .. }
        )
    }
}

/// One node's failure inside a quorum operation: one line that names the node (never with
/// its credentials) and says what to check.
///
/// ```
/// # use redquorum::{NodeFailure, NodeCause};
/// let f = NodeFailure { node: "127.0.0.1:7001/0".into(), cause: NodeCause::Refused };
/// assert!(f.to_string().starts_with("127.0.0.1:7001/0: connection refused: check"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node's address, `host:port/db` (without credentials).
    pub node: String,
    /// What happened.
    pub cause: NodeCause,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.cause)
    }
}

/// Why a node did not contribute to a quorum. Its message is one line that says what to check.
///
/// ```
/// # use redquorum::NodeCause;
/// assert!(NodeCause::Timeout.to_string().starts_with("timed out"));
/// assert!(NodeCause::Auth("WRONGPASS".into()).to_string().contains("password"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeCause {
    /// No answer within the node timeout (node down, paused, slow or unreachable).
    Timeout,
    /// The connection was refused: nothing listens on that host and port.
    Refused,
    /// The node refused our credentials (`WRONGPASS`, `NOAUTH`: a wrong or missing password or
    /// user in the node URL).
    Auth(Arc<str>),
    /// What answered is not a Redis server (its reply is not RESP).
    NotRedis(Arc<str>),
    /// The node is the same Redis server as node `of` (the same `run_id`, reached by another
    /// URL): it gets no vote, so that one server never counts twice.
    Duplicate {
        /// The other node's address (without credentials).
        of: Arc<str>,
    },
    /// The node answered with an error or the connection failed.
    Redis(Arc<str>),
    /// The node answered with something the scripts never return.
    Protocol(Arc<str>),
}

impl fmt::Display for NodeCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeCause::Timeout => f.write_str(
                "timed out: no answer within the node timeout; check that the node is up, not \
                 paused or overloaded, and reachable from here (no firewall dropping packets)",
            ),
            NodeCause::Refused => f.write_str(
                "connection refused: check that redis-server runs on this host and port",
            ),
            NodeCause::Auth(e) => write!(
                f,
                "authentication failed ({e}): check the user and password in the node URL \
                 (redis://user:password@host:port) against the server's requirepass or ACL"
            ),
            NodeCause::NotRedis(e) => write!(
                f,
                "not a Redis server (its reply is not Redis protocol: {e}); check the host and \
                 port in the node URL"
            ),
            NodeCause::Duplicate { of } => write!(
                f,
                "same Redis server as node {of} (one run_id, another URL), so it gets no vote; \
                 list every master once"
            ),
            NodeCause::Redis(e) => write!(f, "redis error: {e}"),
            NodeCause::Protocol(e) => write!(
                f,
                "unexpected reply: {e} (is the node a Redis server, reached directly or through \
                 a proxy that passes replies through unchanged?)"
            ),
        }
    }
}

/// What a quorum operation was doing, in errors.
///
/// ```
/// use redquorum::Operation;
/// assert_eq!(Operation::Extend.to_string(), "extend");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// First contact with the nodes, in [`RedLockBuilder::build`](crate::RedLockBuilder::build).
    Connect,
    /// An acquisition round.
    Acquire,
    /// A release (compare-and-delete).
    Release,
    /// An extension (compare-and-extend).
    Extend,
    /// A read: [`RedLock::is_locked`](crate::RedLock::is_locked),
    /// [`RedLock::owner`](crate::RedLock::owner), [`LockGuard::is_held`](crate::LockGuard::is_held).
    Query,
}

impl Operation {
    /// The operation's name: `connect`, `acquire`, `release`, `extend` or `query`.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Acquire => "acquire",
            Operation::Release => "release",
            Operation::Extend => "extend",
            Operation::Query => "query",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `acquire of "k"`, or just `connect` when no key is involved.
struct Subject<'a>(Operation, &'a str);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject(op, "") => write!(f, "{op}"),
            Subject(op, key) => write!(f, "{op} of {key:?}"),
        }
    }
}

/// ` (2 granted)`: what the nodes that answered did, where it differs from answering.
struct Confirmed(Operation, usize);

impl fmt::Display for Confirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let did = match self.0 {
            Operation::Connect => return Ok(()),
            Operation::Acquire => "granted",
            Operation::Release => "released",
            Operation::Extend => "extended",
            Operation::Query => "agreed on one value",
        };
        write!(f, " ({} {did})", self.1)
    }
}

struct NodeFailures<'a>(&'a [NodeFailure]);

/// One line per failed node, each saying what to check.
impl fmt::Display for NodeFailures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(" (no node failed outright: the others refused)");
        }
        f.write_str(":")?;
        for n in self.0 {
            write!(f, "\n  {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_reply_says_what_to_check() {
        let msg = NodeCause::Protocol("SET NX PX returned Int(3)".into()).to_string();
        assert!(
            msg.contains("Int(3)") && msg.contains("Redis server"),
            "{msg}"
        );
    }
}
