//! A lock's identity: the Redis keys it holds on every node.

use std::sync::Arc;

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
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        // The fencing counter follows from the key and the settings, which every user of one
        // local queue shares.
        self.keys == other.keys
    }
}

impl Eq for Keys {}

impl std::hash::Hash for Keys {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // A slice hashes its length first: `[k]` and `[a, b]` never collide by construction.
        self.keys.hash(state);
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
        }
    }

    /// `keys` must be sorted and distinct.
    pub(crate) fn many(keys: Vec<Arc<str>>) -> Self {
        Keys {
            keys: keys.into(),
            fence: None,
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

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys.iter()
    }
}
