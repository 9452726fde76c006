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
        NodeCause::Redis(tls_hint(one_line(&e.to_string())))
    }
}

/// A TLS handshake's failure (rustls' or OpenSSL's words), with what to check; other messages
/// as they are.
fn tls_hint(msg: Arc<str>) -> Arc<str> {
    let lower = msg.to_lowercase();
    if ["certificate", "ssl routines", "handshake", "alert"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!(
            "TLS: {msg}; check that a CA this client trusts signed the node's certificate \
             (RedLockBuilder::tls_root_certs, the CLI's --tls-ca), that the certificate names the \
             host in the node URL, and give a client certificate (tls_client_cert) if the \
             server requires one (tls-auth-clients yes)"
        )
        .into()
    } else if lower.contains("connection reset") {
        format!(
            "{msg} (a server that listens with TLS only resets plain connections: use \
             rediss://; one that requires a client certificate resets TLS connections without \
             one: give tls_client_cert, the CLI's --tls-cert)"
        )
        .into()
    } else {
        msg
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_say_what_to_check() {
        let shown = tls_hint("invalid peer certificate: UnknownIssuer".into());
        assert!(shown.starts_with("TLS: invalid peer") && shown.contains("tls_root_certs"));
        let shown = tls_hint("Connection reset by peer (os error 104)".into());
        assert!(shown.contains("rediss://"), "{shown}");
        assert_eq!(
            &*tls_hint("ERR unknown command".into()),
            "ERR unknown command"
        );
    }
}
