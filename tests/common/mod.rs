//! Shared set-up for the integration tests: real redis-server processes via the testkit.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use redquorum::testkit::LocalCluster;
use redquorum::{Context, Error, LockGuard, RedLock, RedLockBuilder, Retry};

/// The bound on every wait whose length is not the behaviour under test (a subscription to
/// appear, a background release to land, an acquire that must succeed): only a hang guard.
/// Five minutes is far beyond anything a loaded 2-core machine needs (the whole suite runs in
/// a few minutes there) and still ends a hung test instead of stalling CI for ever. Tests wait
/// on the condition itself and go on the moment it holds; nothing ever sleeps this long.
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// Heavy tests (10 000 waiters, the chaos soak, the soak across processes) load both cores for
/// a long time; tests with a tight bound beside them would fail on load, not on behaviour.
/// `scripts/test` runs test binaries one after another, so only tests in the *same* binary can
/// meet: in a binary with a heavy test, the heavy test holds this lock for writing and every
/// other test for reading. Light tests still run in parallel with each other; a heavy test runs
/// alone (the lock is fair: once a heavy test waits, no new light test starts before it). One
/// lock per test binary (each compiles its own `common`). A tokio lock, so that holding it
/// across `.await` is fine and a failing test (panic) does not poison it.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Taken by a heavy test for its whole run: see [`HEAVY`].
pub async fn heavy() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    HEAVY.write().await
}

/// Taken by every other test in a binary that has a heavy test: see [`HEAVY`].
pub async fn light() -> tokio::sync::RwLockReadGuard<'static, ()> {
    HEAVY.read().await
}

/// [`heavy`] for a synchronous `#[test]`.
pub fn heavy_blocking() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    HEAVY.blocking_write()
}

/// [`light`] for a synchronous `#[test]`.
pub fn light_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    HEAVY.blocking_read()
}

/// A context for an acquire that is expected to succeed: its deadline is only a hang guard.
/// Tests whose deadline is the behaviour (a timeout) use [`ctx`] with their figure.
pub fn patient() -> Context {
    Context::with_timeout(HANG_GUARD)
}

/// Polls `cond` (every few milliseconds) until it holds; fails the test, saying `what` was
/// awaited, only after [`HANG_GUARD`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting after {HANG_GUARD:?} (hang guard): {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `n` real redis-server processes, failing the test with the testkit's message
/// (which says how to install redis-server) if that is impossible.
pub fn cluster(n: usize) -> LocalCluster {
    LocalCluster::start(n)
        .unwrap_or_else(|e| panic!("cannot start {n} redis-server processes: {e}"))
}

/// A builder for `cluster` with settings that tolerate a loaded 2-core CI machine:
/// a generous node timeout and quick polling.
pub fn builder(cluster: &LocalCluster) -> RedLockBuilder {
    RedLock::builder()
        .nodes(cluster.urls())
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_millis(250))
        .retry(Retry::exponential(
            Duration::from_millis(2),
            Duration::from_millis(20),
        ))
}

pub async fn locks(cluster: &LocalCluster) -> RedLock {
    builder(cluster).build().await.expect("build RedLock")
}

/// `locks` with a lease (2 × [`HANG_GUARD`]) that outlasts every wait of a test: a key still
/// there when a wait ends was left behind, it cannot have been about to expire, and a key
/// gone was released, not expired.
pub async fn long_lease(cluster: &LocalCluster) -> RedLock {
    builder(cluster)
        .ttl(HANG_GUARD * 2)
        .build()
        .await
        .expect("build RedLock")
}

/// `cluster` with a `FaultProxy` in front of every node (for latency, blackholes, cuts).
pub fn proxied(n: usize) -> LocalCluster {
    LocalCluster::builder()
        .nodes(n)
        .proxied(true)
        .start()
        .unwrap_or_else(|e| panic!("cannot start {n} proxied redis-server processes: {e}"))
}

/// Runs one raw command on node `i`, past any proxy (to set up a node's state by hand).
pub fn raw(cluster: &LocalCluster, i: usize, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    query(cluster, i, &cmd, "raw command")
}

/// A plain synchronous connection to node `i`, to look at what the lock left there: a new one
/// each call (for a one-off look; the helpers below keep one per node instead).
pub fn conn(cluster: &LocalCluster, i: usize) -> redis::Connection {
    let url = cluster.direct_url(i).expect("node index");
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connect to node")
}

/// The client name of the connections kept by these helpers.
const HELPER_NAME: &str = "redquorum-test-helper";

/// Clients connected to node `i` other than the test's own helpers (the connections kept here
/// and the testkit's, which reads command stats).
pub fn clients(cluster: &LocalCluster, i: usize) -> usize {
    client_list(cluster, i)
        .lines()
        .filter(|l| {
            !l.split(' ')
                .any(|f| f == format!("name={HELPER_NAME}") || f == "name=redquorum-testkit")
        })
        .count()
}

/// At most this many kept connections (clusters of finished tests leave theirs behind; past
/// this the cache is emptied, and connections in use live on until their query ends).
const KEPT_CONNECTIONS: usize = 64;

type Kept = Arc<Mutex<Option<redis::Connection>>>;

/// The connection kept for `url` (one per node: node ports are not reused within a process).
fn kept(url: &str) -> Kept {
    static KEPT: OnceLock<Mutex<HashMap<String, Kept>>> = OnceLock::new();
    let mut map = KEPT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if map.len() >= KEPT_CONNECTIONS && !map.contains_key(url) {
        map.clear();
    }
    map.entry(url.to_owned()).or_default().clone()
}

/// Runs `cmd` on node `i` over the connection kept for it, so polling helpers do not open a
/// TCP connection per poll. A failed kept connection (the node restarted) is replaced and the
/// command sent once more on the new one; `what` names the command if that fails too.
fn query<T: redis::FromRedisValue>(
    cluster: &LocalCluster,
    i: usize,
    cmd: &redis::Cmd,
    what: &str,
) -> T {
    let url = cluster.direct_url(i).expect("node index");
    let kept = kept(&url);
    let mut slot = kept.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = slot.as_mut() {
        match cmd.query(c) {
            Ok(value) => return value,
            Err(_) => *slot = None,
        }
    }
    let mut c = conn(cluster, i);
    // Named, so that counts of a node's clients can leave it out (see `clients`).
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(HELPER_NAME)
        .query::<()>(&mut c)
        .unwrap_or_else(|e| panic!("naming the helper connection to node {i}: {e}"));
    let value = cmd
        .query(&mut c)
        .unwrap_or_else(|e| panic!("{what} on node {i}: {e}"));
    *slot = Some(c);
    value
}

/// `INFO section` of node `i` (over the kept connection).
pub fn info(cluster: &LocalCluster, i: usize, section: &str) -> String {
    query(cluster, i, redis::cmd("INFO").arg(section), "INFO")
}

/// Calls of `command` (lower case) node `i` ran since it started, 0 if never.
pub fn calls(cluster: &LocalCluster, i: usize, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info(cluster, i, "commandstats")
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `CLIENT LIST` of node `i`: one line per connection, the helpers' own included.
pub fn client_list(cluster: &LocalCluster, i: usize) -> String {
    query(cluster, i, redis::cmd("CLIENT").arg("LIST"), "CLIENT LIST")
}

/// Closes every subscription connection node `i` has (`CLIENT KILL TYPE pubsub`; the
/// helpers' connections never subscribe) and returns how many there were.
pub fn kill_subscriptions(cluster: &LocalCluster, i: usize) -> i64 {
    query(
        cluster,
        i,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
        "CLIENT KILL",
    )
}

/// The value of `key` on node `i`.
pub fn get(cluster: &LocalCluster, i: usize, key: &str) -> Option<String> {
    query(cluster, i, redis::cmd("GET").arg(key), "GET")
}

/// Remaining TTL of `key` on node `i` in ms (-2 absent, -1 no expiry).
pub fn pttl(cluster: &LocalCluster, i: usize, key: &str) -> i64 {
    query(cluster, i, redis::cmd("PTTL").arg(key), "PTTL")
}

/// Every key on every running node.
pub fn all_keys(cluster: &LocalCluster) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for i in 0..cluster.len() {
        if !cluster.is_running(i) {
            continue;
        }
        let keys: Vec<String> = query(cluster, i, redis::cmd("KEYS").arg("*"), "KEYS");
        out.extend(keys.into_iter().map(|k| (i, k)));
    }
    out
}

/// Waits (polling, bounded) until no node holds any key: background releases are spawned
/// tasks with no completion signal visible to the caller. `within` is a hang guard unless the
/// test says otherwise: pass [`HANG_GUARD`], or a shorter figure only where "gone by then" is
/// what the test checks (and say why it holds on a loaded machine).
pub async fn wait_until_no_keys(cluster: &LocalCluster, within: Duration) -> Vec<(usize, String)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let keys = all_keys(cluster);
        if keys.is_empty() || tokio::time::Instant::now() >= deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn ctx(timeout_ms: u64) -> redquorum::Context {
    redquorum::Context::with_timeout(Duration::from_millis(timeout_ms))
}

/// Commands the running nodes processed, for before/after comparisons (see
/// `CommandStats::since`, which leaves out the INFO calls that read them).
pub fn command_stats(cluster: &LocalCluster) -> redquorum::testkit::CommandStats {
    cluster.command_stats().expect("INFO")
}

pub fn numsub(c: &LocalCluster, i: usize, channel: &str) -> i64 {
    let (_, n): (String, i64) = query(
        c,
        i,
        redis::cmd("PUBSUB").arg("NUMSUB").arg(channel),
        "PUBSUB NUMSUB",
    );
    n
}

pub fn channels(c: &LocalCluster, i: usize) -> Vec<String> {
    query(
        c,
        i,
        redis::cmd("PUBSUB").arg("CHANNELS"),
        "PUBSUB CHANNELS",
    )
}

/// Waits until every node reports `want` subscribers on `channel` (subscription changes are
/// applied by background tasks; there is no signal to wait on from outside). Gives up, returning
/// false, only after [`HANG_GUARD`].
pub async fn until_numsub(c: &LocalCluster, channel: &str, want: i64) -> bool {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while tokio::time::Instant::now() < deadline {
        if (0..c.len()).all(|i| numsub(c, i, channel) == want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A task waiting for a lock: what `tokio::spawn` of an `acquire` returns.
pub type Waiting = tokio::task::JoinHandle<Result<LockGuard, Error>>;

/// Starts a task of `waiter` acquiring `key` within `ctx`, and returns it once the waiter is
/// subscribed on every node.
pub async fn awaited(
    c: &LocalCluster,
    waiter: &RedLock,
    key: &'static str,
    ctx: Context,
) -> Waiting {
    let channel = format!("{}:released", waiter.redis_key(key).expect("key"));
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire(&ctx, key).await })
    };
    assert!(
        until_numsub(c, &channel, 1).await,
        "waiter never subscribed"
    );
    task
}

/// Waits until the nodes ran a SET each twice since `before`: a single-key waiter's first
/// attempt and its re-check after subscribing. From then on it waits for a notification.
pub async fn until_rechecked(c: &LocalCluster, before: &redquorum::testkit::CommandStats) {
    let want = 2 * c.len() as u64;
    eventually("the waiter re-checks after subscribing", || {
        command_stats(c).since(before).calls("set") >= want
    })
    .await;
}

/// `holder` takes `key`; then a task of `waiter` waits for it, and this returns once that
/// waiter is subscribed on every node and has re-checked after subscribing (the guard, the
/// waiting task).
pub async fn held_and_awaited(
    c: &LocalCluster,
    holder: &RedLock,
    waiter: &RedLock,
    key: &'static str,
) -> (LockGuard, Waiting) {
    let g = holder.try_acquire(key).await.expect("ok").expect("free");
    // Every node's grant in before counting the waiter's SETs.
    eventually("the holder's grant on every node", || {
        g.granted_nodes() == c.len()
    })
    .await;
    let before = command_stats(c);
    let task = awaited(c, waiter, key, patient()).await;
    until_rechecked(c, &before).await;
    (g, task)
}

/// What a test's tracing subscriber wrote (see [`log_subscriber`]).
pub type Log = Arc<Mutex<Vec<u8>>>;

/// A tracing subscriber (plain text, events that `filter` lets through, an `EnvFilter`
/// directive such as `"warn"` or `"redquorum=debug"`) writing into the returned [`Log`]; the
/// test installs it for its thread or for the whole binary.
pub fn log_subscriber(filter: &str) -> (Log, impl tracing::Subscriber + Send + Sync + 'static) {
    let log = Log::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(move || LogSink(sink.clone()))
        .finish();
    (log, subscriber)
}

/// The writer behind [`log_subscriber`].
struct LogSink(Log);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
