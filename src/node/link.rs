//! A node's connection: made on first use, identified by its server's `run_id` before it
//! carries a request, made again after it breaks.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisFuture, Value};

use super::cause::redis_cause;
use crate::error::NodeCause;

/// What each node's server is, as far as it has been identified (`INFO server` `run_id`), so
/// that one server never counts as several votes however its URLs differ (`localhost` and
/// `127.0.0.1`, a proxy, a DNS alias).
///
/// A node is identified on every new connection, before that connection carries any request
/// (a restarted server has a new `run_id`). A node found to reach the same server as another
/// node is a duplicate for good: it never votes again, whatever it later reports (the two URLs
/// were seen to lead to one server; a configuration like that needs fixing, not waiting out).
pub(super) struct Identities {
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
    /// Nodes with these addresses (for errors) and URLs (redacted, for logs), none identified.
    pub(super) fn new(addrs: Box<[Arc<str>]>, shown: Box<[Arc<str>]>) -> Self {
        Identities {
            ids: std::sync::Mutex::new(vec![Identity::Unknown; addrs.len()]),
            addrs,
            shown,
        }
    }

    /// Node `i`'s URL without credentials.
    pub(super) fn shown(&self, i: usize) -> &Arc<str> {
        &self.shown[i]
    }

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
    pub(super) fn duplicate_of(&self, i: usize) -> Option<usize> {
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
pub(super) struct Link {
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
    pub(super) fn new(
        i: usize,
        client: Client,
        timeout: Duration,
        ids: Arc<Identities>,
    ) -> Arc<Self> {
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
    /// The client this link connects with.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) async fn get(self: &Arc<Self>) -> Result<Conn, NodeCause> {
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
pub(super) struct Conn {
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
