//! The command line's own checks, in its own words: every rule the library would enforce on a
//! value that came from a flag is checked here first, so that the error names the flag and the
//! CLI's defaults (not the builder's method names and defaults).

use std::time::Duration;

use redquorum::config::{default_node_timeout, DEFAULT_DRIFT_FACTOR};
use redquorum::quorum;

use crate::exit::{self, Failure};

/// The fewest nodes `run` and `status` accept without `--allow-few-nodes`: below 3, a single
/// failed master stops every lock.
pub const MIN_NODES: usize = 3;

/// The node URLs as given (split on commas by clap), checked: no empty entry, at least
/// [`MIN_NODES`] unless `allow_few`. Returns them with the warning to print for an even count.
pub fn node_list(
    given: &[String],
    allow_few: bool,
) -> Result<(Vec<String>, Option<String>), Failure> {
    if given.iter().all(|u| u.trim().is_empty()) {
        return Err(Failure::new(
            exit::USAGE,
            "no Redis nodes: pass --nodes URL,URL,URL or set REDQUORUM_NODES",
        ));
    }
    // The URLs may carry passwords: entries are named by position, never shown.
    if let Some(i) = given.iter().position(|u| u.trim().is_empty()) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--nodes (or REDQUORUM_NODES) has an empty entry: entry {} of {} (a trailing, \
                 leading or doubled comma?); separate the node URLs with single commas",
                i + 1,
                given.len()
            ),
        ));
    }
    let urls: Vec<String> = given.iter().map(|u| u.trim().to_owned()).collect();
    let n = urls.len();
    if n < MIN_NODES && !allow_few {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--nodes lists {n} node{}: with fewer than {MIN_NODES} masters one failure stops \
                 every lock (a majority of {n} is {}); list 3 or 5 independent masters, or pass \
                 --allow-few-nodes to accept that",
                if n == 1 { "" } else { "s" },
                quorum::majority(n)
            ),
        ));
    }
    let warning =
        (n % 2 == 0).then(|| {
            format!(
            "warning: {n} nodes tolerate {} failed master{}, no more than {} would; prefer an odd \
             number (3 or 5)",
            quorum::tolerated_failures(n),
            if quorum::tolerated_failures(n) == 1 { "" } else { "s" },
            n - 1
        )
        });
    Ok((urls, warning))
}

/// `--namespace` and `--group`: non-empty, no `:`.
pub fn name(flag: &str, value: &str) -> Result<(), Failure> {
    if value.is_empty() || value.contains(':') {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "{flag} {value:?} must be non-empty and must not contain ':' (the Redis key is \
                 NAMESPACE:GROUP:KEY)"
            ),
        ));
    }
    Ok(())
}

/// `--key`: non-empty.
pub fn key(value: &str) -> Result<(), Failure> {
    if value.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            "--key is empty; name the resource you are locking",
        ));
    }
    Ok(())
}

/// `--owner`: non-empty when given.
pub fn owner(value: Option<&str>) -> Result<(), Failure> {
    if value == Some("") {
        return Err(Failure::new(
            exit::USAGE,
            "--owner is empty; leave it out for the default (HOSTNAME:PID) or give a label that \
             names this job",
        ));
    }
    Ok(())
}

/// `--node-timeout`: greater than zero.
pub fn node_timeout(value: Option<Duration>) -> Result<(), Failure> {
    if value.is_some_and(|t| t.is_zero()) {
        return Err(Failure::new(
            exit::USAGE,
            "--node-timeout must be greater than zero; leave it out for the default (TTL/200, \
             within 50ms..250ms)",
        ));
    }
    Ok(())
}

/// `--ttl` with `--node-timeout` (given or defaulted): at least 1 ms, at most a year, and long
/// enough to leave validity after the drift allowance and one node timeout.
pub fn ttl(ttl: Duration, node_timeout: Option<Duration>) -> Result<(), Failure> {
    if ttl < Duration::from_millis(1) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--ttl {ttl:?} is too short: it must be at least 1ms (Redis leases are whole \
                 milliseconds); the default is 30s"
            ),
        ));
    }
    if ttl > Duration::from_secs(86_400 * 365) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--ttl {ttl:?} is longer than a year: it bounds how long the lock outlives a \
                 crashed redquorum; the default is 30s"
            ),
        ));
    }
    let (timeout, which) = match node_timeout {
        Some(t) => (t, "--node-timeout"),
        None => (
            default_node_timeout(ttl),
            "node timeout (the default for this --ttl)",
        ),
    };
    if quorum::validity(ttl, timeout, DEFAULT_DRIFT_FACTOR).is_none() {
        let fix = if node_timeout.is_some() {
            "use a longer --ttl or a shorter --node-timeout"
        } else {
            "use a longer --ttl (the default is 30s)"
        };
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--ttl {ttl:?} leaves no time to act under the lock after the clock-drift \
                 allowance ({:?}) and one {which} ({timeout:?}); {fix}",
                quorum::drift(ttl, DEFAULT_DRIFT_FACTOR)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(str::to_owned).collect()
    }

    #[test]
    fn node_lists() {
        let ok = node_list(&list("redis://a:1,redis://b:1,redis://c:1"), false).expect("3");
        assert_eq!(ok.0.len(), 3);
        assert!(ok.1.is_none());
        let even = node_list(
            &list("redis://a:1,redis://b:1,redis://c:1,redis://d:1"),
            false,
        )
        .expect("4");
        assert!(even
            .1
            .expect("a warning")
            .contains("tolerate 1 failed master,"));
        let trailing = node_list(&list("redis://:pw@a:1,redis://b:1,redis://c:1,"), false)
            .expect_err("trailing comma");
        assert_eq!(trailing.code, exit::USAGE);
        assert!(trailing.message.contains("entry 4 of 4"), "{trailing}");
        assert!(!trailing.message.contains("pw"), "{trailing}");
        let two = node_list(&list("redis://a:1,redis://b:1"), false).expect_err("two");
        assert!(two.message.contains("--allow-few-nodes"), "{two}");
        assert!(node_list(&list("redis://a:1"), true).is_ok());
        assert!(node_list(&list(""), true)
            .expect_err("none")
            .message
            .contains("REDQUORUM_NODES"));
    }

    #[test]
    fn durations_speak_in_flags() {
        let ms = Duration::from_millis;
        let zero = ttl(Duration::ZERO, None).expect_err("zero");
        assert!(
            zero.message.contains("--ttl") && zero.message.contains("30s"),
            "{zero}"
        );
        let short = ttl(ms(10), None).expect_err("10ms");
        assert!(short.message.contains("longer --ttl"), "{short}");
        let both = ttl(ms(100), Some(ms(200))).expect_err("timeout above ttl");
        assert!(both.message.contains("shorter --node-timeout"), "{both}");
        assert!(ttl(Duration::from_secs(30), None).is_ok());
        assert!(node_timeout(Some(Duration::ZERO))
            .expect_err("zero")
            .message
            .contains("50ms..250ms"));
        assert!(name("--namespace", "a:b").is_err());
        assert!(key("").is_err());
        assert!(owner(Some("")).is_err());
    }
}
