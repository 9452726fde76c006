//! Requests on a node's connection: one pipeline of them, their replies split per request,
//! and the scripts loaded again (and the requests that missed them resent) on NOSCRIPT.

use redis::Value;
use tokio::time::Instant;

use super::cause::{protocol, redis_cause};
use super::link::Conn;
use super::op::{Failed, Op, Script};
use crate::error::NodeCause;

/// A request as [`send`] sees it: its op, and whether it may still go out.
pub(super) trait Request {
    fn op(&self) -> &Op;

    /// Whether the request must not be sent (again) at `now`: an acquire whose caller gave up
    /// (see `Job::abandoned`).
    fn abandoned(&self, now: Instant) -> bool;
}

/// Sends `batch` as one pipeline and splits the replies per request. Requests that found
/// their script missing (a restarted node) are sent again after loading all four scripts, so
/// a node's script cache is only ever empty or full; later pipelines may run before the
/// resend (nothing relies on the order, see `NodeStates`).
pub(super) async fn send<R: Request>(
    conn: &mut Conn,
    batch: &[R],
) -> Result<Vec<Result<Value, Failed>>, NodeCause> {
    let mut replies = run(conn, batch.iter().map(Request::op)).await?;
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
        Ok(()) => run(conn, missing.iter().map(|&i| batch[i].op())).await,
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
