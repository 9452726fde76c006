//! A Jepsen-style safety checker for lock clients under node faults.
//!
//! [`Workload`] runs clients (separate [`RedLock`]s) that contend for a few keys while a seeded
//! nemesis kills and restarts, pauses, slows down and partitions masters. Every holder performs
//! a non-atomic read-modify-write on an oracle that is *not* one of the nodes and records its
//! hold; [`check_holds`] then looks for holds of one key that overlapped while both were within
//! their validity, and for fencing tokens that did not increase in hold order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{check_permits, LocalCluster};
use crate::{Context, Error, RedLock, Retry};

/// One hold of a lock, as its holder saw it.
#[derive(Debug, Clone)]
pub struct HoldRecord {
    /// The lock key.
    pub key: String,
    /// Which client held it.
    pub client: usize,
    /// Its fencing token, if fencing was on.
    pub token: Option<u64>,
    /// A shared hold (a reader's, a semaphore permit's): it may overlap other shared holds of
    /// the key, never an exclusive one (a mutex's, a writer's).
    pub shared: bool,
    /// When `acquire` returned.
    pub start: Instant,
    /// When the holder finished (before releasing).
    pub end: Instant,
    /// When the guard's validity ran out.
    pub valid_until: Instant,
}

impl HoldRecord {
    /// The end of the part of the hold during which the holder trusted the lock.
    pub fn trusted_end(&self) -> Instant {
        self.end.min(self.valid_until)
    }
}

/// Violations of mutual exclusion and fencing among `holds`: two holds of one key that
/// overlapped while both were within their validity, unless both were shared (readers; a
/// semaphore's bound is [`check_permits`](super::check_permits)'s), and fencing tokens of one
/// key that did not strictly increase in the order the holds started.
///
/// ```
/// use redquorum::testkit::{check_holds, HoldRecord};
/// use std::time::Duration;
/// use tokio::time::Instant;
/// let t = Instant::now();
/// let ms = Duration::from_millis;
/// let hold = |client, start, end, token| HoldRecord {
///     key: "k".into(), client, token: Some(token), shared: false,
///     start: t + ms(start), end: t + ms(end), valid_until: t + ms(end + 100),
/// };
/// assert!(check_holds(&[hold(0, 0, 10, 1), hold(1, 20, 30, 2)]).is_empty());
/// assert_eq!(check_holds(&[hold(0, 0, 10, 1), hold(1, 5, 30, 2)]).len(), 1);
/// ```
pub fn check_holds(holds: &[HoldRecord]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&HoldRecord>> = BTreeMap::new();
    for h in holds {
        by_key.entry(&h.key).or_default().push(h);
    }
    let mut violations = Vec::new();
    for (key, mut hs) in by_key {
        hs.sort_by_key(|h| h.start);
        // Overlap: a hold starting before an earlier one (still trusted) ended, unless both
        // are shared. `latest`: the earlier hold trusted longest; `exclusive`: the earlier
        // exclusive hold trusted longest.
        let mut latest: Option<&HoldRecord> = None;
        let mut exclusive: Option<&HoldRecord> = None;
        for h in &hs {
            let against = if h.shared { exclusive } else { latest };
            if let Some(prev) = against {
                if h.start < prev.trusted_end() {
                    violations.push(format!(
                        "key {key:?}: client {} acquired while client {} still held it with validity left ({:?} of overlap)",
                        h.client,
                        prev.client,
                        prev.trusted_end() - h.start
                    ));
                }
            }
            if latest.is_none_or(|p| h.trusted_end() > p.trusted_end()) {
                latest = Some(h);
            }
            if !h.shared && exclusive.is_none_or(|p| h.trusted_end() > p.trusted_end()) {
                exclusive = Some(h);
            }
        }
        for w in hs.windows(2) {
            if let (Some(a), Some(b)) = (w[0].token, w[1].token) {
                if b <= a {
                    violations.push(format!(
                        "key {key:?}: fencing token went from {a} (client {}) to {b} (client {})",
                        w[0].client, w[1].client
                    ));
                }
            }
        }
    }
    violations
}

/// What a [`Workload`] run observed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Successful acquisitions.
    pub grants: u64,
    /// Failed acquisitions by error kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Faults injected by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Everything the checks found wrong (must be empty).
    pub violations: Vec<String>,
    /// Longest time without any grant (with a majority up).
    pub max_stall: Duration,
    /// The most holds of one key trusted at once (1 for a mutex; readers or permits that
    /// overlapped show more).
    pub max_concurrent: usize,
    /// Acquire latency percentiles (p50, p99) while no fault was active.
    pub healthy_latency: (Duration, Duration),
    /// Acquire latency percentiles (p50, p99) while a fault was active.
    pub faulty_latency: (Duration, Duration),
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "grants:       {} in {:.1?}", self.grants, self.elapsed)?;
        writeln!(f, "faults:       {:?}", self.faults)?;
        writeln!(f, "errors:       {:?}", self.errors)?;
        writeln!(f, "violations:   {}", self.violations.len())?;
        for v in self.violations.iter().take(10) {
            writeln!(f, "  - {v}")?;
        }
        writeln!(f, "max stall:    {:.1?}", self.max_stall)?;
        writeln!(f, "max holders:  {}", self.max_concurrent)?;
        writeln!(
            f,
            "acquire p50/p99 healthy: {:.2?} / {:.2?}",
            self.healthy_latency.0, self.healthy_latency.1
        )?;
        write!(
            f,
            "acquire p50/p99 faulty:  {:.2?} / {:.2?}",
            self.faulty_latency.0, self.faulty_latency.1
        )
    }
}

/// What a [`Workload`]'s clients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Primitive {
    /// `acquire`: every hold exclusive, each a read-modify-write of the oracle.
    #[default]
    Mutex,
    /// `read`/`write` on each key: one acquisition in four writes (a read-modify-write of the
    /// oracle); readers hold a few milliseconds, shared. No write hold may overlap any other.
    ReadWrite,
    /// `semaphore(key, permits)`: every hold shared, a few milliseconds; never more than
    /// `permits` at once.
    Semaphore {
        /// The permits of each semaphore.
        permits: usize,
    },
}

impl Primitive {
    /// The form a soak child is given (`mutex`, `rw`, `sem:<permits>`).
    fn arg(self) -> String {
        match self {
            Primitive::Mutex => "mutex".into(),
            Primitive::ReadWrite => "rw".into(),
            Primitive::Semaphore { permits } => format!("sem:{permits}"),
        }
    }

    /// Parses `mutex`, `rw` or `sem:<permits>` (what the soak example and its children take).
    ///
    /// ```
    /// use redquorum::testkit::Primitive;
    /// assert_eq!(Primitive::parse("sem:4"), Some(Primitive::Semaphore { permits: 4 }));
    /// assert_eq!(Primitive::parse("rw"), Some(Primitive::ReadWrite));
    /// assert_eq!(Primitive::parse("sem:x"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Primitive> {
        match s {
            "mutex" => Some(Primitive::Mutex),
            "rw" => Some(Primitive::ReadWrite),
            _ => s
                .strip_prefix("sem:")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p > 0)
                .map(|permits| Primitive::Semaphore { permits }),
        }
    }
}

/// A contention workload with a nemesis, on a [`LocalCluster`] built with `proxied(true)` (and
/// `appendonly(true)` for crash faults to be safe).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use redquorum::testkit::{LocalCluster, Workload};
/// let cluster = LocalCluster::builder().nodes(5).proxied(true).appendonly(true).start()?;
/// let report = Workload::new(Duration::from_secs(30), 42).run(&cluster).await?;
/// assert!(report.violations.is_empty(), "{report}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Workload {
    /// How long to run.
    pub duration: Duration,
    /// Stop early after this many grants.
    pub max_grants: u64,
    /// Seed of the nemesis and the clients' key choices.
    pub seed: u64,
    /// Independent clients (separate `RedLock`s).
    pub clients: usize,
    /// Keys contended for.
    pub keys: usize,
    /// Lease of every acquisition.
    pub ttl: Duration,
    /// Per-node timeout of the clients.
    pub node_timeout: Duration,
    /// Inject faults on up to a minority of nodes.
    pub nemesis: bool,
    /// Time between nemesis actions.
    pub fault_interval: Duration,
    /// What the clients take: mutexes, read-write locks or semaphores.
    pub primitive: Primitive,
}

impl Workload {
    /// A workload of `duration` with `seed`: 6 clients, 3 keys, 1 s leases, 100 ms node
    /// timeout, nemesis on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::Workload;
    ///
    /// let mut workload = Workload::new(Duration::from_secs(60), 42);
    /// workload.clients = 8; // every field is public: clients, keys, ttl, node_timeout, nemesis, ...
    /// workload.keys = 2;
    /// # drop(workload);
    /// ```
    pub fn new(duration: Duration, seed: u64) -> Self {
        Workload {
            duration,
            max_grants: u64::MAX,
            seed,
            clients: 6,
            keys: 3,
            ttl: Duration::from_secs(1),
            node_timeout: Duration::from_millis(100),
            nemesis: true,
            fault_interval: Duration::from_millis(200),
            primitive: Primitive::Mutex,
        }
    }

    /// Runs the workload (clients in this process) and the checks.
    ///
    /// # Errors
    /// [`Error`] when a client cannot be built (a majority down at the start).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::testkit::{LocalCluster, Workload};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = LocalCluster::builder().nodes(5).proxied(true).appendonly(true).start()?;
    /// // One second of contention while the nemesis kills, pauses, slows and partitions nodes.
    /// let report = Workload::new(Duration::from_secs(1), 7).run(&cluster).await?;
    /// assert!(report.violations.is_empty(), "{report}");
    /// assert!(report.grants > 0);
    /// # Ok(()) }
    /// ```
    pub async fn run(&self, cluster: &LocalCluster) -> Result<Report, Error> {
        let started = Instant::now();
        let end = started + self.duration;
        let stop = Arc::new(AtomicBool::new(false));
        let oracle = Arc::new(Oracle::Local(
            (0..self.keys).map(|_| AtomicU64::new(0)).collect(),
        ));
        let log = Arc::new(Mutex::new(Log::default()));
        let clients = self
            .spawn_clients(&cluster.urls(), 0, oracle.clone(), end, &stop, &log)
            .await?;
        let chaos = self.nemesis(cluster, end, &stop).await;
        stop.store(true, Ordering::SeqCst);
        let crashed = join_clients(clients, 0).await;
        let mut log = std::mem::take(&mut *lock(&log));
        log.violations.extend(crashed);
        let values = oracle.values(self.keys).await;
        Ok(self.report(log, &values, chaos, started))
    }

    /// Runs the workload with the clients in `processes` separate OS processes (each started
    /// by `command` with the arguments it is given appended; it must call
    /// [`run_child`](Self::run_child) with them), the nemesis in this one, and an oracle in a
    /// separate `redis-server` that is not one of the lock's nodes.
    ///
    /// # Errors
    /// [`Error::Config`] when a child cannot be started or its output cannot be read.
    ///
    /// # Examples
    ///
    /// One binary plays both parts, as `examples/soak.rs` does (not run here: a doc test
    /// cannot start itself as the child):
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redquorum::testkit::{LocalCluster, Workload};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let args: Vec<String> = std::env::args().skip(1).collect();
    ///     if args.first().map(String::as_str) == Some("--child") {
    ///         return Ok(Workload::run_child(&args[1..]).await?);
    ///     }
    ///     let cluster = LocalCluster::builder().nodes(5).proxied(true).appendonly(true).start()?;
    ///     let me = std::env::current_exe()?;
    ///     let report = Workload::new(Duration::from_secs(60), 1)
    ///         .run_processes(&cluster, 3, || {
    ///             let mut child = std::process::Command::new(&me);
    ///             child.arg("--child");
    ///             child
    ///         })
    ///         .await?;
    ///     assert!(report.violations.is_empty(), "{report}");
    ///     Ok(())
    /// }
    /// ```
    pub async fn run_processes(
        &self,
        cluster: &LocalCluster,
        processes: usize,
        command: impl Fn() -> std::process::Command,
    ) -> Result<Report, Error> {
        let fail = |what: String| Error::Config { reason: what };
        let oracle_node = LocalCluster::start(1).map_err(|e| fail(e.to_string()))?;
        let oracle_url = oracle_node.url(0).map_err(|e| fail(e.to_string()))?;
        let started = Instant::now();
        let end = started + self.duration;
        let mut children = Vec::new();
        for p in 0..processes {
            let mut cmd = command();
            cmd.args([
                cluster.urls().join(","),
                oracle_url.clone(),
                self.duration.as_millis().to_string(),
                self.seed.to_string(),
                (p * self.clients).to_string(),
                self.clients.to_string(),
                self.keys.to_string(),
                self.ttl.as_millis().to_string(),
                self.node_timeout.as_millis().to_string(),
                self.primitive.arg(),
            ])
            .stdout(std::process::Stdio::piped());
            children.push(
                cmd.spawn()
                    .map_err(|e| fail(format!("starting a soak child: {e}")))?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let chaos = self.nemesis(cluster, end, &stop).await;
        let mut log = Log::default();
        let clock = Clock::now();
        for (p, child) in children.into_iter().enumerate() {
            let out = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(format!("waiting for a soak child: {e}")))?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                log.parse(line, &clock);
            }
            // A child that crashed took its clients' holds with it: not a clean run.
            if !out.status.success() {
                log.violations
                    .push(format!("soak child {p} failed: {}", out.status));
            }
        }
        let oracle = Oracle::redis(&oracle_url).await?;
        let values = oracle.values(self.keys).await;
        Ok(self.report(log, &values, chaos, started))
    }

    /// The child side of [`run_processes`](Self::run_processes): runs `clients` clients with
    /// the given arguments and prints what they saw on standard output.
    ///
    /// # Errors
    /// [`Error::Config`] for malformed arguments; [`Error`] when a client cannot be built.
    ///
    /// # Examples
    ///
    /// See [`run_processes`](Self::run_processes): the child is the same binary, started with
    /// `--child`, and calls this with the arguments after it. Arguments that are not a child's
    /// are refused:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use redquorum::testkit::Workload;
    /// let err = Workload::run_child(&["not-a-url-list".to_owned()]).await.unwrap_err();
    /// assert!(err.to_string().contains("soak child arguments"));
    /// # }
    /// ```
    pub async fn run_child(args: &[String]) -> Result<(), Error> {
        let bad = || Error::Config {
            reason: format!("soak child arguments: {args:?}"),
        };
        let num = |i: usize| -> Result<u64, Error> {
            args.get(i).and_then(|a| a.parse().ok()).ok_or_else(bad)
        };
        let urls: Vec<String> = args
            .first()
            .ok_or_else(bad)?
            .split(',')
            .map(str::to_owned)
            .collect();
        let oracle_url = args.get(1).ok_or_else(bad)?;
        let mut w = Workload::new(Duration::from_millis(num(2)?), num(3)?);
        let first = usize::try_from(num(4)?).map_err(|_| bad())?;
        w.clients = usize::try_from(num(5)?).map_err(|_| bad())?;
        w.keys = usize::try_from(num(6)?).map_err(|_| bad())?.max(1);
        w.ttl = Duration::from_millis(num(7)?);
        w.node_timeout = Duration::from_millis(num(8)?);
        if let Some(p) = args.get(9) {
            w.primitive = Primitive::parse(p).ok_or_else(bad)?;
        }
        let end = Instant::now() + w.duration;
        let stop = Arc::new(AtomicBool::new(false));
        let oracle = Arc::new(Oracle::redis(oracle_url).await?);
        let log = Arc::new(Mutex::new(Log::default()));
        let clients = w
            .spawn_clients(&urls, first, oracle, end, &stop, &log)
            .await?;
        let crashed = join_clients(clients, first).await;
        let clock = Clock::now();
        let log = lock(&log);
        let mut out = String::new();
        for v in crashed {
            out.push_str(&format!("V {}\n", v.replace('\n', " ")));
        }
        for (h, asked) in &log.holds {
            out.push_str(&format!(
                "H {} {} {} {} {} {} {} {}\n",
                h.key,
                h.client,
                h.token.unwrap_or(0),
                clock.to_ns(*asked),
                clock.to_ns(h.start),
                clock.to_ns(h.end),
                clock.to_ns(h.valid_until),
                u8::from(h.shared),
            ));
        }
        for (kind, n) in &log.errors {
            out.push_str(&format!("E {} {n}\n", kind.replace(' ', "_")));
        }
        for (key, n) in &log.skipped {
            out.push_str(&format!("S {key} {n}\n"));
        }
        print!("{out}");
        Ok(())
    }

    async fn spawn_clients(
        &self,
        urls: &[String],
        first: usize,
        oracle: Arc<Oracle>,
        end: Instant,
        stop: &Arc<AtomicBool>,
        log: &Arc<Mutex<Log>>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
        let mut clients = Vec::new();
        for client in first..first + self.clients {
            let locks = RedLock::builder()
                .nodes(urls)
                .ttl(self.ttl)
                .node_timeout(self.node_timeout)
                .fencing(true)
                .retry(Retry::exponential(
                    Duration::from_millis(2),
                    Duration::from_millis(50),
                ))
                .owner(format!("client-{client}"))
                .build()
                .await?;
            let (stop, oracle, log) = (stop.clone(), oracle.clone(), log.clone());
            let (keys, max_grants, seed) = (self.keys, self.max_grants, self.seed);
            let primitive = self.primitive;
            clients.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ ((client as u64 + 1) * 0x9e37_79b9));
                while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                    let k = rng.usize(0..keys);
                    let key = format!("chaos-{k}");
                    let asked = Instant::now();
                    let ctx = Context::with_timeout(Duration::from_secs(5));
                    // Exclusive holds update the oracle; shared ones hold a few milliseconds.
                    let (taken, shared) = match primitive {
                        Primitive::Mutex => (locks.acquire(&ctx, &key).await, false),
                        Primitive::ReadWrite if rng.u32(0..4) == 0 => {
                            (locks.write(&ctx, &key).await, false)
                        }
                        Primitive::ReadWrite => (locks.read(&ctx, &key).await, true),
                        Primitive::Semaphore { permits } => match locks.semaphore(&key, permits) {
                            Ok(sem) => (sem.acquire(&ctx).await, true),
                            Err(e) => (Err(e), true),
                        },
                    };
                    match taken {
                        Ok(guard) => {
                            let start = Instant::now();
                            if shared {
                                let ms = rng.u64(1..4);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            } else {
                                // The oracle: a read-modify-write that two holders would
                                // break, written only with at least half the lease left (a
                                // client starved of CPU past its lease must not act: that
                                // pause is what fencing tokens are for, and no lock can
                                // cover it).
                                let margin = locks.ttl() / 2;
                                let wrote = oracle.rmw(k, || guard.validity() >= margin).await;
                                match wrote {
                                    Ok(true) => {}
                                    Ok(false) => lock(&log).skipped(&key),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "oracle unreachable");
                                        lock(&log).skipped(&key);
                                    }
                                }
                            }
                            let hold = HoldRecord {
                                key,
                                client,
                                token: guard.fencing_token(),
                                shared,
                                start,
                                end: Instant::now(),
                                valid_until: guard.expires_at(),
                            };
                            let grants = lock(&log).grant(hold, asked);
                            let _ = guard.release().await;
                            if grants >= max_grants {
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                        Err(e) => lock(&log).error(&e),
                    }
                }
            }));
        }
        Ok(clients)
    }

    /// Runs the nemesis (or just waits) until `end` or `stop`.
    async fn nemesis(&self, cluster: &LocalCluster, end: Instant, stop: &Arc<AtomicBool>) -> Chaos {
        if self.nemesis {
            Nemesis::new(self.seed, cluster.len(), self.fault_interval, stop.clone())
                .run(cluster, end)
                .await
        } else {
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Chaos::default()
        }
    }

    fn report(&self, log: Log, oracle: &[u64], chaos: Chaos, started: Instant) -> Report {
        let Chaos {
            faults,
            windows,
            failures,
        } = chaos;
        let holds: Vec<HoldRecord> = log.holds.iter().map(|(h, _)| h.clone()).collect();
        let mut violations = check_holds(&holds);
        let bound = match self.primitive {
            Primitive::Semaphore { permits } => permits,
            Primitive::Mutex | Primitive::ReadWrite => usize::MAX,
        };
        let (over, max_concurrent) = check_permits(&holds, bound);
        violations.extend(over);
        // A crashed client or a node the nemesis could not bring back: the run did not test
        // what it claims, so it cannot count as clean.
        violations.extend(log.violations);
        violations.extend(failures);
        for (k, value) in oracle.iter().enumerate() {
            let name = format!("chaos-{k}");
            let skipped = log.skipped.get(&name).copied().unwrap_or(0);
            let held = holds.iter().filter(|h| h.key == name && !h.shared).count() as u64;
            // Exclusive holds that wrote: each must have added one.
            let count = held.saturating_sub(skipped);
            if *value != count {
                // Holds that went on past their validity (a client starved of CPU) are not
                // overlaps for `check_holds`, but their updates can be lost: say how many.
                let late = holds
                    .iter()
                    .filter(|h| h.key == name && h.end > h.valid_until)
                    .count();
                violations.push(format!(
                    "key {name}: oracle counted {value} updates for {count} holds that wrote (lost update; \
                     {late} of them ran past their validity)"
                ));
            }
        }
        let (mut healthy, mut faulty) = (Vec::new(), Vec::new());
        for (h, asked) in &log.holds {
            let during = windows.iter().any(|(a, b)| a <= asked && asked <= b);
            let latency = h.start.saturating_duration_since(*asked);
            if during {
                faulty.push(latency);
            } else {
                healthy.push(latency);
            }
        }
        Report {
            grants: holds.len() as u64,
            errors: log.errors,
            faults,
            violations,
            max_stall: max_gap(&holds, started),
            max_concurrent,
            healthy_latency: percentiles(healthy),
            faulty_latency: percentiles(faulty),
            elapsed: started.elapsed(),
        }
    }
}

/// What the nemesis did: faults injected by kind, the windows during which some fault was
/// active, and faults it failed to heal (a node it could not restart, say).
#[derive(Debug, Default)]
struct Chaos {
    faults: BTreeMap<&'static str, u64>,
    windows: Vec<(Instant, Instant)>,
    failures: Vec<String>,
}

/// Waits for every client task (numbered from `first`); returns one violation for each that
/// panicked or was cancelled instead of finishing.
async fn join_clients(clients: Vec<tokio::task::JoinHandle<()>>, first: usize) -> Vec<String> {
    let mut crashed = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        if let Err(e) = c.await {
            let client = first + i;
            crashed.push(if e.is_panic() {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".to_owned());
                format!("client {client} panicked: {msg}")
            } else {
                format!("client {client} did not finish: {e}")
            });
        }
    }
    crashed
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where holders do their read-modify-write: in this process, or a `redis-server` outside the
/// quorum shared by processes.
enum Oracle {
    Local(Vec<AtomicU64>),
    Redis(redis::aio::MultiplexedConnection),
}

impl Oracle {
    async fn redis(url: &str) -> Result<Oracle, Error> {
        let conn = redis::Client::open(url)
            .map_err(|e| Error::Config {
                reason: e.to_string(),
            })?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| Error::Config {
                reason: format!("oracle: {e}"),
            })?;
        Ok(Oracle::Redis(conn))
    }

    /// Reads, yields, and writes back plus one if `still_valid()` says the lock may still be
    /// acted under, as a correct client checks its guard's validity before it acts: not
    /// atomic on purpose. Returns whether it wrote.
    async fn rmw(&self, k: usize, still_valid: impl Fn() -> bool) -> Result<bool, String> {
        match self {
            Oracle::Local(v) => {
                let read = v[k].load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                if !still_valid() {
                    return Ok(false);
                }
                v[k].store(read + 1, Ordering::SeqCst);
                Ok(true)
            }
            Oracle::Redis(conn) => {
                let mut conn = conn.clone();
                let key = format!("oracle-{k}");
                let read: Option<u64> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::task::yield_now().await;
                if !still_valid() {
                    return Ok(false);
                }
                redis::cmd("SET")
                    .arg(&key)
                    .arg(read.unwrap_or(0) + 1)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
                    .map(|()| true)
            }
        }
    }

    async fn values(&self, keys: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(keys);
        for k in 0..keys {
            out.push(match self {
                Oracle::Local(v) => v[k].load(Ordering::SeqCst),
                Oracle::Redis(conn) => {
                    let mut conn = conn.clone();
                    redis::cmd("GET")
                        .arg(format!("oracle-{k}"))
                        .query_async::<Option<u64>>(&mut conn)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                }
            });
        }
        out
    }
}

/// Converts between this process's monotonic instants and nanoseconds of the system clock,
/// the one clock processes on one machine share.
struct Clock {
    instant: Instant,
    ns: u128,
}

impl Clock {
    fn now() -> Clock {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Clock {
            instant: Instant::now(),
            ns,
        }
    }

    fn to_ns(&self, t: Instant) -> u128 {
        if t >= self.instant {
            self.ns + (t - self.instant).as_nanos()
        } else {
            self.ns.saturating_sub((self.instant - t).as_nanos())
        }
    }

    fn to_instant(&self, ns: u128) -> Instant {
        let nanos = |d: u128| Duration::from_nanos(u64::try_from(d).unwrap_or(u64::MAX));
        if ns >= self.ns {
            self.instant + nanos(ns - self.ns)
        } else {
            self.instant
                .checked_sub(nanos(self.ns - ns))
                .unwrap_or(self.instant)
        }
    }
}

#[derive(Default)]
struct Log {
    /// Each hold with the instant its acquire began.
    holds: Vec<(HoldRecord, Instant)>,
    errors: BTreeMap<&'static str, u64>,
    /// Clients that crashed.
    violations: Vec<String>,
    /// Per key, holds that did not write to the oracle (too little validity left by then).
    skipped: BTreeMap<String, u64>,
}

impl Log {
    fn grant(&mut self, hold: HoldRecord, asked: Instant) -> u64 {
        self.holds.push((hold, asked));
        self.holds.len() as u64
    }

    fn skipped(&mut self, key: &str) {
        *self.skipped.entry(key.to_owned()).or_default() += 1;
    }

    fn error(&mut self, e: &Error) {
        *self.errors.entry(error_kind(e)).or_default() += 1;
    }

    /// One line of a child's output.
    fn parse(&mut self, line: &str, clock: &Clock) {
        if let Some(v) = line.strip_prefix("V ") {
            self.violations.push(v.to_owned());
            return;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["H", key, client, token, asked, start, end, valid, shared] => {
                let n = |s: &str| s.parse::<u128>().unwrap_or(0);
                let hold = HoldRecord {
                    key: (*key).to_owned(),
                    client: client.parse().unwrap_or(usize::MAX),
                    token: token.parse().ok().filter(|t| *t > 0),
                    shared: *shared == "1",
                    start: clock.to_instant(n(start)),
                    end: clock.to_instant(n(end)),
                    valid_until: clock.to_instant(n(valid)),
                };
                self.holds.push((hold, clock.to_instant(n(asked))));
            }
            ["S", key, n] => {
                *self.skipped.entry((*key).to_owned()).or_default() += n.parse().unwrap_or(0);
            }
            ["E", kind, n] => {
                let kind = match *kind {
                    "timeout" => "timeout",
                    "no_quorum" => "no quorum",
                    "retries_exhausted" => "retries exhausted",
                    _ => "other",
                };
                *self.errors.entry(kind).or_default() += n.parse().unwrap_or(0);
            }
            _ => {}
        }
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Timeout { .. } => "timeout",
        Error::NoQuorum { .. } => "no quorum",
        Error::RetriesExhausted { .. } => "retries exhausted",
        _ => "other",
    }
}

fn max_gap(holds: &[HoldRecord], started: Instant) -> Duration {
    let mut starts: Vec<Instant> = holds.iter().map(|h| h.start).collect();
    starts.sort_unstable();
    let mut last = started;
    let mut gap = Duration::ZERO;
    for s in starts {
        gap = gap.max(s - last);
        last = s;
    }
    gap
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    v.sort_unstable();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

/// Injects one fault at a time on a random node, never more than a minority at once.
struct Nemesis {
    rng: fastrand::Rng,
    nodes: usize,
    interval: Duration,
    stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Pause,
    Latency,
    Partition,
}

impl Nemesis {
    fn new(seed: u64, nodes: usize, interval: Duration, stop: Arc<AtomicBool>) -> Self {
        Nemesis {
            rng: fastrand::Rng::with_seed(seed),
            nodes,
            interval,
            stop,
        }
    }

    async fn run(mut self, cluster: &LocalCluster, end: Instant) -> Chaos {
        let minority = crate::quorum::tolerated_failures(self.nodes);
        let mut active: Vec<(usize, Fault)> = Vec::new();
        let mut counts = BTreeMap::new();
        let mut windows = Vec::new();
        let mut failures = Vec::new();
        let mut since: Option<Instant> = None;
        while !self.stop.load(Ordering::SeqCst) && Instant::now() < end {
            tokio::time::sleep(self.interval).await;
            // Heal one fault, or inject one more while that stays a minority.
            if !active.is_empty() && (active.len() >= minority || self.rng.bool()) {
                let (i, fault) = active.swap_remove(self.rng.usize(0..active.len()));
                failures.extend(heal(cluster, i, fault));
            } else {
                let healthy: Vec<usize> = (0..self.nodes)
                    .filter(|i| active.iter().all(|(j, _)| j != i))
                    .collect();
                let i = healthy[self.rng.usize(0..healthy.len())];
                let (fault, name) = match self.rng.u8(0..4) {
                    0 => (Fault::Kill, "kill"),
                    1 => (Fault::Pause, "pause"),
                    2 => (Fault::Latency, "latency"),
                    _ => (Fault::Partition, "partition"),
                };
                if inject(cluster, i, fault) {
                    active.push((i, fault));
                    *counts.entry(name).or_default() += 1;
                }
            }
            match (active.is_empty(), since) {
                (false, None) => since = Some(Instant::now()),
                (true, Some(from)) => {
                    windows.push((from, Instant::now()));
                    since = None;
                }
                _ => {}
            }
        }
        for (i, fault) in active {
            failures.extend(heal(cluster, i, fault));
        }
        if let Some(from) = since {
            windows.push((from, Instant::now()));
        }
        Chaos {
            faults: counts,
            windows,
            failures,
        }
    }
}

/// Runs a blocking testkit call (process start/stop) without stalling the other tasks of a
/// multi-thread runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn inject(cluster: &LocalCluster, i: usize, fault: Fault) -> bool {
    blocking(|| inject_now(cluster, i, fault))
}

fn inject_now(cluster: &LocalCluster, i: usize, fault: Fault) -> bool {
    match fault {
        Fault::Kill => cluster.kill(i).is_ok(),
        Fault::Pause => cluster.pause(i).is_ok(),
        Fault::Latency => cluster
            .proxy(i)
            .map(|p| p.set_latency(Duration::from_millis(20)))
            .is_ok(),
        Fault::Partition => cluster.proxy(i).map(|p| p.blackhole()).is_ok(),
    }
}

/// Undoes `fault` on node `i`; a violation if that failed (the node stays down or cut off,
/// and the rest of the run is not the fault schedule it claims to be).
fn heal(cluster: &LocalCluster, i: usize, fault: Fault) -> Option<String> {
    blocking(|| heal_now(cluster, i, fault))
        .err()
        .map(|e| format!("node {i}: healing {fault:?} failed, the node stays faulty: {e}"))
}

fn heal_now(cluster: &LocalCluster, i: usize, fault: Fault) -> Result<(), super::TestkitError> {
    match fault {
        Fault::Kill => cluster.restart(i),
        Fault::Pause => cluster.resume(i),
        Fault::Latency => cluster.proxy(i).map(|p| p.set_latency(Duration::ZERO)),
        Fault::Partition => cluster.proxy(i).map(|p| p.heal()),
    }
}

/// Negative controls: each check of the report run against a history (or a client, or a node)
/// broken on purpose, which it must report; beside it the same history intact, which it must
/// not.
#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn hold(t: Instant, key: &str, client: usize, from: u64, to: u64, token: u64) -> HoldRecord {
        HoldRecord {
            key: key.into(),
            client,
            token: Some(token),
            shared: false,
            start: t + ms(from),
            end: t + ms(to),
            valid_until: t + ms(to + 100),
        }
    }

    fn log_of(holds: &[HoldRecord]) -> Log {
        let mut log = Log::default();
        for h in holds {
            log.grant(h.clone(), h.start);
        }
        log
    }

    #[test]
    fn check_holds_reports_a_fencing_token_that_falls_or_repeats() {
        let t = Instant::now();
        // Holds one after the other (no overlap): only the tokens can be wrong.
        let rising = [hold(t, "k", 0, 0, 10, 1), hold(t, "k", 1, 200, 210, 2)];
        assert!(check_holds(&rising).is_empty());
        for second in [1, 0] {
            let bad = [hold(t, "k", 0, 0, 10, 1), hold(t, "k", 1, 200, 210, second)];
            let v = check_holds(&bad);
            assert_eq!(v.len(), 1, "token 1 then {second}: {v:?}");
            assert!(v[0].contains("fencing token went from 1"), "{v:?}");
        }
        // Listed out of order: the check sorts by start, so a falling token is still seen.
        let bad = [hold(t, "k", 1, 200, 210, 3), hold(t, "k", 0, 0, 10, 7)];
        assert_eq!(check_holds(&bad).len(), 1);
        // Tokens of different keys are not compared.
        let keys = [hold(t, "a", 0, 0, 10, 7), hold(t, "b", 1, 200, 210, 3)];
        assert!(check_holds(&keys).is_empty());
    }

    #[test]
    fn the_oracle_check_reports_a_lost_update() {
        let t = Instant::now();
        let w = Workload::new(ms(1), 1);
        let holds = [
            hold(t, "chaos-0", 0, 0, 10, 1),
            hold(t, "chaos-0", 1, 200, 210, 2),
            hold(t, "chaos-0", 2, 400, 410, 3),
            hold(t, "chaos-1", 0, 0, 10, 1),
        ];
        let clean = w.report(log_of(&holds), &[3, 1, 0], Chaos::default(), t);
        assert!(clean.violations.is_empty(), "{clean}");
        // Two holders read the same value: one of three increments is lost.
        let lost = w.report(log_of(&holds), &[2, 1, 0], Chaos::default(), t);
        assert_eq!(lost.violations.len(), 1, "{lost}");
        assert!(lost.violations[0].contains("lost update"), "{lost}");
        assert!(lost.violations[0].contains("chaos-0"), "{lost}");
        // An update nobody holding the lock made is caught too.
        let extra = w.report(log_of(&holds), &[3, 1, 1], Chaos::default(), t);
        assert_eq!(extra.violations.len(), 1, "{extra}");
        // A hold that found too little validity left did not write: two updates for three
        // holds is then clean, but one is still a lost update.
        let mut log = log_of(&holds);
        log.skipped("chaos-0");
        let skipped = w.report(log, &[2, 1, 0], Chaos::default(), t);
        assert!(skipped.violations.is_empty(), "{skipped}");
        let mut log = log_of(&holds);
        log.skipped("chaos-0");
        let lost = w.report(log, &[1, 1, 0], Chaos::default(), t);
        assert_eq!(lost.violations.len(), 1, "{lost}");
    }

    #[test]
    fn max_stall_is_the_longest_time_without_a_grant() {
        let t = Instant::now();
        let w = Workload::new(ms(1), 1);
        let steady = [
            hold(t, "chaos-0", 0, 100, 110, 1),
            hold(t, "chaos-0", 1, 200, 210, 2),
            hold(t, "chaos-0", 2, 300, 310, 3),
        ];
        let r = w.report(log_of(&steady), &[3], Chaos::default(), t);
        assert_eq!(r.max_stall, ms(100), "{r}");
        // A stall of 2 s in the middle, listed out of order.
        let stalled = [
            hold(t, "chaos-0", 0, 2_300, 2_310, 3),
            hold(t, "chaos-0", 1, 100, 110, 1),
            hold(t, "chaos-0", 2, 300, 310, 2),
        ];
        let r = w.report(log_of(&stalled), &[3], Chaos::default(), t);
        assert_eq!(r.max_stall, ms(2_000), "{r}");
        // A run whose first grant came late stalled from the start.
        let late = [hold(t, "chaos-0", 0, 3_000, 3_010, 1)];
        let r = w.report(log_of(&late), &[1], Chaos::default(), t);
        assert_eq!(r.max_stall, ms(3_000), "{r}");
    }

    #[tokio::test]
    async fn a_client_that_panics_is_a_violation() {
        let fine = tokio::spawn(async {});
        let crashed = tokio::spawn(async { panic!("deliberately broken client") });
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        let v = join_clients(vec![fine, crashed, cancelled], 4).await;
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].contains("client 5 panicked: deliberately broken client"),
            "{v:?}"
        );
        assert!(v[1].contains("client 6 did not finish"), "{v:?}");
        // It reaches the report, and a child process passes it on to the parent.
        let w = Workload::new(ms(1), 1);
        let mut log = Log::default();
        log.parse(&format!("V {}", v[0]), &Clock::now());
        let r = w.report(log, &[0], Chaos::default(), Instant::now());
        assert_eq!(r.violations, [v[0].clone()], "{r}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_cannot_be_restarted_is_a_violation() {
        let c = LocalCluster::start(1).expect("redis-server");
        // Intact: a killed node comes back.
        assert!(inject(&c, 0, Fault::Kill));
        assert_eq!(heal(&c, 0, Fault::Kill), None);
        assert!(c.is_running(0));
        // Broken: while the node is down something else takes its port.
        assert!(inject(&c, 0, Fault::Kill));
        let squatter = std::net::TcpListener::bind(("127.0.0.1", c.port(0).expect("port")))
            .expect("take the node's port");
        let v = heal(&c, 0, Fault::Kill).expect("a failed restart is reported");
        assert!(v.contains("node 0: healing Kill failed"), "{v}");
        assert!(!c.is_running(0));
        drop(squatter);
        // The report counts it.
        let w = Workload::new(ms(1), 1);
        let chaos = Chaos {
            failures: vec![v.clone()],
            ..Chaos::default()
        };
        let r = w.report(Log::default(), &[0], chaos, Instant::now());
        assert_eq!(r.violations, [v], "{r}");
    }
}
