//! A node's URL: parsed and checked before any I/O, and shown without its credentials.

use std::sync::Arc;

use redis::Client;

use super::cause::one_line;

/// A parsed node URL: what the builder validates before any I/O.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) client: Client,
    /// `host:port/db`, never the credentials: used in errors and logs.
    pub(crate) addr: Arc<str>,
    /// `host:port` (or the socket's path): one server, whatever the database.
    pub(crate) server: Arc<str>,
    /// The URL as given, with every credential replaced (see [`redact`]).
    pub(crate) shown: Arc<str>,
}

impl NodeSpec {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let shown = redact(url);
        // Refused here rather than left to the redis crate, whose TLS support other crates in
        // the build may turn on: this crate's TLS features also set up the TLS backend.
        let tls = url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"));
        if tls && !cfg!(any(feature = "tls-rustls", feature = "tls-native-tls")) {
            return Err(format!(
                "node URL {shown:?} asks for TLS, but redquorum was built without it; enable \
                 its `tls-rustls` feature (or `tls-native-tls`) in your Cargo.toml, or \
                 `--features tls-rustls` when installing the CLI"
            ));
        }
        let client = Client::open(url).map_err(|e| {
            // redis' message names the part that is wrong, never the URL itself.
            let why = one_line(&e.to_string());
            format!(
                "node URL {shown:?} is not a valid Redis URL ({why}); use \
                 redis://[user:password@]host:port[/db], rediss:// for TLS or \
                 redis+unix:///path?db=N&pass=..."
            )
        })?;
        let info = client.get_connection_info();
        let server: Arc<str> = info.addr().to_string().into();
        let addr = format!("{server}/{}", info.redis_settings().db()).into();
        Ok(NodeSpec {
            client,
            addr,
            server,
            shown: shown.into(),
        })
    }
}

/// A node URL for messages, Debug output and logs, rebuilt from what the redis crate parsed
/// rather than cut out of the text (a password may hold `@`, `/`, `?` or `#`): the scheme,
/// `***@` where there are credentials, the address and the database. Text that does not parse
/// as a Redis URL is not shown beyond its scheme.
pub(crate) fn redact(url: &str) -> String {
    let scheme = url.find("://").map_or("", |s| &url[..s + 3]);
    // Without a TLS feature redis refuses rediss:// URLs: the same URL as redis:// parses the
    // same way (only the scheme differs), so its parts can still be shown.
    let parsed = match url.strip_prefix("rediss://") {
        Some(rest) => Client::open(format!("redis://{rest}")),
        None => Client::open(url),
    };
    let Ok(client) = parsed else {
        return format!("{scheme}*** (not shown: it does not parse, and may hold a password)");
    };
    let info = client.get_connection_info();
    let settings = info.redis_settings();
    let creds = if settings.username().is_some() || settings.password().is_some() {
        "***@"
    } else {
        ""
    };
    let (addr, db) = (info.addr(), settings.db());
    match addr {
        redis::ConnectionAddr::Unix(_) => format!("{scheme}{addr}?db={db}{}", {
            if creds.is_empty() {
                ""
            } else {
                "&pass=***"
            }
        }),
        _ => format!("{scheme}{creds}{addr}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("redis://user:secret@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379/0");
        // A password holding the characters a URL is cut at.
        for pw in ["a@b", "a/b@c", "a?b#c@d"] {
            let shown = redact(&format!("redis+unix:///run/r.sock?db=1&pass={pw}"));
            assert_eq!(shown, "redis+unix:///run/r.sock?db=1&pass=***");
            let shown = redact(&format!("redis://:{pw}@h:1/2"));
            assert!(!shown.contains(pw) && !shown.contains('b'), "{shown}");
        }
        assert!(!redact("redis://:pw@h:notaport").contains("pw"));
        // TLS URLs, with or without a TLS feature built in.
        assert_eq!(
            redact("rediss://app:s3cret@10.0.0.1:6380/1"),
            "rediss://***@10.0.0.1:6380/1"
        );
    }

    #[cfg(not(any(feature = "tls-rustls", feature = "tls-native-tls")))]
    #[test]
    fn tls_urls_without_a_tls_feature_name_the_feature() {
        let err = NodeSpec::parse("rediss://:s3cret@10.0.0.1:6380").expect_err("no TLS built in");
        assert!(
            err.contains("tls-rustls") && err.contains("rediss://***@10.0.0.1:6380/0"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn parse_names_nodes_without_credentials() {
        let spec = NodeSpec::parse("redis://:pw@127.0.0.1:7001/3").expect("valid url");
        assert_eq!(&*spec.addr, "127.0.0.1:7001/3");
        let err = NodeSpec::parse("http://:pw@nowhere").expect_err("not redis");
        assert!(
            err.contains("not a valid Redis URL") && !err.contains("pw"),
            "{err}"
        );
    }
}
