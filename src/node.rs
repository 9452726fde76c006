//! The Redis masters: one self-reconnecting multiplexed connection per node, every request
//! bounded by the node timeout and by the shared in-flight semaphore.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, NodeCause, NodeFailure};
use crate::quorum::{Decision, Tally, Vote};

/// The Lua scripts' sources and their hashes (EVALSHA; all four loaded on NOSCRIPT).
const SOURCES: [&str; 4] = [
    include_str!("scripts/acquire.lua"),
    include_str!("scripts/release.lua"),
    include_str!("scripts/extend.lua"),
    include_str!("scripts/fence.lua"),
];
static SCRIPTS: LazyLock<[redis::Script; 4]> = LazyLock::new(|| SOURCES.map(redis::Script::new));

/// Why a node cannot be reached when its sender task is gone.
const RUNTIME_GONE: &str = "the tokio runtime this RedLock was built on has shut down, and with \
     it the RedLock's connections; build the RedLock on the runtime that uses it (each \
     #[tokio::test] has its own runtime)";

/// Requests waiting for a node's connection are sent together, up to this many per pipeline.
const MAX_BATCH: usize = 128;

/// Pipelines out to one node at once while it answers quickly: few enough that requests of a
/// busy client gather into pipelines (measured on benches/cost, 64 tasks: 1 pipeline out
/// gives 26-28k cycles/s, 4 give 36k, 32 give 21k, as most pipelines then carry one request).
const MAX_PIPELINES: usize = 4;

/// Pipelines out to one slow node at once: beyond [`MAX_PIPELINES`], one more may go for each
/// quarter of the node timeout since the last one went, so requests do not wait a whole
/// round trip behind others (a frozen node, whose pipelines end after about a node timeout,
/// levels off near 8).
const MAX_PIPELINES_SLOW: usize = 64;

/// Which script a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// `acquire.lua`: take every key unless another value holds one (a plain `SET NX PX` for a
    /// single key without fencing).
    Acquire = 0,
    /// `release.lua`: compare-and-delete.
    Release,
    /// `extend.lua`: compare-and-extend.
    Extend,
    /// `fence.lua`: raise the fencing counter under our value.
    Fence,
}

impl Script {
    /// The operation's name in errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Script::Acquire => "acquire",
            Script::Release => "release",
            Script::Extend => "extend",
            Script::Fence => "fence",
        }
    }

    fn sha(self) -> &'static str {
        SCRIPTS[self as usize].get_hash()
    }
}

/// One request, built once per round and sent to every node.
#[derive(Debug)]
pub(crate) struct Op {
    script: Script,
    /// The lock's keys (shared with the lock, not copied).
    keys: Keys,
    /// A key sent after them: the fencing counter of a fenced acquire or fence raise.
    counter: Option<Arc<str>>,
    args: Vec<Arg>,
    /// A plain acquire is followed by `PTTL key`: the holder's remaining lease, for a waiter
    /// that will sleep.
    hint: bool,
}

#[derive(Debug)]
enum Arg {
    Text(Arc<str>),
    Number(u64),
    Flag(bool),
}

impl Op {
    /// `script` on the keys of a lock; add its arguments with [`text`](Self::text) and friends.
    pub(crate) fn new(script: Script, keys: &Keys) -> Self {
        Op {
            script,
            keys: keys.clone(),
            counter: None,
            args: Vec::with_capacity(4),
            hint: false,
        }
    }

    /// The acquire round's request: the lock keys (and the fencing counter with fencing, for
    /// single-key locks), then value, lease, fencing flag and the number of lock keys. With
    /// `hint`, a refusal also tells how long the holder's lease has left (otherwise only the
    /// script path does).
    pub(crate) fn acquire(
        keys: &Keys,
        value: &Arc<str>,
        lease_ms: u64,
        fencing: bool,
        hint: bool,
    ) -> Self {
        let mut op = Op::new(Script::Acquire, keys);
        op.counter = keys.fence().filter(|_| fencing && keys.len() == 1).cloned();
        op.hint = hint;
        let fenced = op.counter.is_some();
        op.text(value)
            .number(lease_ms)
            .flag(fenced)
            .number(keys.len() as u64)
    }

    /// Raising the fencing counter `counter` of the single-key lock `keys` to `token` under
    /// `value`.
    pub(crate) fn fence(keys: &Keys, counter: &Arc<str>, value: &Arc<str>, token: u64) -> Self {
        let mut op = Op::new(Script::Fence, keys);
        op.counter = Some(counter.clone());
        op.text(value).number(token)
    }

    /// A single-key acquire without fencing, sent as `SET key value NX PX lease`: Redis runs a
    /// plain SET several times faster than a script's.
    fn plain(&self) -> bool {
        self.script == Script::Acquire && self.counter.is_none() && self.keys.len() == 1
    }

    /// Every key, in the order the script expects them.
    fn all_keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys.iter().chain(&self.counter)
    }

    fn key_count(&self) -> usize {
        self.keys.len() + usize::from(self.counter.is_some())
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

    /// How many commands this request sends.
    fn commands(&self) -> usize {
        if self.plain() && self.hint {
            2
        } else {
            1
        }
    }

    /// This request's commands, each built at its final size.
    fn cmds(&self) -> impl Iterator<Item = Cmd> + '_ {
        let plain = match (self.keys.single(), &*self.args) {
            (Some(key), [Arg::Text(value), Arg::Number(lease), ..]) if self.plain() => {
                Some((key, value, *lease))
            }
            _ => None,
        };
        let first = match plain {
            Some((key, value, lease)) => {
                let mut cmd = Cmd::with_capacity(6, key.len() + value.len() + 24);
                cmd.arg("SET")
                    .arg(&**key)
                    .arg(&**value)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease);
                cmd
            }
            None => {
                let size = 60
                    + self.all_keys().map(|k| k.len()).sum::<usize>()
                    + self.args.len() * 20
                    + self
                        .args
                        .iter()
                        .map(|a| match a {
                            Arg::Text(t) => t.len(),
                            _ => 0,
                        })
                        .sum::<usize>();
                let mut cmd = Cmd::with_capacity(3 + self.key_count() + self.args.len(), size);
                cmd.arg("EVALSHA")
                    .arg(self.script.sha())
                    .arg(self.key_count());
                for k in self.all_keys() {
                    cmd.arg(&**k);
                }
                for arg in &self.args {
                    match arg {
                        Arg::Text(t) => cmd.arg(&**t),
                        Arg::Number(n) => cmd.arg(*n),
                        Arg::Flag(f) => cmd.arg(if *f { "1" } else { "0" }),
                    };
                }
                cmd
            }
        };
        let second = plain.filter(|_| self.hint).map(|(key, _, _)| {
            let mut cmd = Cmd::with_capacity(2, key.len() + 8);
            cmd.arg("PTTL").arg(&**key);
            cmd
        });
        std::iter::once(first).chain(second)
    }

    /// This request's reply from its commands' replies (`next` gives them in order), in the
    /// shape of its script's reply (a plain acquire's SET and PTTL become `{1, 0}` or
    /// `{0, pttl}`, pttl -1 when not asked or not known).
    fn reply(&self, mut next: impl FnMut() -> Result<Value, Failed>) -> Result<Value, Failed> {
        if !self.plain() {
            return next();
        }
        // Both replies are read before either is judged, so a failed SET never leaves its PTTL
        // for the next request to take as its own reply.
        let set = next();
        let pttl = if self.hint {
            next()
        } else {
            Ok(Value::Int(-1))
        };
        // The SET decides: a granted SET is a grant whatever became of the hint (an ACL without
        // PTTL, say), and a refusal whose hint failed is a refusal without a hint.
        let pttl = match pttl {
            Ok(Value::Int(ms)) => ms,
            _ => -1,
        };
        match set? {
            Value::Okay => Ok(Value::Array(vec![Value::Int(1), Value::Int(0)])),
            Value::Nil => Ok(Value::Array(vec![Value::Int(0), Value::Int(pttl)])),
            other => Err(Failed::Cause(protocol(format!(
                "SET NX PX returned {other:?}"
            )))),
        }
    }
}

/// Why a request in a pipeline failed.
enum Failed {
    /// Its script is not in the node's cache (the node restarted).
    NoScript,
    Cause(NodeCause),
}

impl Failed {
    fn cause(self) -> NodeCause {
        match self {
            Failed::NoScript => NodeCause::Redis(
                "the node lost redquorum's scripts again right after loading them (restarted, \
                 or SCRIPT FLUSH); the next request loads them again"
                    .into(),
            ),
            Failed::Cause(c) => c,
        }
    }

    /// A command's error reply (inside a pipeline or alone).
    fn from_server(e: &redis::ServerError) -> Failed {
        if e.kind() == Some(ServerErrorKind::NoScript) {
            Failed::NoScript
        } else if matches!(e.code(), "NOAUTH" | "WRONGPASS") {
            Failed::Cause(NodeCause::Auth(one_line(&e.to_string())))
        } else {
            Failed::Cause(NodeCause::Redis(one_line(&e.to_string())))
        }
    }
}

/// A request waiting for its node's connection, and where its reply goes.
struct Job {
    op: Arc<Op>,
    /// When its caller stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<Value, NodeCause>>,
}

impl Job {
    /// An acquire whose caller gave up (deadline passed or future dropped) is never sent: its
    /// round counts this node as failed, perhaps granted, and its undo may already have passed
    /// the node, so not taking the key is the safe answer. Releases, extensions and fences
    /// always go out, late or not: the caller may have given up, but the change must still
    /// reach the node (a compare-and-delete or compare-and-extend never harms another owner).
    fn abandoned(&self, now: Instant) -> bool {
        self.op.script == Script::Acquire && (self.deadline <= now || self.reply.is_closed())
    }
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
    /// `host:port` (or the socket's path): one server, whatever the database.
    pub(crate) server: Arc<str>,
    /// The URL as given, with every credential replaced (see [`redact`]).
    pub(crate) shown: Arc<str>,
}

impl NodeSpec {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let shown = redact(url);
        let client = Client::open(url).map_err(|e| {
            if url.starts_with("rediss://") && e.to_string().contains("TLS") {
                return format!(
                    "node URL {shown:?} asks for TLS but the redis crate was built without it; add \
                     `redis = {{ version = \"1\", features = [\"tokio-rustls-comp\"] }}` (or \
                     \"tokio-native-tls-comp\") to your Cargo.toml"
                );
            }
            // redis' message names the part that is wrong, never the URL itself.
            let why = one_line(&e.to_string());
            format!(
                "node URL {shown:?} is not a valid Redis URL ({why}); use \
                 redis://[user:password@]host:port[/db], rediss:// for TLS or \
                 redis+unix:///path?db=N&pass=..."
            )
        })?;
        let info = client.get_connection_info();
        let server: Arc<str> = info.addr().to_string().into();
        let addr = format!("{server}/{}", info.redis_settings().db()).into();
        Ok(NodeSpec {
            client,
            addr,
            server,
            shown: shown.into(),
        })
    }
}

/// A node URL for messages, Debug output and logs, rebuilt from what the redis crate parsed
/// rather than cut out of the text (a password may hold `@`, `/`, `?` or `#`): the scheme,
/// `***@` where there are credentials, the address and the database. Text that does not parse
/// as a Redis URL is not shown beyond its scheme.
pub(crate) fn redact(url: &str) -> String {
    let scheme = url.find("://").map_or("", |s| &url[..s + 3]);
    let Ok(client) = Client::open(url) else {
        return format!("{scheme}*** (not shown: it does not parse, and may hold a password)");
    };
    let info = client.get_connection_info();
    let settings = info.redis_settings();
    let creds = if settings.username().is_some() || settings.password().is_some() {
        "***@"
    } else {
        ""
    };
    let (addr, db) = (info.addr(), settings.db());
    match addr {
        redis::ConnectionAddr::Unix(_) => format!("{scheme}{addr}?db={db}{}", {
            if creds.is_empty() {
                ""
            } else {
                "&pass=***"
            }
        }),
        _ => format!("{scheme}{creds}{addr}/{db}"),
    }
}

/// A message on one line (redis' parse errors span several).
fn one_line(msg: &str) -> Arc<str> {
    msg.split_whitespace().collect::<Vec<_>>().join(" ").into()
}

/// What each node's server is, as far as it has been identified (`INFO server` `run_id`), so
/// that one server never counts as several votes however its URLs differ (`localhost` and
/// `127.0.0.1`, a proxy, a DNS alias).
///
/// A node is identified on every new connection, before that connection carries any request
/// (a restarted server has a new `run_id`). A node found to reach the same server as another
/// node is a duplicate for good: it never votes again, whatever it later reports (the two URLs
/// were seen to lead to one server; a configuration like that needs fixing, not waiting out).
struct Identities {
    ids: std::sync::Mutex<Vec<Identity>>,
    addrs: Box<[Arc<str>]>,
    shown: Box<[Arc<str>]>,
}

#[derive(Debug, Clone)]
enum Identity {
    /// Not connected yet.
    Unknown,
    /// The `run_id` of the server its last connection reached.
    Known(Arc<str>),
    /// Reached the same server as node `.0`: never votes.
    Duplicate(usize),
}

impl Identities {
    fn ids(&self) -> std::sync::MutexGuard<'_, Vec<Identity>> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Node `i`'s new connection reached the server `run_id`: it may carry requests unless
    /// another node is that server (then `i` is a duplicate from now on).
    fn admit(&self, i: usize, run_id: &str) -> Result<(), NodeCause> {
        let mut ids = self.ids();
        let clash = match ids[i] {
            Identity::Duplicate(of) => Some(of),
            _ => ids
                .iter()
                .enumerate()
                .position(|(j, id)| matches!(id, Identity::Known(r) if j != i && **r == *run_id)),
        };
        match clash {
            None => {
                ids[i] = Identity::Known(run_id.into());
                Ok(())
            }
            Some(of) => {
                let first = !matches!(ids[i], Identity::Duplicate(_));
                ids[i] = Identity::Duplicate(of);
                drop(ids);
                if first {
                    tracing::error!(
                        node = &*self.addrs[i],
                        url = &*self.shown[i],
                        same_as = &*self.addrs[of],
                        same_as_url = &*self.shown[of],
                        run_id,
                        "two nodes are the same Redis server; this one never votes: list every \
                         master once and build the RedLock again"
                    );
                }
                Err(self.duplicate(of))
            }
        }
    }

    /// Whether node `i` was found to be another node's server.
    fn duplicate_of(&self, i: usize) -> Option<usize> {
        match self.ids()[i] {
            Identity::Duplicate(of) => Some(of),
            _ => None,
        }
    }

    fn duplicate(&self, of: usize) -> NodeCause {
        NodeCause::Duplicate {
            of: self.addrs[of].clone(),
        }
    }
}

/// A connection being made (and identified), shared by every request that waits for it.
type Connecting = Shared<BoxFuture<'static, Result<MultiplexedConnection, NodeCause>>>;

/// Node `i`'s connection: made on first use, identified before it carries a request, and made
/// again after it breaks (a fresh connection is identified again).
struct Link {
    i: usize,
    client: Client,
    config: AsyncConnectionConfig,
    /// Bounds identifying a new connection.
    timeout: Duration,
    ids: Arc<Identities>,
    /// The connection's generation and the connection (being made, made, or failed).
    current: std::sync::Mutex<(u64, Connecting)>,
}

/// Attempts to connect before a connection attempt gives up (refused, timed out); later
/// requests start a new one.
const CONNECT_ATTEMPTS: u32 = 5;

impl Link {
    fn new(i: usize, client: Client, timeout: Duration, ids: Arc<Identities>) -> Arc<Self> {
        let config = AsyncConnectionConfig::new()
            // Our own timeout bounds every request; a response timeout inside redis would only
            // duplicate it.
            .set_response_timeout(None)
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))));
        let first = establish(i, client.clone(), config.clone(), timeout, ids.clone());
        Arc::new(Link {
            i,
            client,
            config,
            timeout,
            ids,
            current: std::sync::Mutex::new((0, first)),
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, (u64, Connecting)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's identified connection, waiting for it to be made if need be.
    async fn get(self: &Arc<Self>) -> Result<Conn, NodeCause> {
        if let Some(of) = self.ids.duplicate_of(self.i) {
            return Err(self.ids.duplicate(of));
        }
        let (generation, connecting) = self.current().clone();
        match connecting.await {
            Ok(conn) => Ok(Conn {
                conn,
                generation,
                link: self.clone(),
            }),
            Err(cause) => {
                // The next request tries again.
                self.renew(generation, false);
                Err(cause)
            }
        }
    }

    /// Replaces connection `generation` (failed or broken) with a new attempt, started at once
    /// with `now` (a broken connection), else by the next request.
    fn renew(&self, generation: u64, now: bool) {
        let mut current = self.current();
        if current.0 != generation {
            return;
        }
        let next = establish(
            self.i,
            self.client.clone(),
            self.config.clone(),
            self.timeout,
            self.ids.clone(),
        );
        *current = (generation + 1, next.clone());
        drop(current);
        if now {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(next.map(drop));
            }
        }
    }
}

/// Connects to node `i` (a few attempts, backing off from 10 ms to 500 ms while it refuses or
/// does not answer) and identifies its server; the connection is handed out only once
/// [`Identities::admit`] accepts it.
fn establish(
    i: usize,
    client: Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    ids: Arc<Identities>,
) -> Connecting {
    async move {
        let mut delay = Duration::from_millis(10);
        let mut attempt = 1;
        loop {
            let cause = match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(mut conn) => match tokio::time::timeout(timeout, identify(&mut conn)).await {
                    Ok(Ok(run_id)) => return ids.admit(i, &run_id).map(|()| conn),
                    Ok(Err(cause)) => cause,
                    Err(_elapsed) => NodeCause::Timeout,
                },
                Err(e) => redis_cause(&e),
            };
            let transient = matches!(
                cause,
                NodeCause::Refused | NodeCause::Timeout | NodeCause::Redis(_)
            );
            if !transient || attempt >= CONNECT_ATTEMPTS {
                return Err(cause);
            }
            attempt += 1;
            tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
    .boxed()
    .shared()
}

/// The `run_id` of the server behind `conn` (`INFO server`).
async fn identify(conn: &mut MultiplexedConnection) -> Result<String, NodeCause> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(|e| match e.code() {
            Some("NOPERM") => NodeCause::Redis(
                "the ACL user may not run INFO, which redquorum needs to tell the nodes' servers \
                 apart (one server must not count as several votes): grant it +info"
                    .into(),
            ),
            _ => redis_cause(&e),
        })?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            NodeCause::NotRedis(
                "INFO server has no run_id (a Redis-compatible server that cannot be told apart \
                 from the others)"
                    .into(),
            )
        })
}

/// An identified connection of a node; a failure that breaks it has the node connect (and
/// identify) again.
struct Conn {
    conn: MultiplexedConnection,
    generation: u64,
    link: Arc<Link>,
}

impl Conn {
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.kind() == ErrorKind::Parse
            {
                self.link.renew(self.generation, true);
            }
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.check(result)
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.check(result)
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

struct Node {
    addr: Arc<str>,
    link: Arc<Link>,
    /// To this node's sender task (see [`serve`]).
    jobs: mpsc::UnboundedSender<Job>,
}

/// All nodes of a [`RedLock`](crate::RedLock), shared by its clones and groups.
pub(crate) struct Nodes {
    nodes: Box<[Node]>,
    ids: Arc<Identities>,
    permits: Semaphore,
    timeout: Duration,
}

impl Nodes {
    /// Creates the connections without waiting for them; each connects (and is identified) on
    /// first use and again after a failure. Spawns one sender task per node on the current
    /// runtime (it ends when the `Nodes` is dropped).
    pub(crate) fn new(specs: Vec<NodeSpec>, timeout: Duration, max_in_flight: usize) -> Self {
        let ids = Arc::new(Identities {
            ids: std::sync::Mutex::new(vec![Identity::Unknown; specs.len()]),
            addrs: specs.iter().map(|s| s.addr.clone()).collect(),
            shown: specs.iter().map(|s| s.shown.clone()).collect(),
        });
        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let link = Link::new(i, spec.client, timeout, ids.clone());
                let (jobs, queue) = mpsc::unbounded_channel();
                tokio::spawn(serve(link.clone(), queue, timeout));
                Node {
                    addr: spec.addr,
                    link,
                    jobs,
                }
            })
            .collect();
        Nodes {
            nodes,
            ids,
            permits: Semaphore::new(max_in_flight),
            timeout,
        }
    }

    /// First contact (`build()`): every node connects, is identified and answers a PING, each
    /// within `timeout`. Waits for a majority, then for the others while they answer within a
    /// node timeout (all of them when there is no majority), so that each failed node is named
    /// with its own cause, and two nodes that are one server are caught here.
    ///
    /// Returns the nodes that failed (they keep connecting in the background).
    ///
    /// # Errors
    /// [`Error::Config`] when two nodes are the same server; [`Error::NoQuorum`] when a
    /// majority did not answer.
    pub(crate) async fn first_contact(&self, timeout: Duration) -> Result<Vec<NodeFailure>, Error> {
        let n = self.len();
        let deadline = Instant::now() + timeout;
        let mut pending: FuturesUnordered<_> = (0..n)
            .map(|i| async move { (i, self.ping(i, timeout).await) })
            .collect();
        let mut tally = Tally::new(n);
        // None: not heard (yet); Some(None): answered; Some(Some(cause)): failed.
        let mut heard: Vec<Option<Option<NodeCause>>> = vec![None; n];
        let mut until = deadline;
        while let Ok(Some((i, reply))) = tokio::time::timeout_at(until, pending.next()).await {
            tally.record(if reply.is_ok() {
                Vote::Yes
            } else {
                Vote::Failed
            });
            heard[i] = Some(reply.err());
            if tally.decision() == Decision::Reached && until == deadline {
                until = deadline.min(Instant::now() + self.timeout);
            }
        }
        // Every node that did not answer has a cause, in the order the nodes were given.
        let causes: Vec<NodeFailure> = heard
            .into_iter()
            .enumerate()
            .filter_map(|(i, heard)| match heard {
                Some(None) => None,
                Some(Some(cause)) => Some(self.failure(i, cause)),
                None => Some(self.failure(i, NodeCause::Timeout)),
            })
            .collect();
        if let Some(i) = (0..n).find(|&i| self.ids.duplicate_of(i).is_some()) {
            let of = self.ids.duplicate_of(i).unwrap_or(i);
            return Err(Error::config(format!(
                "nodes {} and {} are the same Redis server (one run_id): a server listed more \
                 than once would count as several votes; list every master once",
                self.ids.shown[of], self.ids.shown[i]
            )));
        }
        if tally.decision() != Decision::Reached {
            return Err(Error::NoQuorum {
                op: "connect",
                key: String::new(),
                ok: tally.yes,
                required: tally.required(),
                nodes: n,
                causes,
            });
        }
        Ok(causes)
    }

    /// Node `i`'s failure, named without credentials.
    pub(crate) fn failure(&self, i: usize, cause: NodeCause) -> NodeFailure {
        NodeFailure {
            node: self.addr(i).to_string(),
            cause,
        }
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

    /// Node `i`'s identified connection (for the settings check at the end of `build()`).
    pub(crate) async fn connection(
        &self,
        i: usize,
    ) -> Result<impl ConnectionLike + Send, NodeCause> {
        self.nodes[i].link.get().await
    }

    /// Each node's client and URL without credentials (for `RedLock::check`).
    pub(crate) fn clients(&self) -> Vec<(Client, Arc<str>)> {
        self.nodes
            .iter()
            .zip(self.ids.shown.iter())
            .map(|(n, shown)| (n.link.client.clone(), shown.clone()))
            .collect()
    }

    /// Runs one request under a semaphore permit and the node timeout. The timeout counts from
    /// when the permit is granted: a client busy with its own burst is not a slow node (a
    /// permit is held for at most the request's timeout, so the wait for one is bounded too;
    /// and the lease's validity counts the whole round anyway). Every request is bounded by the
    /// node timeout, except the first-contact PINGs of `build()` (the connect timeout); a
    /// background clean-up pass takes one permit for all its requests to a node
    /// ([`owned_batch`](Self::owned_batch)).
    async fn bounded<T>(
        &self,
        timeout: Duration,
        request: impl Future<Output = Result<T, NodeCause>>,
    ) -> Result<T, NodeCause> {
        let _permit = self
            .permits
            .acquire()
            .await
            // Never closed: this cannot fail.
            .map_err(|_| NodeCause::Redis("the in-flight semaphore was closed".into()))?;
        tokio::time::timeout(timeout, request)
            .await
            .unwrap_or(Err(NodeCause::Timeout))
    }

    /// Queues `op` for node `i`'s next batch and waits for its reply, within the node timeout.
    async fn call(&self, i: usize, op: &Arc<Op>) -> Result<Value, NodeCause> {
        self.bounded(self.timeout, self.queue(i, op)).await
    }

    /// Queues `op` for node `i`'s next batch and waits for its reply (no permit, no timeout:
    /// the caller bounds it).
    async fn queue(&self, i: usize, op: &Arc<Op>) -> Result<Value, NodeCause> {
        let (reply, replied) = oneshot::channel();
        let job = Job {
            op: op.clone(),
            deadline: Instant::now() + self.timeout,
            reply,
        };
        // The sender task answers every job it takes, even one it does not send; it drops
        // them unanswered only when it ends, with its runtime (it outlives every caller
        // otherwise).
        let gone = || NodeCause::Redis(RUNTIME_GONE.into());
        self.nodes[i].jobs.send(job).map_err(|_| gone())?;
        replied.await.unwrap_or_else(|_| Err(gone()))
    }

    pub(crate) async fn acquire(&self, i: usize, op: &Arc<Op>) -> Result<Grant, NodeCause> {
        let reply = self.call(i, op).await?;
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
        owned_reply(self.call(i, op).await?)
    }

    /// Every op of `ops` on node `i` (they go out together), under **one** permit and one node
    /// timeout for them all: background clean-up of one node never holds more than a single
    /// permit, for at most one node timeout. One reply per op, in order.
    pub(crate) async fn owned_batch(
        &self,
        i: usize,
        ops: &[Arc<Op>],
    ) -> Vec<Result<Owned, NodeCause>> {
        let replies = self
            .bounded(self.timeout, async {
                Ok(futures::future::join_all(ops.iter().map(|op| self.queue(i, op))).await)
            })
            .await;
        match replies {
            Ok(replies) => replies
                .into_iter()
                .map(|r| r.and_then(owned_reply))
                .collect(),
            Err(cause) => ops.iter().map(|_| Err(cause.clone())).collect(),
        }
    }

    /// `GET key` on node `i`.
    pub(crate) async fn get(&self, i: usize, key: &str) -> Result<Option<String>, NodeCause> {
        let link = &self.nodes[i].link;
        let cmd = redis::cmd("GET").arg(key).to_owned();
        self.bounded(self.timeout, async move {
            cmd.query_async::<Option<String>>(&mut link.get().await?)
                .await
                .map_err(|e| redis_cause(&e))
        })
        .await
    }

    /// `PUBLISH channel ""` on node `i` (errors are only logged: announcing is best effort).
    pub(crate) async fn publish(&self, i: usize, channel: &str) {
        let link = &self.nodes[i].link;
        let cmd = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(crate::wake::RECHECK)
            .to_owned();
        let res = self
            .bounded(self.timeout, async move {
                cmd.query_async::<i64>(&mut link.get().await?)
                    .await
                    .map_err(|e| redis_cause(&e))
            })
            .await;
        if let Err(cause) = res {
            tracing::debug!(node = i, %cause, "announcing a release failed");
        }
    }

    /// `PING` on node `i`, bounded by `timeout` (connecting and identifying count against it).
    pub(crate) async fn ping(&self, i: usize, timeout: Duration) -> Result<(), NodeCause> {
        let link = &self.nodes[i].link;
        self.bounded(timeout, async move {
            redis::cmd("PING")
                .query_async::<String>(&mut link.get().await?)
                .await
                .map(drop)
                .map_err(|e| redis_cause(&e))
        })
        .await
    }
}

/// The Redis keys one lock holds on every node: one, or several (sorted, distinct) for
/// `acquire_many`. Cheap to clone.
///
/// Also the lock's identity in the local queue: two `Keys` are the same lock exactly when they
/// hold the same list of keys. The identity is the list itself, not a string built from it, so
/// no key name (key names may hold any character) can make a single key equal to a set.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    keys: Arc<[Arc<str>]>,
    /// The persistent fencing counter of a single-key lock.
    fence: Option<Arc<str>>,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        // The fencing counter follows from the key and the settings, which every user of one
        // local queue shares.
        self.keys == other.keys
    }
}

impl Eq for Keys {}

impl std::hash::Hash for Keys {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // A slice hashes its length first: `[k]` and `[a, b]` never collide by construction.
        self.keys.hash(state);
    }
}

/// For logs: the key, or a set's keys separated by `, ` (ambiguous for odd names; never used
/// as an identity).
impl std::fmt::Display for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(k)?;
        }
        Ok(())
    }
}

impl Keys {
    /// A single-key lock and, with fencing on, the key of its fencing counter.
    pub(crate) fn one(key: Arc<str>, fence: Option<Arc<str>>) -> Self {
        Keys {
            keys: Arc::new([key]),
            fence,
        }
    }

    /// `keys` must be sorted and distinct.
    pub(crate) fn many(keys: Vec<Arc<str>>) -> Self {
        Keys {
            keys: keys.into(),
            fence: None,
        }
    }

    /// The fencing counter's key (single-key locks).
    pub(crate) fn fence(&self) -> Option<&Arc<str>> {
        self.fence.as_ref()
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
/// pipeline. With one caller a request goes out at once; with many, those that arrive while
/// pipelines are out go together in the next (fewer syscalls and wake-ups on both sides). Up to
/// [`MAX_PIPELINES`] are out at once (more for a slow node, so its round trip does not queue
/// requests behind it); each is polled for the first time before the next is made, so they
/// enter the connection in queue order (except across a reconnect or a NOSCRIPT resend: nothing relies on the order,
/// see `NodeStates`). Ends when the `Nodes` is dropped, after the pipelines that are out.
async fn serve(link: Arc<Link>, mut queue: mpsc::UnboundedReceiver<Job>, timeout: Duration) {
    let mut out = FuturesUnordered::new();
    let mut last_sent = Instant::now();
    loop {
        let slow = last_sent + timeout / 4;
        let room =
            out.len() < MAX_PIPELINES || (out.len() < MAX_PIPELINES_SLOW && Instant::now() >= slow);
        tokio::select! {
            biased;
            Some(()) = out.next(), if !out.is_empty() => {}
            job = queue.recv(), if room => {
                let Some(job) = job else { break };
                let mut batch = vec![job];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                let (abandoned, batch): (Vec<Job>, Vec<Job>) =
                    batch.into_iter().partition(|j| j.abandoned(now));
                for job in abandoned {
                    // Its caller may still be listening (its timer and this check fall due
                    // together): what happened is a timeout, not a lost sender task.
                    let _ = job.reply.send(Err(NodeCause::Timeout));
                }
                if batch.is_empty() {
                    continue;
                }
                // A pipeline that gets no answer is given up after the last of its callers gave
                // up (at least one node timeout). An acquire in it may still be written after
                // its caller gave up (a pipeline waiting for a reconnect): the round's undo, or
                // NodeStates for a granted round, releases it behind it.
                let bound = batch
                    .iter()
                    .map(|j| j.deadline)
                    .max()
                    .unwrap_or(now)
                    .max(now + timeout);
                let link = link.clone();
                last_sent = Instant::now();
                out.push(async move {
                    let sent = tokio::time::timeout_at(bound, async {
                        send(&mut link.get().await?, &batch).await
                    })
                    .await;
                    match sent {
                        Ok(Ok(replies)) => {
                            for (job, reply) in batch.into_iter().zip(replies) {
                                let _ = job.reply.send(reply.map_err(Failed::cause));
                            }
                        }
                        Ok(Err(cause)) => {
                            for job in batch {
                                let _ = job.reply.send(Err(cause.clone()));
                            }
                        }
                        Err(_elapsed) => {
                            for job in batch {
                                let _ = job.reply.send(Err(NodeCause::Timeout));
                            }
                        }
                    }
                });
            }
            () = tokio::time::sleep_until(slow), if !room && out.len() < MAX_PIPELINES_SLOW => {}
        }
    }
    while out.next().await.is_some() {}
}

/// Sends `batch` as one pipeline and splits the replies per request. Requests that found
/// their script missing (a restarted node) are sent again after loading all four scripts, so
/// a node's script cache is only ever empty or full; later pipelines may run before the
/// resend (nothing relies on the order, see `NodeStates`).
async fn send(conn: &mut Conn, batch: &[Job]) -> Result<Vec<Result<Value, Failed>>, NodeCause> {
    let mut replies = run(conn, batch.iter().map(|j| &*j.op)).await?;
    let mut missing: Vec<usize> = (0..batch.len())
        .filter(|&i| matches!(replies[i], Err(Failed::NoScript)))
        .collect();
    if missing.is_empty() {
        return Ok(replies);
    }
    let mut load = redis::pipe();
    for source in SOURCES {
        load.cmd("SCRIPT").arg("LOAD").arg(source);
    }
    // A failed load fails only the requests that needed it (all replies are delivered once
    // this returns, and all fail as timed out if the pipeline's bound passes first).
    let loaded = load.query_async::<()>(conn).await;
    // Checked again now, right before the resend: the round's undo may have passed this node
    // while the scripts loaded.
    let now = Instant::now();
    missing.retain(|&i| {
        let abandoned = batch[i].abandoned(now);
        if abandoned {
            replies[i] = Err(Failed::Cause(NodeCause::Timeout));
        }
        !abandoned
    });
    let again = match loaded {
        Ok(()) if missing.is_empty() => Ok(Vec::new()),
        Ok(()) => run(conn, missing.iter().map(|&i| &*batch[i].op)).await,
        Err(e) => Err(redis_cause(&e)),
    };
    match again {
        Ok(again) => {
            for (&i, reply) in missing.iter().zip(again) {
                replies[i] = reply;
            }
        }
        Err(cause) => {
            for &i in &missing {
                replies[i] = Err(Failed::Cause(cause.clone()));
            }
        }
    }
    Ok(replies)
}

/// One pipeline of `ops`' commands (a lone command is sent as such); one reply per op (a
/// command's error fails only its op).
async fn run<'a>(
    conn: &mut Conn,
    ops: impl ExactSizeIterator<Item = &'a Op> + Clone,
) -> Result<Vec<Result<Value, Failed>>, NodeCause> {
    let count: usize = ops.clone().map(Op::commands).sum();
    if count == 1 {
        let mut ops = ops;
        let Some(op) = ops.next() else {
            return Ok(Vec::new());
        };
        let mut cmds = op.cmds();
        let Some(cmd) = cmds.next() else {
            return Ok(Vec::new());
        };
        let value = match cmd.query_async::<Value>(conn).await {
            Ok(v) => Ok(v),
            // A server's error reply fails the request; anything else, the connection.
            Err(e) => match redis::ServerError::try_from(e) {
                Ok(server) => Err(Failed::from_server(&server)),
                Err(e) => return Err(redis_cause(&e)),
            },
        };
        let mut value = Some(value);
        return Ok(vec![op.reply(|| {
            value
                .take()
                .unwrap_or_else(|| Err(Failed::Cause(protocol("a reply is missing".into()))))
        })]);
    }
    let mut pipe = redis::Pipeline::with_capacity(count);
    pipe.ignore_errors();
    for op in ops.clone() {
        for cmd in op.cmds() {
            pipe.add_command(cmd);
        }
    }
    let values: Vec<Value> = pipe.query_async(conn).await.map_err(|e| redis_cause(&e))?;
    if values.len() != count {
        return Err(protocol(format!(
            "{} replies to {count} commands",
            values.len()
        )));
    }
    let mut values = values.into_iter();
    Ok(ops
        .map(|op| {
            op.reply(|| match values.next() {
                Some(Value::ServerError(e)) => Err(Failed::from_server(&e)),
                Some(v) => Ok(v),
                None => Err(Failed::Cause(protocol(
                    "a pipeline reply is missing".into(),
                ))),
            })
        })
        .collect())
}

/// A compare-and-delete, compare-and-extend or fence script's reply.
fn owned_reply(reply: Value) -> Result<Owned, NodeCause> {
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

/// What a redis error says about the node, in one line.
fn redis_cause(e: &RedisError) -> NodeCause {
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
        assert_eq!(redact("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379/0");
        // A password holding the characters a URL is cut at.
        for pw in ["a@b", "a/b@c", "a?b#c@d"] {
            let shown = redact(&format!("redis+unix:///run/r.sock?db=1&pass={pw}"));
            assert_eq!(shown, "redis+unix:///run/r.sock?db=1&pass=***");
            let shown = redact(&format!("redis://:{pw}@h:1/2"));
            assert!(!shown.contains(pw) && !shown.contains('b'), "{shown}");
        }
        assert!(!redact("redis://:pw@h:notaport").contains("pw"));
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
            Script::Acquire,
            Script::Release,
            Script::Extend,
            Script::Fence,
        ]
        .map(Script::sha);
        assert!(shas.iter().all(|s| s.len() == 40));
        assert_ne!(shas[0], shas[1]);
        assert_ne!(shas[1], shas[2]);
        assert_ne!(shas[2], shas[3]);
    }
}
