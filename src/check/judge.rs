//! The judgements: what a node's settings and samples mean for Redlock (pure functions, no
//! I/O).

use std::time::Duration;

use super::report::{Check, Finding, Level};

/// A setting as read from the node: its value, or why it could not be read.
pub(crate) type Read<T> = Result<T, String>;

/// `role` and `connected_slaves` (`INFO replication`); `master_host:master_port` for a replica;
/// `cluster_enabled` (`INFO cluster`).
pub(crate) fn role(
    role: Read<&str>,
    replicas: usize,
    master: Option<&str>,
    cluster: bool,
) -> Finding {
    if cluster {
        return Finding::new(
            Check::Role,
            Level::Unsafe,
            "a Redis Cluster node (cluster_enabled:1)",
        )
        .fix(
            "most lock keys hash to slots another shard owns (MOVED), so this node cannot vote \
             for them, and a cluster fails over to replicas that may lack lock keys: give \
             redquorum standalone masters (cluster-enabled no)",
        );
    }
    match role {
        Err(why) => Finding::new(
            Check::Role,
            Level::Unknown,
            format!("could not read ({why})"),
        )
        .fix("check by hand that the node is a master without replicas (INFO replication)"),
        Ok("master") if replicas == 0 => {
            Finding::new(Check::Role, Level::Ok, "master, no replicas")
        }
        Ok("master") => Finding::new(
            Check::Role,
            Level::Warning,
            format!("master with {replicas} replica(s)"),
        )
        .fix(
            "if a replica is ever promoted (Sentinel, a manual failover) it may lack lock keys \
             the master granted (replication is asynchronous), and a lock can be granted twice: \
             Redlock wants independent masters; remove the replicas or never fail over to them",
        ),
        Ok(other) => {
            let of = master.map(|m| format!(" of {m}")).unwrap_or_default();
            Finding::new(
                Check::Role,
                Level::Unsafe,
                format!("role {other}: a replica{of}"),
            )
            .fix(
                "a replica refuses writes (READONLY), or with replica-read-only no loses them on \
                 the next sync, and holds its master's keys, not its own: give redquorum \
                 independent masters (REPLICAOF NO ONE makes this one a master)",
            )
        }
    }
}

/// `appendonly` and `appendfsync`; `ttl` is the lease the advice speaks of.
pub(crate) fn persistence(appendonly: Read<bool>, fsync: Read<String>, ttl: Duration) -> Finding {
    let delay = format!(
        "or keep this node down after every crash or restart for at least the longest lock \
         TTL in use ({ttl:?} here) before it serves again (Redlock's delayed restart; if you \
         do that, this finding can be accepted)"
    );
    match (appendonly, fsync) {
        (Err(why), _) => Finding::new(
            Check::Persistence,
            Level::Unknown,
            format!("could not read appendonly ({why})"),
        )
        .fix(
            "check by hand that the node runs with appendonly yes and appendfsync always \
             (CONFIG GET is denied or renamed for this user)",
        ),
        (Ok(false), _) => Finding::new(
            Check::Persistence,
            Level::Unsafe,
            "appendonly no: a restart loses every lock key on this node",
        )
        .restart_bound()
        .fix(format!(
            "set appendonly yes and appendfsync always (CONFIG SET appendonly yes, CONFIG SET \
             appendfsync always, CONFIG REWRITE; or in redis.conf), {delay}"
        )),
        (Ok(true), Err(why)) => Finding::new(
            Check::Persistence,
            Level::Unknown,
            format!("appendonly yes, could not read appendfsync ({why})"),
        )
        .fix("check by hand that appendfsync is always"),
        (Ok(true), Ok(fsync)) => match fsync.as_str() {
            "always" => Finding::new(
                Check::Persistence,
                Level::Ok,
                "appendonly yes, appendfsync always",
            ),
            "everysec" => Finding::new(
                Check::Persistence,
                Level::Warning,
                "appendonly yes, appendfsync everysec: a power loss or OS crash loses up to a \
                 second of writes (a crash of redis-server alone loses nothing)",
            )
            .restart_bound()
            .fix(format!(
                "a lock granted in that last second is gone after such a restart and can be \
                 granted again: set appendfsync always, {delay}"
            )),
            other => Finding::new(
                Check::Persistence,
                Level::Unsafe,
                format!(
                    "appendonly yes, appendfsync {other}: the OS writes to disk when it likes \
                     (often every 30 s), so a power loss or OS crash loses recent lock keys"
                ),
            )
            .restart_bound()
            .fix(format!("set appendfsync always, {delay}")),
        },
    }
}

/// `maxmemory-policy` and `maxmemory` (bytes, 0: no limit).
pub(crate) fn eviction(policy: Read<String>, maxmemory: Read<u64>) -> Finding {
    let fix = "set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, \
               CONFIG REWRITE): a full node then refuses new grants (OOM) instead of deleting \
               lock keys that are held; keep lock data on servers of its own";
    match (policy, maxmemory) {
        (Err(why), _) => Finding::new(
            Check::Eviction,
            Level::Unknown,
            format!("could not read maxmemory-policy ({why})"),
        )
        .fix("check by hand that maxmemory-policy is noeviction"),
        (Ok(p), _) if p == "noeviction" => {
            Finding::new(Check::Eviction, Level::Ok, "maxmemory-policy noeviction")
        }
        (Ok(p), Ok(limit)) if limit > 0 => Finding::new(
            Check::Eviction,
            Level::Unsafe,
            format!(
                "maxmemory-policy {p} with maxmemory {limit} bytes: when memory fills, Redis \
                 deletes keys to make room, held lock keys included (volatile-* policies pick \
                 keys with a TTL, which every lock key has)"
            ),
        )
        .fix(fix),
        (Ok(p), limit) => {
            let limit = match limit {
                Ok(_) => "maxmemory 0 (no limit)".to_owned(),
                Err(why) => format!("could not read maxmemory ({why})"),
            };
            Finding::new(
                Check::Eviction,
                Level::Warning,
                format!(
                    "maxmemory-policy {p}, {limit}: nothing is evicted now, but once a limit \
                     is set, held lock keys can be"
                ),
            )
            .fix(fix)
        }
    }
}

/// The round trips of a few `PING`s against the node timeout.
pub(crate) fn round_trip(samples: &[Duration], node_timeout: Duration) -> Finding {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let (Some(&median), Some(&max)) = (sorted.get(sorted.len() / 2), sorted.last()) else {
        return Finding::new(Check::RoundTrip, Level::Unknown, "no round trip measured");
    };
    let seen = format!(
        "median {}, max {} over {} PINGs; node_timeout {}",
        ms(median),
        ms(max),
        sorted.len(),
        ms(node_timeout)
    );
    let fix = "raise node_timeout (builder .node_timeout(), redquorum --node-timeout; it must \
               stay well under the TTL), or run the node closer to its clients / less loaded";
    if median >= node_timeout {
        Finding::new(Check::RoundTrip, Level::Unsafe, seen).fix(format!(
            "most requests to this node time out, so it never votes: {fix}"
        ))
    } else if max >= node_timeout || median * 2 > node_timeout {
        Finding::new(Check::RoundTrip, Level::Warning, seen).fix(format!(
            "some requests to this node will time out and count as failures: {fix}"
        ))
    } else {
        Finding::new(Check::RoundTrip, Level::Ok, seen)
    }
}

/// A duration in milliseconds, to two decimals.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One reading of the server's clock: our monotonic time when the `TIME` request went out and
/// when its reply came back, and the server's time in the reply (µs since the epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tick {
    pub(crate) sent: Duration,
    pub(crate) received: Duration,
    pub(crate) server_us: i128,
}

impl Tick {
    fn rtt(&self) -> Duration {
        self.received.saturating_sub(self.sent)
    }

    fn midpoint(&self) -> Duration {
        self.sent + self.rtt() / 2
    }
}

/// The server clock's rate against ours, from two readings, and how uncertain it is (the
/// server read its clock somewhere within each round trip); `None` when the readings are not
/// in order.
pub(crate) fn clock_rate(first: Tick, last: Tick) -> Option<(f64, f64)> {
    let ours = last.midpoint().checked_sub(first.midpoint())?.as_secs_f64();
    if ours <= 0.0 {
        return None;
    }
    let theirs = (last.server_us - first.server_us) as f64 / 1e6;
    let uncertainty = (first.rtt() + last.rtt()).as_secs_f64() / 2.0 / ours;
    Some((theirs / ours, uncertainty))
}

/// The clock rate (and its uncertainty) against the drift factor. A server clock that runs
/// fast expires keys sooner than the lease the client counts on; one that runs slow keeps them
/// longer (safe, but locks outlive their TTL).
pub(crate) fn clock(sample: Option<(f64, f64)>, over: Duration, drift_factor: f64) -> Finding {
    let Some((rate, err)) = sample else {
        return Finding::new(
            Check::Clock,
            Level::Unknown,
            "the server's TIME readings went backwards (a clock step during the sample?)",
        )
        .fix("run the doctor again; if it repeats, check the node's time synchronisation");
    };
    let pct = |x: f64| format!("{:.3} %", x * 100.0);
    let seen = format!(
        "runs at {rate:.5}x our rate (± {}) over {over:?}; drift_factor {drift_factor}",
        pct(err)
    );
    let sync = "check the node's time synchronisation (chrony/ntpd slewing, no steps; a VM's \
                clock source)";
    if rate - 1.0 - err > drift_factor {
        Finding::new(Check::Clock, Level::Unsafe, seen).fix(format!(
            "its clock runs {} fast, more than the drift allowance: its keys expire before the \
             validity the client counts on ends; {sync}, or raise drift_factor",
            pct(rate - 1.0)
        ))
    } else if 1.0 - rate - err > drift_factor {
        Finding::new(Check::Clock, Level::Warning, seen).fix(format!(
            "its clock runs {} slow: its keys outlive their TTL (a lock whose holder died \
             stays taken longer); {sync}",
            pct(1.0 - rate)
        ))
    } else if err > drift_factor {
        Finding::new(Check::Clock, Level::Unknown, seen).fix(
            "the round trips are too long for the sample to tell: run the doctor with a \
             longer clock sample, or from a host closer to the node",
        )
    } else {
        Finding::new(Check::Clock, Level::Ok, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn persistence_levels() {
        let ttl = Duration::from_secs(10);
        let level = |a, f: &str| persistence(a, Ok(f.to_owned()), ttl).level;
        assert_eq!(level(Ok(true), "always"), Level::Ok);
        assert_eq!(level(Ok(true), "everysec"), Level::Warning);
        assert_eq!(level(Ok(true), "no"), Level::Unsafe);
        assert_eq!(level(Ok(false), "always"), Level::Unsafe);
        assert_eq!(
            persistence(Err("NOPERM".into()), Ok("always".into()), ttl).level,
            Level::Unknown
        );
        let no = persistence(Ok(false), Ok("everysec".into()), ttl);
        let fix = no.fix.unwrap_or_default();
        assert!(
            fix.contains("10s") && fix.contains("delayed restart"),
            "{fix}"
        );
        assert!(no.restart_bound);
        let everysec = persistence(Ok(true), Ok("everysec".into()), ttl);
        assert!(
            everysec.seen.contains("up to a second"),
            "{}",
            everysec.seen
        );
    }

    #[test]
    fn eviction_levels() {
        let e = |p: &str, m| eviction(Ok(p.to_owned()), Ok(m)).level;
        assert_eq!(e("noeviction", 100), Level::Ok);
        assert_eq!(e("allkeys-lru", 1 << 20), Level::Unsafe);
        assert_eq!(e("volatile-ttl", 1 << 20), Level::Unsafe);
        assert_eq!(e("allkeys-lru", 0), Level::Warning);
        assert_eq!(eviction(Err("denied".into()), Ok(0)).level, Level::Unknown);
    }

    #[test]
    fn role_levels() {
        assert_eq!(role(Ok("master"), 0, None, false).level, Level::Ok);
        assert_eq!(role(Ok("master"), 2, None, false).level, Level::Warning);
        assert_eq!(role(Ok("master"), 0, None, true).level, Level::Unsafe);
        let replica = role(Ok("slave"), 0, Some("127.0.0.1:7001"), false);
        assert_eq!(replica.level, Level::Unsafe);
        assert!(replica.seen.contains("127.0.0.1:7001"), "{}", replica.seen);
        assert_eq!(role(Err("x".into()), 0, None, false).level, Level::Unknown);
    }

    #[test]
    fn round_trip_levels() {
        let t = MS(50);
        assert_eq!(round_trip(&[MS(1), MS(1), MS(2)], t).level, Level::Ok);
        assert_eq!(round_trip(&[MS(1), MS(1), MS(60)], t).level, Level::Warning);
        assert_eq!(
            round_trip(&[MS(30), MS(30), MS(30)], t).level,
            Level::Warning
        );
        assert_eq!(round_trip(&[MS(60), MS(70), MS(1)], t).level, Level::Unsafe);
        assert_eq!(round_trip(&[], t).level, Level::Unknown);
    }

    fn tick(sent_ms: u64, rtt_ms: u64, server_ms: i128) -> Tick {
        Tick {
            sent: MS(sent_ms),
            received: MS(sent_ms + rtt_ms),
            server_us: server_ms * 1000,
        }
    }

    #[test]
    fn clock_rate_from_midpoints() {
        // Server read its clock mid-way through each round trip, and runs 2 % fast.
        let (rate, err) =
            clock_rate(tick(0, 2, 1_000_000), tick(1000, 2, 1_000_000 + 1020)).expect("in order");
        assert!((rate - 1.02).abs() < 1e-9, "{rate}");
        assert!((err - 0.002).abs() < 1e-9, "{err}");
        assert!(clock_rate(tick(1000, 1, 0), tick(0, 1, 0)).is_none());
    }

    #[test]
    fn clock_levels() {
        let over = MS(1000);
        assert_eq!(clock(Some((1.0001, 0.0005)), over, 0.01).level, Level::Ok);
        let fast = clock(Some((1.03, 0.001)), over, 0.01);
        assert_eq!(fast.level, Level::Unsafe);
        assert!(fast.fix.unwrap_or_default().contains("fast"));
        assert_eq!(clock(Some((0.97, 0.001)), over, 0.01).level, Level::Warning);
        // Within the uncertainty: cannot tell.
        assert_eq!(clock(Some((1.015, 0.02)), over, 0.01).level, Level::Unknown);
        assert_eq!(clock(None, over, 0.01).level, Level::Unknown);
    }
}
