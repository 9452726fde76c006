//! Signals: the ones redquorum listens for, and sending one to the command.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT, SIGTERM and SIGHUP sent to redquorum.
pub struct Incoming {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Incoming {
    /// Starts listening (from now on these signals no longer end redquorum).
    pub fn listen() -> io::Result<Self> {
        Ok(Incoming {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal's number.
    pub async fn recv(&mut self) -> i32 {
        loop {
            let got = tokio::select! {
                got = self.int.recv() => got.map(|()| libc::SIGINT),
                got = self.term.recv() => got.map(|()| libc::SIGTERM),
                got = self.hup.recv() => got.map(|()| libc::SIGHUP),
            };
            // `None` only if the runtime's signal driver is gone; nothing more will come.
            match got {
                Some(sig) => return sig,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Where the command's signals go.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The command's own process group (its id is the command's pid): reaches what it started.
    Group(u32),
    /// The command's process only.
    Process(u32),
}

impl Target {
    /// Sends `sig`; a target that is already gone is not an error.
    pub fn send(self, sig: i32) -> io::Result<()> {
        let (Target::Group(pid) | Target::Process(pid)) = self;
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::other(format!("pid {pid} out of range")))?;
        let target = match self {
            Target::Group(_) => -pid,
            Target::Process(_) => pid,
        };
        // SAFETY: kill(2) has no memory-safety preconditions; `target` is the command's pid
        // or process group, which stays ours until we reap the command.
        let rc = unsafe { libc::kill(target, sig) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(err)
    }
}

/// A signal's name for messages.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}
