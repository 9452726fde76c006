//! [`Cluster`]: the masters as one shared thing — their connections, the validated settings,
//! the release notifications and the background clean-up.
//!
//! Shared behind an `Arc` by every clone and group of a `RedLock`, and by its guards, leases
//! and handed grants. It points at nothing above it (not at the local queues, which hold
//! leases that hold it), so no reference cycle can form: it is dropped with the last
//! `RedLock`, guard or lease, and its background tasks end with it (pending clean-up keeps
//! only the node connections, for at most one TTL).

use std::future::Future;
use std::sync::Arc;

use futures::stream::FuturesUnordered;

use crate::cleanup::Cleanup;
use crate::error::{NodeCause, NodeFailure};
use crate::keys::Keys;
use crate::node::{NodeSpec, Nodes, Op};
use crate::settings::Config;
use crate::wait::WaitStrategy;
use crate::wake::Wakeups;

/// The masters, the settings and the machinery every round uses.
pub(crate) struct Cluster {
    pub(crate) nodes: Arc<Nodes>,
    pub(crate) config: Config,
    pub(crate) wakeups: Wakeups,
    /// Releases still to be confirmed by some node (undos, retries), sent in the background.
    cleanup: Arc<Cleanup>,
}

impl Cluster {
    /// Sets up the connections (made on first use), the notification hub (connected when the
    /// first waiter subscribes) and the clean-up (run when a release is queued).
    pub(crate) fn new(config: Config, specs: Vec<NodeSpec>) -> Arc<Self> {
        let clients = specs
            .iter()
            .map(|s| (s.client.clone(), s.addr.clone()))
            .collect();
        let nodes = Arc::new(Nodes::new(specs, config.node_timeout, config.max_in_flight));
        let wakeups = Wakeups::new(clients, config.node_timeout);
        let cleanup = Cleanup::new(nodes.clone(), config.ttl);
        Arc::new(Cluster {
            nodes,
            config,
            wakeups,
            cleanup,
        })
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s failure, named without credentials.
    pub(crate) fn failure(&self, i: usize, cause: NodeCause) -> NodeFailure {
        self.nodes.failure(i, cause)
    }

    /// Runs `call(nodes, i)` for every node at once; each output comes with its node's index,
    /// in the order the nodes answer. The futures own what they use, so a round can leave its
    /// stragglers to a task of their own.
    pub(crate) fn fan_out<T, F, Fut>(
        &self,
        call: F,
    ) -> FuturesUnordered<impl Future<Output = (usize, T)> + Send + 'static>
    where
        F: Fn(Arc<Nodes>, usize) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        (0..self.len())
            .map(|i| {
                let reply = call(self.nodes.clone(), i);
                async move { (i, reply.await) }
            })
            .collect()
    }

    /// Hands the release `op` on node `i` to the background clean-up, which has already sent
    /// it `failed` times (0: not yet); see [`Cleanup::send`].
    pub(crate) fn clean(&self, i: usize, op: &Arc<Op>, failed: usize) {
        self.cleanup.send(i, op, failed);
    }

    /// Whether waiters of other processes for `keys` learn of a release only by polling:
    /// assumed when we poll (the same setting on every process), and always for sets.
    pub(crate) fn others_poll(&self, keys: &Keys) -> bool {
        keys.wake_key().is_none() || self.config.wait_strategy == WaitStrategy::Poll
    }

    /// Tells waiters of other processes that `keys` may be free: a bare PUBLISH of
    /// [`RECHECK`](crate::wake::RECHECK) on each key's channel on every node (it deleted
    /// nothing itself, so a waiter woken by it reads the holder's lease on its next attempt).
    pub(crate) async fn announce(&self, keys: &Keys) {
        let channels: Vec<String> = keys.wake_keys().map(|k| crate::wake::channel(k)).collect();
        let each = (0..self.len()).flat_map(|i| channels.iter().map(move |c| (i, c)));
        futures::future::join_all(each.map(|(i, c)| self.nodes.publish(i, c))).await;
    }

    /// [`announce`](Self::announce) in a task of its own on the current runtime (nothing is
    /// announced without one: waiters of other processes then find out by polling).
    pub(crate) fn spawn_announce(self: &Arc<Self>, keys: Keys) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let cluster = self.clone();
            rt.spawn(async move { cluster.announce(&keys).await });
        }
    }
}
