//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (the `metrics` cargo
//! feature): the application installs a recorder (Prometheus, StatsD, OpenTelemetry, ...) and
//! these calls feed it; without the feature every function here is empty and compiles away.
//! Names and labels are listed in the README ("Metrics"); node labels are addresses without
//! credentials.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, NodeCause};

/// The metric names, in one place (the README's table lists the same).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) mod name {
    pub(crate) const ACQUISITIONS: &str = "redquorum_acquisitions_total";
    pub(crate) const ACQUIRE_WAIT: &str = "redquorum_acquire_wait_seconds";
    pub(crate) const GRANT_VALIDITY: &str = "redquorum_grant_validity_seconds";
    pub(crate) const NODE_REQUEST: &str = "redquorum_node_request_seconds";
    pub(crate) const NODE_FAILURES: &str = "redquorum_node_failures_total";
    pub(crate) const RELEASES: &str = "redquorum_releases_total";
    pub(crate) const LEASES_LOST: &str = "redquorum_leases_lost_total";
    pub(crate) const PUBSUB_RECONNECTS: &str = "redquorum_pubsub_reconnects_total";
}

/// The `outcome` label of an acquisition: `granted`, `busy` (a `try_acquire` that found the
/// lock held), `timeout`, `retries_exhausted`, `cancelled`, `no_quorum` or `error`.
pub(crate) fn outcome<T>(result: Result<Option<T>, &Error>) -> &'static str {
    match result {
        Ok(Some(_)) => "granted",
        Ok(None) => "busy",
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::RetriesExhausted { .. }) => "retries_exhausted",
        Err(Error::Cancelled { .. }) => "cancelled",
        Err(Error::NoQuorum { .. }) => "no_quorum",
        Err(_) => "error",
    }
}

/// The `cause` label of a node failure.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn cause(cause: &NodeCause) -> &'static str {
    match cause {
        NodeCause::Timeout => "timeout",
        NodeCause::Refused => "refused",
        NodeCause::Auth(_) => "auth",
        NodeCause::NotRedis(_) => "not_redis",
        NodeCause::Duplicate { .. } => "duplicate",
        NodeCause::Redis(_) => "redis",
        NodeCause::Protocol(_) => "protocol",
    }
}

#[cfg(feature = "metrics")]
mod on {
    use super::*;

    /// Describes every metric once per process (units and help texts for exporters).
    pub(crate) fn describe() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use metrics::{describe_counter, describe_histogram, Unit};
            describe_counter!(name::ACQUISITIONS, "Acquisitions by outcome.");
            describe_histogram!(
                name::ACQUIRE_WAIT,
                Unit::Seconds,
                "Time from the call to the grant or the give-up, by outcome."
            );
            describe_histogram!(
                name::GRANT_VALIDITY,
                Unit::Seconds,
                "Validity left when a lock was granted."
            );
            describe_histogram!(
                name::NODE_REQUEST,
                Unit::Seconds,
                "Latency of the requests each node answered."
            );
            describe_counter!(name::NODE_FAILURES, "Node requests that failed, by cause.");
            describe_counter!(
                name::RELEASES,
                "Releases by path: handed to a local waiter, or through Redis."
            );
            describe_counter!(
                name::LEASES_LOST,
                "Leases whose lost signal fired for a loss."
            );
            describe_counter!(
                name::PUBSUB_RECONNECTS,
                "Release-notification connections lost and re-established."
            );
        });
    }

    pub(crate) fn acquisition(outcome: &'static str, waited: Duration) {
        metrics::counter!(name::ACQUISITIONS, "outcome" => outcome).increment(1);
        metrics::histogram!(name::ACQUIRE_WAIT, "outcome" => outcome).record(waited);
    }

    pub(crate) fn granted(validity: Duration) {
        metrics::histogram!(name::GRANT_VALIDITY).record(validity);
    }

    /// `node` is shared into the label, not copied: this runs for every request to every node.
    pub(crate) fn node_request(node: &Arc<str>, took: Duration, failure: Option<&NodeCause>) {
        match failure {
            None => metrics::histogram!(name::NODE_REQUEST, "node" => node.clone()).record(took),
            Some(c) => metrics::counter!(
                name::NODE_FAILURES, "node" => node.clone(), "cause" => cause(c)
            )
            .increment(1),
        }
    }

    pub(crate) fn release(local: bool) {
        let path = if local { "local" } else { "redis" };
        metrics::counter!(name::RELEASES, "path" => path).increment(1);
    }

    pub(crate) fn lease_lost() {
        metrics::counter!(name::LEASES_LOST).increment(1);
    }

    pub(crate) fn pubsub_reconnect(node: &Arc<str>) {
        metrics::counter!(name::PUBSUB_RECONNECTS, "node" => node.clone()).increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use super::*;

    pub(crate) fn describe() {}
    pub(crate) fn acquisition(_outcome: &'static str, _waited: Duration) {}
    pub(crate) fn granted(_validity: Duration) {}
    pub(crate) fn node_request(_node: &Arc<str>, _took: Duration, _failure: Option<&NodeCause>) {}
    pub(crate) fn release(_local: bool) {}
    pub(crate) fn lease_lost() {}
    pub(crate) fn pubsub_reconnect(_node: &Arc<str>) {}
}

pub(crate) use on::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_causes_have_fixed_labels() {
        assert_eq!(outcome(Ok(Some(()))), "granted");
        assert_eq!(outcome::<()>(Ok(None)), "busy");
        let cancelled = Error::Cancelled { key: "k".into() };
        assert_eq!(outcome::<()>(Err(&cancelled)), "cancelled");
        assert_eq!(cause(&NodeCause::Timeout), "timeout");
        assert_eq!(cause(&NodeCause::Auth("WRONGPASS".into())), "auth");
    }
}
