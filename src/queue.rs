//! The local FIFO of waiters for one key inside one process: only the head contends with
//! Redis, the others wait for it. This removes the thundering herd, and the split votes that
//! many contenders cause on N nodes, without any Redis traffic.
//!
//! The queue is an optimisation, never the source of safety: a local holder whose lease ran
//! out stops blocking local waiters (they go to Redis, which decides), and a release that was
//! handed to a local waiter who then left is announced after all.
//!
//! A holder that lets go while a local waiter is queued may leave its still-valid grant in
//! the entry instead of releasing it in Redis (a [`Baton`]); the next ticket to get the turn
//! takes it and becomes the owner without any Redis request. The baton is only ever in one
//! place: the releasing guard, the entry (under the queue lock), or the ticket that took it;
//! an entry removed with a baton in it drops the baton, which releases the keys in Redis.
//!
//! The queue is generic over what it hands on (`B`, the baton) and what it knows of the
//! holder (`H`, its lease, through [`Holder`]), so the whole hand-off protocol is unit-tested
//! here with plain values; the lock manager uses `Queues<Baton, Lease>`.
//!
//! # Invariants
//! 1. At most one ticket of a key has the turn (holds the entry's one-permit semaphore, which
//!    is fair: first come, first served).
//! 2. The baton is in exactly one place: the releasing holder, the entry (under the queue
//!    lock), or the ticket that took it. Only a ticket with the turn takes it, and a ticket
//!    that went past an expired holder (`bypassed`) never gets the turn.
//! 3. `holder` is the lease of the ticket with the turn, or `None`; a bypassed ticket never
//!    becomes the holder.
//! 4. `tickets` counts the entry's live tickets and `bypassed` the bypassed ones among them;
//!    the entry is removed when the last ticket goes.
//! 5. A release that was not announced (handed straight to a local waiter) is announced
//!    after all when the entry is removed before anyone attempted; an entry removed with a
//!    baton in it drops the baton instead, whose release announces.
//!
//! # Deadlock safety
//! The queue mutex is taken with no other lock held. Under it, only leaf locks are taken:
//! [`Holder::stale_at`] (a lease's expiry mutex) and `Notify`. Nothing is awaited under it,
//! and nothing whose drop takes a lock is dropped under it: a removed entry (its baton and
//! subscription) and a replaced subscription are dropped after the mutex is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::keys::Keys;
use crate::wake::Subscription;

/// How many times in a row a release goes straight to the next local waiter without a
/// notification for other processes (which would only collide with it), whether through Redis
/// or as a [`Baton`]. After that the release goes through Redis and is announced and, if other
/// processes listen, the local head holds back briefly.
pub(crate) const LOCAL_STREAK: u32 = 8;

/// Announces a lock's keys on every node (a bare PUBLISH each), for releases that were not
/// announced and whose local successor left.
pub(crate) type Announcer = Box<dyn Fn(Keys) + Send + Sync>;

/// What the queue knows of a local holder.
pub(crate) trait Holder: Clone {
    /// When local waiters start going past this holder: when its validity runs out while it
    /// keeps its guard. `None` for a holder whose guard let go (released, dropped, handed on):
    /// its ticket is about to hand the turn on, in queue order.
    ///
    /// Called under the queue lock: it may take only leaf locks.
    fn stale_at(&self) -> Option<Instant>;
}

/// One FIFO per key with local waiters or a local holder; entries are removed when the last
/// ticket goes, so the map is bounded by the keys in use.
pub(crate) struct Queues<B, H> {
    /// Keyed by the lock's keys themselves (see [`Keys`]: a single key and a set are never the
    /// same lock, whatever the key names).
    keys: Mutex<HashMap<Keys, Entry<B, H>>>,
    announcer: Announcer,
}

struct Entry<B, H> {
    slot: Arc<Semaphore>,
    /// Tickets for this key, counted under the lock.
    tickets: usize,
    /// The release subscription, passed from head to head while the key has local waiters, so
    /// a stream of local waiters subscribes once (dropped, i.e. unsubscribed, with the entry).
    sub: Option<Subscription>,
    /// The local holder's lease: waiters stop queueing behind it once it has run out.
    holder: Option<H>,
    /// Wakes waiters when the holder changes.
    changed: Arc<Notify>,
    /// Consecutive releases handed straight to a local waiter without telling other processes.
    streak: u32,
    /// The last release was not announced and no local waiter has attempted since.
    unannounced: bool,
    /// The last release went to Redis while local waiters were queued, and other processes
    /// may want the key (they were told, or they poll): the next local head lets them try
    /// first.
    hold_back: bool,
    /// A grant left by the last holder for whichever ticket gets the turn next.
    baton: Option<B>,
    /// Tickets that stopped waiting for the turn (their holder's lease ran out): they never
    /// get the turn, so never take a baton.
    bypassed: usize,
}

/// A place in the queue of one key: the key's turn is ours once we hold the permit (or once
/// the holder ahead of us let its lease run out).
pub(crate) struct Ticket<B, H> {
    queues: Arc<Queues<B, H>>,
    lock: Keys,
    slot: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    /// Whether this ticket's guard is the entry's holder.
    held: bool,
    /// Whether this ticket stopped waiting for its turn (see [`Entry::bypassed`]).
    bypassed: bool,
}

impl<B, H> Queues<B, H> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Keys, Entry<B, H>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<B, H: Holder> Queues<B, H> {
    /// No queue yet; `announcer` tells other processes of releases that were handed to a
    /// local waiter who then left without taking them.
    pub(crate) fn new(announcer: Announcer) -> Arc<Self> {
        Arc::new(Queues {
            keys: Mutex::default(),
            announcer,
        })
    }

    /// Joins the queue of the lock `lock` (not yet waiting).
    pub(crate) fn join(self: &Arc<Self>, lock: &Keys) -> Ticket<B, H> {
        let mut keys = self.lock();
        let entry = keys.entry(lock.clone()).or_insert_with(|| Entry {
            slot: Arc::new(Semaphore::new(1)),
            tickets: 0,
            sub: None,
            holder: None,
            changed: Arc::new(Notify::new()),
            streak: 0,
            unannounced: false,
            hold_back: false,
            baton: None,
            bypassed: 0,
        });
        entry.tickets += 1;
        let slot = entry.slot.clone();
        drop(keys);
        Ticket {
            queues: self.clone(),
            lock: lock.clone(),
            slot,
            permit: None,
            held: false,
            bypassed: false,
        }
    }

    /// Keys with local waiters or holders.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<B, H: Holder> Ticket<B, H> {
    fn with_entry<T>(&self, f: impl FnOnce(&mut Entry<B, H>) -> T) -> Option<T> {
        self.queues.lock().get_mut(&self.lock).map(f)
    }

    /// Waits for our turn: first come, first served (tokio's semaphore is fair), or until the
    /// local holder's lease has run out. Returns whether to hold back briefly because the
    /// previous holder invited other processes.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait loses its place and nothing else.
    pub(crate) async fn turn(&mut self) -> bool {
        if self.permit.is_none() {
            let permit = self.slot.clone().acquire_owned();
            tokio::pin!(permit);
            while let Some((expiry, changed)) =
                self.with_entry(|e| (e.holder.as_ref().and_then(H::stale_at), e.changed.clone()))
            {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let stale = async {
                    match expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    permit = &mut permit => {
                        // The semaphore is never closed.
                        self.permit = permit.ok();
                        break;
                    }
                    () = notified => {}
                    () = stale => {
                        if self.bypass_expired_holder() {
                            break;
                        }
                    }
                }
            }
        }
        self.with_entry(|e| std::mem::take(&mut e.hold_back))
            .unwrap_or(false)
    }

    /// Takes our turn only if nobody is ahead, or goes past a local holder whose lease ran out
    /// (as [`turn`](Self::turn) would, without waiting): whether this ticket may go to Redis.
    pub(crate) fn try_turn(&mut self) -> bool {
        if self.permit.is_none() {
            self.permit = self.slot.clone().try_acquire_owned().ok();
        }
        self.permit.is_some() || self.bypassed || self.bypass_expired_holder()
    }

    /// Stops waiting for the turn if the local holder kept its guard past its lease: Redis
    /// decides from now on. Such a ticket never gets the turn, so never takes a baton. Returns
    /// whether it did.
    fn bypass_expired_holder(&mut self) -> bool {
        let expired = self
            .with_entry(|e| {
                e.holder
                    .as_ref()
                    .and_then(H::stale_at)
                    .is_some_and(|at| at <= Instant::now())
            })
            .unwrap_or(true);
        if expired && !self.bypassed {
            tracing::debug!(key = %self.lock, "local holder's lease ran out; contending without it");
            self.bypassed = true;
            self.with_entry(|e| e.bypassed += 1);
        }
        self.bypassed
    }

    /// Called by the holder as it lets go: leaves the grant `baton()` makes in the entry for
    /// the next ticket to get the turn, if one is queued and the local streak allows it (see
    /// [`LOCAL_STREAK`]). Returns whether it did; the caller then drops this ticket, which
    /// hands the turn on. This ticket stops being the entry's holder in the same step, so a
    /// successor that takes the baton at once is never cleared by this ticket's drop.
    pub(crate) fn pass_baton(&mut self, baton: impl FnOnce() -> B) -> bool {
        if self.permit.is_none() {
            // Not our turn (we went to Redis past a holder whose lease ran out): nobody would
            // be sure to take it.
            return false;
        }
        let mut keys = self.queues.lock();
        let Some(e) = keys.get_mut(&self.lock) else {
            return false;
        };
        let queued = e.tickets - e.bypassed > 1;
        if !queued || e.streak >= LOCAL_STREAK || e.baton.is_some() {
            return false;
        }
        e.streak += 1;
        e.baton = Some(baton());
        if self.held {
            self.held = false;
            e.holder = None;
            e.changed.notify_waiters();
        }
        true
    }

    /// Takes the grant the previous holder left, if any: only with the turn, so exactly the
    /// ticket the turn was handed to (or the first to take it later) gets it.
    pub(crate) fn take_baton(&self) -> Option<B> {
        self.permit.as_ref()?;
        self.with_entry(|e| e.baton.take()).flatten()
    }

    /// Called right before this ticket's first attempt in Redis.
    pub(crate) fn attempting(&self) {
        self.with_entry(|e| {
            e.unannounced = false;
            e.hold_back = false;
        });
    }

    /// Records the lease of the lock this ticket now holds, if the ticket has the turn. A
    /// ticket that went past an expired holder does not replace it: the turn is still that
    /// holder's, so waiters that come next must go past it too (and to Redis, which decides),
    /// rather than wait behind this ticket for a turn that it can never hand on.
    pub(crate) fn hold(&mut self, holder: &H) {
        if self.bypassed {
            return;
        }
        self.held = true;
        self.with_entry(|e| {
            e.holder = Some(holder.clone());
            e.changed.notify_waiters();
        });
    }

    /// The key's release subscription, if a previous head left one.
    pub(crate) fn take_subscription(&self) -> Option<Subscription> {
        self.with_entry(|e| e.sub.take()).flatten()
    }

    /// Leaves the subscription for the next head (dropped with the entry when none comes).
    pub(crate) fn keep_subscription(&self, sub: Option<Subscription>) {
        if let Some(sub) = sub {
            // A subscription it replaces is dropped (unsubscribed) outside the queue lock.
            let replaced = self.with_entry(|e| e.sub.replace(sub));
            drop(replaced);
        }
    }

    /// Called by the holder as it releases: whether the release should be announced to other
    /// processes. Not while local waiters are queued for the turn this ticket hands on (they
    /// take over at once), except every [`LOCAL_STREAK`]-th time. Always when this ticket
    /// holds no turn to hand on (it went past an expired holder), or when a local waiter went
    /// past one: such a waiter waits in Redis, and only the announcement wakes it.
    pub(crate) fn announce_release(&self) -> bool {
        let hands_on = self.permit.is_some();
        self.with_entry(|e| {
            if hands_on && e.bypassed == 0 && e.tickets > 1 && e.streak < LOCAL_STREAK {
                e.streak += 1;
                e.unannounced = true;
                return false;
            }
            e.streak = 0;
            true
        })
        .unwrap_or(true)
    }

    /// After an announced release: if a local waiter is next and other processes may want the
    /// key (the announcement reached more subscribers than our own, or `others_poll`: their
    /// waiters cannot be told and find the key free only if we do not take it straight back),
    /// that waiter holds back for a moment.
    pub(crate) fn announced(&self, listeners: u32, others_poll: bool) {
        self.with_entry(|e| {
            let ours = u32::from(e.sub.is_some());
            e.hold_back = e.tickets > 1 && (listeners > ours || others_poll);
        });
    }
}

impl<B, H> Drop for Ticket<B, H> {
    fn drop(&mut self) {
        // Stop being the holder before handing the turn on (a successor may record itself as
        // holder at once), then remove the key if no other ticket is left.
        let mut keys = self.queues.lock();
        let Some(e) = keys.get_mut(&self.lock) else {
            drop(keys);
            drop(self.permit.take());
            return;
        };
        e.tickets -= 1;
        if self.bypassed {
            e.bypassed -= 1;
        }
        if self.held {
            e.holder = None;
            e.changed.notify_waiters();
        }
        let removed = if e.tickets == 0 {
            keys.remove(&self.lock)
        } else {
            None
        };
        drop(keys);
        drop(self.permit.take());
        // An entry removed with a baton in it: the baton's drop releases the keys in Redis
        // and announces it, so no separate announcement.
        if removed
            .as_ref()
            .is_some_and(|e| e.unannounced && e.baton.is_none())
        {
            // A release went to a local waiter that left without taking it: tell the others
            // (a set's keys too: a single-key waiter of one of them listens).
            (self.queues.announcer)(self.lock.clone());
        }
        drop(removed); // unsubscribes outside the queue lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn one(key: &str) -> Keys {
        Keys::one(key.into(), None)
    }

    /// A holder whose lease runs out at a given instant (`None`: its guard let go).
    #[derive(Clone)]
    struct Until(Option<Instant>);

    impl Holder for Until {
        fn stale_at(&self) -> Option<Instant> {
            self.0
        }
    }

    /// A baton that counts its drops (a real one releases the keys in Redis when dropped).
    struct Grant(u32, Arc<AtomicUsize>);

    impl Drop for Grant {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Q = Queues<Grant, Until>;

    fn quiet() -> Arc<Q> {
        Queues::new(Box::new(|_| {}))
    }

    fn valid() -> Until {
        Until(Some(Instant::now() + std::time::Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn fifo_and_cleanup() {
        let queues = quiet();
        let key: Arc<str> = "k".into();
        let mut first = queues.join(&one(&key));
        first.turn().await;
        let mut second = queues.join(&one(&key));
        assert!(!second.try_turn());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let mut t = queues.join(&one(&key));
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
    async fn a_single_key_never_shares_a_sets_queue_whatever_its_name() {
        let queues = quiet();
        let set = Keys::many(vec!["a".into(), "b".into()]);
        let mut holder = queues.join(&set);
        holder.turn().await;
        for lookalike in ["a\nb", "a,b", "a\0b", "ab", "a", "b"] {
            let mut t = queues.join(&one(lookalike));
            assert!(t.try_turn(), "{lookalike:?} queued behind the set");
        }
        let mut again = queues.join(&Keys::many(vec!["a".into(), "b".into()]));
        assert!(!again.try_turn(), "the same set is the same lock");
    }

    #[tokio::test]
    async fn dropped_waiters_do_not_leak_entries() {
        let queues = quiet();
        let mut held = queues.join(&one("a"));
        held.turn().await;
        for _ in 0..100 {
            let mut t = queues.join(&one("a"));
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), t.turn()).await;
        }
        assert_eq!(queues.len(), 1);
        drop(held);
        assert_eq!(queues.len(), 0);
    }

    /// Announcements made when the successor of an unannounced release leaves, for `lock`.
    async fn told_after_successor_leaves(lock: &Keys) -> Vec<Keys> {
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink = told.clone();
        let queues: Arc<Q> =
            Queues::new(Box::new(move |k| sink.lock().expect("no poison").push(k)));
        let mut holder = queues.join(lock);
        holder.turn().await;
        let waiter = queues.join(lock);
        assert!(
            !holder.announce_release(),
            "a local waiter is queued: no announcement"
        );
        drop(holder);
        assert!(told.lock().expect("no poison").is_empty());
        drop(waiter); // left without attempting
        let told = told.lock().expect("no poison").clone();
        told
    }

    #[tokio::test]
    async fn an_unannounced_release_is_announced_when_its_successor_leaves() {
        let key = one("k");
        assert_eq!(told_after_successor_leaves(&key).await, [key]);
        // A set's too: a single-key waiter of one of its keys listens.
        let set = Keys::many(vec!["a".into(), "b".into()]);
        assert_eq!(told_after_successor_leaves(&set).await, [set]);
    }

    #[tokio::test]
    async fn the_next_head_holds_back_only_when_other_processes_may_want_the_key() {
        for (listeners, others_poll, expected) in
            [(0, false, false), (1, false, true), (0, true, true)]
        {
            let queues = quiet();
            let lock = one("k");
            let mut holder = queues.join(&lock);
            holder.turn().await;
            let mut next = queues.join(&lock);
            holder.announced(listeners, others_poll);
            drop(holder);
            assert_eq!(
                next.turn().await,
                expected,
                "{listeners} listeners, others poll: {others_poll}"
            );
        }
    }

    #[tokio::test]
    async fn a_baton_goes_to_the_ticket_that_gets_the_turn_and_only_to_it() {
        let queues = quiet();
        let drops = Arc::new(AtomicUsize::new(0));
        let lock = one("k");
        let mut holder = queues.join(&lock);
        holder.turn().await;
        holder.hold(&valid());
        let mut next = queues.join(&lock);
        let mut after = queues.join(&lock);
        // Not its turn yet: nothing to take.
        assert!(next.take_baton().is_none());
        assert!(holder.pass_baton(|| Grant(7, drops.clone())));
        drop(holder);
        next.turn().await;
        assert!(!after.try_turn(), "the turn is next's");
        assert!(
            after.take_baton().is_none(),
            "only the ticket with the turn takes it"
        );
        let baton = next.take_baton().expect("handed to the next ticket");
        assert_eq!(baton.0, 7);
        assert!(next.take_baton().is_none(), "a baton is taken once");
        drop(baton);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_baton_without_a_waiter_and_at_most_a_streak_of_them() {
        let queues = quiet();
        let drops = Arc::new(AtomicUsize::new(0));
        let lock = one("k");
        let mut holder = queues.join(&lock);
        holder.turn().await;
        assert!(
            !holder.pass_baton(|| Grant(0, drops.clone())),
            "nobody queued: the release goes to Redis"
        );
        let mut passed = 0;
        for round in 0..LOCAL_STREAK + 2 {
            let mut next = queues.join(&lock);
            if !holder.pass_baton(|| Grant(round, drops.clone())) {
                break;
            }
            passed += 1;
            drop(holder);
            next.turn().await;
            drop(next.take_baton().expect("handed on"));
            holder = next;
        }
        assert_eq!(passed, LOCAL_STREAK, "the streak ends through Redis");
        // The closure that makes a baton is never called when nothing is handed on.
        assert_eq!(drops.load(Ordering::SeqCst), LOCAL_STREAK as usize);
    }

    #[tokio::test]
    async fn a_baton_nobody_takes_is_dropped_with_the_entry_and_not_announced_twice() {
        let told = Arc::new(AtomicUsize::new(0));
        let sink = told.clone();
        let queues: Arc<Q> = Queues::new(Box::new(move |_| {
            sink.fetch_add(1, Ordering::SeqCst);
        }));
        let drops = Arc::new(AtomicUsize::new(0));
        let lock = one("k");
        let mut holder = queues.join(&lock);
        holder.turn().await;
        let waiter = queues.join(&lock);
        assert!(!holder.announce_release());
        assert!(holder.pass_baton(|| Grant(1, drops.clone())));
        drop(holder);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "kept for the waiter");
        drop(waiter); // leaves without its turn
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "dropped (released) with the entry"
        );
        assert_eq!(
            told.load(Ordering::SeqCst),
            0,
            "the baton's release announces, not the queue"
        );
        assert_eq!(queues.len(), 0);
    }

    #[tokio::test]
    async fn waiters_go_past_a_holder_whose_lease_ran_out_and_never_take_its_baton() {
        let queues = quiet();
        let drops = Arc::new(AtomicUsize::new(0));
        let lock = one("k");
        let mut holder = queues.join(&lock);
        holder.turn().await;
        holder.hold(&Until(Some(Instant::now())));
        let mut late = queues.join(&lock);
        assert!(late.try_turn(), "went past the expired holder");
        // The bypassed ticket is no queued waiter: nothing is handed on to it.
        assert!(!holder.pass_baton(|| Grant(2, drops.clone())));
        assert!(late.take_baton().is_none());
        // A holder whose guard let go is never bypassed: its ticket hands the turn on.
        let queues = quiet();
        let mut holder = queues.join(&lock);
        holder.turn().await;
        holder.hold(&Until(None));
        let mut next = queues.join(&lock);
        assert!(!next.try_turn());
        drop(holder);
        assert!(next.try_turn());
    }
}
