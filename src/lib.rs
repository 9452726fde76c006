#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The module map, top to bottom, is in docs/architecture.md: every `crate::` path in a
// module points down that list (tests/architecture.rs checks it, and that the list names
// exactly the modules declared here).
mod acquisition;
mod cleanup;
mod cluster;
pub mod config;
mod context;
mod error;
mod guard;
mod keys;
mod lease;
mod lock;
mod node;
mod node_states;
mod queue;
pub mod quorum;
mod read_write;
mod retry;
mod round;
mod semaphore;
mod settings;
#[cfg(feature = "testkit")]
pub mod testkit;
mod wait;
mod wake;

pub use acquisition::UNREACHABLE_ATTEMPTS;
pub use config::RedLockBuilder;
pub use context::Context;
pub use error::{Error, NodeCause, NodeFailure, Operation};
pub use guard::LockGuard;
pub use lease::Lease;
pub use lock::RedLock;
pub use retry::{Delays, Retry};
pub use semaphore::{Semaphore, MAX_PERMITS};
pub use wait::WaitStrategy;
