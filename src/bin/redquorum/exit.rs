//! Exit statuses (sysexits.h where one fits) and the failure that carries one.

use std::fmt;

/// Bad command line, or input the library rejects before any I/O (EX_USAGE).
pub const USAGE: i32 = 64;
/// A majority of the masters could not be reached (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// Something that should not happen (EX_SOFTWARE).
pub const SOFTWARE: i32 = 70;
/// The lock stayed held elsewhere until `--wait` ran out (EX_TEMPFAIL).
pub const NOT_ACQUIRED: i32 = 75;
/// The lock was lost while the command ran.
pub const LOST: i32 = 76;
/// The command exists but could not be executed (as in sh, env, timeout).
pub const CANNOT_EXECUTE: i32 = 126;
/// The command was not found (as in sh, env, timeout).
pub const NOT_FOUND: i32 = 127;
/// `status`: the lock is free.
pub const FREE: i32 = 1;

/// Why redquorum stops without a status of the command's: an exit status and a message.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<redquorum::Error> for Failure {
    fn from(e: redquorum::Error) -> Self {
        use redquorum::Error;
        let code = match &e {
            Error::Config { .. } => USAGE,
            Error::NoQuorum { .. } => UNAVAILABLE,
            Error::Timeout { .. } | Error::RetriesExhausted { .. } => NOT_ACQUIRED,
            Error::NotOwner { .. } | Error::NotHeld { .. } | Error::LockLost { .. } => LOST,
            _ => SOFTWARE,
        };
        let hint = match &e {
            Error::NoQuorum { causes, .. } => slow_hint(causes),
            _ => "",
        };
        Failure::new(code, format!("{e}{hint}"))
    }
}

/// A failed `build()`: like `From`, with a message of its own for an unreachable cluster.
pub fn connect_failure(e: redquorum::Error) -> Failure {
    match e {
        redquorum::Error::NoQuorum {
            answered: ok,
            required,
            nodes,
            causes,
            ..
        } => {
            let causes_text: Vec<String> = causes.iter().map(ToString::to_string).collect();
            Failure::new(
                UNAVAILABLE,
                format!(
                    "only {ok} of {nodes} Redis masters answered, {required} are needed: {}{}",
                    causes_text.join("; "),
                    slow_hint(&causes)
                ),
            )
        }
        other => other.into(),
    }
}

/// For a node that timed out, the library's "node timeout" is the CLI's `--node-timeout`.
fn slow_hint(causes: &[redquorum::NodeFailure]) -> &'static str {
    if causes
        .iter()
        .any(|c| c.cause == redquorum::NodeCause::Timeout)
    {
        "\n(the node timeout is --node-timeout: a master that is only slow, e.g. far away, \
         may need a longer one)"
    } else {
        ""
    }
}

/// The shell's convention for a process killed by signal `signal`.
pub fn signalled(signal: i32) -> i32 {
    128 + signal
}
