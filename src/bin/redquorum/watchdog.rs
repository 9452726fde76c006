//! The watchdog: a tiny process that SIGKILLs the job if redquorum dies without ending it.
//!
//! redquorum holds the write end of a pipe whose read end only the watchdog has. When
//! redquorum ends in any way (SIGKILL, OOM kill, a crash), the kernel closes the write end and
//! the watchdog reads end-of-file: if a job is armed then, it sends SIGKILL to the job's process
//! group (or, when the job shares redquorum's group, to the command only). This works on every
//! Unix; on Linux the command also gets SIGKILL from the kernel (`PR_SET_PDEATHSIG`, see
//! `job.rs`), should the watchdog itself be gone.
//!
//! The watchdog is forked twice (so that it is nobody's child in redquorum, which reaps every
//! process it is given) before the async runtime starts: the process is single-threaded then,
//! so the forked code may be ordinary Rust.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// A message: one tag byte and a pid in native byte order (atomic: shorter than PIPE_BUF).
const MESSAGE: usize = 5;
/// Arm: on redquorum's death, SIGKILL process group N.
const ARM_GROUP: u8 = b'G';
/// Arm: on redquorum's death, SIGKILL process N.
const ARM_PROCESS: u8 = b'P';
/// Disarm: the job is over (every process of it reaped); nothing to do on end-of-file.
const DISARM: u8 = b'D';

/// redquorum's end of the watchdog's pipe.
#[derive(Debug)]
pub struct Watchdog {
    pipe: File,
}

impl Watchdog {
    /// Starts the watchdog. Must be called while the process has a single thread (before the
    /// tokio runtime is built).
    pub fn start() -> io::Result<Watchdog> {
        let (read, write) = pipe()?;
        // SAFETY: the process is single-threaded (documented precondition), so the child may
        // run any code; it never returns from `intermediate`.
        match unsafe { libc::fork() } {
            -1 => {
                let err = io::Error::last_os_error();
                close(read);
                close(write);
                Err(err)
            }
            0 => intermediate(read, write),
            pid => {
                close(read);
                // SAFETY: `write` is an open descriptor that nothing else owns.
                let pipe = unsafe { File::from_raw_fd(write) };
                match wait_for(pid)? {
                    0 => Ok(Watchdog { pipe }),
                    _ => Err(io::Error::other("the watchdog process could not be forked")),
                }
            }
        }
    }

    /// The write end, for the command's `pre_exec` to arm the watchdog with its own pid before
    /// it execs (see [`arm_from_child`]). Closed on exec.
    pub fn fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    /// The job is over: the watchdog does nothing when redquorum exits.
    pub fn disarm(&mut self) -> io::Result<()> {
        self.pipe.write_all(&[DISARM, 0, 0, 0, 0])
    }
}

/// Arms the watchdog with the calling process (`group`: its process group, whose id is its
/// pid). For the command's `pre_exec`: only async-signal-safe calls, no allocation.
pub fn arm_from_child(fd: RawFd, group: bool) -> io::Result<()> {
    // SAFETY: getpid(2) cannot fail and has no preconditions.
    let pid = unsafe { libc::getpid() };
    let tag = if group { ARM_GROUP } else { ARM_PROCESS };
    let p = pid.to_ne_bytes();
    let message = [tag, p[0], p[1], p[2], p[3]];
    // SIGPIPE has its default action here (std resets it for the command): a write to the
    // pipe of a watchdog that is gone would kill this child before exec, which the parent
    // cannot tell from a command that died of SIGPIPE. Ignored for the write, the write fails
    // with EPIPE instead (reported by spawn), and the default comes back for the command.
    // SAFETY: signal(2) is async-signal-safe; SIG_IGN and the previous handler are valid.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let written = loop {
        // SAFETY: `message` is a valid buffer of MESSAGE bytes; `fd` is the pipe's write end.
        let n = unsafe { libc::write(fd, message.as_ptr().cast(), MESSAGE) };
        if n == MESSAGE as isize {
            break Ok(());
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // A short write cannot happen for a pipe message shorter than PIPE_BUF.
        break Err(if n < 0 {
            err
        } else {
            io::Error::from_raw_os_error(libc::EIO)
        });
    };
    // SAFETY: as above; `previous` is what signal(2) returned for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, previous) };
    written
}

/// A pipe whose ends are both closed on exec (so the command never holds the write end).
fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: `fds` is a valid array of two descriptors for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    for fd in fds {
        // SAFETY: `fd` was just opened by pipe(2).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            let err = io::Error::last_os_error();
            close(fds[0]);
            close(fds[1]);
            return Err(err);
        }
    }
    Ok((fds[0], fds[1]))
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we own; errors leave nothing to do.
    unsafe { libc::close(fd) };
}

/// The exit status of child `pid` (-1 if it did not exit normally).
fn wait_for(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The first fork: forks the watchdog and exits, so that the watchdog is re-parented away.
fn intermediate(read: RawFd, write: RawFd) -> ! {
    // SAFETY: single-threaded (see `start`); the child never returns from `watch`.
    match unsafe { libc::fork() } {
        0 => watch(read, write),
        // SAFETY: _exit(2) skips destructors and atexit handlers, which belong to redquorum.
        -1 => unsafe { libc::_exit(1) },
        _ => unsafe { libc::_exit(0) },
    }
}

/// The watchdog's whole life.
fn watch(read: RawFd, write: RawFd) -> ! {
    close(write);
    // SAFETY: plain syscalls on our own process: a session of its own (out of reach of the
    // terminal's and of a process group's signals), no terminal signals, no hold on the
    // working directory or on redquorum's standard streams (a reader waiting for their
    // end-of-file would wait for us).
    unsafe {
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            if null >= 0 {
                libc::dup2(null, fd);
            } else {
                libc::close(fd);
            }
        }
        if null > 2 {
            libc::close(null);
        }
    }
    let mut armed: Option<libc::pid_t> = None;
    let mut message = [0u8; MESSAGE];
    while read_message(read, &mut message) {
        let pid = libc::pid_t::from_ne_bytes([message[1], message[2], message[3], message[4]]);
        armed = match message[0] {
            ARM_GROUP if pid > 1 => Some(-pid),
            ARM_PROCESS if pid > 1 => Some(pid),
            _ => None,
        };
    }
    if let Some(target) = armed {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(target, libc::SIGKILL) };
    }
    // SAFETY: see `intermediate`.
    unsafe { libc::_exit(0) }
}

/// Reads one whole message; false at end-of-file (or on an error, treated alike).
fn read_message(fd: RawFd, message: &mut [u8; MESSAGE]) -> bool {
    let mut got = 0;
    while got < MESSAGE {
        // SAFETY: the destination is the unread rest of `message`.
        let n = unsafe { libc::read(fd, message[got..].as_mut_ptr().cast(), MESSAGE - got) };
        match n {
            n if n > 0 => got += n as usize,
            0 => return false,
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return false,
        }
    }
    true
}
