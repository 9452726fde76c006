//! `redquorum doctor`: is every master run the way Redlock's safety needs? A table per node
//! (or `--json`), exit 0 when every node is safe, 1 when one is unsafe or unreachable.

use std::time::Duration;

use clap::Args;
use redquorum::check::{Level, Report};
use redquorum::RedLock;

use crate::cli::{parse_duration, NodeArgs};
use crate::exit::Failure;

pub const LONG_ABOUT: &str = "\
Check that every master is run the way Redlock's safety needs.

DESCRIPTION
  Connects to every node (on connections of its own; nothing is changed) and checks:
    connection    reachable and authenticated
    role          a master, not a replica (a master with replicas: a warning)
    persistence   appendonly yes with appendfsync always (everysec: a warning, it loses up
                  to a second of writes on power loss; appendonly no: unsafe unless every
                  restart is delayed by the TTL)
    eviction      maxmemory-policy noeviction (another policy evicts lock keys once
                  maxmemory is set)
    independence  no two nodes are the same server (INFO run_id)
    permissions   every command redquorum sends is allowed for this user (ACL, renames)
    round-trip    well under the node timeout
    clock         the server's clock rate against ours (a 1 s TIME sample), within
                  --drift-factor
  With --restarts-delayed (every master is kept down for at least the TTL after each
  crash or restart), missing persistence is a warning rather than unsafe.
  It works where `run` would refuse to start: two URLs for one server, a majority down.
  Prints a table per node and what to change (--json for machines).

EXIT STATUS
  0    every node is safe (warnings and unreadable settings allowed, unless --strict)
  1    a node is unsafe or unreachable (with --strict: or has a warning, or a setting
       that could not be read)
  64   usage error: no nodes, an invalid node URL, TTL or drift factor";

/// A node is unsafe or unreachable (with `--strict`: or has a warning or an unreadable setting).
pub const UNSAFE: i32 = 1;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,

    /// The lease to judge against (as `run --ttl`): the node timeout and the delayed-restart advice follow from it
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Duration,

    /// The clock-drift factor to judge the masters' clock rates against
    #[arg(long, default_value_t = 0.01, value_name = "FACTOR")]
    pub drift_factor: f64,

    /// Also probe INCR (what `run --fencing` needs)
    #[arg(long)]
    pub fencing: bool,

    /// Every master is kept down for at least the TTL after each crash or restart (Redlock's delayed restarts): appendonly no and appendfsync everysec/no are then warnings
    #[arg(long)]
    pub restarts_delayed: bool,

    /// Print the report as JSON on stdout (the exit status is the same)
    #[arg(long)]
    pub json: bool,

    /// Exit 1 on warnings and on settings that could not be read, too
    #[arg(long)]
    pub strict: bool,
}

pub async fn doctor(args: DoctorArgs) -> Result<i32, Failure> {
    let urls = args.nodes.urls()?;
    let mut builder = RedLock::builder()
        .nodes(&urls)
        .namespace(args.nodes.namespace.as_str())
        .ttl(args.ttl)
        .drift_factor(args.drift_factor)
        .fencing(args.fencing);
    if let Some(timeout) = args.nodes.node_timeout {
        builder = builder.node_timeout(timeout);
    }
    let mut report = builder.check().await?;
    if args.restarts_delayed {
        report = report.accept_delayed_restarts();
    }
    if args.json {
        println!("{:#}", json(&report));
    } else {
        print!("{report}");
    }
    let failed = if args.strict {
        report.verdict() != Level::Ok
    } else {
        !report.is_safe()
    };
    Ok(if failed { UNSAFE } else { 0 })
}

/// The report for machines: every field of the library's report, durations in milliseconds.
pub fn json(report: &Report) -> serde_json::Value {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let nodes: Vec<serde_json::Value> = report
        .nodes
        .iter()
        .map(|n| {
            let findings: Vec<serde_json::Value> = n
                .findings
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "check": f.check.as_str(),
                        "level": f.level.as_str(),
                        "seen": f.seen,
                        "fix": f.fix,
                    })
                })
                .collect();
            serde_json::json!({
                "node": n.node,
                "level": n.level().as_str(),
                "reachable": n.reachable(),
                "run_id": n.run_id,
                "version": n.version,
                "round_trip_ms": n.round_trip.map(ms),
                "clock_rate": n.clock_rate,
                "findings": findings,
            })
        })
        .collect();
    serde_json::json!({
        "verdict": report.verdict().as_str(),
        "safe": report.is_safe(),
        "ttl_ms": ms(report.ttl),
        "node_timeout_ms": ms(report.node_timeout),
        "drift_factor": report.drift_factor,
        "nodes": nodes,
    })
}
