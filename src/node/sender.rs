//! A node's sender task: the requests queued for the node go out together, in pipelines.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::cause::{protocol, redis_cause};
use super::link::{Conn, Link};
use super::op::{Failed, Op, Script};
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
}

impl Job {
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
/// pipeline. With one caller a request goes out at once; with many, those that arrive while
/// pipelines are out go together in the next (fewer syscalls and wake-ups on both sides). Up to
/// [`MAX_PIPELINES`] are out at once (more for a slow node, so its round trip does not queue
/// requests behind it); each is polled for the first time before the next is made, so they
/// enter the connection in queue order (except across a reconnect or a NOSCRIPT
/// resend: nothing relies on the order, see `NodeStates`). Ends when the `Nodes` is dropped, after the pipelines that are out.
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

/// Sends `batch` as one pipeline and splits the replies per request. Requests that found
/// their script missing (a restarted node) are sent again after loading all four scripts, so
/// a node's script cache is only ever empty or full; later pipelines may run before the
/// resend (nothing relies on the order, see `NodeStates`).
async fn send(conn: &mut Conn, batch: &[Job]) -> Result<Vec<Result<Value, Failed>>, NodeCause> {
    let mut replies = run(conn, batch.iter().map(|j| &*j.op)).await?;
    let mut missing: Vec<usize> = (0..batch.len())
        .filter(|&i| matches!(replies[i], Err(Failed::NoScript)))
        .collect();
    if missing.is_empty() {
        return Ok(replies);
    }
    let mut load = redis::pipe();
    for script in Script::ALL {
        load.cmd("SCRIPT").arg("LOAD").arg(script.source());
    }
    // A failed load fails only the requests that needed it (all replies are delivered once
    // this returns, and all fail as timed out if the pipeline's bound passes first).
    let loaded = load.query_async::<()>(conn).await;
    // Checked again now, right before the resend: the round's undo may have passed this node
    // while the scripts loaded.
    let now = Instant::now();
    missing.retain(|&i| {
        let abandoned = batch[i].abandoned(now);
        if abandoned {
            replies[i] = Err(Failed::Cause(NodeCause::Timeout));
        }
        !abandoned
    });
    let again = match loaded {
        Ok(()) if missing.is_empty() => Ok(Vec::new()),
        Ok(()) => run(conn, missing.iter().map(|&i| &*batch[i].op)).await,
        Err(e) => Err(redis_cause(&e)),
    };
    match again {
        Ok(again) => {
            for (&i, reply) in missing.iter().zip(again) {
                replies[i] = reply;
            }
        }
        Err(cause) => {
            for &i in &missing {
                replies[i] = Err(Failed::Cause(cause.clone()));
            }
        }
    }
    Ok(replies)
}

/// One pipeline of `ops`' commands (a lone command is sent as such); one reply per op (a
/// command's error fails only its op).
async fn run<'a>(
    conn: &mut Conn,
    ops: impl ExactSizeIterator<Item = &'a Op> + Clone,
) -> Result<Vec<Result<Value, Failed>>, NodeCause> {
    let count: usize = ops.clone().map(Op::commands).sum();
    if count == 1 {
        let mut ops = ops;
        let Some(op) = ops.next() else {
            return Ok(Vec::new());
        };
        let mut cmds = op.cmds();
        let Some(cmd) = cmds.next() else {
            return Ok(Vec::new());
        };
        let value = match cmd.query_async::<Value>(conn).await {
            Ok(v) => Ok(v),
            // A server's error reply fails the request; anything else, the connection.
            Err(e) => match redis::ServerError::try_from(e) {
                Ok(server) => Err(Failed::from_server(&server)),
                Err(e) => return Err(redis_cause(&e)),
            },
        };
        let mut value = Some(value);
        return Ok(vec![op.reply(|| {
            value
                .take()
                .unwrap_or_else(|| Err(Failed::Cause(protocol("a reply is missing".into()))))
        })]);
    }
    let mut pipe = redis::Pipeline::with_capacity(count);
    pipe.ignore_errors();
    for op in ops.clone() {
        for cmd in op.cmds() {
            pipe.add_command(cmd);
        }
    }
    let values: Vec<Value> = pipe.query_async(conn).await.map_err(|e| redis_cause(&e))?;
    if values.len() != count {
        return Err(protocol(format!(
            "{} replies to {count} commands",
            values.len()
        )));
    }
    let mut values = values.into_iter();
    Ok(ops
        .map(|op| {
            op.reply(|| match values.next() {
                Some(Value::ServerError(e)) => Err(Failed::from_server(&e)),
                Some(v) => Ok(v),
                None => Err(Failed::Cause(protocol(
                    "a pipeline reply is missing".into(),
                ))),
            })
        })
        .collect())
}
