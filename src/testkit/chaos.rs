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

use super::LocalCluster;
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
    /// When `acquire` returned.
    pub start: Instant,
    /// When the holder finished (before releasing).
    pub end: Instant,
    /// When the guard's validity ran out.
    pub valid_until: Instant,
}

impl HoldRecord {
    /// The part of the hold during which the holder trusted the lock.
    fn trusted_end(&self) -> Instant {
        self.end.min(self.valid_until)
    }
}

/// Violations of mutual exclusion and fencing among `holds`: two holds of one key that
/// overlapped while both were within their validity, and fencing tokens of one key that did
/// not strictly increase in the order the holds started.
///
/// ```
/// use redquorum::testkit::{check_holds, HoldRecord};
/// use std::time::Duration;
/// use tokio::time::Instant;
/// let t = Instant::now();
/// let ms = Duration::from_millis;
/// let hold = |client, start, end, token| HoldRecord {
///     key: "k".into(), client, token: Some(token),
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
        // Overlap: a hold starting before an earlier one (still trusted) ended.
        let mut latest: Option<&HoldRecord> = None;
        for h in &hs {
            if let Some(prev) = latest {
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
}

impl Workload {
    /// A workload of `duration` with `seed`: 6 clients, 3 keys, 1 s leases, 100 ms node
    /// timeout, nemesis on.
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
        }
    }

    /// Runs the workload and the checks.
    ///
    /// # Errors
    /// [`Error`] when a client cannot be built (a majority down at the start).
    pub async fn run(&self, cluster: &LocalCluster) -> Result<Report, Error> {
        let started = Instant::now();
        let end = started + self.duration;
        let stop = Arc::new(AtomicBool::new(false));
        let faulty = Arc::new(AtomicU64::new(0));
        let oracle: Arc<Vec<AtomicU64>> =
            Arc::new((0..self.keys).map(|_| AtomicU64::new(0)).collect());
        let log = Arc::new(Mutex::new(Log::default()));
        let mut clients = Vec::new();
        for client in 0..self.clients {
            let locks = RedLock::builder()
                .nodes(cluster.urls())
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
            let (stop, faulty, oracle, log) =
                (stop.clone(), faulty.clone(), oracle.clone(), log.clone());
            let (keys, max_grants, seed) = (self.keys, self.max_grants, self.seed);
            clients.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ ((client as u64 + 1) * 0x9e37_79b9));
                while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                    let k = rng.usize(0..keys);
                    let key = format!("chaos-{k}");
                    let asked = Instant::now();
                    let during_fault = faulty.load(Ordering::SeqCst) > 0;
                    let ctx = Context::with_timeout(Duration::from_secs(5));
                    match locks.acquire(&ctx, &key).await {
                        Ok(guard) => {
                            let start = Instant::now();
                            // The oracle: a read-modify-write that two holders would break.
                            let read = oracle[k].load(Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            oracle[k].store(read + 1, Ordering::SeqCst);
                            let end = Instant::now();
                            let hold = HoldRecord {
                                key,
                                client,
                                token: guard.fencing_token(),
                                start,
                                end,
                                valid_until: guard.expires_at(),
                            };
                            let grants = log.lock().unwrap_or_else(PoisonError::into_inner).grant(
                                hold,
                                start - asked,
                                during_fault,
                            );
                            let _ = guard.release().await;
                            if grants >= max_grants {
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                        Err(e) => log.lock().unwrap_or_else(PoisonError::into_inner).error(&e),
                    }
                }
            }));
        }
        let nemesis = self.nemesis.then(|| {
            let (stop, faulty) = (stop.clone(), faulty.clone());
            Nemesis::new(self.seed, cluster.len(), self.fault_interval, stop, faulty)
        });
        let faults = match nemesis {
            Some(n) => n.run(cluster, end).await,
            None => {
                while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                BTreeMap::new()
            }
        };
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            let _ = c.await;
        }
        let log = std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner));
        let mut violations = check_holds(&log.holds);
        for (k, value) in oracle.iter().enumerate() {
            let holds = log
                .holds
                .iter()
                .filter(|h| h.key == format!("chaos-{k}"))
                .count() as u64;
            let value = value.load(Ordering::SeqCst);
            if value != holds {
                violations.push(format!(
                    "key chaos-{k}: oracle counted {value} updates for {holds} holds (lost update)"
                ));
            }
        }
        Ok(Report {
            grants: log.holds.len() as u64,
            errors: log.errors,
            faults,
            violations,
            max_stall: max_gap(&log.holds, started),
            healthy_latency: percentiles(log.healthy),
            faulty_latency: percentiles(log.faulty),
            elapsed: started.elapsed(),
        })
    }
}

#[derive(Default)]
struct Log {
    holds: Vec<HoldRecord>,
    errors: BTreeMap<&'static str, u64>,
    healthy: Vec<Duration>,
    faulty: Vec<Duration>,
}

impl Log {
    fn grant(&mut self, hold: HoldRecord, latency: Duration, during_fault: bool) -> u64 {
        self.holds.push(hold);
        if during_fault {
            self.faulty.push(latency);
        } else {
            self.healthy.push(latency);
        }
        self.holds.len() as u64
    }

    fn error(&mut self, e: &Error) {
        let kind = match e {
            Error::Timeout { .. } => "timeout",
            Error::NoQuorum { .. } => "no quorum",
            Error::RetriesExhausted { .. } => "retries exhausted",
            _ => "other",
        };
        *self.errors.entry(kind).or_default() += 1;
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
    faulty: Arc<AtomicU64>,
}

#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Pause,
    Latency,
    Partition,
}

impl Nemesis {
    fn new(
        seed: u64,
        nodes: usize,
        interval: Duration,
        stop: Arc<AtomicBool>,
        faulty: Arc<AtomicU64>,
    ) -> Self {
        Nemesis {
            rng: fastrand::Rng::with_seed(seed),
            nodes,
            interval,
            stop,
            faulty,
        }
    }

    async fn run(mut self, cluster: &LocalCluster, end: Instant) -> BTreeMap<&'static str, u64> {
        let minority = crate::quorum::tolerated_failures(self.nodes);
        let mut active: Vec<(usize, Fault)> = Vec::new();
        let mut counts = BTreeMap::new();
        while !self.stop.load(Ordering::SeqCst) && Instant::now() < end {
            tokio::time::sleep(self.interval).await;
            // Heal one fault, or inject one more while that stays a minority.
            if !active.is_empty() && (active.len() >= minority || self.rng.bool()) {
                let (i, fault) = active.swap_remove(self.rng.usize(0..active.len()));
                heal(cluster, i, fault);
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
            self.faulty.store(active.len() as u64, Ordering::SeqCst);
        }
        for (i, fault) in active {
            heal(cluster, i, fault);
        }
        self.faulty.store(0, Ordering::SeqCst);
        counts
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

fn heal(cluster: &LocalCluster, i: usize, fault: Fault) {
    blocking(|| heal_now(cluster, i, fault));
}

fn heal_now(cluster: &LocalCluster, i: usize, fault: Fault) {
    let _ = match fault {
        Fault::Kill => cluster.restart(i),
        Fault::Pause => cluster.resume(i),
        Fault::Latency => cluster.proxy(i).map(|p| p.set_latency(Duration::ZERO)),
        Fault::Partition => cluster.proxy(i).map(|p| p.heal()),
    };
}
