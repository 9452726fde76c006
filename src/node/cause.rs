//! What a failed request says about its node, as a [`NodeCause`].

use std::sync::Arc;

use redis::{ErrorKind, RedisError};

use crate::error::NodeCause;

/// What a redis error says about the node, in one line.
pub(super) fn redis_cause(e: &RedisError) -> NodeCause {
    if e.is_timeout() {
        NodeCause::Timeout
    } else if e.is_connection_refusal() {
        NodeCause::Refused
    } else if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        NodeCause::Auth(one_line(&e.to_string()))
    } else if e.kind() == ErrorKind::Parse {
        NodeCause::NotRedis(one_line(&e.to_string()))
    } else {
        NodeCause::Redis(one_line(&e.to_string()))
    }
}

/// A reply that is not what the request expects.
pub(super) fn protocol(msg: String) -> NodeCause {
    NodeCause::Protocol(msg.into())
}

/// A message on one line (redis' parse errors span several).
pub(super) fn one_line(msg: &str) -> Arc<str> {
    msg.split_whitespace().collect::<Vec<_>>().join(" ").into()
}
