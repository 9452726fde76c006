//! Node URLs carry passwords: no public type shows them (Debug, Display, error messages, log
//! fields), and a node that cannot be used says why, in one line that names it.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use redquorum::testkit::LocalCluster;
use redquorum::{Error, NodeCause, NodeFailure, Operation, RedLock};

const SECRET: &str = "hunter2-s3cret";

/// Every way a password can be written into a node URL.
fn secret_urls() -> Vec<String> {
    vec![
        format!("redis://:{SECRET}@10.0.0.1:6379"),
        format!("redis://app:{SECRET}@10.0.0.2:6379/3"),
        format!("rediss://app:{SECRET}@10.0.0.3:6380"),
        format!("redis+unix:///run/redis.sock?db=1&pass={SECRET}"),
        format!("unix:///run/redis2.sock?user=app&pass={SECRET}"),
    ]
}

fn assert_hidden(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password: {text}");
    assert!(
        !text.contains("hunter2"),
        "{what} shows the password: {text}"
    );
}

fn cluster_with_password(n: usize) -> LocalCluster {
    LocalCluster::builder()
        .nodes(n)
        .requirepass(SECRET)
        .start()
        .unwrap_or_else(|e| panic!("cannot start {n} redis-server processes: {e}"))
}

#[test]
fn the_builder_never_shows_a_password() {
    let builder = RedLock::builder().nodes(secret_urls());
    assert_hidden("RedLockBuilder Debug", &format!("{builder:?}"));
    assert_hidden("RedLockBuilder Debug (alternate)", &format!("{builder:#?}"));
    // Still says which nodes it has.
    let shown = format!("{builder:?}");
    assert!(
        shown.contains("10.0.0.2:6379/3") && shown.contains("/run/redis.sock"),
        "{shown}"
    );
}

#[tokio::test]
async fn config_errors_never_show_a_password() {
    let bad = [
        // Not a number where the database goes.
        format!("redis+unix:///run/redis.sock?db=x&pass={SECRET}"),
        format!("redis+unix:///run/redis.sock?pass={SECRET}&protocol=9"),
        format!("redis://:{SECRET}@10.0.0.1:6379/notadb"),
        format!("redis://:{SECRET}@0.0.0.0:6379"),
        format!("http://:{SECRET}@10.0.0.1"),
        format!("redis:// :{SECRET}@bad host"),
        SECRET.to_owned(),
    ];
    for url in bad {
        let err = RedLock::builder()
            .nodes([url.as_str()])
            .build()
            .await
            .expect_err("unusable URL");
        assert!(matches!(err, Error::Config { .. }), "{url}: {err:?}");
        assert_hidden("Error::Config Display", &err.to_string());
        assert_hidden("Error::Config Debug", &format!("{err:?}"));
    }
    // Listed twice: both named, neither with its password.
    let twice = format!("redis://u:{SECRET}@10.0.0.1:6379");
    let err = RedLock::builder()
        .nodes([twice.as_str(), twice.as_str(), "redis://10.0.0.2:6379"])
        .build()
        .await
        .expect_err("listed twice");
    assert_hidden("duplicate node error", &err.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_never_shows_a_password() {
    let c = cluster_with_password(3);
    let locks = common::builder(&c).build().await.expect("build");
    assert_hidden("RedLock Debug", &format!("{locks:?}"));
    let group = locks.group("g").expect("group");
    assert_hidden("RedLock group Debug", &format!("{group:#?}"));
    let guard = locks.try_acquire("k").await.expect("ok").expect("free");
    assert_hidden("LockGuard Debug", &format!("{guard:?}"));
    guard.release().await.expect("release");
}

#[test]
fn the_testkit_never_shows_a_password() {
    let builder = LocalCluster::builder().nodes(1).requirepass(SECRET);
    assert_hidden("LocalClusterBuilder Debug", &format!("{builder:?}"));
    let c = builder.start().expect("start");
    assert_hidden("LocalCluster Debug", &format!("{c:?}"));
}

/// A server that answers anything with an HTTP error page.
fn not_redis() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let page = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>no</html>\r\n";
                if conn.write_all(page).is_err() {
                    return;
                }
                let mut buf = [0u8; 512];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (port, t)
}

/// A port where nothing listens (the connection is refused).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The causes of a 5-node `build()` in which no node is usable.
async fn connect_failures(urls: &[String]) -> (Error, Vec<NodeFailure>) {
    let err = RedLock::builder()
        .nodes(urls)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .await
        .expect_err("no node is usable");
    let causes = match &err {
        Error::NoQuorum {
            op: Operation::Connect,
            answered: 0,
            required: 3,
            nodes: 5,
            causes,
            ..
        } => causes.clone(),
        other => panic!("expected NoQuorum on connect, got {other:?}"),
    };
    (err, causes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_node_says_in_one_line_what_to_check() {
    let c = cluster_with_password(2);
    let (garbage, _server) = not_redis();
    let refused = closed_port();
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let urls = vec![
        format!(
            "redis://:wrong-{SECRET}@127.0.0.1:{}",
            c.port(0).expect("port")
        ),
        format!("redis://127.0.0.1:{}", c.port(1).expect("port")),
        format!("redis://127.0.0.1:{garbage}"),
        format!("redis://127.0.0.1:{refused}"),
        format!("redis://127.0.0.1:{silent_port}"),
    ];
    let (err, causes) = connect_failures(&urls).await;
    assert_eq!(causes.len(), 5, "one cause per failed node: {causes:#?}");
    let msg = err.to_string();
    assert_hidden("NoQuorum Display", &msg);
    assert_hidden("NoQuorum Debug", &format!("{err:?}"));
    assert!(
        !msg.contains("check that a majority of the Redis masters is reachable"),
        "generic advice instead of each node's: {msg}"
    );
    let cause_of = |port: u16| -> &NodeFailure {
        let node = format!("127.0.0.1:{port}/0");
        causes
            .iter()
            .find(|f| f.node == node)
            .unwrap_or_else(|| panic!("no cause for {node}: {causes:#?}"))
    };
    let expect = [
        (c.port(0).expect("port"), "authentication failed"),
        (c.port(1).expect("port"), "authentication failed"),
        (garbage, "not a Redis server"),
        (refused, "connection refused"),
        (silent_port, "timed out"),
    ];
    for (port, what) in expect {
        let failure = cause_of(port);
        let line = failure.to_string();
        assert!(!line.contains('\n'), "more than one line: {line:?}");
        assert!(
            line.starts_with(&failure.node),
            "does not name its node: {line}"
        );
        assert!(line.contains(what), "{line:?} should say {what:?}");
        assert!(
            msg.contains(&line),
            "the error does not list {line:?}: {msg}"
        );
    }
    let port = |i| c.port(i).expect("port");
    assert!(matches!(cause_of(port(0)).cause, NodeCause::Auth(_)));
    assert!(matches!(cause_of(port(1)).cause, NodeCause::Auth(_)));
    assert!(matches!(cause_of(garbage).cause, NodeCause::NotRedis(_)));
    assert_eq!(cause_of(refused).cause, NodeCause::Refused);
    assert_eq!(cause_of(silent_port).cause, NodeCause::Timeout);
    drop(silent);
}

/// Log output of this test binary, for the test that looks for passwords in it.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_fields_never_show_a_password() {
    let log = captured();
    let c = cluster_with_password(3);
    let mut urls = c.urls();
    // One node with a wrong password: its failures are logged (at startup and per round).
    urls[2] = format!(
        "redis://:wrong-{SECRET}@127.0.0.1:{}",
        c.port(2).expect("port")
    );
    let locks = RedLock::builder()
        .nodes(&urls)
        .build()
        .await
        .expect("a majority has the right password");
    let guard = locks.try_acquire("k").await.expect("ok").expect("free");
    guard.release().await.expect("release");
    let text = String::from_utf8_lossy(
        &log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(
        text.contains(&format!("127.0.0.1:{}", c.port(2).expect("port"))),
        "the failing node is not named in the log: {text}"
    );
    assert_hidden("the log", &text);
}

/// A `pass=` value of a `redis+unix://` URL that contains `@` (review finding: redaction cut
/// at the last `@` of the whole URL and showed the password's tail): URLs are shown rebuilt
/// from what was parsed, never cut out of the text.
#[tokio::test]
async fn a_unix_password_with_an_at_sign_is_never_shown() {
    let url = "redis+unix:///run/redis.sock?db=1&pass=ab@hunter2-s3cret";
    let builder = RedLock::builder().nodes([url]);
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("hunter2-s3cret"),
        "builder Debug shows the password: {shown}"
    );

    // The same redaction is used in config errors (an unparsable db makes it one).
    let bad = "redis+unix:///run/redis.sock?db=x&pass=ab@hunter2-s3cret";
    let err = RedLock::builder()
        .nodes([bad, "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
        .build()
        .await
        .expect_err("db=x is not a database number");
    let msg = err.to_string();
    assert!(
        !msg.contains("hunter2-s3cret"),
        "config error shows the password: {msg}"
    );
}
