//! Release notifications: one PubSub connection per node, shared by every waiter of the
//! process, subscribed per channel while at least one local waiter needs it.
//!
//! # When a notification can be lost, and how a waiter knows
//! PubSub is at-most-once, but only across connections: a live connection delivers every
//! message published on a channel it is subscribed to, in order. So a notification is lost
//! only when (a) the subscription connection dies, (b) it hangs (a frozen or partitioned node,
//! a half-open socket), or (c) the channel was not subscribed yet. (a) is a dead socket; (b) is
//! found by a PING on each connection every [`HEALTH_INTERVAL`] (a cost per node and process,
//! not per waiter), which, unanswered within [`health_timeout`], drops the connection as in
//! (a); (c) is closed by the waiters' subscribe-then-recheck. Each connection's life is an
//! *epoch*: a channel counts as covered on node `i` only if it was confirmed subscribed in the
//! epoch node `i` is live in now ([`Subscription::covered`]). Losing a connection ends its
//! epoch and wakes every waiter of the process to re-check; reconnecting resubscribes every
//! channel in a new epoch and wakes them again (anything published meanwhile is lost).
//!
//! What no connection can tell: a lease that expires (the waiter knows the holder's remaining
//! PTTL instead) and a key removed by something that does not publish (`DEL` by hand, another
//! library): the waiter's safety poll bounds that (see `wait.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::Client;
use tokio::sync::{mpsc, oneshot, watch};

/// The payload of an announcement that deleted nothing itself ("the key may be free: look"):
/// a waiter woken by it reads the holder's remaining lease on its next attempt, as after any
/// re-check. A release script's announcement (it deleted the key) carries an empty payload.
pub(crate) const RECHECK: &str = "recheck";

/// The PubSub channel a key's release is announced on (the release script builds the same
/// name: `KEYS[i] .. ':released'`).
pub(crate) fn channel(redis_key: &str) -> String {
    format!("{redis_key}:released")
}

enum Command {
    Subscribe(Arc<str>, oneshot::Sender<()>),
    Unsubscribe(Arc<str>),
}

/// How often each subscription connection is checked with a PING: a connection that hangs
/// is found within this plus [`health_timeout`], and its waiters re-check.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a health-check PING may take: the node timeout, but at least a second, so that a
/// loaded machine does not drop healthy connections (each drop wakes every waiter).
pub(crate) fn health_timeout(node_timeout: Duration) -> Duration {
    node_timeout.max(Duration::from_secs(1))
}

struct Channel {
    waiters: usize,
    /// What happened on the channel: releases announced, and wake-ups to re-check (a
    /// subscription connection lost or re-established: messages may have been lost).
    version: watch::Sender<Events>,
    /// Per node, the epoch of the connection on which the subscription was confirmed (0:
    /// never). Written by the node's task under the registry's lock.
    confirmed: Box<[u64]>,
}

/// The wake-up registry: channels with local waiters, and each node's connection epoch.
///
/// # Invariants
/// 1. A channel is in `channels` exactly while at least one [`Subscription`] for it lives
///    (`waiters` counts them); the first subscriber sends `Subscribe` to every node task and
///    the last one's drop removes the entry and sends `Unsubscribe`, both under the lock, so
///    every node task sees a channel's commands in the order they were made.
/// 2. `confirmed[i] == e` only if node `i`'s task saw the server confirm the subscription on
///    the connection of epoch `e`; `live[i]` is that connection's epoch while it is up, 0
///    otherwise. A channel is covered on node `i` only when both agree (see
///    [`Subscription::covered`]).
/// 3. Every change of a node's epoch (a connection lost, or made and resubscribed) bumps every
///    channel's `rechecks`, so no waiter keeps trusting a coverage that ended.
///
/// # Deadlock safety
/// `channels`' mutex is a leaf: under it only unbounded channel sends and `watch` updates
/// happen (neither blocks nor takes a lock of ours), and nothing is awaited. The local queue
/// drops subscriptions outside its own lock (see `queue.rs`), so the two are never nested.
struct Registry {
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    /// One command queue per node task, started on first use.
    nodes: OnceLock<Vec<mpsc::UnboundedSender<Command>>>,
    clients: Vec<Client>,
    /// The nodes' addresses, without credentials (metrics labels).
    addrs: Vec<Arc<str>>,
    /// Per node, the epoch of its live subscription connection, 0 while it has none (down,
    /// reconnecting, refused). Only the node's task writes it.
    ///
    /// # Memory ordering
    /// A node's task stores a new epoch (Release) only after it recorded, under `channels`'
    /// lock, every channel it subscribed in that epoch; and stores 0 (Release) before it
    /// wakes the waiters of a lost connection. A reader (Acquire) that sees epoch `e` therefore
    /// sees every `confirmed[i] == e` written before it, and a reader woken by a loss sees 0.
    /// A stale read can only under-count coverage for a moment (the waiter then polls), or
    /// over-count it until the wake-up that follows every loss makes the waiter look again.
    live: Box<[AtomicU64]>,
    timeout: Duration,
}

/// The release-notification hub of one `RedLock` (shared by its clones and groups).
#[derive(Clone)]
pub(crate) struct Wakeups(Arc<Registry>);

impl Wakeups {
    /// No connection is made until the first waiter subscribes. `nodes`: each node's client
    /// and its address without credentials.
    pub(crate) fn new(nodes: Vec<(Client, Arc<str>)>, timeout: Duration) -> Self {
        let live = nodes.iter().map(|_| AtomicU64::new(0)).collect();
        let (clients, addrs) = nodes.into_iter().unzip();
        Wakeups(Arc::new(Registry {
            channels: Mutex::new(HashMap::new()),
            nodes: OnceLock::new(),
            clients,
            addrs,
            live,
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
            let n = self.0.clients.len();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                waiters: 0,
                version: watch::channel(Events::default()).0,
                confirmed: vec![0; n].into(),
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
                        .live
                        .get(i)
                        .is_some_and(|e| e.load(Ordering::Acquire) != 0);
                    if sent && up {
                        acks.push(rx);
                    }
                }
            }
            entry.version.subscribe()
        };
        let seen = *version.borrow();
        let sub = Subscription {
            hub: self.clone(),
            channel,
            version,
            seen,
        };
        if !acks.is_empty() {
            // Every node's confirmation, or the node timeout: a node that is down cannot
            // publish anyway, and polling covers it.
            let _ = tokio::time::timeout(self.0.timeout, futures::future::join_all(acks)).await;
        }
        sub
    }
}

/// Counts of what a channel's waiters were woken for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Events {
    /// Release announcements received (from any node).
    releases: u64,
    /// Wake-ups to re-check: a subscription connection was lost or re-established.
    rechecks: u64,
}

/// Why a waiter was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A release was announced on the key's channel.
    Release,
    /// Only a re-check: messages may have been lost (a connection came or went).
    Recheck,
}

/// A waiter's interest in one channel; the last one dropped unsubscribes the nodes.
pub(crate) struct Subscription {
    hub: Wakeups,
    channel: Arc<str>,
    version: watch::Receiver<Events>,
    /// What had happened when the waiter last looked (see [`mark_seen`](Self::mark_seen)).
    seen: Events,
}

impl Subscription {
    /// Completes at the next event after the last [`mark_seen`](Self::mark_seen) (or after
    /// subscribing), saying whether a release was among what happened since.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn notified(&mut self) -> Wake {
        if self.version.changed().await.is_err() {
            // The channel entry cannot go away while we hold it; never wake spuriously.
            std::future::pending::<()>().await;
        }
        if self.version.borrow().releases != self.seen.releases {
            Wake::Release
        } else {
            Wake::Recheck
        }
    }

    /// Release announcements received since the last [`mark_seen`](Self::mark_seen).
    fn releases_since(&self) -> u64 {
        self.version
            .borrow()
            .releases
            .saturating_sub(self.seen.releases)
    }

    /// Completes when `want` release announcements have come since the last
    /// [`mark_seen`](Self::mark_seen) (each node that deleted the key sends one).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn releases_at_least(&mut self, want: u64) {
        while self.releases_since() < want {
            if self.version.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forgets notifications seen so far (called before each attempt).
    pub(crate) fn mark_seen(&mut self) {
        self.seen = *self.version.borrow_and_update();
    }

    /// On how many nodes this channel is subscribed on a live connection right now: a
    /// release published on one of them reaches us (see the module's docs).
    pub(crate) fn covered(&self) -> usize {
        let reg = &self.hub.0;
        let channels = lock(&reg.channels);
        let Some(entry) = channels.get(&self.channel) else {
            return 0;
        };
        entry
            .confirmed
            .iter()
            .zip(reg.live.iter())
            .filter(|(c, live)| {
                let epoch = live.load(Ordering::Acquire);
                epoch != 0 && **c == epoch
            })
            .count()
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

/// Wakes every waiter of `channel` for a message (a release, or not: a re-check), or of every
/// channel to re-check.
fn bump(registry: &Registry, channel: Option<(&str, bool)>) {
    let channels = lock(&registry.channels);
    match channel {
        Some((name, release)) => {
            if let Some(c) = channels.get(name) {
                c.version.send_modify(|v| {
                    if release {
                        v.releases += 1;
                    } else {
                        v.rechecks += 1;
                    }
                });
            }
        }
        None => channels
            .values()
            .for_each(|c| c.version.send_modify(|v| v.rechecks += 1)),
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

/// Owns node `i`'s PubSub connection: applies (un)subscriptions, forwards messages, checks the
/// connection's health, and after a disconnect (or an unanswered health check) reconnects,
/// resubscribes every registered channel in a new epoch and wakes all waiters. Ends when the
/// `RedLock` is dropped.
///
/// Long (about 120 lines) on purpose: it is one connection's state machine (connect,
/// resubscribe, serve, lose), and its pieces share the connection, the epoch and the command
/// queue at every step; split, they would pass all three around.
async fn node_task(
    i: usize,
    client: Client,
    registry: Weak<Registry>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    timeout: Duration,
) {
    let mut backoff = Duration::ZERO;
    let mut epoch = 0u64;
    loop {
        set_live(&registry, i, 0);
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
        epoch += 1;
        let Some(reg) = registry.upgrade() else {
            return;
        };
        confirm(&reg, i, epoch, &current);
        // Published only now: every channel of the snapshot is recorded as covered first.
        if let Some(live) = reg.live.get(i) {
            live.store(epoch, Ordering::Release);
        }
        // Anything published while we were away is lost: everyone re-checks.
        bump(&reg, None);
        drop(reg);
        let mut health = tokio::time::interval_at(
            tokio::time::Instant::now() + HEALTH_INTERVAL,
            HEALTH_INTERVAL,
        );
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                                if let Some(reg) = registry.upgrade() {
                                    confirm(&reg, i, epoch, std::slice::from_ref(&ch));
                                }
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
                _ = health.tick() => {
                    // An answer, whatever it is, shows the connection delivers; none in time
                    // means it may have stopped delivering messages too.
                    let ping = tokio::time::timeout(
                        health_timeout(timeout),
                        sink.ping::<redis::Value>(),
                    );
                    if !matches!(ping.await, Ok(Ok(_))) {
                        tracing::debug!(node = i, "pubsub connection failed its health check");
                        break;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => match registry.upgrade() {
                        Some(reg) => {
                            let release = msg.get_payload_bytes() != RECHECK.as_bytes();
                            bump(&reg, Some((msg.get_channel_name(), release)));
                        }
                        None => return,
                    },
                    None => break,
                },
            }
        }
        tracing::debug!(node = i, "pubsub connection lost; reconnecting");
        set_live(&registry, i, 0);
        if let Some(reg) = registry.upgrade() {
            if let Some(addr) = reg.addrs.get(i) {
                crate::telemetry::pubsub_reconnect(addr);
            }
            bump(&reg, None);
        }
    }
}

/// Records `channels` as subscribed on node `i` in `epoch` (those still registered).
fn confirm(reg: &Registry, i: usize, epoch: u64, channels: &[Arc<str>]) {
    let mut registered = lock(&reg.channels);
    for name in channels {
        if let Some(slot) = registered
            .get_mut(name)
            .and_then(|c| c.confirmed.get_mut(i))
        {
            *slot = epoch;
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

fn set_live(registry: &Weak<Registry>, i: usize, epoch: u64) {
    if let Some(reg) = registry.upgrade() {
        if let Some(live) = reg.live.get(i) {
            live.store(epoch, Ordering::Release);
        }
    }
}
