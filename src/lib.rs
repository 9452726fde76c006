// The README's links to docs/*.md are reference links whose definitions come at its end (for
// GitHub); these come first and win (the first definition of a label counts), pointing rustdoc
// at the same pages rendered in `guide`.
#![doc = "[docs/benchmarks.md]: crate::guide::benchmarks"]
#![doc = "[docs/cli.md]: crate::guide::cli"]
#![doc = "[docs/docker.md]: crate::guide::docker"]
#![doc = "[docs/primitives.md]: crate::guide::primitives"]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The module map, top to bottom, is in docs/architecture.md: every `crate::` path in a
// module points down that list (tests/architecture.rs checks it, and that the list names
// exactly the modules declared here).
mod acquisition;
pub mod check;
mod cleanup;
mod cluster;
pub mod config;
mod context;
mod error;
mod guard;
pub mod guide;
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
mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
mod tls;
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

/// The cancellation token of [`Context::with_cancel`], [`LockGuard::lost`] and [`Lease::lost`]:
/// `tokio_util::sync::CancellationToken`, re-exported so that you need not depend on
/// `tokio-util` yourself.
///
/// ```
/// use std::time::Duration;
/// use redquorum::{CancellationToken, Context};
///
/// let shutdown = CancellationToken::new();
/// let ctx = Context::with_timeout(Duration::from_secs(5)).with_cancel(shutdown.clone());
/// shutdown.cancel(); // every wait under `ctx` ends with `Error::Cancelled`
/// # drop(ctx);
/// ```
pub use tokio_util::sync::CancellationToken;
