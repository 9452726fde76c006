//! Background releases: per node, the compare-and-deletes still to be confirmed there (the
//! undo of a round that did not become a guard, a release a node missed), sent at once and
//! then retried with back-off for as long as the key could still be there.
//!
//! # Invariants
//! 1. At most one clean-up task runs per node: [`Pending::running`] is set by whoever queues a
//!    release into an idle node and cleared by the task itself, both under the node's lock,
//!    when it finds nothing pending.
//! 2. Every queued release is either sent in a later pass or given up by [`cleanup_pause`]
//!    (logged): none is forgotten while the task runs, and the task runs while any is queued.
//! 3. A pass holds one in-flight permit for all the releases it sends to its node (see
//!    [`Nodes::owned_batch`]): a frozen node costs one permit, however many releases wait.
//!
//! # Deadlock safety
//! Each node's `pending` mutex is a leaf: nothing else is locked, and nothing awaited, under it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::node::{Nodes, Op};

/// The background clean-up of one `RedLock` (shared by its clones and groups). Its tasks
/// hold the nodes, not the `RedLock`: the connections live on while releases are pending
/// (at most one TTL), the rest of the lock manager does not.
pub(crate) struct Cleanup {
    nodes: Arc<Nodes>,
    ttl: Duration,
    per_node: Box<[CleanupNode]>,
}

struct CleanupNode {
    pending: Mutex<Pending>,
    /// Wakes the node's clean-up task for a release due before the one it sleeps for.
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    ops: Vec<Cleaning>,
    /// Whether the node's clean-up task is running (it ends when nothing is pending).
    running: bool,
}

/// One release waiting to be sent to a node.
struct Cleaning {
    op: Arc<Op>,
    /// Sends that failed so far.
    failed: usize,
    due: Instant,
}

impl Cleanup {
    /// No task runs until a release is queued.
    pub(crate) fn new(nodes: Arc<Nodes>, ttl: Duration) -> Arc<Self> {
        let per_node = (0..nodes.len())
            .map(|_| CleanupNode {
                pending: Mutex::default(),
                wake: Notify::new(),
            })
            .collect();
        Arc::new(Cleanup {
            nodes,
            ttl,
            per_node,
        })
    }

    /// Queues the release `op` for node `i`, which has been sent `failed` times already (0:
    /// not yet). It goes out at once (0), then after pauses doubling from 50 ms to 1 s, until
    /// retrying any longer would outlast the key itself (one TTL of pauses, see
    /// [`cleanup_pause`]); then the key is left to expire by TTL. With no runtime the keys
    /// expire by TTL.
    pub(crate) fn send(self: &Arc<Self>, i: usize, op: &Arc<Op>, failed: usize) {
        let node = &**self.nodes.addr(i);
        let Some(pause) = cleanup_pause(failed, self.ttl) else {
            tracing::debug!(
                node,
                "release did not reach the node; the key expires by TTL there"
            );
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                node,
                "no tokio runtime to release on; the key expires by TTL there"
            );
            return;
        };
        let Some(queue) = self.per_node.get(i) else {
            return;
        };
        let start = {
            let mut pending = queue.lock();
            pending.ops.push(Cleaning {
                op: op.clone(),
                failed,
                due: Instant::now() + pause,
            });
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            rt.spawn(self.clone().run(i));
        } else {
            queue.wake.notify_one();
        }
    }

    /// Node `i`'s clean-up task: while releases are pending for the node, sleeps until the
    /// first is due and sends everything due in one pass; a failed send is queued again.
    async fn run(self: Arc<Self>, i: usize) {
        let Some(queue) = self.per_node.get(i) else {
            return;
        };
        loop {
            let next = {
                let mut pending = queue.lock();
                match pending.ops.iter().map(|c| c.due).min() {
                    Some(due) => due,
                    None => {
                        pending.running = false;
                        return;
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = queue.wake.notified() => continue,
            }
            let now = Instant::now();
            let due: Vec<Cleaning> = {
                let mut pending = queue.lock();
                let (due, later) = std::mem::take(&mut pending.ops)
                    .into_iter()
                    .partition(|c| c.due <= now);
                pending.ops = later;
                due
            };
            if due.is_empty() {
                continue;
            }
            let ops: Vec<Arc<Op>> = due.iter().map(|c| c.op.clone()).collect();
            let replies = self.nodes.owned_batch(i, &ops).await;
            for (cleaning, reply) in due.into_iter().zip(replies) {
                if reply.is_err() {
                    self.send(i, &cleaning.op, cleaning.failed + 1);
                }
            }
        }
    }
}

impl CleanupNode {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pause before the next background send of a release that failed `failed` times
/// before (0: the first send, at once), doubling from 50 ms to at most 1 s; `None` once the
/// pauses so far add up to more than `ttl`: a key is never set for longer than a lease (the
/// release was sent after the last extension, usually of one `ttl`), so by then it has expired
/// by itself (an extension to a longer TTL is the exception, and expires by TTL). A node that
/// comes back within that time (a reconnect on a loaded machine can take seconds) still loses
/// the key at once; each send is bounded by the node timeout, and a frozen node costs one
/// batch per pause, whatever the number of releases waiting for it.
fn cleanup_pause(failed: usize, ttl: Duration) -> Option<Duration> {
    let pause = |k: usize| match k {
        0 => Duration::ZERO,
        k => Duration::from_millis(50 << (k - 1).min(5)).min(Duration::from_secs(1)),
    };
    let waited: Duration = (0..failed).map(pause).sum();
    (waited <= ttl).then(|| pause(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_releases_back_off_and_stop_after_one_ttl() {
        let ms = Duration::from_millis;
        let ttl = Duration::from_secs(10);
        let pauses: Vec<Duration> = (0..)
            .map_while(|failed| cleanup_pause(failed, ttl))
            .collect();
        assert_eq!(
            &pauses[..8],
            [
                ms(0),
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        let total: Duration = pauses.iter().sum();
        // Retries cover the whole TTL, and stop within one more pause of its end.
        assert!(total > ttl && total <= ttl + ms(1000), "{total:?}");
        // A short lease stops sooner: sends at 0, 50, 150 and 350 ms, none once 350 > 300.
        assert_eq!((0..).map_while(|f| cleanup_pause(f, ms(300))).count(), 4);
    }
}
