#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod check;
pub mod config;
mod context;
mod error;
mod guard;
mod lease;
mod lock;
mod node;
mod queue;
pub mod quorum;
mod retry;
#[cfg(feature = "testkit")]
pub mod testkit;
mod wait;
mod wake;

pub use config::RedLockBuilder;
pub use context::Context;
pub use error::{Error, NodeCause, NodeFailure};
pub use guard::LockGuard;
pub use lease::Lease;
pub use lock::{RedLock, UNREACHABLE_ATTEMPTS};
pub use retry::{Delays, Retry};
pub use wait::WaitStrategy;
