//! The job: COMMAND and every process it starts, as flock(1) users expect of a lock holder.
//!
//! - COMMAND is forked from a thread of ours that reaps it, and (on Linux) gets SIGKILL from the
//!   kernel if redquorum dies (`PR_SET_PDEATHSIG`, tied to that thread, which lives until
//!   COMMAND has been reaped). Before it execs, it arms the watchdog (see `watchdog.rs`), which
//!   SIGKILLs its whole process group if redquorum dies.
//! - On Linux redquorum is a child subreaper (`PR_SET_CHILD_SUBREAPER`): what the job leaves
//!   behind is re-parented to redquorum, which reaps every child until none is left, so the
//!   job is over only when all of its processes are. Elsewhere, the job's process group is
//!   watched until it is empty.
//!
//! Nothing else in redquorum may start child processes while a job runs: the reaper waits for
//! any child.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
#[cfg(not(target_os = "linux"))]
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::signals::Target;
use crate::watchdog;

/// How often the process group is checked for members where no subreaper is available.
#[cfg(not(target_os = "linux"))]
const GROUP_POLL: Duration = Duration::from_millis(50);

/// What the reaper reports.
#[derive(Debug)]
pub enum Event {
    /// COMMAND itself exited; processes it started may still run.
    Exited(ExitStatus),
    /// Every process of the job has exited (after `Exited`).
    Done,
    /// Waiting failed; the job's state is unknown.
    Failed(io::Error),
}

/// A running job.
pub struct Job {
    /// COMMAND's pid, and its process group's id when it has its own.
    pid: u32,
    own_group: bool,
    /// COMMAND has been reaped: its pid may belong to another process now.
    exited: bool,
    events: mpsc::UnboundedReceiver<Event>,
}

/// How COMMAND is started.
pub struct Spec<'a> {
    pub program: &'a OsStr,
    pub args: &'a [std::ffi::OsString],
    pub env: Vec<(&'static str, String)>,
    pub env_remove: Vec<&'static str>,
    /// COMMAND gets a process group of its own (reaching what it starts).
    pub own_group: bool,
    /// The watchdog's pipe, armed by COMMAND before it execs.
    pub watchdog_fd: std::os::fd::RawFd,
}

/// Makes redquorum the reaper of every process its job leaves behind (Linux). Call once,
/// after the watchdog has been started (it must not become our child).
pub fn become_subreaper() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(2) with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Job {
    /// Starts COMMAND from a reaper thread of its own. The error is spawn's (not found, not
    /// executable...).
    pub async fn start(spec: Spec<'_>) -> io::Result<Job> {
        let mut command = std::process::Command::new(spec.program);
        command.args(spec.args);
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        for k in &spec.env_remove {
            command.env_remove(k);
        }
        let own_group = spec.own_group;
        let watchdog_fd = spec.watchdog_fd;
        // SAFETY: getpid(2) cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and makes async-signal-safe
        // calls only (prctl, getppid, setpgid, getpid, write), without allocating.
        unsafe {
            command.pre_exec(move || {
                #[cfg(target_os = "linux")]
                {
                    if libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) == -1
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // redquorum died before the line above took effect: do not run at all.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                if own_group && libc::setpgid(0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                watchdog::arm_from_child(watchdog_fd, own_group)
            });
        }
        let (started_tx, started_rx) = oneshot::channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("redquorum-reaper".into())
            .spawn(move || reap(command, own_group, started_tx, events_tx))?;
        let pid = started_rx.await.map_err(|_| {
            io::Error::other("the reaper thread ended before starting the command")
        })??;
        Ok(Job {
            pid,
            own_group,
            exited: false,
            events,
        })
    }

    /// The next thing the reaper saw; `Done` once everything is over.
    pub async fn next(&mut self) -> Event {
        let event = self.events.recv().await.unwrap_or_else(|| {
            Event::Failed(io::Error::other("the reaper thread ended unexpectedly"))
        });
        if matches!(event, Event::Exited(_)) {
            self.exited = true;
        }
        event
    }

    /// Where signals for the job go now: its process group, or COMMAND alone while it runs
    /// (when it shares redquorum's group); `None` when nothing can be reached.
    pub fn target(&self) -> Option<Target> {
        if self.own_group {
            Some(Target::Group(self.pid))
        } else if !self.exited {
            Some(Target::Process(self.pid))
        } else {
            None
        }
    }
}

/// The reaper thread: forks COMMAND (so that its parent-death signal is tied to this thread,
/// which outlives it), then reaps children until none is left.
fn reap(
    mut command: std::process::Command,
    own_group: bool,
    started: oneshot::Sender<io::Result<u32>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let pid = match command.spawn() {
        // The handle is dropped without waiting: this thread reaps it below.
        Ok(child) => child.id(),
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(pid));
    let Ok(command_pid) = libc::pid_t::try_from(pid) else {
        let _ = events.send(Event::Failed(io::Error::other(format!(
            "pid {pid} out of range"
        ))));
        return;
    };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == command_pid {
            let _ = events.send(Event::Exited(ExitStatus::from_raw(status)));
        } else if reaped == -1 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => break,
                _ => {
                    let _ = events.send(Event::Failed(err));
                    return;
                }
            }
        }
    }
    if own_group {
        wait_for_empty_group(command_pid);
    }
    let _ = events.send(Event::Done);
}

/// Without a subreaper, what the job left behind is re-parented elsewhere: wait until its
/// process group is empty.
#[cfg(not(target_os = "linux"))]
fn wait_for_empty_group(pgid: libc::pid_t) {
    loop {
        // SAFETY: kill(2) with signal 0 only checks for existence.
        if unsafe { libc::kill(-pgid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            return;
        }
        std::thread::sleep(GROUP_POLL);
    }
}

/// On Linux every process of the job is our descendant (subreaper): no child left means no
/// process of the job left.
#[cfg(target_os = "linux")]
fn wait_for_empty_group(_pgid: libc::pid_t) {}
