//! The command line: options, help text (written to read like a man page), durations.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::check;
use crate::exit;

const ABOUT: &str = "A distributed flock(1): run a command under a Redlock lock held on N independent Redis masters";

const LONG_ABOUT: &str = "\
A distributed flock(1): run a command under a Redlock lock held on N independent Redis masters.

DESCRIPTION
  `redquorum run` takes lock KEY on a majority of the masters, keeps its lease alive
  while COMMAND runs, and releases it when COMMAND and every process it started have
  exited. Two `run`s of the same key, on any machines, never run their commands at the
  same time. If the lease cannot be renewed on a majority of the masters, COMMAND is
  sent SIGTERM while the lease is still valid (--grace before it runs out), then SIGKILL
  when it runs out, and redquorum exits with status 76. If redquorum itself dies, its
  watchdog (and on Linux the kernel) SIGKILLs COMMAND.

  `redquorum status` shows who holds a lock, and `redquorum demo` shows workers handing
  a lock to each other on 5 local masters. `redquorum doctor` checks that every master
  is run the way Redlock needs (persistence, eviction, role, ACL, clock).

  A lease cannot stop a process that pauses after checking it: where overlapping runs
  must be impossible rather than unlikely, have the resource check fencing tokens
  (--fencing).";

const EXIT_STATUS: &str = "\
EXIT STATUS
  run:
    N        COMMAND exited with status N
    128+N    COMMAND was killed by signal N (not sent by redquorum)
    64       usage error: unknown option, bad duration, no nodes, an empty entry
             in --nodes, fewer than 3 nodes without --allow-few-nodes, no COMMAND,
             an invalid node URL, or a --ttl too short for --node-timeout (EX_USAGE)
    69       a majority of the Redis masters could not be reached (EX_UNAVAILABLE)
    70       internal error (EX_SOFTWARE)
    75       the lock stayed held by another owner until --wait ran out (EX_TEMPFAIL)
    76       the lock was lost (or could not be renewed) while COMMAND ran: COMMAND
             was sent SIGTERM, then SIGKILL when the lease ran out; or the lock was
             found gone when releasing it
    126      COMMAND could not be executed
    127      COMMAND was not found
    128+N    redquorum got signal N (SIGINT, SIGTERM, SIGHUP) while waiting for the lock
  status:
    0        the lock is held (the same value is on a majority of the masters)
    1        the lock is free
    64, 69   as for run
  demo:
    0 on success, 69 or 70 when the local masters cannot be started
  doctor:
    0        every master is safe (warnings allowed, unless --strict)
    1        a master is unsafe or unreachable
    64       as for run";

const ENVIRONMENT: &str = "\
ENVIRONMENT
  REDQUORUM_NODES          comma-separated node URLs, used when --nodes is not given;
                           unlike --nodes, not visible in ps(1); not passed on to COMMAND
  REDQUORUM_REDIS_SERVER   the redis-server binary `demo` starts (default: from PATH)
  REDQUORUM_TLS_CA, REDQUORUM_TLS_CERT, REDQUORUM_TLS_KEY
                           --tls-ca, --tls-cert, --tls-key (builds with TLS)
  Set for COMMAND by `run`:
  REDQUORUM_KEY            the lock key (as given with --key)
  REDQUORUM_FENCING_TOKEN  the fencing token of this acquisition (with --fencing only)";

const EXAMPLES: &str = "\
EXAMPLES
  Nightly backup from several machines' crontabs; only one runs at a time, the others
  give up at once (exit 75):
    export REDQUORUM_NODES=redis://10.0.0.1:6379,redis://10.0.0.2:6379,redis://10.0.0.3:6379
    redquorum run --key backup --ttl 30s -- ./backup.sh --full

  Wait up to 10 seconds for the lock and pass a fencing token to the job:
    redquorum run --key reindex --wait 10s --fencing -- \\
        sh -c 'reindex --fence \"$REDQUORUM_FENCING_TOKEN\"'

  Who holds it, and for how long:
    redquorum status --key backup

  Try it on 5 local masters:
    redquorum demo";

const RUN_NOTES: &str = "\
NOTES
  The lease (--ttl) is renewed when half of it is left, so it bounds how long the lock
  outlives a redquorum process that crashed or was SIGKILLed, not how long COMMAND may run.
  The lock is kept until COMMAND and every process it started have exited (`sh -c 'job &'`
  holds it until job ends), as with flock(1). COMMAND runs in its own process group
  (unless stdin is a terminal), so SIGTERM and SIGKILL reach the processes it starts too;
  SIGINT, SIGTERM and SIGHUP sent to redquorum are passed on to it. If the lease has not
  been renewed when --grace (at most a third of --ttl) is left, COMMAND gets SIGTERM, and
  SIGKILL when the lease runs out. If redquorum dies (even by SIGKILL), a watchdog process
  SIGKILLs COMMAND's process group, and on Linux the kernel SIGKILLs COMMAND; processes
  that left the group (setsid, daemons) are not covered. Durations are written like 500ms,
  30s, 2m, 1h or 1m30s; a bare number is seconds.";

fn after_help_top() -> String {
    format!("{EXIT_STATUS}\n\n{ENVIRONMENT}\n\n{EXAMPLES}")
}

fn after_help_run() -> String {
    format!("{RUN_NOTES}\n\n{EXIT_STATUS}\n\n{ENVIRONMENT}\n\n{EXAMPLES}")
}

/// `redquorum`: see the help text.
#[derive(Debug, Parser)]
#[command(
    name = "redquorum",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = after_help_top(),
    after_help = "Run `redquorum --help` for exit codes, environment and examples.",
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND while holding lock KEY; exit with its status.
    #[command(
        long_about = "Run COMMAND while holding lock KEY; exit with its status.\n\n\
                      DESCRIPTION\n  \
                      Take lock KEY on a majority of the masters (waiting up to --wait while\n  \
                      another owner holds it), run COMMAND with the lease kept alive, release\n  \
                      the lock when COMMAND and every process it started have exited, and exit\n  \
                      with COMMAND's status. If the lease cannot be renewed, COMMAND is sent\n  \
                      SIGTERM --grace before it runs out, then SIGKILL when it runs out, and\n  \
                      redquorum exits with 76.",
        after_long_help = after_help_run(),
        after_help = "Run `redquorum run --help` for exit codes, environment and examples."
    )]
    Run(RunArgs),
    /// Show who holds lock KEY: each master's value, remaining lease and fencing counter.
    #[command(
        long_about = "Show who holds lock KEY.\n\n\
                      DESCRIPTION\n  \
                      Show lock KEY as each master sees it (holder, remaining lease, fencing\n  \
                      counter) and as a quorum sees it (the owner a majority agrees on).\n  \
                      Exits 0 when the lock is held, 1 when it is free.",
        after_long_help = after_help_top()
    )]
    Status(StatusArgs),
    /// Start 5 local redis-server masters and watch workers hand a lock to each other.
    #[command(after_long_help = after_help_top())]
    Demo(DemoArgs),
    /// Check that every master is run the way Redlock needs (persistence, eviction, role, ACL, clock).
    #[command(long_about = crate::doctor::LONG_ABOUT)]
    Doctor(crate::doctor::DoctorArgs),
}

/// Where the masters are and how keys are named.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Redis masters (independent, 3 or 5), comma-separated: redis://[user:pass@]host:port[/db] (visible in ps; REDQUORUM_NODES is not)
    #[arg(
        long,
        short = 'n',
        env = "REDQUORUM_NODES",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "URL,..."
    )]
    pub nodes: Vec<String>,

    /// Key prefix: the Redis key is NAMESPACE:GROUP:KEY
    #[arg(long, default_value = "redquorum", value_name = "NAME")]
    pub namespace: String,

    /// Lock group: equal keys in different groups are different locks
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub group: String,

    /// Per-master request timeout [default: TTL/200, within 50ms..250ms]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub node_timeout: Option<Duration>,

    /// Accept fewer than 3 nodes (1 or 2 masters: any one failure stops every lock)
    #[arg(long)]
    pub allow_few_nodes: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl NodeArgs {
    /// The node URLs, checked (no empty entry, at least 3 unless --allow-few-nodes), with
    /// the other node options; a usage error otherwise. Warns on stderr for an even count.
    pub fn urls(&self) -> Result<Vec<String>, exit::Failure> {
        let (urls, warning) = check::node_list(&self.nodes, self.allow_few_nodes)?;
        check::name("--namespace", &self.namespace)?;
        check::name("--group", &self.group)?;
        check::node_timeout(self.node_timeout)?;
        if let Some(warning) = warning {
            eprintln!("redquorum: {warning}");
        }
        Ok(urls)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,

    /// The lock's name: the same on every machine that must not run COMMAND concurrently
    #[arg(long, short = 'k', value_name = "KEY")]
    pub key: String,

    /// Lease, renewed while COMMAND runs: how long the lock outlives a crashed redquorum
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Duration,

    /// How long to wait while another owner holds the lock; 0 gives up at once (flock -n)
    #[arg(long, short = 'w', default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Duration,

    /// If the lease cannot be renewed: SIGTERM goes to COMMAND this long (at most a third of --ttl) before it runs out, SIGKILL when it runs out
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Duration,

    /// Label stored with the lock, shown by `status` [default: HOSTNAME:PID]
    #[arg(long, value_name = "LABEL")]
    pub owner: Option<String>,

    /// Pass a fencing token to COMMAND in REDQUORUM_FENCING_TOKEN (a counter per key per master)
    #[arg(long)]
    pub fencing: bool,

    /// Say on stderr when the lock is taken (naming each node that did not grant, and why) and released
    #[arg(long, short = 'v')]
    pub verbose: bool,

    /// The command to run and its arguments (put `--` before them)
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,

    /// The lock's name.
    #[arg(long, short = 'k', value_name = "KEY")]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of workers contending for the lock.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub workers: u8,

    /// Times each worker takes the lock.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub rounds: u8,
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `1m30s`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "write a duration like 500ms, 30s, 2m, 1h or 1m30s";
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    let bad = |why: &str| format!("{why} in {text:?}; {HINT}");
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    if s.chars().all(is_number) {
        return seconds(s, 1.0).ok_or_else(|| bad("not a number"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let number_end = rest.find(|c| !is_number(c)).unwrap_or(rest.len());
        if number_end == 0 {
            return Err(bad("expected a number"));
        }
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail.find(is_number).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "" => return Err(bad("missing unit")),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        let part = seconds(number, scale).ok_or_else(|| bad("not a number"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| bad("too long a duration"))?;
        rest = next;
    }
    Ok(total)
}

fn seconds(number: &str, scale: f64) -> Option<Duration> {
    let value: f64 = number.parse().ok()?;
    // Rounded to whole nanoseconds so that 0.1s is exactly 100ms.
    let nanos = (value * scale * 1e9).round();
    // In range, so the cast cannot overflow (about 31 years at most).
    (nanos.is_finite() && (0.0..=1e18).contains(&nanos)).then(|| Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)));
        assert_eq!(parse_duration("10"), Ok(ms(10_000)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 5s "), Ok(ms(5_000)));
        for bad in [
            "", "s", "5x", "-5s", "1..2s", "ms5", "5 s x", "inf", "1e400s", "5s3",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("unknown unit \"x\""));
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
