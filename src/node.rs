//! The Redis masters: one self-reconnecting multiplexed connection per node, every request
//! bounded by the node timeout and by the shared in-flight semaphore.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::sync::Semaphore;

use crate::error::NodeCause;

/// The Lua scripts, hashed once per process (EVALSHA; loaded on NOSCRIPT).
pub(crate) static ACQUIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/acquire.lua")));
pub(crate) static RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/release.lua")));
pub(crate) static EXTEND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/extend.lua")));
pub(crate) static FENCE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/fence.lua")));

/// One node's answer to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Granted; `fence` is this node's fencing counter after the grant (0 without fencing).
    Granted { fence: u64 },
    /// Another value holds the key for `pttl` more (None: the key has no expiry).
    Held { pttl: Option<Duration> },
}

/// One node's answer to a compare-and-delete or compare-and-extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    /// Our value was there and the change was made (a release also says how many
    /// subscribers its announcement reached).
    Done { listeners: u32 },
    /// No key at all.
    Absent,
    /// Another value holds the key; it was left untouched.
    Other,
}

/// A parsed node URL: what the builder validates before any I/O.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) client: Client,
    /// `host:port/db`, never the credentials: used in errors and logs.
    pub(crate) addr: Arc<str>,
}

impl NodeSpec {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| {
            if url.starts_with("rediss://") && e.to_string().contains("TLS") {
                return format!(
                    "node URL {:?} asks for TLS but the redis crate was built without it; add \
                     `redis = {{ version = \"1\", features = [\"tokio-rustls-comp\"] }}` (or \
                     \"tokio-native-tls-comp\") to your Cargo.toml",
                    redact(url)
                );
            }
            format!(
                "node URL {:?} is not a valid Redis URL ({e}); use redis://[user:password@]host:port[/db] \
                 or rediss:// for TLS",
                redact(url)
            )
        })?;
        let info = client.get_connection_info();
        let addr = format!("{}/{}", info.addr(), info.redis_settings().db()).into();
        Ok(NodeSpec { client, addr })
    }
}

/// A URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

struct Node {
    addr: Arc<str>,
    conn: ConnectionManager,
}

/// All nodes of a [`RedLock`](crate::RedLock), shared by its clones and groups.
pub(crate) struct Nodes {
    nodes: Box<[Node]>,
    permits: Semaphore,
    timeout: Duration,
}

impl Nodes {
    /// Creates the connections without waiting for them; each connects on first use and
    /// reconnects by itself after a failure.
    pub(crate) fn new(
        specs: Vec<NodeSpec>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Self, NodeFailureAt> {
        let config = ConnectionManagerConfig::new()
            // Our own timeout bounds every request; a response timeout inside redis would only
            // duplicate it.
            .set_response_timeout(None)
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            // Reconnect quickly after a node comes back; each failed round ends fast so the
            // next request starts a fresh one.
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(4);
        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                ConnectionManager::new_lazy_with_config(spec.client, config.clone())
                    .map(|conn| Node {
                        addr: spec.addr,
                        conn,
                    })
                    .map_err(|e| NodeFailureAt(i, redis_cause(&e)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Nodes {
            nodes,
            permits: Semaphore::new(max_in_flight),
            timeout,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn addr(&self, i: usize) -> &Arc<str> {
        &self.nodes[i].addr
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one request under a semaphore permit and the node timeout. The timeout counts from
    /// when the permit is granted: a client busy with its own burst is not a slow node (every
    /// permit is held for at most one timeout, so the wait for one is bounded too; and the
    /// lease's validity counts the whole round anyway).
    async fn bounded<T>(
        &self,
        timeout: Duration,
        request: impl Future<Output = Result<T, NodeCause>>,
    ) -> Result<T, NodeCause> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| NodeCause::Redis("the lock client is shutting down".into()))?;
        tokio::time::timeout(timeout, request)
            .await
            .unwrap_or(Err(NodeCause::Timeout))
    }

    /// Sends a prepared EVALSHA of `script` to node `i`, loading the script on NOSCRIPT.
    async fn eval(
        &self,
        i: usize,
        script: &redis::Script,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<Value, NodeCause> {
        let mut conn = self.nodes[i].conn.clone();
        self.bounded(timeout, async move {
            match cmd.query_async::<Value>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script
                        .load_async(&mut conn)
                        .await
                        .map_err(|e| redis_cause(&e))?;
                    cmd.query_async::<Value>(&mut conn)
                        .await
                        .map_err(|e| redis_cause(&e))
                }
                other => other.map_err(|e| redis_cause(&e)),
            }
        })
        .await
    }

    pub(crate) async fn acquire(&self, i: usize, cmd: &Cmd) -> Result<Grant, NodeCause> {
        let reply = self.eval(i, &ACQUIRE, cmd, self.timeout).await?;
        match redis::from_redis_value::<(i64, i64)>(reply) {
            Ok((1, fence)) => Ok(Grant::Granted {
                fence: u64::try_from(fence).unwrap_or(0),
            }),
            Ok((0, pttl)) => Ok(Grant::Held {
                pttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            }),
            Ok(other) => Err(protocol(format!("acquire returned {other:?}"))),
            Err(e) => Err(protocol(format!("acquire: {e}"))),
        }
    }

    /// Compare-and-delete (`RELEASE`) or compare-and-extend (`EXTEND`) on node `i`.
    pub(crate) async fn owned(
        &self,
        i: usize,
        script: &redis::Script,
        cmd: &Cmd,
    ) -> Result<Owned, NodeCause> {
        self.owned_within(i, script, cmd, self.timeout).await
    }

    /// [`owned`](Self::owned) with another timeout (background clean-up is not in a hurry).
    pub(crate) async fn owned_within(
        &self,
        i: usize,
        script: &redis::Script,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<Owned, NodeCause> {
        let reply = self.eval(i, script, cmd, timeout).await?;
        match redis::from_redis_value::<i64>(reply) {
            Ok(n @ 1..) => Ok(Owned::Done {
                listeners: u32::try_from(n - 1).unwrap_or(u32::MAX),
            }),
            Ok(0) => Ok(Owned::Absent),
            Ok(-1) => Ok(Owned::Other),
            Ok(other) => Err(protocol(format!("script returned {other}"))),
            Err(e) => Err(protocol(format!("script reply: {e}"))),
        }
    }

    /// `GET key` on node `i`.
    pub(crate) async fn get(&self, i: usize, key: &str) -> Result<Option<String>, NodeCause> {
        let mut conn = self.nodes[i].conn.clone();
        let cmd = redis::cmd("GET").arg(key).to_owned();
        self.bounded(self.timeout, async move {
            cmd.query_async::<Option<String>>(&mut conn)
                .await
                .map_err(|e| redis_cause(&e))
        })
        .await
    }

    /// `PUBLISH channel ""` on node `i` (errors are only logged: announcing is best effort).
    pub(crate) async fn publish(&self, i: usize, channel: &str) {
        let mut conn = self.nodes[i].conn.clone();
        let cmd = redis::cmd("PUBLISH").arg(channel).arg("").to_owned();
        let res = self
            .bounded(self.timeout, async move {
                cmd.query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| redis_cause(&e))
            })
            .await;
        if let Err(cause) = res {
            tracing::debug!(node = i, %cause, "announcing a release failed");
        }
    }

    /// `PING` on node `i`, bounded by `timeout` (connecting counts against it).
    pub(crate) async fn ping(&self, i: usize, timeout: Duration) -> Result<(), NodeCause> {
        let mut conn = self.nodes[i].conn.clone();
        self.bounded(timeout, async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| redis_cause(&e))
        })
        .await
    }
}

/// Node `.0` could not even be set up.
#[derive(Debug)]
pub(crate) struct NodeFailureAt(pub(crate) usize, pub(crate) NodeCause);

/// The Redis keys one lock holds on every node: one, or several (sorted, distinct) for
/// `acquire_many`. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    keys: Arc<[Arc<str>]>,
    /// Names the lock in the local queue: the key itself, or all of them joined.
    id: Arc<str>,
    /// The persistent fencing counter of a single-key lock.
    fence: Option<Arc<str>>,
}

impl Keys {
    /// A single-key lock and, with fencing on, the key of its fencing counter.
    pub(crate) fn one(key: Arc<str>, fence: Option<Arc<str>>) -> Self {
        Keys {
            id: key.clone(),
            keys: Arc::new([key]),
            fence,
        }
    }

    /// `keys` must be sorted and distinct.
    pub(crate) fn many(keys: Vec<Arc<str>>) -> Self {
        let id = keys
            .iter()
            .map(|k| &**k)
            .collect::<Vec<_>>()
            .join("\n")
            .into();
        Keys {
            keys: keys.into(),
            id,
            fence: None,
        }
    }

    /// The fencing counter's key (single-key locks).
    pub(crate) fn fence(&self) -> Option<&Arc<str>> {
        self.fence.as_ref()
    }

    pub(crate) fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The key whose release channel and fencing counter the lock uses (single-key locks).
    pub(crate) fn single(&self) -> Option<&Arc<str>> {
        match &*self.keys {
            [one] => Some(one),
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys.iter()
    }
}

/// An `EVALSHA <script> <n> <keys...> <args...>` command, built once and sent to every node.
pub(crate) fn evalsha(script: &redis::Script, keys: &Keys) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for k in keys.iter() {
        cmd.arg(&**k);
    }
    cmd
}

/// The acquire round's command: `EVALSHA acquire <n(+1)> <keys...> [<key>:fence] value lease
/// fencing n`. Fencing applies to single-key locks only.
pub(crate) fn acquire_cmd(keys: &Keys, value: &str, lease_ms: u64, fencing: bool) -> Cmd {
    let fence = keys.fence().filter(|_| fencing && keys.len() == 1);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(ACQUIRE.get_hash())
        .arg(keys.len() + usize::from(fence.is_some()));
    for k in keys.iter() {
        cmd.arg(&**k);
    }
    if let Some(counter) = fence {
        cmd.arg(&**counter);
    }
    cmd.arg(value)
        .arg(lease_ms)
        .arg(if fence.is_some() { "1" } else { "0" })
        .arg(keys.len());
    cmd
}

/// An `EVALSHA <script> 2 <key> <counter> <args...>` command: scripts that touch the fencing
/// counter name it as a key.
pub(crate) fn evalsha_fenced(script: &redis::Script, key: &str, counter: &str) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(2).arg(key).arg(counter);
    cmd
}

fn redis_cause(e: &RedisError) -> NodeCause {
    if e.is_timeout() {
        NodeCause::Timeout
    } else {
        NodeCause::Redis(e.to_string().into())
    }
}

fn protocol(msg: String) -> NodeCause {
    NodeCause::Protocol(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("redis://user:secret@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
    }

    #[test]
    fn parse_names_nodes_without_credentials() {
        let spec = NodeSpec::parse("redis://:pw@127.0.0.1:7001/3").expect("valid url");
        assert_eq!(&*spec.addr, "127.0.0.1:7001/3");
        let err = NodeSpec::parse("http://:pw@nowhere").expect_err("not redis");
        assert!(
            err.contains("not a valid Redis URL") && !err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn scripts_hash_to_distinct_shas() {
        let shas = [
            ACQUIRE.get_hash(),
            RELEASE.get_hash(),
            EXTEND.get_hash(),
            FENCE.get_hash(),
        ];
        assert!(shas.iter().all(|s| s.len() == 40));
        assert_ne!(shas[0], shas[1]);
        assert_ne!(shas[1], shas[2]);
    }
}
