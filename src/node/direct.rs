//! A request sent straight to its node's connection by the caller's own task, when the node
//! has nothing queued or in flight: one task hop less each way than through the node's sender
//! task (which keeps pipelining requests while the node is busy).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use redis::Value;
use tokio::time::Instant;

use super::cause::protocol;
use super::link::Link;
use super::op::{Failed, Op, Script};
use super::wire::{send, Request};
use crate::error::NodeCause;

/// How many requests to one node are not answered yet: queued for its sender task, in one of
/// its pipelines, or sent directly.
///
/// Only a hint for choosing the path: nothing relies on the order in which requests reach a
/// node (see `NodeStates`), so `Relaxed` suffices; a stale reading only sends one request
/// alone or queues one that could have gone alone.
#[derive(Debug, Default)]
pub(super) struct Load(AtomicUsize);

impl Load {
    /// Counts one more request (until the returned guard drops); true when the node had none.
    pub(super) fn count(self: &Arc<Self>) -> (Counted, bool) {
        let before = self.0.fetch_add(1, Ordering::Relaxed);
        (Counted(self.clone()), before == 0)
    }
}

/// One request counted in its node's [`Load`] until dropped.
#[derive(Debug)]
pub(super) struct Counted(Arc<Load>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request sent alone, by its caller.
struct Lone {
    op: Arc<Op>,
    deadline: Instant,
}

impl Request for Lone {
    fn op(&self) -> &Op {
        &self.op
    }

    /// As `Job::abandoned`; a caller that dropped its future dropped the acquire with it.
    fn abandoned(&self, now: Instant) -> bool {
        self.op.script() == Script::Acquire && self.deadline <= now
    }
}

/// `op` on `link`, run by the caller's task (which bounds it). Guarantees as through the
/// sender task: an acquire whose caller gave up is not sent (dropped before redis-rs' driver
/// took it, it is skipped there: nobody waits for its reply) nor resent after NOSCRIPT (its
/// future is dropped with it); any other request always goes out: dropped before its reply,
/// the rest of it is spawned and runs to its bound.
pub(super) struct Direct {
    rest: Option<BoxFuture<'static, Result<Value, NodeCause>>>,
    /// Whether the request must go on without its caller (all but acquires).
    keep: bool,
    /// Bounds the remainder once its caller is gone, like a pipeline of the sender task.
    deadline: Instant,
}

impl Direct {
    pub(super) fn new(link: Arc<Link>, op: Arc<Op>, timeout: Duration, counted: Counted) -> Self {
        let keep = op.script() != Script::Acquire;
        let deadline = Instant::now() + timeout;
        // Unbounded here: its caller bounds it (one timer per request, not two); a remainder
        // that outlives its caller gets the bound when it is spawned.
        let rest = async move {
            let _counted = counted;
            let lone = [Lone { op, deadline }];
            match send(&mut link.get().await?, &lone).await {
                Ok(mut replies) => replies
                    .pop()
                    .unwrap_or_else(|| Err(Failed::Cause(protocol("a reply is missing".into()))))
                    .map_err(Failed::cause),
                Err(cause) => Err(cause),
            }
        };
        Direct {
            rest: Some(rest.boxed()),
            keep,
            deadline,
        }
    }
}

impl Future for Direct {
    type Output = Result<Value, NodeCause>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(Err(protocol("a request was polled after its reply".into())));
        };
        let reply = ready!(rest.as_mut().poll(cx));
        self.rest = None;
        Poll::Ready(reply)
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let Some(rest) = self.rest.take() else {
            return;
        };
        if self.keep {
            // Without a runtime (it has shut down) the connection is gone with it anyway.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(tokio::time::timeout_at(self.deadline, rest).map(drop));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::keys::Keys;
    use crate::node::link::Identities;

    /// A real `redis-server` on a free loopback port, stopped on drop (the testkit sits
    /// outside the library's module map, so a unit test of the library starts its own). The
    /// binary is `$REDQUORUM_REDIS_SERVER` or `redis-server` on `PATH`, as for the testkit.
    struct Server(Child, u16);

    impl Server {
        async fn start() -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let binary =
                std::env::var("REDQUORUM_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let child = Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            let server = Server(child, port);
            let hang_guard = Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(Instant::now() < hang_guard, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            server
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A release whose caller gives up right after handing it to an idle node's connection
    /// still reaches the node, NOSCRIPT resend included: the rest of it runs on without the
    /// caller. (Dropped with its caller, it would not even be written: redis-rs skips a
    /// request whose reply nobody waits for any more.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_dropped_by_its_caller_still_goes_out_and_is_resent_after_noscript() {
        let server = Server::start().await;
        let url = format!("redis://127.0.0.1:{}/0", server.1);
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let ids = Arc::new(Identities::new(
            vec![Arc::from("n0")].into(),
            vec![Arc::from("n0")].into(),
        ));
        let timeout = Duration::from_secs(5);
        let link = Link::new(0, client, timeout, ids);
        link.get().await.expect("connected and identified");
        let value: Arc<str> = "ours".into();
        redis::cmd("SET")
            .arg("k")
            .arg(&*value)
            .exec_async(&mut raw)
            .await
            .expect("SET");
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec_async(&mut raw)
            .await
            .expect("SCRIPT FLUSH");

        let op = Arc::new(Op::release(&Keys::one("k".into(), None), &value, false));
        let load = Arc::new(Load::default());
        let (counted, idle) = load.count();
        assert!(idle);
        let mut direct = Direct::new(link, op, timeout, counted);
        // One poll hands the EVALSHA to the connection; then the caller gives up.
        assert!((&mut direct).now_or_never().is_none(), "no reply yet");
        drop(direct);

        let hang_guard = Instant::now() + Duration::from_secs(10);
        loop {
            let exists: i64 = redis::cmd("EXISTS")
                .arg("k")
                .query_async(&mut raw)
                .await
                .expect("EXISTS");
            if exists == 0 {
                break;
            }
            assert!(Instant::now() < hang_guard, "the release was never resent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Counted until the remainder ended.
        let hang_guard = Instant::now() + Duration::from_secs(10);
        while load.0.load(Ordering::Relaxed) != 0 {
            assert!(Instant::now() < hang_guard, "the request is still counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
