//! `redquorum run`: a command under a lock whose lease is kept alive while it runs.

use std::io::{self, IsTerminal};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use redquorum::{Context, Error, LockGuard, RedLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::check;
use crate::cli::RunArgs;
use crate::exit::{self, Failure};
use crate::job::{self, Event, Job, Spec};
use crate::probe::{self, NodeView};
use crate::signals::{self, Incoming};
use crate::watchdog::Watchdog;

/// How long the "who holds it" look-up after a failed acquisition may take.
const OWNER_LOOKUP: Duration = Duration::from_secs(1);
/// How long `-v` may spend reading the nodes that did not grant, to say why.
const NODE_PROBE: Duration = Duration::from_secs(1);

/// What `run` needs before the async runtime starts (the process is single-threaded): the
/// watchdog, then redquorum as the reaper of what the job leaves behind.
pub fn prepare() -> Result<Watchdog, Failure> {
    let watchdog = Watchdog::start().map_err(|e| {
        Failure::new(
            exit::SOFTWARE,
            format!("cannot start the watchdog that stops the command if redquorum dies: {e}"),
        )
    })?;
    job::become_subreaper().map_err(|e| {
        Failure::new(
            exit::SOFTWARE,
            format!(
                "cannot become the reaper of the command's processes (PR_SET_CHILD_SUBREAPER): {e}"
            ),
        )
    })?;
    Ok(watchdog)
}

pub async fn run(args: RunArgs, mut watchdog: Watchdog) -> Result<i32, Failure> {
    let mut settle = None;
    let outcome = run_locked(args, &mut settle, &mut watchdog).await;
    // A release (or the undo of a failed attempt) is decided by a majority; the other nodes
    // get theirs from background tasks, each bounded by the node timeout. Give them that long
    // before the process ends them, rather than leave keys behind until the TTL.
    if let Some(node_timeout) = settle {
        tokio::time::sleep(node_timeout).await;
    }
    outcome
}

async fn run_locked(
    args: RunArgs,
    settle: &mut Option<Duration>,
    watchdog: &mut Watchdog,
) -> Result<i32, Failure> {
    let urls = args.nodes.urls()?;
    check::key(&args.key)?;
    check::owner(args.owner.as_deref())?;
    check::ttl(args.ttl, args.nodes.node_timeout)?;
    let mut builder = RedLock::builder()
        .nodes(&urls)
        .ttl(args.ttl)
        .namespace(args.nodes.namespace.as_str())
        .fencing(args.fencing);
    if let Some(timeout) = args.nodes.node_timeout {
        builder = builder.node_timeout(timeout);
    }
    builder = args.nodes.tls.apply(builder)?;
    if let Some(owner) = &args.owner {
        builder = builder.owner(owner.as_str());
    }
    let mut incoming = Incoming::listen()
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot listen for signals: {e}")))?;
    // Nothing is held while connecting: a signal simply ends it.
    let locks = tokio::select! {
        built = builder.build() => built.map_err(exit::connect_failure)?,
        sig = incoming.recv() => return Ok(exit::signalled(sig)),
    };
    let locks = locks.group(&args.nodes.group)?;
    *settle = Some(locks.node_timeout());
    let key = args.key.as_str();
    let redis_key = locks.redis_key(key)?;

    let Some(guard) = acquire(&locks, key, args.wait, &mut incoming).await? else {
        let holder = match tokio::time::timeout(OWNER_LOOKUP, locks.owner(key)).await {
            Ok(Ok(Some(owner))) => format!("held by {owner}"),
            _ => "held by another owner".to_owned(),
        };
        let waited = if args.wait.is_zero() {
            String::new()
        } else {
            format!(" for {:?} (--wait)", args.wait)
        };
        return Err(Failure::new(
            exit::NOT_ACQUIRED,
            format!("lock {key:?} ({redis_key}) stayed {holder}{waited}; not running the command"),
        ));
    };
    guard.keep_alive();
    if args.verbose {
        let token = guard
            .fencing_token()
            .map(|t| format!(", fencing token {t}"))
            .unwrap_or_default();
        eprintln!(
            "redquorum: acquired lock {key:?} ({redis_key}) on {} of {} nodes{token}",
            guard.granted_nodes(),
            locks.nodes()
        );
        if guard.granted_nodes() < locks.nodes() {
            let fence_key = locks.fence_key(key)?;
            for line in not_granted(&urls, &redis_key, &fence_key, &guard).await {
                eprintln!("redquorum:   {line}");
            }
        }
    }
    let lost = guard.lost();

    let (status, lost_while_running) =
        match supervise(&args, key, &guard, &lost, &mut incoming, watchdog).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                release(guard, key, args.verbose, false).await;
                return Err(failure);
            }
        };
    let lost_at_release = release(guard, key, args.verbose, lost_while_running).await;
    let described = describe(status);
    if lost_while_running || lost_at_release {
        eprintln!(
            "redquorum: exiting with {}: the lock {key:?} was not held throughout; the command {described}",
            exit::LOST
        );
        return Ok(exit::LOST);
    }
    Ok(status
        .code()
        .or_else(|| status.signal().map(exit::signalled))
        .unwrap_or(exit::SOFTWARE))
}

/// For `-v`: each node that does not hold this acquisition's value, read directly, with why
/// (its failure, or what it holds instead). Never shows a URL's credentials.
async fn not_granted(
    urls: &[String],
    redis_key: &str,
    fence_key: &str,
    guard: &LockGuard,
) -> Vec<String> {
    let views = futures::future::join_all(
        urls.iter()
            .map(|url| probe::read_node(url, redis_key, fence_key, NODE_PROBE)),
    )
    .await;
    let ours = guard.value();
    let mut lines = Vec::new();
    for (url, view) in urls.iter().zip(views) {
        let why = match view {
            Ok(v) if v.value.as_deref() == Some(ours) => continue,
            Ok(NodeView { value: None, .. }) => {
                "not granted: the node answers but holds no value for the lock (its reply came \
                 too late, or the key was lost there)"
                    .to_owned()
            }
            Ok(NodeView { value: Some(_), .. }) => {
                "not granted: the node holds another owner's value (left from an earlier holder \
                 whose key has not expired there yet)"
                    .to_owned()
            }
            Err(failed) => format!("not granted: {}", failed.detail),
        };
        lines.push(format!("{}: {why}", probe::node_label(url)));
    }
    lines
}

/// Takes the lock: one attempt with `wait` zero, else waits up to `wait`. `None` when it
/// stayed held elsewhere. A signal cancels the wait and ends redquorum with 128+signal.
async fn acquire(
    locks: &RedLock,
    key: &str,
    wait: Duration,
    incoming: &mut Incoming,
) -> Result<Option<LockGuard>, Failure> {
    let cancel = CancellationToken::new();
    let ctx = Context::with_timeout(wait).with_cancel(cancel.clone());
    let attempt = async {
        if wait.is_zero() {
            locks.try_acquire(key).await
        } else {
            locks.acquire(&ctx, key).await.map(Some)
        }
    };
    tokio::pin!(attempt);
    // The attempt is awaited to its end even after a signal, so that nothing is left behind on
    // the nodes when redquorum exits right after.
    let mut signalled = None;
    let acquired = loop {
        tokio::select! {
            acquired = &mut attempt => break acquired,
            sig = incoming.recv(), if signalled.is_none() => {
                signalled = Some(sig);
                cancel.cancel();
            }
        }
    };
    if let Some(sig) = signalled {
        if let Ok(Some(guard)) = acquired {
            let _ = guard.release().await;
        }
        return Err(Failure::new(
            exit::signalled(sig),
            format!(
                "got {} while waiting for lock {key:?}; nothing is held",
                signals::name(sig)
            ),
        ));
    }
    match acquired {
        Ok(guard) => Ok(guard),
        Err(e) if e.is_timeout() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Runs the job to its end: until COMMAND and every process it started have exited. Returns
/// COMMAND's status and whether the lock was lost (or could not be confirmed) meanwhile.
async fn supervise(
    args: &RunArgs,
    key: &str,
    guard: &LockGuard,
    lost: &CancellationToken,
    incoming: &mut Incoming,
    watchdog: &mut Watchdog,
) -> Result<(ExitStatus, bool), Failure> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::new(exit::USAGE, "no command to run"))?;
    let mut env = vec![("REDQUORUM_KEY", key.to_owned())];
    // The node URLs may carry passwords: the command does not get them.
    let mut env_remove = vec!["REDQUORUM_NODES"];
    match guard.fencing_token() {
        Some(token) => env.push(("REDQUORUM_FENCING_TOKEN", token.to_string())),
        // Not an outer redquorum's token, which would be meaningless here.
        None => env_remove.push("REDQUORUM_FENCING_TOKEN"),
    }
    // Its own process group reaches what the command starts; but a command that may read the
    // terminal stays in ours (a background group reading it would be stopped).
    let own_group = !io::stdin().is_terminal();
    let started = Job::start(Spec {
        program,
        args: rest,
        env,
        env_remove,
        own_group,
        watchdog_fd: watchdog.fd(),
    })
    .await;
    let mut job = match started {
        Ok(job) => job,
        Err(e) => {
            // The child may have armed the watchdog before its exec failed.
            let _ = watchdog.disarm();
            if e.raw_os_error() == Some(libc::EPIPE) {
                // The write that arms the watchdog found it gone.
                return Err(Failure::new(
                    exit::CANNOT_EXECUTE,
                    format!(
                        "not running {program:?}: the watchdog that stops it if redquorum dies \
                         is gone (was it killed?); run redquorum again"
                    ),
                ));
            }
            let code = match e.kind() {
                io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
            return Err(Failure::new(code, format!("cannot run {program:?}: {e}")));
        }
    };
    let send = |job: &Job, sig: i32| {
        if let Some(target) = job.target() {
            if let Err(e) = target.send(sig) {
                eprintln!(
                    "redquorum: cannot send {} to the command: {e}",
                    signals::name(sig)
                );
            }
        }
    };
    // SIGTERM goes out when the lease has not been renewed `lead` before its validity ends,
    // SIGKILL when the validity ends (or `--grace` after SIGTERM, if a late renewal extended
    // it): the job is stopped while the lock is still ours. The lead is at most a third of the
    // TTL, so that renewals (due when half of it is left) get their chance first.
    let lead = args.grace.min(args.ttl / 3);
    let mut terminated_at: Option<Instant> = None;
    let mut killed = false;
    let mut status: Option<ExitStatus> = None;
    loop {
        let next = match terminated_at {
            None => Some(
                guard
                    .expires_at()
                    .checked_sub(lead)
                    .unwrap_or_else(Instant::now),
            ),
            Some(_) if killed => None,
            Some(at) => Some((at + args.grace).min(guard.expires_at())),
        };
        tokio::select! {
            event = job.next() => match event {
                Event::Exited(s) => {
                    status = Some(s);
                    if args.verbose {
                        eprintln!(
                            "redquorum: the command {}; keeping lock {key:?} until the processes \
                             it started have exited",
                            describe(s)
                        );
                    }
                }
                Event::Done => break,
                Event::Failed(e) => {
                    // The job's state is unknown: stop it rather than release under it.
                    send(&job, libc::SIGKILL);
                    return Err(Failure::new(
                        exit::SOFTWARE,
                        format!("waiting for the command failed: {e}; it was sent SIGKILL"),
                    ));
                }
            },
            () = lost.cancelled(), if terminated_at.is_none() => {
                eprintln!(
                    "redquorum: lock {key:?} was lost while the command ran (its lease could not \
                     be renewed on a majority of the nodes); sending SIGTERM, SIGKILL in {:?}",
                    args.grace.min(guard.validity())
                );
                send(&job, libc::SIGTERM);
                terminated_at = Some(Instant::now());
            }
            () = sleep_until(next) => {
                let now = Instant::now();
                match terminated_at {
                    // The lease was renewed meanwhile: not due yet.
                    None if now + lead < guard.expires_at() => {}
                    None => {
                        eprintln!(
                            "redquorum: lock {key:?} is about to be lost: its lease could not be \
                             renewed on a majority of the nodes and runs out in {:?}; sending \
                             SIGTERM, SIGKILL when it runs out",
                            guard.validity()
                        );
                        send(&job, libc::SIGTERM);
                        terminated_at = Some(now);
                    }
                    Some(at) if now >= (at + args.grace).min(guard.expires_at()) => {
                        eprintln!(
                            "redquorum: the command is still running {:?} after SIGTERM, at the \
                             end of the lease; sending SIGKILL",
                            now - at
                        );
                        send(&job, libc::SIGKILL);
                        killed = true;
                    }
                    Some(_) => {}
                }
            }
            sig = incoming.recv() => {
                // From a terminal, the keyboard's SIGINT already reached the command's group.
                if own_group || sig != libc::SIGINT {
                    send(&job, sig);
                }
            }
        }
    }
    if let Err(e) = watchdog.disarm() {
        eprintln!("redquorum: warning: cannot disarm the watchdog: {e}");
    }
    let status = status.ok_or_else(|| {
        Failure::new(
            exit::SOFTWARE,
            "the command's processes ended without its exit status",
        )
    })?;
    // As `with_lock` judges it: a lease that ran out by the end was not held throughout.
    let lost_meanwhile =
        terminated_at.is_some() || lost.is_cancelled() || guard.validity().is_zero();
    Ok((status, lost_meanwhile))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Releases the lock. Returns whether it turned out to be lost (not already known).
async fn release(guard: LockGuard, key: &str, verbose: bool, known_lost: bool) -> bool {
    match guard.release().await {
        Ok(()) => {
            if verbose {
                eprintln!("redquorum: released lock {key:?}");
            }
            false
        }
        Err(_) if known_lost => false,
        Err(Error::NotHeld { .. }) => {
            eprintln!(
                "redquorum: lock {key:?} was found gone when releasing it: its lease ran out \
                 (or the key was deleted) while the command ran; the command may have \
                 overlapped with another holder (--fencing lets the resource tell)"
            );
            true
        }
        Err(Error::NotOwner { .. }) => {
            eprintln!(
                "redquorum: lock {key:?} was found held by another owner when releasing it (left \
                 untouched): its lease ran out while the command ran; the command may have \
                 overlapped with that holder (--fencing lets the resource tell)"
            );
            true
        }
        Err(e) => {
            eprintln!(
                "redquorum: warning: releasing lock {key:?} failed, it expires within --ttl: {e}"
            );
            false
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by {}", signals::name(sig)),
        _ => format!("ended with {status}"),
    }
}
