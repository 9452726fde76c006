//! Running the check: every node in parallel, the cross-node judgement (one server under two
//! URLs), and the check `build()` runs at connect (warnings, and refusing unsafe masters).

use std::time::Duration;

use futures::future::join_all;

use super::probe::{self, Plan, Target};
use super::report::{Check, Finding, Level, Report};
use crate::error::{Error, NodeCause};
use crate::node::{NodeSpec, Nodes};
use crate::settings::Config;
use crate::wait::WaitStrategy;

/// `PING`s per node for the round-trip check.
const PINGS: usize = 5;

/// How many command timeouts one node's check may take in all before the node counts as
/// unreachable.
const STALL_TIMEOUTS: u32 = 5;

/// How long the clock sample of [`RedLock::check`](crate::RedLock::check) and
/// [`RedLockBuilder::check`](crate::RedLockBuilder::check) runs: long enough to tell a rate error of 0.1 % apart from a
/// round trip of a millisecond.
pub(crate) const CLOCK_SAMPLE: Duration = Duration::from_secs(1);

impl Plan {
    /// The full check, judged against `config`.
    pub(crate) fn full(config: &Config) -> Plan {
        Plan {
            ttl: config.ttl,
            node_timeout: config.node_timeout,
            drift_factor: config.drift_factor,
            timeout: config.connect_timeout,
            namespace: config.namespace.clone(),
            fencing: config.fencing,
            pubsub: config.wait_strategy == WaitStrategy::PubSub,
            pings: PINGS,
            clock_sample: Some(CLOCK_SAMPLE),
        }
    }

    /// The settings only (no round trips, no clock sample): what `build()` looks at.
    fn settings(config: &Config) -> Plan {
        Plan {
            pings: 0,
            clock_sample: None,
            ..Plan::full(config)
        }
    }
}

/// Checks every node of `targets` in parallel and compares their `run_id`s.
pub(crate) async fn run(plan: &Plan, targets: &[Target]) -> Report {
    // A node that connects but then stops answering (paused, overloaded) would cost a timeout
    // per command: it gets a few, then counts as unreachable.
    let bound = plan.timeout * STALL_TIMEOUTS + plan.clock_sample.unwrap_or_default();
    let mut nodes = join_all(targets.iter().map(|t| async move {
        match tokio::time::timeout(bound, probe::node(plan, t)).await {
            Ok(report) => report,
            Err(_) => probe::unreachable(probe::blank(&t.shown), NodeCause::Timeout),
        }
    }))
    .await;
    // One server under two URLs: each node is compared with every other.
    let ids: Vec<Option<String>> = nodes.iter().map(|n| n.run_id.clone()).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(slot) = node
            .findings
            .iter_mut()
            .find(|f| f.check == Check::Independence)
        else {
            continue;
        };
        *slot = match &ids[i] {
            None => Finding::new(Check::Independence, Level::Unknown, "run_id not read")
                .fix("grant the user +info: redquorum needs it to tell the servers apart"),
            Some(id) => {
                let same: Vec<&str> = ids
                    .iter()
                    .enumerate()
                    .filter(|(j, other)| *j != i && other.as_deref() == Some(id))
                    .map(|(j, _)| &*targets[j].shown)
                    .collect();
                if same.is_empty() {
                    Finding::new(
                        Check::Independence,
                        Level::Ok,
                        format!("run_id {}: no other node is this server", short(id)),
                    )
                } else {
                    Finding::new(
                        Check::Independence,
                        Level::Unsafe,
                        format!("same server as {} (run_id {})", same.join(", "), short(id)),
                    )
                    .fix(
                        "one server listed under two URLs counts as two votes: list every \
                         master once (redquorum gives the second URL no vote, so a majority \
                         is harder to reach)",
                    )
                }
            }
        };
    }
    Report {
        nodes,
        ttl: plan.ttl,
        node_timeout: plan.node_timeout,
        drift_factor: plan.drift_factor,
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn targets(specs: &[NodeSpec]) -> Vec<Target> {
    specs
        .iter()
        .map(|s| Target {
            client: s.client.clone(),
            shown: s.shown.clone(),
        })
        .collect()
}

/// [`RedLock::check`](crate::RedLock::check): the full check of a built lock's nodes, on
/// connections of its own.
pub(crate) async fn check_nodes(config: &Config, nodes: &Nodes) -> Report {
    let targets: Vec<Target> = nodes
        .clients()
        .into_iter()
        .map(|(client, shown)| Target { client, shown })
        .collect();
    run(&Plan::full(config), &targets).await
}

/// [`RedLockBuilder::check`](crate::RedLockBuilder::check): the full check of `specs` (every
/// URL given, even those `build()` would refuse), judged against `config`.
pub(crate) async fn check_specs(config: &Config, specs: &[NodeSpec]) -> Report {
    run(&Plan::full(config), &targets(specs)).await
}

/// The settings check at the end of `build()`, on the lock's own connections (no connection
/// or command of its own is left behind when `build()` returns): logs a warning for every
/// unsafe setting and, `refusing`, fails on one. A node that does not hand out its connection
/// within a node timeout (down at first contact), or does not answer within the connect
/// timeout, is not checked.
pub(crate) async fn preflight(config: &Config, nodes: &Nodes, refusing: bool) -> Result<(), Error> {
    let plan = Plan::settings(config);
    let shown: Vec<std::sync::Arc<str>> = nodes.clients().into_iter().map(|(_, s)| s).collect();
    let reports = join_all((0..nodes.len()).map(|i| {
        let (plan, shown) = (&plan, &shown[i]);
        async move {
            let conn = tokio::time::timeout(plan.node_timeout, nodes.connection(i)).await;
            let mut conn = conn.ok()?.ok()?;
            let mut report = probe::blank(shown);
            // One connect timeout in all: a node that froze since first contact does not
            // hold build() up for a timeout per command.
            let read = probe::settings(plan, &mut conn, &mut report);
            tokio::time::timeout(plan.timeout, read).await.ok()?.ok()?;
            Some(report)
        }
    }))
    .await;
    let report = Report {
        nodes: reports.into_iter().flatten().collect(),
        ttl: plan.ttl,
        node_timeout: plan.node_timeout,
        drift_factor: plan.drift_factor,
    };
    log(&report);
    match refusal(&report) {
        Some(err) if refusing => Err(err),
        _ => Ok(()),
    }
}

/// Whether a finding is about how the node is run (what `refuse_unsafe_masters` refuses),
/// rather than whether it is up right now.
fn is_setting(check: Check) -> bool {
    !matches!(check, Check::Connection | Check::RoundTrip | Check::Clock)
}

/// One warning per unsafe setting (info for warnings).
fn log(report: &Report) {
    for node in &report.nodes {
        for f in node.findings.iter().filter(|f| is_setting(f.check)) {
            let fix = f.fix.as_deref().unwrap_or("");
            match f.level {
                Level::Unsafe => tracing::warn!(
                    node = %node.node,
                    check = %f.check,
                    seen = %f.seen,
                    fix,
                    "unsafe Redis master setting: a lock can be granted twice or this node cannot vote"
                ),
                Level::Warning => tracing::info!(
                    node = %node.node,
                    check = %f.check,
                    seen = %f.seen,
                    fix,
                    "Redis master setting worth knowing"
                ),
                Level::Unknown => tracing::debug!(
                    node = %node.node,
                    check = %f.check,
                    seen = %f.seen,
                    "Redis master setting could not be read"
                ),
                _ => {}
            }
        }
    }
}

/// The error `build()` returns for unsafe masters, naming each node and setting.
fn refusal(report: &Report) -> Option<Error> {
    let lines: Vec<String> = report
        .unsafe_findings()
        .filter(|(_, f)| is_setting(f.check))
        .map(|(node, f)| {
            format!(
                "\n  {}: {}: {}; change: {}",
                node.node,
                f.check,
                f.seen,
                f.fix.as_deref().unwrap_or("see redquorum doctor")
            )
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(Error::config(format!(
        "refusing unsafe Redis masters (refuse_unsafe_masters is on; `redquorum doctor` shows \
         every check):{}",
        lines.concat()
    )))
}
