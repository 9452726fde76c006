//! Reading one node: a connection of its own, `INFO`, `CONFIG GET`, harmless probes of every
//! command the crate sends, `PING` round trips and `TIME` readings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, Value};
use tokio::time::Instant;

use super::judge::{self, Read, Tick};
use super::report::{Check, Finding, Level, NodeReport};
use crate::error::NodeCause;
use crate::node::redis_cause;

/// The crate's release script: what the `SCRIPT LOAD` probe loads (the crate loads it anyway).
const RELEASE_SCRIPT: &str = include_str!("../scripts/release.lua");

/// `TIME` readings taken at each end of the clock sample; the one with the shortest round trip
/// is kept.
const TIME_READINGS: usize = 3;

/// One node to check.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) client: Client,
    /// The URL without credentials.
    pub(crate) shown: Arc<str>,
}

/// What to check and what to judge it against.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) ttl: Duration,
    pub(crate) node_timeout: Duration,
    pub(crate) drift_factor: f64,
    /// Bounds connecting and each command.
    pub(crate) timeout: Duration,
    pub(crate) namespace: Arc<str>,
    pub(crate) fencing: bool,
    /// Waiters subscribe to release announcements (probe SUBSCRIBE).
    pub(crate) pubsub: bool,
    /// `PING`s for the round-trip check (0: no round-trip check).
    pub(crate) pings: usize,
    /// How long the clock sample runs (None: no clock check).
    pub(crate) clock_sample: Option<Duration>,
}

/// What a node said, for the judgements; `run_id` is kept for the independence check.
pub(crate) async fn node(plan: &Plan, target: &Target) -> NodeReport {
    let mut report = blank(&target.shown);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(plan.timeout))
        .set_response_timeout(Some(plan.timeout));
    let connected = tokio::time::timeout(
        plan.timeout,
        target
            .client
            .get_multiplexed_async_connection_with_config(&config),
    )
    .await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return unreachable(report, redis_cause(&e)),
        Err(_) => return unreachable(report, NodeCause::Timeout),
    };
    let clock_start = match plan.clock_sample {
        Some(_) => Some(time(&mut conn, plan.timeout).await),
        None => None,
    };
    let sampled_from = Instant::now();

    // Reachable and authenticated: the first PING says so (NOAUTH when no password was given).
    let mut rtts = Vec::with_capacity(plan.pings.max(1));
    let mut ping_denied = None;
    for _ in 0..plan.pings.max(1) {
        let start = Instant::now();
        match query::<Value>(&mut conn, &redis::cmd("PING"), plan.timeout).await {
            Ok(_) => rtts.push(start.elapsed()),
            Err(Failure::Denied(why)) => {
                ping_denied = Some(why);
                break;
            }
            Err(Failure::Other(e)) => return unreachable(report, e),
        }
    }
    report.findings.push(Finding::new(
        Check::Connection,
        Level::Ok,
        "connected, authenticated, answers",
    ));

    let info = settings(plan, &mut conn, &mut report).await;

    report
        .findings
        .push(permissions(plan, target, &mut conn, ping_denied, info.as_ref().err()).await);

    if plan.pings > 0 && !rtts.is_empty() {
        let finding = judge::round_trip(&rtts, plan.node_timeout);
        let mut sorted = rtts.clone();
        sorted.sort();
        report.round_trip = sorted.get(sorted.len() / 2).copied();
        report.findings.push(finding);
    }

    if let (Some(over), Some(start)) = (plan.clock_sample, clock_start) {
        tokio::time::sleep_until(sampled_from + over).await;
        let end = time(&mut conn, plan.timeout).await;
        let finding = match (start, end) {
            (Ok(a), Ok(b)) => {
                let sample = judge::clock_rate(a, b);
                report.clock_rate = sample.map(|(rate, _)| rate);
                judge::clock(sample, over, plan.drift_factor)
            }
            (Err(why), _) | (_, Err(why)) => Finding::new(
                Check::Clock,
                Level::Unknown,
                format!("could not read TIME ({why})"),
            )
            .fix("grant the user +time, or check the node's time synchronisation by hand"),
        };
        report.findings.push(finding);
    }
    report
}

/// A report with nothing in it yet.
pub(crate) fn blank(shown: &str) -> NodeReport {
    NodeReport {
        node: shown.to_owned(),
        run_id: None,
        version: None,
        round_trip: None,
        clock_rate: None,
        findings: Vec::new(),
    }
}

/// What `build()` checks, on a connection it already has: role, persistence, eviction and the
/// `run_id` (the independence finding is filled in across nodes). Returns `INFO`'s failure,
/// if it failed.
pub(crate) async fn settings(
    plan: &Plan,
    conn: &mut (impl ConnectionLike + Send),
    report: &mut NodeReport,
) -> Result<(), String> {
    let info = match query::<String>(conn, &redis::cmd("INFO"), plan.timeout).await {
        Ok(text) => Ok(parse_info(&text)),
        Err(e) => Err(format!("INFO: {e}")),
    };
    let field = |name: &str| -> Read<String> {
        match &info {
            Ok(map) => map
                .get(name)
                .cloned()
                .ok_or_else(|| format!("INFO has no {name}")),
            Err(why) => Err(why.clone()),
        }
    };
    report.run_id = field("run_id").ok();
    report.version = field("redis_version").ok();

    let role = field("role");
    let replicas = field("connected_slaves")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let master = match (field("master_host"), field("master_port")) {
        (Ok(h), Ok(p)) => Some(format!("{h}:{p}")),
        _ => None,
    };
    report.findings.push(judge::role(
        role.as_deref().map_err(Clone::clone),
        replicas,
        master.as_deref(),
        field("cluster_enabled").is_ok_and(|v| v == "1"),
    ));

    let appendonly = match config_get(conn, "appendonly", plan.timeout).await {
        Ok(v) => Ok(v == "yes"),
        Err(why) => field("aof_enabled").map(|v| v == "1").map_err(|_| why),
    };
    let fsync = config_get(conn, "appendfsync", plan.timeout).await;
    report
        .findings
        .push(judge::persistence(appendonly, fsync, plan.ttl));

    let policy = match config_get(conn, "maxmemory-policy", plan.timeout).await {
        Ok(v) => Ok(v),
        Err(why) => field("maxmemory_policy").map_err(|_| why),
    };
    let maxmemory = match config_get(conn, "maxmemory", plan.timeout).await {
        Ok(v) => v.parse::<u64>().map_err(|_| format!("maxmemory {v:?}")),
        Err(why) => field("maxmemory")
            .and_then(|v| v.parse::<u64>().map_err(|_| format!("maxmemory {v:?}")))
            .map_err(|_| why),
    };
    report.findings.push(judge::eviction(policy, maxmemory));

    // Independence is judged across nodes (run::independence); its finding goes here.
    report.findings.push(Finding::new(
        Check::Independence,
        Level::Unknown,
        "run_id not compared yet",
    ));
    info.map(drop)
}

/// The report of a node that could not be reached or refused our credentials.
pub(crate) fn unreachable(mut report: NodeReport, cause: NodeCause) -> NodeReport {
    let fix = match &cause {
        NodeCause::Auth(_) => {
            "give the user and password in the node URL \
                               (redis://user:password@host:port)"
        }
        NodeCause::Refused => "start redis-server on this host and port, or fix the URL",
        NodeCause::Timeout => {
            "check that the node is up and reachable from here (firewall, \
                               address), and not paused or overloaded"
        }
        _ => "check the node URL and that a Redis server answers there",
    };
    report.findings.push(
        Finding::new(
            Check::Connection,
            Level::Unsafe,
            format!("unreachable: {cause}"),
        )
        .fix(format!("{fix}; until then this node never votes")),
    );
    report
}

/// Why a command failed.
enum Failure {
    /// Denied by an ACL (`NOPERM`) or not known to the server (renamed or disabled).
    Denied(String),
    /// Anything else (no answer, the connection broke, another error reply).
    Other(NodeCause),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Denied(why) => f.write_str(why),
            Failure::Other(cause) => write!(f, "{cause}"),
        }
    }
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut (impl ConnectionLike + Send),
    cmd: &Cmd,
    timeout: Duration,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, cmd.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Failure::Other(NodeCause::Timeout)),
    }
}

fn classify(e: &RedisError) -> Failure {
    let text = one_line(&e.to_string());
    if e.code() == Some("NOPERM") {
        Failure::Denied(format!("denied by ACL ({text})"))
    } else if text.to_ascii_lowercase().contains("unknown command") {
        Failure::Denied(format!("unknown command, renamed or disabled ({text})"))
    } else {
        Failure::Other(redis_cause(e))
    }
}

fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `CONFIG GET name`: its value, or why it could not be read.
async fn config_get(
    conn: &mut (impl ConnectionLike + Send),
    name: &str,
    timeout: Duration,
) -> Read<String> {
    let cmd = redis::cmd("CONFIG").arg("GET").arg(name).to_owned();
    match query::<HashMap<String, String>>(conn, &cmd, timeout).await {
        Ok(map) => map
            .get(name)
            .cloned()
            .ok_or_else(|| format!("CONFIG GET {name} returned nothing")),
        Err(e) => Err(format!("CONFIG GET {name}: {e}")),
    }
}

/// `INFO`'s `name:value` lines.
fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The best of a few `TIME` readings (the shortest round trip).
async fn time(conn: &mut (impl ConnectionLike + Send), timeout: Duration) -> Result<Tick, String> {
    let mut best: Option<Tick> = None;
    // Our times are taken against a fixed origin so that readings at both ends compare.
    let origin = *ORIGIN.get_or_init(Instant::now);
    for _ in 0..TIME_READINGS {
        let sent = Instant::now();
        let (secs, micros): (i64, i64) = query(conn, &redis::cmd("TIME"), timeout)
            .await
            .map_err(|e| format!("TIME: {e}"))?;
        let received = Instant::now();
        let tick = Tick {
            sent: sent.duration_since(origin),
            received: received.duration_since(origin),
            server_us: i128::from(secs) * 1_000_000 + i128::from(micros),
        };
        if best.is_none_or(|b| tick.received - tick.sent < b.received - b.sent) {
            best = Some(tick);
        }
    }
    best.ok_or_else(|| "no TIME reading".to_owned())
}

static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A probe's outcome.
enum Probe {
    Allowed,
    Denied(String),
    Unknown(String),
}

async fn probe(conn: &mut (impl ConnectionLike + Send), cmd: Cmd, timeout: Duration) -> Probe {
    match query::<Value>(conn, &cmd, timeout).await {
        Ok(_) => Probe::Allowed,
        Err(Failure::Denied(why)) => Probe::Denied(why),
        // NOSCRIPT, READONLY, OOM...: the command was allowed to run.
        Err(Failure::Other(NodeCause::Redis(_))) => Probe::Allowed,
        Err(Failure::Other(cause)) => Probe::Unknown(cause.to_string()),
    }
}

/// Every command the crate sends, probed so that nothing changes.
async fn permissions(
    plan: &Plan,
    target: &Target,
    conn: &mut (impl ConnectionLike + Send),
    ping_denied: Option<String>,
    info_failed: Option<&String>,
) -> Finding {
    let key = format!(
        "{}:doctor:{}",
        plan.namespace,
        uuid::Uuid::new_v4().simple()
    );
    // The channel a release of this key is announced on, named as the crate names it.
    let channel = crate::wake::channel(&key);
    let t = plan.timeout;
    // (command, needed for what, whether its denial is unsafe, outcome)
    let mut results: Vec<(&str, &str, bool, Probe)> = Vec::new();
    results.push((
        "PING",
        "first contact",
        true,
        ping_denied.map_or(Probe::Allowed, Probe::Denied),
    ));
    results.push((
        "INFO",
        "telling the servers apart (run_id) before a connection is used",
        true,
        match info_failed {
            None => Probe::Allowed,
            Some(why) if why.contains("denied") || why.contains("unknown command") => {
                Probe::Denied(why.clone())
            }
            Some(why) => Probe::Unknown(why.clone()),
        },
    ));
    let c = |name: &str| redis::cmd(name).to_owned();
    results.push((
        "SET",
        "acquire",
        true,
        // XX on a key that does not exist: sets nothing.
        probe(
            conn,
            c("SET")
                .arg(&key)
                .arg("0")
                .arg("XX")
                .arg("PX")
                .arg(1)
                .to_owned(),
            t,
        )
        .await,
    ));
    results.push(("GET", "release and extend (in scripts), owner()", true, {
        probe(conn, c("GET").arg(&key).to_owned(), t).await
    }));
    results.push(("PTTL", "acquire (in scripts), waiting", true, {
        probe(conn, c("PTTL").arg(&key).to_owned(), t).await
    }));
    results.push(("DEL", "release (in a script)", true, {
        probe(conn, c("DEL").arg(&key).to_owned(), t).await
    }));
    results.push(("PEXPIRE", "extend (in a script)", true, {
        probe(conn, c("PEXPIRE").arg(&key).arg(1).to_owned(), t).await
    }));
    results.push((
        "EVALSHA",
        "acquire of several keys, fencing, release, extend",
        true,
        // An unknown script: NOSCRIPT when allowed, NOPERM when denied.
        probe(
            conn,
            c("EVALSHA")
                .arg("0000000000000000000000000000000000000000")
                .arg(1)
                .arg(&key)
                .to_owned(),
            t,
        )
        .await,
    ));
    results.push((
        "SCRIPT LOAD",
        "loading the scripts on a node that lost them (restart)",
        true,
        probe(
            conn,
            c("SCRIPT").arg("LOAD").arg(RELEASE_SCRIPT).to_owned(),
            t,
        )
        .await,
    ));
    if plan.fencing {
        // The probe key is made with an expiry first (INCR keeps it), so that it cannot stay
        // behind for good when the DEL after it fails (denied, a timeout, a dropped link).
        let made = c("SET")
            .arg(&key)
            .arg(0)
            .arg("PX")
            .arg(60_000)
            .arg("NX")
            .to_owned();
        let incr = match query::<Value>(conn, &made, t).await {
            Ok(_) => probe(conn, c("INCR").arg(&key).to_owned(), t).await,
            Err(e) => Probe::Unknown(format!(
                "not probed: its key could not be made with an expiry first ({})",
                match e {
                    Failure::Denied(why) => why,
                    Failure::Other(cause) => cause.to_string(),
                }
            )),
        };
        let _ = query::<Value>(conn, &c("DEL").arg(&key).to_owned(), t).await;
        results.push(("INCR", "fencing tokens (in a script)", true, incr));
    }
    results.push((
        "PUBLISH",
        "announcing releases to waiters (without it they learn of releases by polling)",
        false,
        probe(conn, c("PUBLISH").arg(&channel).arg("").to_owned(), t).await,
    ));
    if plan.pubsub {
        let sub = match tokio::time::timeout(t, async {
            let mut pubsub = target.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await
        })
        .await
        {
            Ok(Ok(())) => Probe::Allowed,
            Ok(Err(e)) => match classify(&e) {
                Failure::Denied(why) => Probe::Denied(why),
                Failure::Other(NodeCause::Redis(_)) => Probe::Allowed,
                Failure::Other(cause) => Probe::Unknown(cause.to_string()),
            },
            Err(_) => Probe::Unknown(NodeCause::Timeout.to_string()),
        };
        results.push((
            "SUBSCRIBE",
            "waiting for release announcements (without it waiters poll)",
            false,
            sub,
        ));
    }

    let denied: Vec<&(&str, &str, bool, Probe)> = results
        .iter()
        .filter(|r| matches!(r.3, Probe::Denied(_)))
        .collect();
    let unknown: Vec<&(&str, &str, bool, Probe)> = results
        .iter()
        .filter(|r| matches!(r.3, Probe::Unknown(_)))
        .collect();
    if denied.is_empty() && unknown.is_empty() {
        let names: Vec<&str> = results.iter().map(|r| r.0).collect();
        return Finding::new(
            Check::Permissions,
            Level::Ok,
            format!("allowed: {}", names.join(", ")),
        );
    }
    let level = if denied.iter().any(|r| r.2) {
        Level::Unsafe
    } else if !unknown.is_empty() {
        Level::Unknown
    } else {
        Level::Warning
    };
    let mut seen = Vec::new();
    for r in denied.iter().chain(&unknown) {
        let why = match &r.3 {
            Probe::Denied(why) => why.clone(),
            Probe::Unknown(why) => format!("could not tell: {why}"),
            Probe::Allowed => String::new(),
        };
        seen.push(format!("{} ({}; needed for {})", r.0, why, r.1));
    }
    let grants: Vec<String> = denied
        .iter()
        .map(|r| format!("+{}", r.0.to_ascii_lowercase().replace(' ', "|")))
        .collect();
    let mut fix = String::new();
    if !grants.is_empty() {
        fix = format!(
            "allow them for this user (ACL SETUSER <user> {}, with key pattern ~{}:* and \
             channel pattern &{}:*), and do not rename them",
            grants.join(" "),
            plan.namespace,
            plan.namespace
        );
    }
    if !unknown.is_empty() {
        if !fix.is_empty() {
            fix.push_str("; ");
        }
        fix.push_str("run the doctor again for the commands that could not be told");
    }
    Finding::new(Check::Permissions, level, seen.join("; ")).fix(fix)
}
