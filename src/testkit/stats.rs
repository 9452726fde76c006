//! Command counters of a cluster, to measure what a workload costs in Redis commands.

use std::collections::BTreeMap;

use super::{LocalCluster, TestkitError};

/// The commands redquorum's Lua scripts run inside Redis (they show up in
/// `total_commands_processed` and `INFO commandstats` though no client sent them), for
/// single-key locks without fencing: there an acquire is a plain `SET NX PX` (plus `PTTL` from
/// a waiter's second attempt on) that the client sends itself, and only releases and
/// extensions run scripts. (Sets and fencing also run SET, PTTL and INCR inside scripts; the
/// ownership queries send GET themselves.)
pub const SCRIPT_COMMANDS: &[&str] = &["get", "del", "pexpire", "publish"];

/// Command counters summed over the running nodes of a [`LocalCluster`]: take one before and
/// one after a workload and subtract.
///
/// ```no_run
/// # fn main() -> Result<(), redquorum::testkit::TestkitError> {
/// use redquorum::testkit::{LocalCluster, SCRIPT_COMMANDS};
/// let cluster = LocalCluster::start(5)?;
/// let before = cluster.command_stats()?;
/// // ... run a workload ...
/// let used = cluster.command_stats()?.since(&before);
/// println!("{} requests, {} commands", used.requests(SCRIPT_COMMANDS), used.total());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandStats {
    total: u64,
    calls: BTreeMap<String, u64>,
}

impl CommandStats {
    /// `total_commands_processed`: every command, the ones scripts run included.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::start(3)?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// let before = cluster.command_stats()?;
    /// locks.try_acquire("k").await?.expect("free").release().await?;
    /// let used = cluster.command_stats()?.since(&before);
    /// assert!(used.total() >= 6); // a SET and a release script's DEL on each of 3 nodes, at least
    /// # Ok(()) }
    /// ```
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Calls of one command (lower case, e.g. `"evalsha"`).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    ///
    /// let cluster = LocalCluster::start(3)?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// let before = cluster.command_stats()?;
    /// let _held = locks.try_acquire("k").await?.expect("free");
    /// assert_eq!(cluster.command_stats()?.since(&before).calls("set"), 3); // one SET per node
    /// # Ok(()) }
    /// ```
    pub fn calls(&self, command: &str) -> u64 {
        self.calls.get(command).copied().unwrap_or(0)
    }

    /// What clients sent: [`total`](Self::total) minus the calls of `internal` commands (those
    /// only scripts run, e.g. [`SCRIPT_COMMANDS`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redquorum::RedLock;
    /// use redquorum::testkit::SCRIPT_COMMANDS;
    ///
    /// let cluster = LocalCluster::start(3)?;
    /// let locks = RedLock::builder()
    ///     .nodes(cluster.urls())
    ///     .node_timeout(std::time::Duration::from_millis(250)) // generous: a loaded test machine
    ///     .build()
    ///     .await?;
    /// let before = cluster.command_stats()?;
    /// locks.try_acquire("k").await?.expect("free").release().await?;
    /// let used = cluster.command_stats()?.since(&before);
    /// // What the client sent, without what the release script ran inside Redis.
    /// assert!(used.requests(SCRIPT_COMMANDS) < used.total());
    /// # Ok(()) }
    /// ```
    pub fn requests(&self, internal: &[&str]) -> u64 {
        let inside: u64 = internal.iter().map(|c| self.calls(c)).sum();
        self.total.saturating_sub(inside)
    }

    /// The counts since `earlier`, less the `INFO` calls that read them (two per node per
    /// reading).
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(1)?;
    /// let before = cluster.command_stats()?;
    /// let after = cluster.command_stats()?;
    /// assert_eq!(after.since(&before).total(), 0); // its own INFO readings are not counted
    /// # Ok(()) }
    /// ```
    pub fn since(&self, earlier: &CommandStats) -> CommandStats {
        let info = self.calls("info").saturating_sub(earlier.calls("info"));
        let mut calls: BTreeMap<String, u64> = self
            .calls
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(earlier.calls(k))))
            .collect();
        calls.insert("info".into(), 0);
        CommandStats {
            total: self
                .total
                .saturating_sub(earlier.total)
                .saturating_sub(info),
            calls,
        }
    }
}

impl LocalCluster {
    /// The command counters of every running node, summed (`INFO stats` and
    /// `INFO commandstats`, read directly, never through a proxy).
    ///
    /// # Errors
    /// [`TestkitError::Io`] when a node cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use redquorum::testkit::LocalCluster;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::start(3)?;
    /// let stats = cluster.command_stats()?; // summed over the 3 nodes
    /// # drop(stats);
    /// # Ok(()) }
    /// ```
    pub fn command_stats(&self) -> Result<CommandStats, TestkitError> {
        let mut stats = CommandStats::default();
        for i in (0..self.len()).filter(|&i| self.is_running(i)) {
            // One connection per node, kept between readings (tests poll these counters).
            let (info, cmds) = self.with_direct_conn(i, |conn| {
                let info: String = redis::cmd("INFO").arg("stats").query(conn)?;
                let cmds: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
                Ok((info, cmds))
            })?;
            stats.total += info
                .lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            for (name, calls) in cmds.lines().filter_map(parse_cmdstat) {
                *stats.calls.entry(name.to_owned()).or_default() += calls;
            }
        }
        Ok(stats)
    }
}

/// `cmdstat_get:calls=12,usec=...` → `("get", 12)`.
fn parse_cmdstat(line: &str) -> Option<(&str, u64)> {
    let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
    let calls = rest
        .strip_prefix("calls=")?
        .split(',')
        .next()?
        .parse()
        .ok()?;
    Some((name, calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdstat_lines_parse() {
        assert_eq!(
            parse_cmdstat("cmdstat_evalsha:calls=3314,usec=1,usec_per_call=0.1"),
            Some(("evalsha", 3314))
        );
        assert_eq!(parse_cmdstat("# Commandstats"), None);
    }

    #[test]
    fn since_subtracts_and_drops_its_own_info_calls() {
        let at = |total, info, get| CommandStats {
            total,
            calls: [("info".to_owned(), info), ("get".to_owned(), get)].into(),
        };
        let d = at(130, 12, 40).since(&at(100, 2, 30));
        assert_eq!(d.total(), 20); // 30 more, 10 of them INFO
        assert_eq!(d.calls("get"), 10);
        assert_eq!(d.requests(&["get"]), 10);
    }
}
