//! One node read directly (not through the lock's quorum): what it holds for a lock, or why it
//! could not be read. For `status`, and for `run -v` to name the nodes that did not grant.

use std::time::Duration;

use redis::{ErrorKind, RedisError};
use redquorum::NodeCause;

/// What one node holds for the lock.
pub struct NodeView {
    /// `<uuid>:<owner>` of the holder, if any.
    pub value: Option<String>,
    /// Remaining lease in ms; -1 without expiry, -2 when the key is absent.
    pub pttl: i64,
    /// The key's fencing counter, if fencing was ever used for it.
    pub fence: Option<u64>,
}

/// Why a node could not be read: a short label for a table and a line that says what to check.
#[derive(Debug)]
pub struct Failed {
    /// `unreachable`, `refused`, `timed out`, `auth failed`, `not redis`, `error`.
    pub label: &'static str,
    /// The whole cause, saying what to check (never with the URL's credentials).
    pub detail: String,
}

/// Reads lock `redis_key` and its fencing counter `fence_key` from the node at `url`, within
/// `within`.
pub async fn read_node(
    url: &str,
    redis_key: &str,
    fence_key: &str,
    within: Duration,
) -> Result<NodeView, Failed> {
    let read = async {
        let client = redis::Client::open(url).map_err(|e| failed(&e))?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| failed(&e))?;
        let (value, pttl, fence): (Option<String>, i64, Option<u64>) = redis::pipe()
            .cmd("GET")
            .arg(redis_key)
            .cmd("PTTL")
            .arg(redis_key)
            .cmd("GET")
            .arg(fence_key)
            .query_async(&mut con)
            .await
            .map_err(|e| failed(&e))?;
        Ok(NodeView { value, pttl, fence })
    };
    match tokio::time::timeout(within, read).await {
        Ok(read) => read,
        Err(_) => Err(Failed {
            label: "timed out",
            detail: format!(
                "timed out: no answer within {within:?}; check that the node is up, not paused \
                 or overloaded, and reachable from here (no firewall dropping packets)"
            ),
        }),
    }
}

/// The cause of a redis error, in the library's words (which say what to check).
fn failed(e: &RedisError) -> Failed {
    let one_line = || {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (label, cause) = if e.is_timeout() {
        ("timed out", NodeCause::Timeout)
    } else if e.is_connection_refusal() {
        ("refused", NodeCause::Refused)
    } else if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        ("auth failed", NodeCause::Auth(one_line().into()))
    } else if e.kind() == ErrorKind::Parse {
        ("not redis", NodeCause::NotRedis(one_line().into()))
    } else if e.is_io_error() {
        ("unreachable", NodeCause::Redis(one_line().into()))
    } else {
        ("error", NodeCause::Redis(one_line().into()))
    };
    Failed {
        label,
        detail: cause.to_string(),
    }
}

/// `host:port/db`, never the credentials.
pub fn node_label(url: &str) -> String {
    match redis::Client::open(url) {
        Ok(client) => {
            let info = client.get_connection_info();
            format!("{}/{}", info.addr(), info.redis_settings().db())
        }
        Err(_) => "<invalid URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_never_show_credentials() {
        assert_eq!(
            node_label("redis://:secret@10.0.0.1:6380/2"),
            "10.0.0.1:6380/2"
        );
    }
}
