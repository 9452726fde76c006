//! The report's types: a [`Report`] of [`NodeReport`]s, each a list of [`Finding`]s.

use std::fmt;
use std::time::Duration;

/// How a finding bears on the lock's safety. Ordered from best to worst, so the worst of
/// several is their `max()`.
///
/// ```
/// use redquorum::check::Level;
/// assert!(Level::Ok < Level::Warning && Level::Warning < Level::Unknown);
/// assert!(Level::Unknown < Level::Unsafe);
/// assert_eq!(Level::Unsafe.to_string(), "unsafe");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Level {
    /// As Redlock needs it.
    Ok,
    /// Safe in the common case, with a risk worth knowing (e.g. `appendfsync everysec` loses
    /// up to a second of writes on power loss).
    Warning,
    /// Could not be read (a `CONFIG` denied by an ACL or renamed, a sample too noisy): check it
    /// by hand.
    Unknown,
    /// Can let a lock be granted twice, or keeps the node from voting (unreachable, a command
    /// the crate needs denied): change it.
    Unsafe,
}

impl Level {
    /// `ok`, `warning`, `unknown` or `unsafe`.
    ///
    /// ```
    /// assert_eq!(redquorum::check::Level::Warning.as_str(), "warning");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Unknown => "unknown",
            Level::Unsafe => "unsafe",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`Finding`] is about. See the [module](crate::check) documentation for what each
/// check looks at.
///
/// ```
/// assert_eq!(redquorum::check::Check::Persistence.to_string(), "persistence");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Check {
    /// Reachable and authenticated (connect, `AUTH`, `PING`).
    Connection,
    /// A master, not a replica (`INFO replication`).
    Role,
    /// `appendonly` and `appendfsync`: whether lock keys survive a restart.
    Persistence,
    /// `maxmemory-policy` and `maxmemory`: whether lock keys can be evicted.
    Eviction,
    /// Not the same server as another node (`INFO server` `run_id`).
    Independence,
    /// Every command the crate sends is allowed for this user (ACL, `rename-command`).
    Permissions,
    /// Round-trip time against `node_timeout`.
    RoundTrip,
    /// The server clock's rate against ours (`TIME`), against `drift_factor`.
    Clock,
}

impl Check {
    /// The check's name: `connection`, `role`, `persistence`, `eviction`, `independence`,
    /// `permissions`, `round-trip` or `clock`.
    ///
    /// ```
    /// assert_eq!(redquorum::check::Check::RoundTrip.as_str(), "round-trip");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Connection => "connection",
            Check::Role => "role",
            Check::Persistence => "persistence",
            Check::Eviction => "eviction",
            Check::Independence => "independence",
            Check::Permissions => "permissions",
            Check::RoundTrip => "round-trip",
            Check::Clock => "clock",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's outcome on one node: what was seen and, unless it is [`Level::Ok`], what to
/// change.
///
/// ```
/// use redquorum::check::{Check, Level, Report};
/// # fn f(report: &Report) {
/// for node in &report.nodes {
///     if let Some(p) = node.finding(Check::Persistence) {
///         println!("{}: {} ({})", node.node, p.seen, p.level);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// How it bears on safety.
    pub level: Level,
    /// What was seen, e.g. `appendonly yes, appendfsync everysec`.
    pub seen: String,
    /// What to change (and why), when the level is not [`Level::Ok`].
    pub fix: Option<String>,
    /// A persistence finding that delaying every restart by the TTL makes acceptable (see
    /// [`Report::accept_delayed_restarts`]).
    pub(crate) restart_bound: bool,
}

impl Finding {
    pub(crate) fn new(check: Check, level: Level, seen: impl Into<String>) -> Self {
        Finding {
            check,
            level,
            seen: seen.into(),
            fix: None,
            restart_bound: false,
        }
    }

    /// Marks a persistence finding that a delayed restart makes acceptable.
    pub(crate) fn restart_bound(mut self) -> Self {
        self.restart_bound = true;
        self
    }

    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Everything checked on one node.
///
/// ```
/// use redquorum::check::{Level, Report};
/// # fn f(report: &Report) {
/// for node in &report.nodes {
///     println!("{} is {} (Redis {})", node.node, node.level(),
///         node.version.as_deref().unwrap_or("?"));
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeReport {
    /// The node's URL as given, with any credentials replaced by `***`.
    pub node: String,
    /// The server's `run_id` (`INFO server`), when it could be read.
    pub run_id: Option<String>,
    /// The server's `redis_version`, when it could be read.
    pub version: Option<String>,
    /// The median round-trip time of a few `PING`s.
    pub round_trip: Option<Duration>,
    /// The server clock's rate against ours (1.0: the same; 1.02: 2 % fast), when sampled.
    pub clock_rate: Option<f64>,
    /// One finding per check that ran, in [`Check`] order.
    pub findings: Vec<Finding>,
}

impl NodeReport {
    /// The worst level among the findings ([`Level::Ok`] when there are none).
    ///
    /// ```
    /// # use redquorum::check::{Level, Report};
    /// # fn f(report: &Report) {
    /// let unsafe_nodes = report.nodes.iter().filter(|n| n.level() == Level::Unsafe).count();
    /// # }
    /// ```
    pub fn level(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Whether the node answered (connected, authenticated, `PING`).
    ///
    /// ```
    /// # fn f(report: &redquorum::check::Report) {
    /// let down: Vec<&str> = report.nodes.iter().filter(|n| !n.reachable()).map(|n| &*n.node).collect();
    /// # }
    /// ```
    pub fn reachable(&self) -> bool {
        self.finding(Check::Connection)
            .is_some_and(|f| f.level == Level::Ok)
    }

    /// The finding of `check`, if it ran on this node.
    ///
    /// ```
    /// # use redquorum::check::{Check, Level};
    /// # fn f(node: &redquorum::check::NodeReport) {
    /// let evicts = node.finding(Check::Eviction).is_some_and(|f| f.level == Level::Unsafe);
    /// # }
    /// ```
    pub fn finding(&self, check: Check) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }
}

/// The preflight check of every node, from [`RedLock::check`](crate::RedLock::check) or
/// [`RedLockBuilder::check`](crate::RedLockBuilder::check). `Display` prints it as a table
/// per node followed by what to change.
///
/// ```no_run
/// # async fn f(locks: redquorum::RedLock) {
/// let report = locks.check().await;
/// if !report.is_safe() {
///     eprint!("{report}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// One report per node, in the order the nodes were given.
    pub nodes: Vec<NodeReport>,
    /// The lease the round trips and the persistence advice were judged against.
    pub ttl: Duration,
    /// The per-node request timeout the round trips were judged against.
    pub node_timeout: Duration,
    /// The drift factor the clock rates were judged against.
    pub drift_factor: f64,
}

impl Report {
    /// The overall verdict: the worst level of any node.
    ///
    /// ```no_run
    /// # use redquorum::check::Level;
    /// # async fn f(locks: redquorum::RedLock) {
    /// match locks.check().await.verdict() {
    ///     Level::Ok => println!("all masters run as Redlock needs"),
    ///     Level::Warning => println!("safe, with risks worth knowing"),
    ///     Level::Unknown => println!("some settings could not be read"),
    ///     _ => println!("unsafe: fix the masters"),
    /// }
    /// # }
    /// ```
    pub fn verdict(&self) -> Level {
        self.nodes
            .iter()
            .map(NodeReport::level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Whether no node is unsafe or unreachable (warnings and unknowns allowed): what
    /// `redquorum doctor` exits 0 on.
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) {
    /// assert!(locks.check().await.is_safe());
    /// # }
    /// ```
    pub fn is_safe(&self) -> bool {
        self.verdict() < Level::Unsafe
    }

    /// The report as it reads when every master is kept down after each crash or restart for
    /// at least the longest TTL in use before it serves again (Redlock's *delayed restarts*):
    /// then a master need not keep its lock keys, and `appendonly no`, `appendfsync no` and
    /// `appendfsync everysec` become [`Level::Warning`]s (still worth knowing: a restart that
    /// is not delayed, by a supervisor or by hand, can grant a lock twice, and fencing counters
    /// need `appendonly yes` and `appendfsync always` whatever the restarts). `redquorum doctor
    /// --restarts-delayed` prints this.
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) {
    /// // Our supervisor waits 30 s (> every TTL) before restarting a master.
    /// let report = locks.check().await.accept_delayed_restarts();
    /// assert!(report.is_safe());
    /// # }
    /// ```
    #[must_use]
    pub fn accept_delayed_restarts(mut self) -> Report {
        let ttl = self.ttl;
        for f in self.nodes.iter_mut().flat_map(|n| n.findings.iter_mut()) {
            if f.restart_bound && f.level > Level::Warning {
                f.level = Level::Warning;
            }
            if f.restart_bound {
                f.fix = Some(format!(
                    "accepted because every restart of this node is delayed by at least the \
                     longest TTL ({ttl:?} here): make sure no supervisor or person restarts it \
                     sooner; with fencing, set appendonly yes and appendfsync always anyway \
                     (the counters are not leases)"
                ));
            }
        }
        self
    }

    /// Every unsafe finding, with its node.
    ///
    /// ```no_run
    /// # async fn f(locks: redquorum::RedLock) {
    /// for (node, finding) in locks.check().await.unsafe_findings() {
    ///     eprintln!("{}: {}: {}", node.node, finding.check, finding.seen);
    /// }
    /// # }
    /// ```
    pub fn unsafe_findings(&self) -> impl Iterator<Item = (&NodeReport, &Finding)> {
        self.nodes.iter().flat_map(|n| {
            n.findings
                .iter()
                .filter(|f| f.level == Level::Unsafe)
                .map(move |f| (n, f))
        })
    }
}

/// A table per node (check, level, what was seen), then what to change for each finding that
/// is not ok, then the verdict.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "judged against ttl {:?}, node_timeout {:?}, drift_factor {}",
            self.ttl, self.node_timeout, self.drift_factor
        )?;
        for node in &self.nodes {
            writeln!(f)?;
            let mut about = Vec::new();
            if let Some(v) = &node.version {
                about.push(format!("Redis {v}"));
            }
            if let Some(id) = &node.run_id {
                about.push(format!("run_id {}", id.get(..8).unwrap_or(id)));
            }
            let about = if about.is_empty() {
                String::new()
            } else {
                format!(" ({})", about.join(", "))
            };
            writeln!(f, "{}: {}{about}", node.node, node.level())?;
            let width = node
                .findings
                .iter()
                .map(|x| x.check.as_str().len())
                .max()
                .unwrap_or(0);
            for x in &node.findings {
                writeln!(
                    f,
                    "  {:<width$}  {:<7}  {}",
                    x.check.as_str(),
                    x.level.as_str(),
                    x.seen
                )?;
            }
            for x in node.findings.iter().filter(|x| x.level != Level::Ok) {
                if let Some(fix) = &x.fix {
                    writeln!(f, "  -> {}: {fix}", x.check)?;
                }
            }
        }
        writeln!(f)?;
        let unsafe_nodes = self
            .nodes
            .iter()
            .filter(|n| n.level() == Level::Unsafe)
            .count();
        match self.verdict() {
            Level::Unsafe => writeln!(
                f,
                "verdict: unsafe ({unsafe_nodes} of {} nodes): change what is marked -> above",
                self.nodes.len()
            ),
            Level::Unknown => writeln!(
                f,
                "verdict: no unsafe setting found, but some could not be read: check them by hand"
            ),
            Level::Warning => writeln!(f, "verdict: safe, with warnings"),
            Level::Ok => writeln!(f, "verdict: safe"),
        }
    }
}
