//! A node's sender task: the requests queued for the node go out together, in pipelines.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::direct::Counted;
use super::link::Link;
use super::op::{Failed, Op, Script};
use super::wire::{send, Request};
use crate::error::NodeCause;

/// Why a node cannot be reached when its sender task is gone.
pub(super) const RUNTIME_GONE: &str = "the tokio runtime this RedLock was built on has shut \
     down, and with it the RedLock's connections; build the RedLock on the runtime that uses it \
     (each #[tokio::test] has its own runtime)";

/// Requests waiting for a node's connection are sent together, up to this many per pipeline.
const MAX_BATCH: usize = 128;

/// Pipelines out to one node at once while it answers quickly: few enough that requests of a
/// busy client gather into pipelines (measured on benches/cost, 64 tasks: 1 pipeline out
/// gives 26-28k cycles/s, 4 give 36k, 32 give 21k, as most pipelines then carry one request).
const MAX_PIPELINES: usize = 4;

/// Pipelines out to one slow node at once: beyond [`MAX_PIPELINES`], one more may go for each
/// quarter of the node timeout since the last one went, so requests do not wait a whole
/// round trip behind others (a frozen node, whose pipelines end after about a node timeout,
/// levels off near 8).
const MAX_PIPELINES_SLOW: usize = 64;

/// A request waiting for its node's connection, and where its reply goes.
pub(super) struct Job {
    pub(super) op: Arc<Op>,
    /// When its caller stops waiting.
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<Result<Value, NodeCause>>,
    /// Counts the job in its node's load until it is answered (or dropped).
    pub(super) _counted: Counted,
}

impl Request for Job {
    fn op(&self) -> &Op {
        &self.op
    }

    /// An acquire whose caller gave up (deadline passed or future dropped) is never sent: its
    /// round counts this node as failed, perhaps granted, and its undo may already have passed
    /// the node, so not taking the key is the safe answer. Releases, extensions and fences
    /// always go out, late or not: the caller may have given up, but the change must still
    /// reach the node (a compare-and-delete or compare-and-extend never harms another owner).
    fn abandoned(&self, now: Instant) -> bool {
        self.op.script() == Script::Acquire && (self.deadline <= now || self.reply.is_closed())
    }
}

/// A node's sender task: sends the requests queued for the node, all that are waiting in one
/// pipeline. Requests come here only while the node has others queued or in flight (a lone
/// request goes straight to the connection, see [`super::direct`]): those that arrive while
/// pipelines are out go together in the next (fewer syscalls and wake-ups on both sides). Up
/// to [`MAX_PIPELINES`] are out at once (more for a slow node, so its round trip does not
/// queue requests behind it); each is polled for the first time before the next is made, so
/// they enter the connection in queue order (except across a reconnect or a NOSCRIPT resend:
/// nothing relies on the order, see `NodeStates`). Ends when the `Nodes` is dropped, after
/// the pipelines that are out.
pub(super) async fn serve(
    link: Arc<Link>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    timeout: Duration,
) {
    let mut out = FuturesUnordered::new();
    let mut last_sent = Instant::now();
    loop {
        let slow = last_sent + timeout / 4;
        let room =
            out.len() < MAX_PIPELINES || (out.len() < MAX_PIPELINES_SLOW && Instant::now() >= slow);
        tokio::select! {
            biased;
            Some(()) = out.next(), if !out.is_empty() => {}
            job = queue.recv(), if room => {
                let Some(job) = job else { break };
                let Some(batch) = take_batch(job, &mut queue) else {
                    continue;
                };
                last_sent = Instant::now();
                out.push(pipeline(link.clone(), batch, timeout));
            }
            () = tokio::time::sleep_until(slow), if !room && out.len() < MAX_PIPELINES_SLOW => {}
        }
    }
    while out.next().await.is_some() {}
}

/// `first` and the jobs queued behind it (up to [`MAX_BATCH`]), less the abandoned acquires
/// (answered as timed out); None when none is left to send.
fn take_batch(first: Job, queue: &mut mpsc::UnboundedReceiver<Job>) -> Option<Vec<Job>> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    let now = Instant::now();
    let (abandoned, batch): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|j| j.abandoned(now));
    for job in abandoned {
        // Its caller may still be listening (its timer and this check fall due together):
        // what happened is a timeout, not a lost sender task.
        let _ = job.reply.send(Err(NodeCause::Timeout));
    }
    (!batch.is_empty()).then_some(batch)
}

/// Sends `batch` as one pipeline on `link` and answers each job.
///
/// A pipeline that gets no answer is given up after the last of its callers gave up (at least
/// one node `timeout`). An acquire in it may still be written after its caller gave up (a
/// pipeline waiting for a reconnect): the round's undo, or NodeStates for a granted round,
/// releases it behind it.
async fn pipeline(link: Arc<Link>, batch: Vec<Job>, timeout: Duration) {
    let now = Instant::now();
    let bound = batch
        .iter()
        .map(|j| j.deadline)
        .max()
        .unwrap_or(now)
        .max(now + timeout);
    let sent =
        tokio::time::timeout_at(bound, async { send(&mut link.get().await?, &batch).await }).await;
    match sent {
        Ok(Ok(replies)) => {
            for (job, reply) in batch.into_iter().zip(replies) {
                let _ = job.reply.send(reply.map_err(Failed::cause));
            }
        }
        Ok(Err(cause)) => {
            for job in batch {
                let _ = job.reply.send(Err(cause.clone()));
            }
        }
        Err(_elapsed) => {
            for job in batch {
                let _ = job.reply.send(Err(NodeCause::Timeout));
            }
        }
    }
}
