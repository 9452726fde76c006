//! The preflight check of the Redis masters: is each one run the way Redlock's safety needs?
//!
//! Redlock is only as safe as its masters: a master that forgets its keys on restart
//! (`appendonly no`), evicts them under memory pressure (`maxmemory-policy allkeys-lru`), is
//! a replica, or is the same server as another node lets one lock be granted twice. Nothing
//! in the protocol notices. [`RedLock::check`](crate::RedLock::check) (on a built lock) and
//! [`RedLockBuilder::check`](crate::RedLockBuilder::check) (without building: it works when
//! `build()` would refuse) connect to every node on a connection of their own, read how it
//! is run and return a [`Report`]: one [`NodeReport`] per node, each a list of [`Finding`]s.
//! `redquorum doctor` prints the same report (docs/cli.md).
//!
//! | check | ok | warning | unsafe |
//! |---|---|---|---|
//! | [`Connection`](Check::Connection) | answers PING, authenticated | | unreachable, auth refused |
//! | [`Role`](Check::Role) | master without replicas | master with replicas (failover) | replica, Redis Cluster node |
//! | [`Persistence`](Check::Persistence) | `appendonly yes`, `appendfsync always` | `appendfsync everysec` | `appendonly no` (unless restarts are delayed by a TTL), `appendfsync no` |
//! | [`Eviction`](Check::Eviction) | `noeviction` | another policy, no `maxmemory` | another policy with `maxmemory` set |
//! | [`Independence`](Check::Independence) | its own server | | same `run_id` as another node |
//! | [`Permissions`](Check::Permissions) | every command allowed | PUBLISH, SUBSCRIBE denied (waiters poll) | SET, GET, PTTL, DEL, PEXPIRE, EVALSHA, SCRIPT LOAD, INFO, PING denied or renamed (INCR with fencing) |
//! | [`RoundTrip`](Check::RoundTrip) | well under `node_timeout` | over half of it | median over it |
//! | [`Clock`](Check::Clock) | rate within `drift_factor` of ours | runs slow | runs fast beyond `drift_factor` |
//!
//! What could not be read (a `CONFIG` denied or renamed, a sample too noisy) is
//! [`Level::Unknown`], never a crash and never "ok".
//!
//! The probes change nothing: `SET` with `XX` on a key that does not exist, `DEL` and
//! `PEXPIRE` of that key, `EVALSHA` of an unknown script (`NOSCRIPT` when allowed, `NOPERM`
//! when denied), `SCRIPT LOAD` of the crate's own release script, `PUBLISH` to and
//! `SUBSCRIBE` on a channel nobody uses; with fencing, `INCR` of that key, deleted at once.
//! Probe keys are `<namespace>:doctor:<uuid>`.
//!
//! # Examples
//!
//! ```no_run
//! use redquorum::check::Level;
//! use redquorum::RedLock;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), redquorum::Error> {
//! let report = RedLock::builder()
//!     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
//!     .check()
//!     .await?;
//! print!("{report}"); // a table per node, and what to change
//! for node in &report.nodes {
//!     for f in node.findings.iter().filter(|f| f.level == Level::Unsafe) {
//!         eprintln!("{}: {}: {} ({})", node.node, f.check, f.seen, f.fix.as_deref().unwrap_or(""));
//!     }
//! }
//! assert!(report.is_safe(), "fix the masters first");
//! # Ok(()) }
//! ```

mod judge;
mod probe;
mod report;
mod run;

pub use report::{Check, Finding, Level, NodeReport, Report};

pub(crate) use run::{check_nodes, check_specs, preflight};
