//! A lock's identity in the local queue: key names may hold any character (newlines, `:`, the
//! namespace prefix, NUL), and no choice of names may make one lock join another's queue and
//! inherit its grant in a local hand-off.
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use redquorum::{LockGuard, RedLock};

/// Pieces that key names are made of: the separators an identity could be built with, and the
/// namespace and group prefix every Redis key starts with.
const PIECES: &[&str] = &["a", "b", "\n", ":", ",", "\0", "redquorum:default:", " "];

/// Takes `request` (one key, or a set) on `locks`, waiting up to 20 s.
async fn take(locks: &RedLock, request: &[String]) -> LockGuard {
    let keys: Vec<&str> = request.iter().map(String::as_str).collect();
    let ctx = ctx(20_000);
    let got = match &keys[..] {
        [one] => locks.acquire(&ctx, one).await,
        many => locks.acquire_many(&ctx, many).await,
    };
    got.unwrap_or_else(|e| panic!("acquire {request:?}: {e}"))
}

/// While `guard` (for `request`) is alive, another client must be refused each of its keys.
async fn assert_excludes(other: &RedLock, request: &[String], guard: &LockGuard) {
    for key in request {
        let theirs = other.try_acquire(key).await.expect("try_acquire");
        assert!(
            guard.validity() == Duration::ZERO || theirs.is_none(),
            "two holders of {key:?}: our guard for {request:?} (validity {:?}) and another client's",
            guard.validity()
        );
        if let Some(g) = theirs {
            g.release().await.expect("release");
        }
    }
}

/// One local holder and queued local waiters for `requests` on `a` (the holder takes
/// `requests[0]`), handed on in queue order; every grant is checked against client `b`.
async fn run_round(a: &RedLock, b: &RedLock, requests: Vec<Vec<String>>) {
    let first = take(a, &requests[0]).await;
    let mut waiters = Vec::new();
    for request in &requests[1..] {
        let (a, b, request) = (a.clone(), b.clone(), request.clone());
        waiters.push(tokio::spawn(async move {
            let guard = take(&a, &request).await;
            assert_excludes(&b, &request, &guard).await;
            guard.release().await.expect("release");
        }));
    }
    // On a current-thread runtime every spawned waiter runs up to its place in its local queue
    // (or its first Redis request) at the first yield, so the holder lets go with them queued.
    tokio::task::yield_now().await;
    assert_excludes(b, &requests[0], &first).await;
    drop(first);
    for w in waiters {
        w.await.expect("a waiter failed its check");
    }
}

#[tokio::test]
async fn a_key_named_like_a_set_is_not_handed_the_set() {
    let c = cluster(3);
    let (a, b) = (locks(&c).await, locks(&c).await);
    // The set's keys joined by a newline, with the prefix that the second key gets in Redis.
    let lookalike = "a\nredquorum:default:b".to_owned();
    let set = vec!["a".to_owned(), "b".to_owned()];
    run_round(&a, &b, vec![set, vec![lookalike]]).await;
}

/// A small deterministic generator (the test must be repeatable; the seed is printed).
struct Gen(fastrand::Rng);

impl Gen {
    fn key(&mut self) -> String {
        (0..self.0.usize(1..=4))
            .map(|_| PIECES[self.0.usize(..PIECES.len())])
            .collect()
    }

    /// A request: a single key, a set, or a single key spelled like a set's identity.
    fn request(&mut self, sets: &[Vec<String>]) -> Vec<String> {
        match self.0.u8(..3) {
            0 => vec![self.key()],
            1 if !sets.is_empty() => {
                let set = &sets[self.0.usize(..sets.len())];
                let sep = ["\n", ",", "\0", ""][self.0.usize(..4)];
                vec![set.join(&format!("{sep}redquorum:default:"))]
            }
            _ => {
                let keys: BTreeSet<String> = (0..self.0.usize(2..=3)).map(|_| self.key()).collect();
                keys.into_iter().collect()
            }
        }
    }
}

/// Property: whatever the key names, two clients never both hold a key (arbitrary bytes in
/// key names, single keys and sets in one process's queue, hand-offs between them).
#[tokio::test]
async fn two_clients_never_both_hold_a_key_whatever_its_name() {
    let c = cluster(3);
    let (a, b) = (locks(&c).await, locks(&c).await);
    let seed = std::env::var("IDENTITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("IDENTITY_SEED={seed}");
    let mut gen = Gen(fastrand::Rng::with_seed(seed));
    for _ in 0..40 {
        let mut requests: Vec<Vec<String>> = Vec::new();
        for _ in 0..gen.0.usize(2..=4) {
            let sets: Vec<Vec<String>> = requests.iter().filter(|r| r.len() > 1).cloned().collect();
            requests.push(gen.request(&sets));
        }
        // Put the set first so a lookalike queues behind it.
        requests.sort_by_key(|r| std::cmp::Reverse(r.len()));
        run_round(&a, &b, requests).await;
    }
    assert!(wait_until_no_keys(&c, HANG_GUARD).await.is_empty());
}
