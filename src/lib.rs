// The README's links to docs/*.md are reference links whose definitions come at its end (for
// GitHub); these come first and win (the first definition of a label counts), pointing rustdoc
// at the same pages rendered in `guide`.
#![doc = "[docs/benchmarks.md]: crate::guide::benchmarks"]
#![doc = "[docs/cli.md]: crate::guide::cli"]
#![doc = "[docs/docker.md]: crate::guide::docker"]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod context;
mod error;
mod guard;
pub mod guide;
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
