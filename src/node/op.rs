//! One request to a node: its script, keys and arguments (the Lua ARGV order of each script is
//! written here and nowhere else), the commands it sends and the reply it makes of theirs.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Cmd, ServerErrorKind, Value};

use super::cause::{one_line, protocol};
use crate::error::NodeCause;
use crate::keys::{Keys, Kind};

/// Which script a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// `acquire.lua`: take every key unless another value holds one (a plain `SET NX PX` for a
    /// single key without fencing).
    Acquire,
    /// `release.lua`: compare-and-delete.
    Release,
    /// `extend.lua`: compare-and-extend.
    Extend,
    /// `fence.lua`: raise the fencing counter under our value.
    Fence,
    /// `rw_read.lua`: join the readers unless a writer holds or waits.
    ReadAcquire,
    /// `rw_write.lua`: take the writer key unless a writer or a live reader holds the lock.
    WriteAcquire,
    /// `rw_read_release.lua`: leave the readers (announced when the last one leaves).
    ReadRelease,
    /// `rw_write_release.lua`: compare-and-delete the writer key and our intent.
    WriteRelease,
    /// `rw_read_extend.lua`: move a live reader's expiry.
    ReadExtend,
    /// `sem_acquire.lua`: take one slot of a semaphore, or say which are free.
    PermitAcquire,
    /// `sem_release.lua`: compare-and-delete a slot, announced on the semaphore's channel.
    PermitRelease,
}

impl Script {
    /// Every script: all are loaded together on NOSCRIPT, so a node's script cache is only
    /// ever empty or full.
    pub(super) const ALL: [Script; 11] = [
        Script::Acquire,
        Script::Release,
        Script::Extend,
        Script::Fence,
        Script::ReadAcquire,
        Script::WriteAcquire,
        Script::ReadRelease,
        Script::WriteRelease,
        Script::ReadExtend,
        Script::PermitAcquire,
        Script::PermitRelease,
    ];

    /// The script's Lua source (`SCRIPT LOAD`).
    pub(super) fn source(self) -> &'static str {
        match self {
            Script::Acquire => include_str!("../scripts/acquire.lua"),
            Script::Release => include_str!("../scripts/release.lua"),
            Script::Extend => include_str!("../scripts/extend.lua"),
            Script::Fence => include_str!("../scripts/fence.lua"),
            Script::ReadAcquire => include_str!("../scripts/rw_read.lua"),
            Script::WriteAcquire => include_str!("../scripts/rw_write.lua"),
            Script::ReadRelease => include_str!("../scripts/rw_read_release.lua"),
            Script::WriteRelease => include_str!("../scripts/rw_write_release.lua"),
            Script::ReadExtend => include_str!("../scripts/rw_read_extend.lua"),
            Script::PermitAcquire => include_str!("../scripts/sem_acquire.lua"),
            Script::PermitRelease => include_str!("../scripts/sem_release.lua"),
        }
    }

    /// Its SHA1 (`EVALSHA`), computed once per script.
    fn sha(self) -> &'static str {
        static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| loaded(Script::Acquire));
        static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| loaded(Script::Release));
        static EXTEND: LazyLock<redis::Script> = LazyLock::new(|| loaded(Script::Extend));
        static FENCE: LazyLock<redis::Script> = LazyLock::new(|| loaded(Script::Fence));
        // The scripts of the other lock kinds, in `ALL` order from `ReadAcquire`.
        static OTHERS: LazyLock<Vec<redis::Script>> =
            LazyLock::new(|| Script::ALL[4..].iter().map(|s| loaded(*s)).collect());
        fn loaded(script: Script) -> redis::Script {
            redis::Script::new(script.source())
        }
        match self {
            Script::Acquire => ACQUIRE.get_hash(),
            Script::Release => RELEASE.get_hash(),
            Script::Extend => EXTEND.get_hash(),
            Script::Fence => FENCE.get_hash(),
            other => {
                let i = Script::ALL[4..].iter().position(|s| *s == other);
                i.map_or("", |i| OTHERS[i].get_hash())
            }
        }
    }
}

/// One request, built once per round and sent to every node. Each constructor writes its
/// script's KEYS and ARGV in the order the script reads them (see `src/scripts/`).
#[derive(Debug)]
pub(crate) struct Op {
    script: Script,
    /// The lock's keys (shared with the lock, not copied).
    keys: Keys,
    /// Which of them the script takes.
    select: Select,
    /// A key sent after them: the fencing counter of a fenced acquire or fence raise.
    counter: Option<Arc<str>>,
    args: Vec<Arg>,
    /// A plain acquire is followed by `PTTL key`: the holder's remaining lease, for a waiter
    /// that will sleep.
    hint: bool,
}

/// The keys a request sends, out of its lock's [`Keys`].
#[derive(Debug, Clone, Copy)]
enum Select {
    /// The lock keys.
    Lock,
    /// The acquire script's keys ([`Keys::script_keys`]).
    Script,
    /// These of the acquire script's keys, in this order.
    Pick(&'static [usize]),
}

#[derive(Debug)]
enum Arg {
    Text(Arc<str>),
    Number(u64),
    Flag(bool),
}

impl Op {
    /// `script` on the keys of a lock, with no arguments yet.
    fn new(script: Script, keys: &Keys) -> Self {
        Op {
            script,
            keys: keys.clone(),
            select: Select::Lock,
            counter: None,
            args: Vec::with_capacity(4),
            hint: false,
        }
    }

    /// The acquire round's request (`acquire.lua`): the lock keys (and the fencing counter with
    /// fencing, for single-key locks); ARGV value, lease, fencing flag and the number of lock
    /// keys. With `hint`, a refusal also tells how long the holder's lease has left (otherwise
    /// only the script path does). `waiting`: the caller will try again, so a writer refused
    /// by readers leaves its intent (a single attempt leaves none).
    pub(crate) fn acquire(
        keys: &Keys,
        value: &Arc<str>,
        lease_ms: u64,
        fencing: bool,
        (hint, waiting): (bool, bool),
    ) -> Self {
        match keys.kind() {
            Kind::Mutex => {}
            Kind::Read | Kind::Counted { .. } => {
                let limit = match keys.kind() {
                    Kind::Counted { limit } => u64::from(limit),
                    _ => 0,
                };
                // rw_read.lua: KEYS writer, readers, intent; ARGV value, lease, limit.
                return Op::new(Script::ReadAcquire, keys)
                    .keys(Select::Script)
                    .text(value)
                    .number(lease_ms)
                    .number(limit);
            }
            Kind::Write => {
                // rw_write.lua: KEYS writer, readers, intent; ARGV value, lease, intent
                // expiry (one lease: a waiting writer refreshes it at each retry; 0: leave
                // none), the writer's identity.
                let waiter = keys.waiter().cloned().unwrap_or_else(|| value.clone());
                return Op::new(Script::WriteAcquire, keys)
                    .keys(Select::Script)
                    .text(value)
                    .number(lease_ms)
                    .number(if waiting { lease_ms } else { 0 })
                    .text(&waiter);
            }
            Kind::Permit { slot } => {
                // sem_acquire.lua: KEYS every slot; ARGV value, lease, the slot (1-based).
                return Op::new(Script::PermitAcquire, keys)
                    .keys(Select::Script)
                    .text(value)
                    .number(lease_ms)
                    .number(u64::from(slot) + 1);
            }
        }
        let mut op = Op::new(Script::Acquire, keys);
        op.counter = keys.fence().filter(|_| fencing && keys.len() == 1).cloned();
        op.hint = hint;
        let fenced = op.counter.is_some();
        op.text(value)
            .number(lease_ms)
            .flag(fenced)
            .number(keys.len() as u64)
    }

    /// A compare-and-delete of `value` (`release.lua`; ARGV value, announce flag), announced
    /// on each deleted key's channel (`<key>:released`, see [`crate::wake::channel`]; the
    /// script builds the names) unless `publish` is off (a release handed to a local waiter, a
    /// split vote's quiet undo). A set's release is announced too: its waiters poll, but a
    /// single-key waiter of one of its keys listens.
    ///
    /// The other kinds: a reader leaves the readers' set (`rw_read_release.lua`: KEYS writer,
    /// readers; ARGV value, announce flag, announce-every-release flag), announced on the
    /// writer key's channel when the last reader leaves; a writer deletes its key and intent
    /// (`rw_write_release.lua`: KEYS writer, intent; ARGV value, announce flag, the writer's
    /// identity); a permit
    /// deletes its slot (`sem_release.lua`: KEYS slot; ARGV value, announce flag, the
    /// semaphore's name, whose `:released` channel the script builds),
    /// announced on the semaphore's channel.
    pub(crate) fn release(keys: &Keys, value: &Arc<str>, publish: bool) -> Self {
        match keys.kind() {
            Kind::Mutex => Op::new(Script::Release, keys).text(value).flag(publish),
            kind @ (Kind::Read | Kind::Counted { .. }) => Op::new(Script::ReadRelease, keys)
                .keys(Select::Pick(&[0, 1]))
                .text(value)
                .flag(publish)
                .flag(matches!(kind, Kind::Counted { .. })),
            Kind::Write => {
                let waiter = keys.waiter().cloned().unwrap_or_else(|| value.clone());
                Op::new(Script::WriteRelease, keys)
                    .keys(Select::Pick(&[0, 2]))
                    .text(value)
                    .flag(publish)
                    .text(&waiter)
            }
            Kind::Permit { .. } => {
                // The script builds the channel from the name: no String per release.
                let name = keys.wake_key().cloned().unwrap_or_else(|| Arc::from(""));
                Op::new(Script::PermitRelease, keys)
                    .text(value)
                    .flag(publish)
                    .text(&name)
            }
        }
    }

    /// A compare-and-extend of `value` to a lease of `lease_ms` (`extend.lua`; ARGV value,
    /// lease).
    ///
    /// A writer's key and a permit's slot are plain value keys (`extend.lua` too); a reader
    /// moves its expiry in the readers' set (`rw_read_extend.lua`: KEYS readers; ARGV value,
    /// lease).
    pub(crate) fn extend(keys: &Keys, value: &Arc<str>, lease_ms: u64) -> Self {
        let script = match keys.kind() {
            Kind::Read | Kind::Counted { .. } => Script::ReadExtend,
            Kind::Mutex | Kind::Write | Kind::Permit { .. } => Script::Extend,
        };
        Op::new(script, keys).text(value).number(lease_ms)
    }

    /// Raising the fencing counter `counter` of the single-key lock `keys` to `token` under
    /// `value` (`fence.lua`; KEYS lock key, counter; ARGV value, token).
    pub(crate) fn fence(keys: &Keys, counter: &Arc<str>, value: &Arc<str>, token: u64) -> Self {
        let mut op = Op::new(Script::Fence, keys);
        op.counter = Some(counter.clone());
        op.text(value).number(token)
    }

    /// The script this request runs.
    pub(super) fn script(&self) -> Script {
        self.script
    }

    /// A single-key acquire without fencing, sent as `SET key value NX PX lease`: Redis runs a
    /// plain SET several times faster than a script's.
    fn plain(&self) -> bool {
        self.script == Script::Acquire && self.counter.is_none() && self.keys.len() == 1
    }

    /// Every key, in the order the script expects them.
    fn all_keys(&self) -> impl Iterator<Item = &Arc<str>> {
        let script = self.keys.script_keys();
        let (whole, picks): (&[Arc<str>], &[usize]) = match self.select {
            Select::Lock => (self.keys.as_slice(), &[]),
            Select::Script => (script, &[]),
            Select::Pick(picks) => (&[], picks),
        };
        whole
            .iter()
            .chain(picks.iter().filter_map(move |&i| script.get(i)))
            .chain(&self.counter)
    }

    fn key_count(&self) -> usize {
        self.all_keys().count()
    }

    fn keys(mut self, select: Select) -> Self {
        self.select = select;
        self
    }

    fn text(mut self, v: &Arc<str>) -> Self {
        self.args.push(Arg::Text(v.clone()));
        self
    }

    fn number(mut self, v: u64) -> Self {
        self.args.push(Arg::Number(v));
        self
    }

    /// A `"1"`/`"0"` argument.
    fn flag(mut self, v: bool) -> Self {
        self.args.push(Arg::Flag(v));
        self
    }

    /// How many commands this request sends.
    pub(super) fn commands(&self) -> usize {
        if self.plain() && self.hint {
            2
        } else {
            1
        }
    }

    /// This request's commands, each built at its final size.
    pub(super) fn cmds(&self) -> impl Iterator<Item = Cmd> + '_ {
        let plain = match (self.keys.single(), &*self.args) {
            (Some(key), [Arg::Text(value), Arg::Number(lease), ..]) if self.plain() => {
                Some((key, value, *lease))
            }
            _ => None,
        };
        let first = match plain {
            Some((key, value, lease)) => {
                let mut cmd = Cmd::with_capacity(6, key.len() + value.len() + 24);
                cmd.arg("SET")
                    .arg(&**key)
                    .arg(&**value)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease);
                cmd
            }
            None => {
                let size = 60
                    + self.all_keys().map(|k| k.len()).sum::<usize>()
                    + self.args.len() * 20
                    + self
                        .args
                        .iter()
                        .map(|a| match a {
                            Arg::Text(t) => t.len(),
                            _ => 0,
                        })
                        .sum::<usize>();
                let mut cmd = Cmd::with_capacity(3 + self.key_count() + self.args.len(), size);
                cmd.arg("EVALSHA")
                    .arg(self.script.sha())
                    .arg(self.key_count());
                for k in self.all_keys() {
                    cmd.arg(&**k);
                }
                for arg in &self.args {
                    match arg {
                        Arg::Text(t) => cmd.arg(&**t),
                        Arg::Number(n) => cmd.arg(*n),
                        Arg::Flag(f) => cmd.arg(if *f { "1" } else { "0" }),
                    };
                }
                cmd
            }
        };
        let second = plain.filter(|_| self.hint).map(|(key, _, _)| {
            let mut cmd = Cmd::with_capacity(2, key.len() + 8);
            cmd.arg("PTTL").arg(&**key);
            cmd
        });
        std::iter::once(first).chain(second)
    }

    /// This request's reply from its commands' replies (`next` gives them in order), in the
    /// shape of its script's reply (a plain acquire's SET and PTTL become `{1, 0}` or
    /// `{0, pttl}`, pttl -1 when not asked or not known).
    pub(super) fn reply(
        &self,
        mut next: impl FnMut() -> Result<Value, Failed>,
    ) -> Result<Value, Failed> {
        if !self.plain() {
            return next();
        }
        // Both replies are read before either is judged, so a failed SET never leaves its PTTL
        // for the next request to take as its own reply.
        let set = next();
        let pttl = if self.hint {
            next()
        } else {
            Ok(Value::Int(-1))
        };
        // The SET decides: a granted SET is a grant whatever became of the hint (an ACL without
        // PTTL, say), and a refusal whose hint failed is a refusal without a hint.
        let pttl = match pttl {
            Ok(Value::Int(ms)) => ms,
            _ => -1,
        };
        match set? {
            Value::Okay => Ok(Value::Array(vec![Value::Int(1), Value::Int(0)])),
            Value::Nil => Ok(Value::Array(vec![Value::Int(0), Value::Int(pttl)])),
            other => Err(Failed::Cause(protocol(format!(
                "SET NX PX returned {other:?}"
            )))),
        }
    }
}

/// Why a request in a pipeline failed.
pub(super) enum Failed {
    /// Its script is not in the node's cache (the node restarted).
    NoScript,
    Cause(NodeCause),
}

impl Failed {
    pub(super) fn cause(self) -> NodeCause {
        match self {
            Failed::NoScript => NodeCause::Redis(
                "the node lost redquorum's scripts again right after loading them (restarted, \
                 or SCRIPT FLUSH); the next request loads them again"
                    .into(),
            ),
            Failed::Cause(c) => c,
        }
    }

    /// A command's error reply (inside a pipeline or alone).
    pub(super) fn from_server(e: &redis::ServerError) -> Failed {
        if e.kind() == Some(ServerErrorKind::NoScript) {
            Failed::NoScript
        } else if matches!(e.code(), "NOAUTH" | "WRONGPASS") {
            Failed::Cause(NodeCause::Auth(one_line(&e.to_string())))
        } else {
            Failed::Cause(NodeCause::Redis(one_line(&e.to_string())))
        }
    }
}

/// One node's answer to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Granted; `fence` is this node's fencing counter after the grant (0 without fencing).
    Granted { fence: u64 },
    /// Another value holds the key for `pttl` more (None: the key has no expiry). A
    /// semaphore's node also says which slots are free there (bit `s` for slot `s`).
    Held { pttl: Option<Duration>, free: u64 },
}

/// One node's answer to a compare-and-delete or compare-and-extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    /// Our value was there and the change was made (a release also says how many
    /// subscribers its announcement reached).
    Done { listeners: u32 },
    /// No key at all.
    Absent,
    /// Another value holds the key; it was left untouched.
    Other,
}

/// A compare-and-delete, compare-and-extend or fence script's reply.
pub(super) fn owned_reply(reply: Value) -> Result<Owned, NodeCause> {
    match redis::from_redis_value::<i64>(reply) {
        Ok(n @ 1..) => Ok(Owned::Done {
            listeners: u32::try_from(n - 1).unwrap_or(u32::MAX),
        }),
        Ok(0) => Ok(Owned::Absent),
        Ok(-1) => Ok(Owned::Other),
        Ok(other) => Err(protocol(format!("script returned {other}"))),
        Err(e) => Err(protocol(format!("script reply: {e}"))),
    }
}

/// An acquire script's reply (`{1, fence}` granted, `{0, pttl, free slots...}` held).
pub(super) fn grant_reply(reply: Value) -> Result<Grant, NodeCause> {
    match redis::from_redis_value::<Vec<i64>>(reply).as_deref() {
        Ok([1, fence]) => Ok(Grant::Granted {
            fence: u64::try_from(*fence).unwrap_or(0),
        }),
        Ok([0, pttl, free @ ..]) => Ok(Grant::Held {
            pttl: u64::try_from(*pttl).ok().map(Duration::from_millis),
            // 1-based slot numbers; a semaphore has at most 64 slots.
            free: free
                .iter()
                .filter(|s| (1..=64).contains(*s))
                .fold(0, |mask, s| mask | 1 << (s - 1)),
        }),
        Ok(other) => Err(protocol(format!("acquire returned {other:?}"))),
        Err(e) => Err(protocol(format!("acquire: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_hash_to_distinct_shas() {
        let shas = Script::ALL.map(Script::sha);
        assert!(shas.iter().all(|s| s.len() == 40));
        for (i, a) in shas.iter().enumerate() {
            assert!(shas[i + 1..].iter().all(|b| a != b), "{shas:?}");
        }
    }

    #[test]
    fn each_script_has_its_own_source() {
        assert!(Script::Acquire.source().contains("NX"));
        assert!(Script::Release.source().contains("DEL"));
        assert!(Script::Extend.source().contains("PEXPIRE"));
        assert!(Script::Fence.source().contains("KEYS[2]"));
        assert!(Script::ReadAcquire.source().contains("ZADD"));
        assert!(Script::WriteAcquire.source().contains("ZRANGE"));
        assert!(Script::PermitAcquire.source().contains("NX"));
    }
}
