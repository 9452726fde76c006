//! The local FIFO of waiters for one key inside one process: only the head contends with
//! Redis, the others wait for it. This removes the thundering herd, and the split votes that
//! many contenders cause on N nodes, without any Redis traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::wake::Subscription;

/// One FIFO per key with local waiters or a local holder; entries are removed when the last
/// ticket goes, so the map is bounded by the keys in use.
#[derive(Default)]
pub(crate) struct Queues {
    keys: Mutex<HashMap<Arc<str>, Entry>>,
}

struct Entry {
    slot: Arc<Semaphore>,
    /// Tickets for this key, counted under the lock.
    tickets: usize,
    /// The release subscription, passed from head to head while the key has local waiters, so
    /// a stream of local waiters subscribes once (dropped, i.e. unsubscribed, with the entry).
    sub: Option<Subscription>,
    /// Consecutive releases handed straight to a local waiter without telling other processes.
    streak: u32,
    /// The next local head should let waiters of other processes (just told) try first.
    yield_next: bool,
}

/// How many times in a row a release goes straight to the next local waiter without a
/// notification for other processes (which would only collide with it). After that the
/// release is announced and the local head holds back for a moment, so other processes'
/// waiters get their turn too.
pub(crate) const LOCAL_STREAK: u32 = 8;

/// A place in the queue of one key: the key's turn is ours once we hold the permit.
pub(crate) struct Ticket {
    queues: Arc<Queues>,
    key: Arc<str>,
    slot: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Queues {
    /// Joins the queue of `key` (not yet waiting).
    pub(crate) fn join(self: &Arc<Self>, key: &Arc<str>) -> Ticket {
        let mut keys = self.lock();
        let entry = keys.entry(key.clone()).or_insert_with(|| Entry {
            slot: Arc::new(Semaphore::new(1)),
            tickets: 0,
            sub: None,
            streak: 0,
            yield_next: false,
        });
        entry.tickets += 1;
        let slot = entry.slot.clone();
        drop(keys);
        Ticket {
            queues: self.clone(),
            key: key.clone(),
            slot,
            permit: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys with local waiters or holders.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Ticket {
    /// Waits for our turn: first come, first served (tokio's semaphore is fair). Returns
    /// whether to hold back briefly because the previous holder invited other processes.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait loses its place and nothing else.
    pub(crate) async fn turn(&mut self) -> bool {
        if self.permit.is_none() {
            // The semaphore is never closed.
            self.permit = self.slot.clone().acquire_owned().await.ok();
        }
        self.queues
            .lock()
            .get_mut(&self.key)
            .is_some_and(|e| std::mem::take(&mut e.yield_next))
    }

    /// Called by the holder as it releases: whether the release should be announced to other
    /// processes. Not while local waiters are queued (they take over at once), except every
    /// [`LOCAL_STREAK`]-th time.
    pub(crate) fn announce_release(&self) -> bool {
        let mut keys = self.queues.lock();
        let Some(e) = keys.get_mut(&self.key) else {
            return true;
        };
        if e.tickets > 1 && e.streak < LOCAL_STREAK {
            e.streak += 1;
            return false;
        }
        e.streak = 0;
        true
    }

    /// After an announced release: if it reached subscribers of other processes (more than our
    /// own subscription) and a local waiter is next, that waiter holds back for a moment.
    pub(crate) fn announced(&self, listeners: u32) {
        if let Some(e) = self.queues.lock().get_mut(&self.key) {
            let ours = u32::from(e.sub.is_some());
            e.yield_next = e.tickets > 1 && listeners > ours;
        }
    }

    /// Takes our turn only if nobody is ahead.
    pub(crate) fn try_turn(&mut self) -> bool {
        if self.permit.is_none() {
            self.permit = self.slot.clone().try_acquire_owned().ok();
        }
        self.permit.is_some()
    }

    /// The key's release subscription, if a previous head left one.
    pub(crate) fn take_subscription(&self) -> Option<Subscription> {
        self.queues
            .lock()
            .get_mut(&self.key)
            .and_then(|e| e.sub.take())
    }

    /// Leaves the subscription for the next head (dropped with the entry when none comes).
    pub(crate) fn keep_subscription(&self, sub: Option<Subscription>) {
        if let Some(sub) = sub {
            if let Some(e) = self.queues.lock().get_mut(&self.key) {
                e.sub = Some(sub);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Hand the turn on first, then remove the key if no other ticket is left.
        drop(self.permit.take());
        let mut keys = self.queues.lock();
        let last = keys.get_mut(&self.key).is_some_and(|e| {
            e.tickets -= 1;
            e.tickets == 0
        });
        let removed = if last { keys.remove(&self.key) } else { None };
        drop(keys);
        drop(removed); // unsubscribes outside the queue lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_and_cleanup() {
        let queues = Arc::new(Queues::default());
        let key: Arc<str> = "k".into();
        let mut first = queues.join(&key);
        first.turn().await;
        let mut second = queues.join(&key);
        assert!(!second.try_turn());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let mut t = queues.join(&key);
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                t.turn().await;
                order.lock().expect("no poison").push(i);
            }));
            tokio::task::yield_now().await; // let task i queue before task i+1
        }
        drop(second);
        drop(first);
        for t in tasks {
            t.await.expect("no panic");
        }
        assert_eq!(*order.lock().expect("no poison"), [0, 1, 2, 3, 4]);
        assert_eq!(queues.len(), 0, "entry removed after the last ticket");
    }

    #[tokio::test]
    async fn dropped_waiters_do_not_leak_entries() {
        let queues = Arc::new(Queues::default());
        let mut held = queues.join(&"a".into());
        held.turn().await;
        for _ in 0..100 {
            let mut t = queues.join(&"a".into());
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), t.turn()).await;
        }
        assert_eq!(queues.len(), 1);
        drop(held);
        assert_eq!(queues.len(), 0);
    }
}
