//! Release notifications: one PubSub connection per node, shared by every waiter of the
//! process, subscribed per channel while at least one local waiter needs it.
//!
//! PubSub is at-most-once: a disconnect, a failover or a lease that simply expires publishes
//! nothing. A lost notification only costs time, never safety: waiters also poll and wake when
//! the holder's lease runs out. After a reconnect every waiter is woken to re-check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::Client;
use tokio::sync::{mpsc, oneshot, watch};

/// The PubSub channel a key's release is announced on (the release script publishes there).
pub(crate) fn channel(redis_key: &str) -> String {
    format!("{redis_key}:released")
}

enum Command {
    Subscribe(Arc<str>, oneshot::Sender<()>),
    Unsubscribe(Arc<str>),
}

struct Channel {
    waiters: usize,
    /// Bumped on every notification (and after every reconnect).
    version: watch::Sender<u64>,
}

struct Registry {
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    /// One command queue per node task, started on first use.
    nodes: OnceLock<Vec<mpsc::UnboundedSender<Command>>>,
    clients: Vec<Client>,
    /// Whether each node's subscription connection is up (only those are waited for).
    connected: Box<[std::sync::atomic::AtomicBool]>,
    timeout: Duration,
}

/// The release-notification hub of one `RedLock` (shared by its clones and groups).
#[derive(Clone)]
pub(crate) struct Wakeups(Arc<Registry>);

impl Wakeups {
    /// No connection is made until the first waiter subscribes.
    pub(crate) fn new(clients: Vec<Client>, timeout: Duration) -> Self {
        let connected = clients
            .iter()
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect();
        Wakeups(Arc::new(Registry {
            channels: Mutex::new(HashMap::new()),
            nodes: OnceLock::new(),
            clients,
            connected,
            timeout,
        }))
    }

    fn nodes(&self) -> &[mpsc::UnboundedSender<Command>] {
        self.0.nodes.get_or_init(|| {
            self.0
                .clients
                .iter()
                .enumerate()
                .map(|(i, client)| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(node_task(
                        i,
                        client.clone(),
                        Arc::downgrade(&self.0),
                        rx,
                        self.0.timeout,
                    ));
                    tx
                })
                .collect()
        })
    }

    /// Registers interest in `channel` and, for the first local subscriber, waits (bounded by
    /// the node timeout) until the connected nodes confirmed it, so that a release published
    /// after this returns is seen. Nodes whose subscription connection is down are not waited
    /// for: when it comes back it resubscribes and wakes every waiter.
    ///
    /// # Cancel safety
    /// Dropping the future drops the subscription.
    pub(crate) async fn subscribe(&self, channel: &str) -> Subscription {
        let channel: Arc<str> = channel.into();
        let mut acks = Vec::new();
        let version = {
            let mut channels = lock(&self.0.channels);
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                waiters: 0,
                version: watch::channel(0).0,
            });
            entry.waiters += 1;
            if entry.waiters == 1 {
                // Sent under the lock so a concurrent last-unsubscribe cannot overtake it.
                for (i, node) in self.nodes().iter().enumerate() {
                    let (tx, rx) = oneshot::channel();
                    let sent = node.send(Command::Subscribe(channel.clone(), tx)).is_ok();
                    // A node that is not connected resubscribes everything when it is, and
                    // then wakes every waiter: no need to wait for it.
                    let up = self
                        .0
                        .connected
                        .get(i)
                        .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst));
                    if sent && up {
                        acks.push(rx);
                    }
                }
            }
            entry.version.subscribe()
        };
        let sub = Subscription {
            hub: self.clone(),
            channel,
            version,
        };
        if !acks.is_empty() {
            // Every node's confirmation, or the node timeout: a node that is down cannot
            // publish anyway, and polling covers it.
            let _ = tokio::time::timeout(self.0.timeout, futures::future::join_all(acks)).await;
        }
        sub
    }
}

/// A waiter's interest in one channel; the last one dropped unsubscribes the nodes.
pub(crate) struct Subscription {
    hub: Wakeups,
    channel: Arc<str>,
    version: watch::Receiver<u64>,
}

impl Subscription {
    /// Completes at the next notification after the last call (or after subscribing).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn notified(&mut self) {
        if self.version.changed().await.is_err() {
            // The channel entry cannot go away while we hold it; never wake spuriously.
            std::future::pending::<()>().await;
        }
    }

    /// Forgets notifications seen so far (called before each attempt).
    pub(crate) fn mark_seen(&mut self) {
        self.version.borrow_and_update();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = lock(&self.hub.0.channels);
        let last = match channels.get_mut(&self.channel) {
            Some(entry) => {
                entry.waiters -= 1;
                entry.waiters == 0
            }
            None => false,
        };
        if last {
            channels.remove(&self.channel);
            // Sent under the lock, like subscribe, so the nodes see them in the same order.
            if let Some(nodes) = self.hub.0.nodes.get() {
                for node in nodes {
                    let _ = node.send(Command::Unsubscribe(self.channel.clone()));
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes every waiter of `channel` (or of every channel).
fn bump(registry: &Registry, channel: Option<&str>) {
    let channels = lock(&registry.channels);
    match channel {
        Some(name) => {
            if let Some(c) = channels.get(name) {
                c.version.send_modify(|v| *v += 1);
            }
        }
        None => channels
            .values()
            .for_each(|c| c.version.send_modify(|v| *v += 1)),
    }
}

/// How a subscription request to one node went.
enum Applied {
    Ok,
    /// Timed out or the connection broke: reconnect.
    Broken,
    /// The server refused (e.g. an ACL user without channel rights): it never will accept.
    Refused(String),
}

async fn apply(
    timeout: Duration,
    op: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Applied {
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(())) => Applied::Ok,
        Ok(Err(e)) if e.kind() != redis::ErrorKind::Io && !e.is_timeout() => {
            Applied::Refused(e.to_string())
        }
        _ => Applied::Broken,
    }
}

/// Owns node `i`'s PubSub connection: applies (un)subscriptions, forwards messages, and after a
/// disconnect reconnects, resubscribes every registered channel and wakes all waiters.
/// Ends when the `RedLock` is dropped.
async fn node_task(
    i: usize,
    client: Client,
    registry: Weak<Registry>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    timeout: Duration,
) {
    let mut backoff = Duration::ZERO;
    loop {
        set_connected(&registry, i, false);
        if !backoff.is_zero() {
            tokio::time::sleep(backoff).await;
        }
        backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if registry.strong_count() == 0 {
            return;
        }
        // Requests queued while disconnected are covered by the snapshot below; their waiters
        // stopped waiting for an acknowledgement long ago.
        while let Ok(cmd) = commands.try_recv() {
            drop(cmd);
        }
        let connect = tokio::time::timeout(
            timeout.max(Duration::from_millis(500)),
            client.get_async_pubsub(),
        );
        let (mut sink, mut stream) = match connect.await {
            Ok(Ok(pubsub)) => pubsub.split(),
            failed => {
                let cause = failed
                    .err()
                    .map_or("timed out".to_owned(), |e| e.to_string());
                tracing::debug!(node = i, cause, "pubsub connect failed; retrying");
                continue;
            }
        };
        let Some(reg) = registry.upgrade() else {
            return;
        };
        let current: Vec<Arc<str>> = lock(&reg.channels).keys().cloned().collect();
        drop(reg);
        if !current.is_empty() {
            let names: Vec<&str> = current.iter().map(|c| &**c).collect();
            match apply(timeout, sink.subscribe(&names)).await {
                Applied::Ok => {}
                Applied::Broken => continue,
                Applied::Refused(why) => return refused(i, &why, commands).await,
            }
        }
        backoff = Duration::ZERO;
        set_connected(&registry, i, true);
        // Anything published while we were away is lost: everyone re-checks.
        if let Some(reg) = registry.upgrade() {
            bump(&reg, None);
        }
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    // A node that does not confirm within the timeout (frozen, partitioned) is
                    // treated as disconnected: reconnecting resubscribes everything.
                    let applied = match cmd {
                        None => return,
                        Some(Command::Subscribe(ch, ack)) => {
                            let applied = apply(timeout, sink.subscribe(&*ch)).await;
                            if matches!(applied, Applied::Ok) {
                                let _ = ack.send(());
                            }
                            applied
                        }
                        Some(Command::Unsubscribe(ch)) => apply(timeout, sink.unsubscribe(&*ch)).await,
                    };
                    match applied {
                        Applied::Ok => {}
                        Applied::Broken => break,
                        Applied::Refused(why) => return refused(i, &why, commands).await,
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => match registry.upgrade() {
                        Some(reg) => bump(&reg, Some(msg.get_channel_name())),
                        None => return,
                    },
                    None => break,
                },
            }
        }
        tracing::debug!(node = i, "pubsub connection lost; reconnecting");
        if let Some(reg) = registry.upgrade() {
            bump(&reg, None);
        }
    }
}

/// The node refuses subscriptions for good: waiters fall back to polling for it. Keeps
/// draining requests (without acknowledging them) until the `RedLock` is dropped.
async fn refused(i: usize, why: &str, mut commands: mpsc::UnboundedReceiver<Command>) {
    tracing::warn!(
        node = i,
        why,
        "node refuses SUBSCRIBE (ACL without channel rights?); waiters poll it instead"
    );
    while commands.recv().await.is_some() {}
}

fn set_connected(registry: &Weak<Registry>, i: usize, up: bool) {
    if let Some(reg) = registry.upgrade() {
        if let Some(flag) = reg.connected.get(i) {
            flag.store(up, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
