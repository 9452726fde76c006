//! `build()` and `check()`, and the rules every builder is checked against before any I/O.

use std::time::Duration;

use super::{default_node_timeout, RedLockBuilder};
use crate::error::Error;
use crate::lock::RedLock;
use crate::node::NodeSpec;
use crate::settings::{check_ttl, Config};

impl RedLockBuilder {
    /// Checks every rule, then connects to all nodes in parallel and returns once a majority
    /// answers (and the others answered or had a node timeout more to do so); the others keep
    /// connecting in the background.
    ///
    /// Every connection is identified before it carries a request (`INFO server`: the
    /// server's `run_id`, again after each reconnect, as a restarted server has a new one), so
    /// one server reached by two URLs never counts as two votes. A node that turns out to be
    /// the same server as another only after `build()` (it was down then) never votes: its
    /// failures say [`NodeCause::Duplicate`](crate::NodeCause::Duplicate), and an error is
    /// logged once, naming both nodes. With ACLs, the user needs `+info` as well.
    ///
    /// # Errors
    /// [`Error::Config`] for bad input, before any I/O: no nodes, a node given twice (or the
    /// same host and port with another database), an unparsable URL, a zero or too-short TTL, a
    /// drift factor outside `0.0..0.5`, a zero node or connect timeout, `max_in_flight` below
    /// the number of nodes, an empty owner or namespace; after connecting, two nodes that are
    /// the same server (naming both URLs, without credentials). [`Error::NoQuorum`] when a
    /// majority of nodes does not answer within `connect_timeout`: it lists every node that
    /// did not, each with what to check. With
    /// [`refuse_unsafe_masters`](Self::refuse_unsafe_masters), [`Error::Config`] for a master
    /// run in a way that is not safe for Redlock.
    ///
    /// ```no_run
    /// # use redquorum::{Error, RedLock};
    /// # async fn f() {
    /// // 127.0.0.1 and localhost: one server, found out when the nodes connect.
    /// let err = RedLock::builder()
    ///     .nodes(["redis://127.0.0.1:6379", "redis://localhost:6379", "redis://10.0.0.3:6379"])
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Config { .. }));
    /// assert!(err.to_string().contains("same Redis server"));
    /// # }
    /// ```
    ///
    /// With masters that run (here local ones, from the testkit):
    ///
    /// ```
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = redquorum::testkit::LocalCluster::start(3)?;
    /// use redquorum::RedLock;
    ///
    /// let locks = RedLock::builder().nodes(cluster.urls()).build().await?;
    /// assert_eq!((locks.nodes(), locks.quorum()), (3, 2));
    /// let guard = locks.try_acquire("orders:42").await?.expect("the lock is free");
    /// guard.release().await?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "testkit"))]
    /// # fn main() {}
    /// ```
    ///
    /// # Cancel safety
    /// Dropping the future leaves nothing behind: connections are closed with it.
    pub async fn build(self) -> Result<RedLock, Error> {
        let (config, specs) = self.validate()?;
        let lock = RedLock::connect(config, specs).await?;
        lock.preflight(self.refuse_unsafe).await?;
        Ok(lock)
    }

    /// Makes [`build`](Self::build) fail with [`Error::Config`] when a master is run in a way
    /// that can let a lock be granted twice or keep it from voting: `appendonly no`,
    /// `appendfsync no`, an evicting `maxmemory-policy` with `maxmemory` set, a replica, two
    /// nodes that are one server, a command the crate needs denied by an ACL (see
    /// [`check`](crate::check)). The error names each node (without credentials), the setting
    /// and what to change. Unreachable nodes are not refused here (`build()` needs a majority,
    /// as always), nor settings that cannot be read (a `CONFIG` denied by an ACL): run
    /// [`check`](Self::check) or `redquorum doctor` to see those.
    ///
    /// Either way, `build()` reads the masters' settings once it has connected (`INFO` and
    /// `CONFIG GET`, on its own connections: about one round trip) and logs a `tracing`
    /// warning for each unsafe one. Nodes that are down then are not checked (nor refused).
    ///
    /// # Default
    /// Off.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), redquorum::Error> {
    /// let locks = redquorum::RedLock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .refuse_unsafe_masters(true)
    ///     .build()
    ///     .await?; // Error::Config: "... 10.0.0.2:6379/0: persistence: appendonly no ..."
    /// # Ok(()) }
    /// ```
    pub fn refuse_unsafe_masters(mut self, refuse: bool) -> Self {
        self.refuse_unsafe = refuse;
        self
    }

    /// Checks how every master is run without building a [`RedLock`] (so it works where
    /// `build()` would refuse: one server under two URLs, a majority down), judged against
    /// this builder's TTL, node timeout and drift factor: see [`check`](crate::check) and
    /// [`RedLock::check`]. Takes about a second (the clock sample).
    ///
    /// # Errors
    /// [`Error::Config`] for input that can never work (an unparsable URL, a bad TTL...), as
    /// `build()` would; a node listed twice is not an error here but a finding.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), redquorum::Error> {
    /// let report = redquorum::RedLock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .check()
    ///     .await?;
    /// print!("{report}");
    /// # Ok(()) }
    /// ```
    pub async fn check(self) -> Result<crate::check::Report, Error> {
        let specs = self
            .nodes
            .iter()
            .map(|u| NodeSpec::parse(u).map_err(Error::config))
            .collect::<Result<Vec<_>, _>>()?;
        // The settings are validated as if each server were listed once: the report shows the
        // duplicates (their run_ids are equal).
        let mut once: Vec<&str> = Vec::new();
        let mut servers = Vec::new();
        for (url, spec) in self.nodes.iter().zip(&specs) {
            if !servers.contains(&spec.server) {
                servers.push(spec.server.clone());
                once.push(url);
            }
        }
        let (config, _) = self.clone().nodes(once).validate()?;
        Ok(crate::check::check_specs(&config, &specs).await)
    }

    /// All rules, as a pure function of the builder: one after another, each a few lines
    /// (long on purpose: the rules read in order, and the tests check each message).
    pub(crate) fn validate(&self) -> Result<(Config, Vec<NodeSpec>), Error> {
        if self.nodes.is_empty() {
            return Err(Error::config(
                "no nodes: pass the URLs of your Redis masters to .nodes([...]) (3 or 5 independent \
                 masters survive the loss of 1 or 2)",
            ));
        }
        let mut specs: Vec<NodeSpec> = Vec::with_capacity(self.nodes.len());
        for url in &self.nodes {
            let spec = NodeSpec::parse(url).map_err(Error::config)?;
            #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
            let spec = self.tls.apply(spec)?;
            // One host and port is one server, whatever the database (other names for the same
            // server are caught when the nodes connect: see `build`).
            if let Some(first) = specs.iter().find(|s| s.server == spec.server) {
                return Err(Error::config(format!(
                    "nodes {} and {} are the same Redis server ({}): a server listed more than \
                     once (another database is the same server) would count as several votes; \
                     list every master once",
                    first.shown, spec.shown, spec.server
                )));
            }
            specs.push(spec);
        }
        if !(self.drift_factor.is_finite() && (0.0..0.5).contains(&self.drift_factor)) {
            return Err(Error::config(format!(
                "drift_factor {} is out of range; use a value in 0.0..0.5 (default 0.01)",
                self.drift_factor
            )));
        }
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config(
                "ttl must be at least 1 ms (Redis leases are in whole milliseconds); the default is 10 s",
            ));
        }
        if self.ttl > Duration::from_secs(86_400 * 365) {
            return Err(Error::config(format!(
                "ttl {:?} is longer than a year; a lock that outlives its holder that long is a bug \
                 waiting to happen",
                self.ttl
            )));
        }
        let node_timeout = self
            .node_timeout
            .unwrap_or_else(|| default_node_timeout(self.ttl));
        if node_timeout.is_zero() {
            return Err(Error::config("node_timeout must be greater than zero"));
        }
        check_ttl(self.ttl, self.drift_factor, node_timeout)?;
        if self.max_in_flight < specs.len() {
            return Err(Error::config(format!(
                "max_in_flight {} is below the number of nodes ({}): one acquisition could not reach \
                 every node at once",
                self.max_in_flight,
                specs.len()
            )));
        }
        if self.safety_poll.is_zero() {
            return Err(Error::config(
                "safety_poll must be greater than zero (it bounds how long a notified waiter \
                 goes without checking; 30 s is the default)",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout must be greater than zero"));
        }
        if self.namespace.is_empty() || self.namespace.contains(':') {
            return Err(Error::config(format!(
                "namespace {:?} must be non-empty and must not contain ':' (keys are \
                 <namespace>:<group>:<key>); pick a prefix no other data on these servers uses",
                self.namespace
            )));
        }
        let owner =
            match &self.owner {
                Some(o) if o.is_empty() => return Err(Error::config(
                    "owner label is empty; use something that names this process, e.g. host:pid",
                )),
                Some(o) => o.as_str().into(),
                None => default_owner().into(),
            };
        if specs.len() % 2 == 0 {
            tracing::warn!(
                nodes = specs.len(),
                "an even number of nodes tolerates no more failures than one node fewer; prefer 3 or 5"
            );
        }
        let config = Config {
            ttl: self.ttl,
            drift_factor: self.drift_factor,
            retry: self.retry,
            owner,
            namespace: self.namespace.as_str().into(),
            connect_timeout: self.connect_timeout,
            node_timeout,
            max_in_flight: self.max_in_flight,
            wait_strategy: self.wait_strategy,
            safety_poll: self.safety_poll,
            fencing: self.fencing,
            fencing_unconfirmed: self.fencing_unconfirmed,
            semaphore_counting: self.semaphore_counting,
        };
        Ok((config, specs))
    }
}

fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_TTL;

    fn three() -> RedLockBuilder {
        RedLockBuilder::default().nodes([
            "redis://127.0.0.1:7001",
            "redis://127.0.0.1:7002",
            "redis://127.0.0.1:7003",
        ])
    }

    fn reason(b: RedLockBuilder) -> String {
        match b.validate() {
            Err(Error::Config { reason }) => reason,
            Err(other) => panic!("expected Config, got {other}"),
            Ok(_) => panic!("expected Config error"),
        }
    }

    #[test]
    fn defaults_validate() {
        let (c, specs) = three().validate().expect("defaults are valid");
        assert_eq!(specs.len(), 3);
        assert_eq!(c.ttl, DEFAULT_TTL);
        assert_eq!(c.node_timeout, Duration::from_millis(50));
        assert!(c.owner.contains(':'));
    }

    #[test]
    fn every_rule_has_a_clear_error() {
        assert!(reason(RedLockBuilder::default()).contains("no nodes"));
        assert!(reason(three().nodes(["redis://a:1", "redis://a:1/0"])).contains("more than once"));
        assert!(reason(three().nodes(["not a url"])).contains("not a valid Redis URL"));
        assert!(reason(three().ttl(Duration::ZERO)).contains("at least 1 ms"));
        assert!(reason(three().ttl(Duration::from_millis(20))).contains("leaves no validity"));
        assert!(
            reason(three().ttl(Duration::from_secs(86_400 * 400))).contains("longer than a year")
        );
        assert!(reason(three().drift_factor(0.5)).contains("drift_factor"));
        assert!(reason(three().drift_factor(f64::NAN)).contains("drift_factor"));
        assert!(reason(three().drift_factor(-0.1)).contains("drift_factor"));
        assert!(reason(three().node_timeout(Duration::ZERO)).contains("node_timeout"));
        assert!(
            reason(three().node_timeout(Duration::from_secs(10))).contains("leaves no validity")
        );
        assert!(reason(three().max_in_flight(2)).contains("max_in_flight"));
        assert!(reason(three().connect_timeout(Duration::ZERO)).contains("connect_timeout"));
        assert!(reason(three().namespace("")).contains("namespace"));
        assert!(reason(three().owner("")).contains("owner"));
    }

    #[test]
    fn same_host_different_db_is_one_server() {
        let r = reason(three().nodes(["redis://a:1/0", "redis://:pw@a:1/1", "redis://b:1"]));
        assert!(
            r.contains("redis://a:1/0") && r.contains("redis://***@a:1/1") && !r.contains("pw"),
            "{r}"
        );
    }

    #[test]
    fn default_node_timeout_scales_with_ttl() {
        assert_eq!(
            default_node_timeout(Duration::from_secs(20)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn credentials_never_appear_in_errors() {
        let r = reason(three().nodes(["redis://u:hunter2@h:1", "redis://u:hunter2@h:1"]));
        assert!(!r.contains("hunter2"), "{r}");
    }
}
