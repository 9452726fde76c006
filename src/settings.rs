//! The validated settings every layer below the builder reads, and the one rule the lease
//! layer checks again at run time (an extension's TTL).

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::quorum;
use crate::retry::Retry;
use crate::wait::WaitStrategy;

/// The group of a [`RedLock`](crate::RedLock) that was not made with
/// [`RedLock::group`](crate::RedLock::group).
pub const DEFAULT_GROUP: &str = "default";

/// The validated settings shared by a [`RedLock`](crate::RedLock) and its clones (built by
/// [`RedLockBuilder::build`](crate::RedLockBuilder::build), which checks every rule first).
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) ttl: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) retry: Retry,
    pub(crate) owner: Arc<str>,
    pub(crate) namespace: Arc<str>,
    pub(crate) connect_timeout: Duration,
    pub(crate) node_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) wait_strategy: WaitStrategy,
    pub(crate) safety_poll: Duration,
    pub(crate) fencing: bool,
    pub(crate) fencing_unconfirmed: bool,
    /// The naive (unsafe) counting semaphore instead of slots: demonstrations only.
    pub(crate) semaphore_counting: bool,
}

/// Checks that a lease of `ttl` can have positive validity after the drift allowance and one
/// node timeout.
pub(crate) fn check_ttl(
    ttl: Duration,
    drift_factor: f64,
    node_timeout: Duration,
) -> Result<(), Error> {
    if quorum::validity(ttl, node_timeout, drift_factor).is_none() {
        return Err(Error::config(format!(
            "ttl {ttl:?} leaves no validity after the drift allowance ({:?}) and one node timeout \
             ({node_timeout:?}); use a longer ttl or a shorter node_timeout",
            quorum::drift(ttl, drift_factor)
        )));
    }
    Ok(())
}
