//! The Redis masters: one self-reconnecting multiplexed connection per node, every request
//! bounded by the node timeout and by the shared in-flight semaphore.
//!
//! - [`op`]: one request (script, keys, arguments) and its reply;
//! - [`direct`]: a request sent by its caller's task, when its node is idle;
//! - [`sender`]: each node's sender task, which pipelines requests while the node is busy;
//! - [`wire`]: a batch of requests on a connection, with the NOSCRIPT reload;
//! - [`link`]: each node's connection, identified by its server's `run_id`;
//! - [`spec`]: node URLs, parsed and shown without credentials;
//! - [`cause`]: what a failure says about the node.

mod cause;
mod direct;
mod link;
mod op;
mod sender;
mod spec;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, NodeCause, NodeFailure};
use crate::quorum::{Decision, Tally, Vote};
pub(crate) use cause::redis_cause;
use direct::{Counted, Direct, Load};
use link::{Identities, Link};
use op::{grant_reply, owned_reply};
pub(crate) use op::{Grant, Op, Owned};
use sender::{serve, Job, RUNTIME_GONE};
pub(crate) use spec::{redact, NodeSpec};

struct Node {
    addr: Arc<str>,
    link: Arc<Link>,
    /// To this node's sender task (see [`serve`]).
    jobs: mpsc::UnboundedSender<Job>,
    /// Its requests not answered yet: a request goes straight to the connection when there
    /// are none, to the sender task otherwise.
    load: Arc<Load>,
}

/// All nodes of a [`RedLock`](crate::RedLock), shared by its clones and groups.
pub(crate) struct Nodes {
    nodes: Box<[Node]>,
    ids: Arc<Identities>,
    permits: Semaphore,
    timeout: Duration,
    /// Whether a request may go straight to an idle node's connection (see
    /// [`request`](Self::request)): on a multi-thread runtime only.
    direct: bool,
}

impl Nodes {
    /// Creates the connections without waiting for them; each connects (and is identified) on
    /// first use and again after a failure. Spawns one sender task per node on the current
    /// runtime (it ends when the `Nodes` is dropped).
    pub(crate) fn new(specs: Vec<NodeSpec>, timeout: Duration, max_in_flight: usize) -> Self {
        let ids = Arc::new(Identities::new(
            specs.iter().map(|s| s.addr.clone()).collect(),
            specs.iter().map(|s| s.shown.clone()).collect(),
        ));
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
                    load: Arc::default(),
                }
            })
            .collect();
        Nodes {
            nodes,
            ids,
            permits: Semaphore::new(max_in_flight),
            timeout,
            // On a current-thread runtime the hop through the sender task is a task switch on
            // the same thread, not a wake-up of another worker, so there is little to save;
            // and there the sender's check (an acquire whose caller gave up is not sent) runs
            // after whatever else the thread had to do first, which the direct path, handing
            // the request to redis-rs at once, would give up (tests/frozen.rs,
            // `an_abandoned_request_is_a_timeout_not_a_dead_runtime`).
            direct: tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread,
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
                self.ids.shown(of),
                self.ids.shown(i)
            )));
        }
        if tally.decision() != Decision::Reached {
            return Err(Error::NoQuorum {
                op: crate::error::Operation::Connect,
                key: String::new(),
                answered: tally.yes,
                confirmed: tally.yes,
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
    ) -> Result<impl redis::aio::ConnectionLike + Send, NodeCause> {
        self.nodes[i].link.get().await
    }

    /// Each node's client and URL without credentials (for `RedLock::check`).
    pub(crate) fn clients(&self) -> Vec<(redis::Client, Arc<str>)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.link.client().clone(), self.ids.shown(i).clone()))
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

    /// Node `i`'s reply to `op`, within the node timeout (see [`request`](Self::request)).
    async fn call(&self, i: usize, op: &Arc<Op>) -> Result<Value, NodeCause> {
        let started = Instant::now();
        let reply = self.bounded(self.timeout, self.request(i, op)).await;
        crate::telemetry::node_request(self.addr(i), started.elapsed(), reply.as_ref().err());
        reply
    }

    /// Sends `op` to node `i` and waits for its reply (no permit, no timeout: the caller bounds
    /// it): straight on the connection when the node has no other request queued or in flight
    /// (one task hop less: the uncontended case), else through the node's sender task, which
    /// pipelines it with the others.
    async fn request(&self, i: usize, op: &Arc<Op>) -> Result<Value, NodeCause> {
        let node = &self.nodes[i];
        let (counted, idle) = node.load.count();
        // A closed queue means the runtime is gone: `queue` says so.
        if self.direct && idle && !node.jobs.is_closed() {
            Direct::new(node.link.clone(), op.clone(), self.timeout, counted).await
        } else {
            self.queue(i, op, counted).await
        }
    }

    /// Queues `op` for node `i`'s next batch and waits for its reply (no permit, no timeout:
    /// the caller bounds it).
    async fn queue(&self, i: usize, op: &Arc<Op>, counted: Counted) -> Result<Value, NodeCause> {
        let (reply, replied) = oneshot::channel();
        let job = Job {
            op: op.clone(),
            deadline: Instant::now() + self.timeout,
            reply,
            _counted: counted,
        };
        // The sender task answers every job it takes, even one it does not send; it drops
        // them unanswered only when it ends, with its runtime (it outlives every caller
        // otherwise).
        let gone = || NodeCause::Redis(RUNTIME_GONE.into());
        self.nodes[i].jobs.send(job).map_err(|_| gone())?;
        replied.await.unwrap_or_else(|_| Err(gone()))
    }

    pub(crate) async fn acquire(&self, i: usize, op: &Arc<Op>) -> Result<Grant, NodeCause> {
        grant_reply(self.call(i, op).await?)
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
                let queued = ops.iter().map(|op| {
                    let (counted, _idle) = self.nodes[i].load.count();
                    self.queue(i, op, counted)
                });
                Ok(futures::future::join_all(queued).await)
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

    /// `ZSCORE key member` on node `i`: `Some(member)` when it is in the sorted set.
    pub(crate) async fn member(
        &self,
        i: usize,
        key: &str,
        member: &str,
    ) -> Result<Option<String>, NodeCause> {
        let link = &self.nodes[i].link;
        let cmd = redis::cmd("ZSCORE").arg(key).arg(member).to_owned();
        let found = self
            .bounded(self.timeout, async move {
                cmd.query_async::<Option<String>>(&mut link.get().await?)
                    .await
                    .map_err(|e| redis_cause(&e))
            })
            .await?;
        Ok(found.map(|_| member.to_owned()))
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
