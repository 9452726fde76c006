//! A lock's identity: the Redis keys it holds on every node, and which kind of lock it is
//! (a mutex, a reader or writer of a read-write lock, a semaphore permit), which decides the
//! scripts its requests run (see `node::Op`).

use std::sync::Arc;

/// Which kind of lock a [`Keys`] names. Everything above the node layer (rounds, guards,
/// leases, clean-up) treats every kind alike; only the scripts and the local queue differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A mutex: one value per key (`acquire`, `acquire_many`).
    Mutex,
    /// A reader of a read-write lock: a member of the readers' sorted set.
    Read,
    /// The writer of a read-write lock: a plain value key, granted only with no live reader.
    Write,
    /// A permit of a semaphore: a plain value under one of its slot keys (`slot`, 0-based).
    Permit { slot: u32 },
    /// **Unsafe, for demonstrations only**: the naive quorum semaphore, where each node counts
    /// its holders (a reader set) and refuses beyond `limit`.
    Counted { limit: u32 },
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
    kind: Kind,
    /// What the other kinds need besides (behind one pointer: a mutex's keys stay small).
    extra: Option<Arc<Extra>>,
}

/// The keys of a read-write lock or semaphore besides its lock key.
#[derive(Debug)]
struct Extra {
    /// The keys the acquire script takes (a read-write lock's writer, readers and intent
    /// keys; every slot of a semaphore).
    script_keys: Arc<[Arc<str>]>,
    /// The key whose release channel waiters listen on (a read-write lock's writer key; a
    /// semaphore's name: every slot's release is announced there).
    wake: Arc<str>,
    /// A writer's identity while it waits, the same for all its attempts: the value of its
    /// intent key (a fresh value is drawn for each attempt, so that cannot be it).
    waiter: Option<Arc<str>>,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        // The fencing counter follows from the key and the settings, which every user of one
        // local queue shares.
        self.keys == other.keys && self.kind == other.kind
    }
}

impl Eq for Keys {}

impl std::hash::Hash for Keys {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // A slice hashes its length first: `[k]` and `[a, b]` never collide by construction.
        self.keys.hash(state);
        self.kind.hash(state);
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
            kind: Kind::Mutex,
            extra: None,
        }
    }

    /// A reader (`write` false) or the writer of the read-write lock whose writer, readers and
    /// intent keys are `rw` (in that order; see [`rw_layout`]). With `limit`, the naive
    /// counting semaphore (readers only, at most `limit` per node).
    pub(crate) fn rw(rw: [Arc<str>; 3], write: bool, limit: Option<u32>) -> Self {
        let kind = match (write, limit) {
            (true, _) => Kind::Write,
            (false, None) => Kind::Read,
            (false, Some(limit)) => Kind::Counted { limit },
        };
        // The lock key: what a release compares (the writer key, the readers' set).
        let own = if write { rw[0].clone() } else { rw[1].clone() };
        Keys {
            keys: Arc::new([own]),
            fence: None,
            kind,
            extra: Some(Arc::new(Extra {
                script_keys: Arc::new(rw.clone()),
                wake: rw[0].clone(),
                waiter: write.then(|| uuid::Uuid::new_v4().simple().to_string().into()),
            })),
        }
    }

    /// A permit on slot `slot` of the semaphore named `name` (its channel key) whose slot keys
    /// are `slots`.
    pub(crate) fn permit(name: &Arc<str>, slots: &Arc<[Arc<str>]>, slot: usize) -> Self {
        Keys {
            keys: Arc::new([slots[slot].clone()]),
            fence: None,
            kind: Kind::Permit {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
            },
            extra: Some(Arc::new(Extra {
                script_keys: slots.clone(),
                wake: name.clone(),
                waiter: None,
            })),
        }
    }

    /// The same semaphore's permit on `slot` instead.
    pub(crate) fn other_slot(&self, slot: usize) -> Self {
        match &self.extra {
            Some(e) if matches!(self.kind, Kind::Permit { .. }) => {
                let last = e.script_keys.len().saturating_sub(1);
                Keys::permit(&e.wake, &e.script_keys, slot.min(last))
            }
            _ => self.clone(),
        }
    }

    /// A writer's identity while it waits (the value of its intent key).
    pub(crate) fn waiter(&self) -> Option<&Arc<str>> {
        self.extra.as_ref().and_then(|e| e.waiter.as_ref())
    }

    /// Which kind of lock this is.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether local callers of this lock queue one behind the other (and hand the grant on):
    /// mutexes only. Readers and permits share the lock, so a FIFO would serialize them; a
    /// writer waits in Redis (its intent key holds readers back), not in a local queue.
    pub(crate) fn queued_locally(&self) -> bool {
        self.kind == Kind::Mutex
    }

    /// The keys the acquire script takes.
    pub(crate) fn script_keys(&self) -> &[Arc<str>] {
        self.extra.as_ref().map_or(&self.keys, |e| &e.script_keys)
    }

    /// The key whose release channel waiters of this lock listen on (single-key locks): the
    /// lock key of a mutex, the writer key of a read-write lock, a semaphore's name.
    pub(crate) fn wake_key(&self) -> Option<&Arc<str>> {
        self.extra
            .as_ref()
            .map(|e| &e.wake)
            .or_else(|| self.single())
    }

    /// The keys whose channels an announcement that a lock may be free goes to.
    pub(crate) fn wake_keys(&self) -> impl Iterator<Item = &Arc<str>> {
        let wake = self.extra.as_ref().map(|e| &e.wake);
        let own = wake.is_none().then(|| self.keys.iter());
        wake.into_iter().chain(own.into_iter().flatten())
    }

    /// `keys` must be sorted and distinct.
    pub(crate) fn many(keys: Vec<Arc<str>>) -> Self {
        Keys {
            keys: keys.into(),
            fence: None,
            kind: Kind::Mutex,
            extra: None,
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

    /// The lock keys.
    pub(crate) fn as_slice(&self) -> &[Arc<str>] {
        &self.keys
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys.iter()
    }
}

/// The writer, readers and intent keys of read-write lock `key` in the key space `space`
/// (`<namespace>::rw:<group>:`): `<space><key>:writer`, `:readers`, `:intent`. The role is the
/// last `:`-separated part, so no two locks' keys are the same whatever `key` holds.
pub(crate) fn rw_layout(space: &str, key: &str) -> [Arc<str>; 3] {
    ["writer", "readers", "intent"].map(|role| format!("{space}{key}:{role}").into())
}

/// The slot keys of semaphore `name` in the key space `space` (`<namespace>::sem:<group>:`):
/// `<space><name>:<slot>` (the slot, a number, is the last part).
pub(crate) fn slot_layout(space: &str, name: &str, permits: usize) -> Arc<[Arc<str>]> {
    (0..permits)
        .map(|s| Arc::<str>::from(format!("{space}{name}:{s}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_different_locks_even_on_the_same_keys() {
        let rw = rw_layout("ns::rw:g:", "x");
        let read = Keys::rw(rw.clone(), false, None);
        let write = Keys::rw(rw.clone(), true, None);
        assert_ne!(read, write);
        assert_eq!(&**write.single().unwrap(), "ns::rw:g:x:writer");
        assert_eq!(&**read.single().unwrap(), "ns::rw:g:x:readers");
        // Both wait on the writer key's channel.
        assert_eq!(read.wake_key(), write.wake_key());
        assert_eq!(read.script_keys().len(), 3);
        assert!(!read.queued_locally() && Keys::one("k".into(), None).queued_locally());
    }

    #[test]
    fn a_permit_names_one_slot_and_listens_on_the_semaphore() {
        let slots = slot_layout("ns::sem:g:", "exports", 3);
        let name: Arc<str> = "ns::sem:g:exports".into();
        let p = Keys::permit(&name, &slots, 1);
        assert_eq!(&**p.single().unwrap(), "ns::sem:g:exports:1");
        assert_eq!(p.kind(), Kind::Permit { slot: 1 });
        assert_eq!(p.wake_key(), Some(&name));
        assert_eq!(p.wake_keys().count(), 1);
        assert_eq!(p.script_keys().len(), 3);
        assert_eq!(p.other_slot(2).kind(), Kind::Permit { slot: 2 });
    }

    #[test]
    fn role_and_slot_suffixes_keep_locks_apart() {
        // The lock "a:readers" cannot share a key with the lock "a".
        let a = rw_layout("s:", "a");
        let b = rw_layout("s:", "a:readers");
        assert!(a.iter().all(|k| !b.contains(k)));
        let x = slot_layout("s:", "a:1", 2);
        let y = slot_layout("s:", "a", 2);
        assert!(x.iter().all(|k| !y.contains(k)));
    }
}
