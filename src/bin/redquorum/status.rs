//! `redquorum status`: a lock as each master sees it and as a quorum sees it.

use std::collections::HashMap;
use std::time::Duration;

use redquorum::config::DEFAULT_TTL;
use redquorum::RedLock;

use crate::check;
use crate::cli::StatusArgs;
use crate::exit::{self, Failure};
use crate::probe::{node_label, read_node};

/// Bound on connecting to and reading from one node.
const NODE_READ_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn status(args: StatusArgs) -> Result<i32, Failure> {
    let urls = args.nodes.urls()?;
    check::key(&args.key)?;
    let mut builder = RedLock::builder()
        .nodes(&urls)
        .namespace(args.nodes.namespace.as_str());
    if let Some(timeout) = args.nodes.node_timeout {
        // `status` takes no lease, so it has no --ttl: the builder's is only made long enough
        // for any --node-timeout (its own rule would otherwise speak of a TTL nobody gave).
        builder = builder
            .node_timeout(timeout)
            .ttl(DEFAULT_TTL.max(timeout * 2 + Duration::from_secs(1)));
    }
    builder = args.nodes.tls.apply(builder)?;
    let locks = builder
        .build()
        .await
        .map_err(exit::connect_failure)?
        .group(&args.nodes.group)?;
    let key = args.key.as_str();
    let redis_key = locks.redis_key(key)?;
    let fence_key = locks.fence_key(key)?;

    let views = futures::future::join_all(urls.iter().map(|url| {
        let (redis_key, fence_key) = (redis_key.as_str(), fence_key.as_str());
        read_node(url, redis_key, fence_key, NODE_READ_TIMEOUT)
    }))
    .await;
    let quorum_view = locks.owner(key).await;

    println!("lock       {key}");
    println!("redis key  {redis_key} (fencing counter {fence_key})");
    println!("quorum     {} of {} nodes", locks.quorum(), locks.nodes());
    println!();
    let mut rows = vec![[
        "NODE".to_owned(),
        "HOLDER".to_owned(),
        "VALUE".to_owned(),
        "LEASE LEFT".to_owned(),
        "FENCE".to_owned(),
    ]];
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut errors = Vec::new();
    for (url, view) in urls.iter().zip(&views) {
        let node = node_label(url);
        match view {
            Ok(v) => {
                if let Some(value) = &v.value {
                    *counts.entry(value.as_str()).or_default() += 1;
                }
                let (id, holder) = match &v.value {
                    Some(value) => match value.split_once(':') {
                        Some((id, owner)) => (short(id), owner.to_owned()),
                        None => (short(value), "?".to_owned()),
                    },
                    None => ("-".to_owned(), "-".to_owned()),
                };
                let fence = v.fence.map_or_else(|| "-".to_owned(), |f| f.to_string());
                rows.push([node, holder, id, lease_left(v.pttl), fence]);
            }
            Err(failed) => {
                errors.push(format!("{node}: {}", failed.detail));
                let blank = || "?".to_owned();
                rows.push([node, failed.label.to_owned(), blank(), blank(), blank()]);
            }
        }
    }
    print_table(&rows);
    for error in errors {
        println!("  {error}");
    }
    println!();
    match quorum_view {
        Ok(Some(owner)) => {
            let on = counts.values().max().copied().unwrap_or(0);
            println!(
                "held by {owner} (its value is on {on} of {} nodes; a majority is {})",
                locks.nodes(),
                locks.quorum()
            );
            Ok(0)
        }
        Ok(None) => {
            println!("free: no value is on a majority of the nodes");
            Ok(exit::FREE)
        }
        Err(e) => Err(e.into()),
    }
}

/// The first 8 characters of an acquisition's id: enough to tell holders apart.
fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

fn lease_left(pttl: i64) -> String {
    match pttl {
        -2 => "-".to_owned(),
        -1 => "no expiry!".to_owned(),
        ms if ms < 1_000 => format!("{ms}ms"),
        ms => format!("{:.1}s", ms as f64 / 1000.0),
    }
}

fn print_table(rows: &[[String; 5]]) {
    let mut widths = [0usize; 5];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_leases() {
        assert_eq!(lease_left(-2), "-");
        assert_eq!(lease_left(999), "999ms");
        assert_eq!(lease_left(29_140), "29.1s");
        assert_eq!(short("0123456789abcdef"), "01234567");
    }
}
