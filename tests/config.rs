//! Every bad builder input is a typed `Error::Config`, reported before any connection.
mod common;

use std::time::Duration;

use redquorum::{Error, RedLock};

async fn config_error(b: redquorum::RedLockBuilder) -> String {
    // Port 1 on loopback: any I/O would fail with a connection error, not a Config error.
    match b.build().await {
        Err(Error::Config { reason }) => reason,
        Err(other) => panic!("expected Config error, got {other:?}"),
        Ok(_) => panic!("expected Config error, got a RedLock"),
    }
}

fn nodes() -> redquorum::RedLockBuilder {
    RedLock::builder().nodes([
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:2",
        "redis://127.0.0.1:3",
    ])
}

#[tokio::test]
async fn every_config_error() {
    let empty: [&str; 0] = [];
    let cases: Vec<(redquorum::RedLockBuilder, &str)> = vec![
        (RedLock::builder(), "no nodes"),
        (RedLock::builder().nodes(empty), "no nodes"),
        (
            RedLock::builder().nodes(["redis://127.0.0.1:1", "redis://127.0.0.1:1"]),
            "more than once",
        ),
        (
            RedLock::builder().nodes(vec![String::from("nonsense")]),
            "not a valid Redis URL",
        ),
        (nodes().ttl(Duration::ZERO), "at least 1 ms"),
        (nodes().ttl(Duration::from_millis(22)), "leaves no validity"),
        (nodes().drift_factor(0.9), "drift_factor"),
        (nodes().node_timeout(Duration::ZERO), "node_timeout"),
        (
            nodes().node_timeout(Duration::from_secs(11)),
            "leaves no validity",
        ),
        (nodes().max_in_flight(0), "max_in_flight"),
        (nodes().connect_timeout(Duration::ZERO), "connect_timeout"),
        (nodes().safety_poll(Duration::ZERO), "safety_poll"),
        (nodes().namespace(""), "namespace"),
        (nodes().namespace("app:locks"), "must not contain ':'"),
        (nodes().owner(""), "owner"),
    ];
    for (builder, needle) in cases {
        let reason = config_error(builder).await;
        assert!(
            reason.contains(needle),
            "{reason:?} should mention {needle:?}"
        );
    }
}

#[tokio::test]
async fn config_errors_say_what_to_do() {
    let err = RedLock::builder().build().await.expect_err("no nodes");
    let msg = err.to_string();
    assert!(msg.starts_with("invalid configuration"), "{msg}");
    assert!(msg.contains(".nodes("), "{msg}");
    assert!(!err.is_retryable());
}

/// Log output of the current thread's tracing events while the returned guard lives.
fn capture_logs() -> (common::Log, tracing::subscriber::DefaultGuard) {
    let (log, subscriber) = common::log_subscriber("warn");
    (log, tracing::subscriber::set_default(subscriber))
}

// Current-thread runtime: `build()` logs on this thread, where the subscriber is the default.
#[tokio::test]
async fn an_even_number_of_nodes_is_allowed_but_logged_as_a_warning() {
    let c = common::cluster(4);
    for n in [3, 4] {
        let (log, _guard) = capture_logs();
        let locks = common::builder(&c)
            .nodes(c.urls().into_iter().take(n))
            .build()
            .await
            .unwrap_or_else(|e| panic!("{n} nodes are allowed: {e}"));
        assert_eq!(locks.nodes(), n);
        let text = String::from_utf8_lossy(&log.lock().expect("log")).into_owned();
        let warned = text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("even number of nodes"));
        assert_eq!(warned, n % 2 == 0, "{n} nodes logged:\n{text}");
    }
}
