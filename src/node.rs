//! The Redis masters: one self-reconnecting multiplexed connection per node, every request
//! bounded by the node timeout and by the shared in-flight semaphore.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::error::NodeCause;

/// The four requests, each a Lua function of (KEYS, ARGV) in `src/scripts/`, and the batch
/// script that runs a sequence of them in one call (EVALSHA; loaded on NOSCRIPT).
static BATCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(concat!(
        "local acquire = function(KEYS, ARGV)\n",
        include_str!("scripts/acquire.lua"),
        "end\nlocal release = function(KEYS, ARGV)\n",
        include_str!("scripts/release.lua"),
        "end\nlocal extend = function(KEYS, ARGV)\n",
        include_str!("scripts/extend.lua"),
        "end\nlocal fence = function(KEYS, ARGV)\n",
        include_str!("scripts/fence.lua"),
        "end\n",
        include_str!("scripts/batch.lua"),
    ))
});

/// Requests waiting for a node's connection are sent together, up to this many per call.
const MAX_BATCH: usize = 128;

/// Which script a request runs (its index in `batch.lua`'s table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// `acquire.lua`: take every key unless another value holds one.
    Acquire = 1,
    /// `release.lua`: compare-and-delete.
    Release = 2,
    /// `extend.lua`: compare-and-extend.
    Extend = 3,
    /// `fence.lua`: raise the fencing counter under our value.
    Fence = 4,
}

/// One request, built once per round and sent to every node.
#[derive(Debug)]
pub(crate) struct Op {
    script: Script,
    keys: Vec<Arc<str>>,
    args: Vec<Arg>,
}

#[derive(Debug)]
enum Arg {
    Text(Arc<str>),
    Number(u64),
    Flag(bool),
}

impl Op {
    /// `script` on the keys of a lock; add its arguments with [`arg`](Self::arg) and friends.
    pub(crate) fn new(script: Script, keys: &Keys) -> Self {
        Op {
            script,
            keys: keys.iter().cloned().collect(),
            args: Vec::with_capacity(4),
        }
    }

    /// The acquire round's request: the lock keys (and the fencing counter with fencing, for
    /// single-key locks), then value, lease, fencing flag and the number of lock keys.
    pub(crate) fn acquire(keys: &Keys, value: &Arc<str>, lease_ms: u64, fencing: bool) -> Self {
        let mut op = Op::new(Script::Acquire, keys);
        let fence = keys.fence().filter(|_| fencing && keys.len() == 1);
        if let Some(counter) = fence {
            op.keys.push(counter.clone());
        }
        op.text(value)
            .number(lease_ms)
            .flag(fence.is_some())
            .number(keys.len() as u64)
    }

    /// Raising the fencing counter `counter` of lock key `key` to `token` under `value`.
    pub(crate) fn fence(key: &Arc<str>, counter: &Arc<str>, value: &Arc<str>, token: u64) -> Self {
        Op {
            script: Script::Fence,
            keys: vec![key.clone(), counter.clone()],
            args: Vec::with_capacity(2),
        }
        .text(value)
        .number(token)
    }

    pub(crate) fn text(mut self, v: &Arc<str>) -> Self {
        self.args.push(Arg::Text(v.clone()));
        self
    }

    pub(crate) fn number(mut self, v: u64) -> Self {
        self.args.push(Arg::Number(v));
        self
    }

    /// A `"1"`/`"0"` argument.
    pub(crate) fn flag(mut self, v: bool) -> Self {
        self.args.push(Arg::Flag(v));
        self
    }
}

/// A request waiting for its node's connection, and where its reply goes.
struct Job {
    op: Arc<Op>,
    /// When its caller stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<Value, NodeCause>>,
}

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
    /// To this node's sender task (see [`serve`]).
    jobs: mpsc::UnboundedSender<Job>,
}

/// All nodes of a [`RedLock`](crate::RedLock), shared by its clones and groups.
pub(crate) struct Nodes {
    nodes: Box<[Node]>,
    permits: Semaphore,
    timeout: Duration,
}

impl Nodes {
    /// Creates the connections without waiting for them; each connects on first use and
    /// reconnects by itself after a failure. Spawns one sender task per node on the current
    /// runtime (it ends when the `Nodes` is dropped).
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
                let conn = ConnectionManager::new_lazy_with_config(spec.client, config.clone())
                    .map_err(|e| NodeFailureAt(i, redis_cause(&e)))?;
                let (jobs, queue) = mpsc::unbounded_channel();
                tokio::spawn(serve(conn.clone(), queue));
                Ok(Node {
                    addr: spec.addr,
                    conn,
                    jobs,
                })
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

    /// Queues `op` for node `i`'s next batch and waits for its reply, within `timeout`.
    async fn call(&self, i: usize, op: &Arc<Op>, timeout: Duration) -> Result<Value, NodeCause> {
        self.bounded(timeout, async {
            let (reply, replied) = oneshot::channel();
            let job = Job {
                op: op.clone(),
                deadline: Instant::now() + timeout,
                reply,
            };
            self.nodes[i]
                .jobs
                .send(job)
                .map_err(|_| NodeCause::Redis("the lock client is shutting down".into()))?;
            replied
                .await
                .unwrap_or_else(|_| Err(NodeCause::Redis("the request was dropped".into())))
        })
        .await
    }

    pub(crate) async fn acquire(&self, i: usize, op: &Arc<Op>) -> Result<Grant, NodeCause> {
        let reply = self.call(i, op, self.timeout).await?;
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

    /// A compare-and-delete, compare-and-extend or fence `op` on node `i`.
    pub(crate) async fn owned(&self, i: usize, op: &Arc<Op>) -> Result<Owned, NodeCause> {
        self.owned_within(i, op, self.timeout).await
    }

    /// [`owned`](Self::owned) with another timeout (background clean-up is not in a hurry).
    pub(crate) async fn owned_within(
        &self,
        i: usize,
        op: &Arc<Op>,
        timeout: Duration,
    ) -> Result<Owned, NodeCause> {
        let reply = self.call(i, op, timeout).await?;
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

/// A node's sender task: sends the requests queued for the node, all that are waiting in one
/// EVALSHA of the batch script, one call at a time, so they reach the node in the order they
/// were queued. With one caller a request goes out at once; with many, those that arrive while
/// a call is out go together in the next. Ends when the `Nodes` is dropped.
async fn serve(mut conn: ConnectionManager, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::new();
    while let Some(job) = queue.recv().await {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Nothing goes out after its caller's deadline, and no acquire whose caller stopped
        // waiting (its round already counts this node as failed, perhaps granted: not taking
        // the key is the safe answer). Releases and extensions whose caller left (a dropped
        // future) still go out while their deadline lasts: a late compare-and-delete only helps.
        let now = Instant::now();
        batch.retain(|j| {
            j.deadline > now && !(j.op.script == Script::Acquire && j.reply.is_closed())
        });
        // The call ends at the first deadline in it: no request is in flight past its own
        // (a node that comes back must not receive an acquire its caller gave up on).
        let Some(deadline) = batch.iter().map(|j| j.deadline).min() else {
            continue;
        };
        let cmd = batch_cmd(&batch);
        let reply = tokio::time::timeout_at(deadline, async {
            match cmd.query_async::<Value>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    BATCH.load_async(&mut conn).await?;
                    cmd.query_async::<Value>(&mut conn).await
                }
                other => other,
            }
        })
        .await;
        let replies: Result<Vec<Value>, NodeCause> = match reply {
            Ok(Ok(Value::Array(replies))) if replies.len() == batch.len() => Ok(replies),
            Ok(Ok(other)) => Err(protocol(format!("batch returned {other:?}"))),
            Ok(Err(e)) => Err(redis_cause(&e)),
            Err(_elapsed) => Err(NodeCause::Timeout),
        };
        match replies {
            Ok(replies) => {
                for (job, reply) in batch.drain(..).zip(replies) {
                    let _ = job.reply.send(unbatch(reply));
                }
            }
            Err(cause) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(cause.clone()));
                }
            }
        }
    }
}

/// `EVALSHA batch <keys> <all keys> <m> <m headers> <all arguments>` (see `batch.lua`).
fn batch_cmd(batch: &[Job]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    let keys: usize = batch.iter().map(|j| j.op.keys.len()).sum();
    cmd.arg(BATCH.get_hash()).arg(keys);
    for job in batch {
        for k in &job.op.keys {
            cmd.arg(&**k);
        }
    }
    cmd.arg(batch.len());
    for job in batch {
        cmd.arg(job.op.script as u8)
            .arg(job.op.keys.len())
            .arg(job.op.args.len());
    }
    for job in batch {
        for arg in &job.op.args {
            match arg {
                Arg::Text(t) => cmd.arg(&**t),
                Arg::Number(n) => cmd.arg(*n),
                Arg::Flag(f) => cmd.arg(if *f { "1" } else { "0" }),
            };
        }
    }
    cmd
}

/// One request's reply out of a batch: a `"!..."` string is the error it raised.
fn unbatch(reply: Value) -> Result<Value, NodeCause> {
    match reply {
        Value::BulkString(b) if b.first() == Some(&b'!') => Err(NodeCause::Redis(
            String::from_utf8_lossy(&b[1..]).into_owned().into(),
        )),
        other => Ok(other),
    }
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
    fn the_batch_script_hashes() {
        assert_eq!(BATCH.get_hash().len(), 40);
    }
}
