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
        let client = Client::open(url).map_err(|e| {
            if url.starts_with("rediss://") && e.to_string().contains("TLS") {
                return format!(
                    "node URL {shown:?} asks for TLS but the redis crate was built without it; add \
                     `redis = {{ version = \"1\", features = [\"tokio-rustls-comp\"] }}` (or \
                     \"tokio-native-tls-comp\") to your Cargo.toml"
                );
            }
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
    let Ok(client) = Client::open(url) else {
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
