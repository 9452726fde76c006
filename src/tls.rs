//! TLS settings for `rediss://` nodes: which certificate authorities to trust and, for mutual
//! TLS, the client's own certificate. Built with the `tls-rustls` or `tls-native-tls` feature.

use redis::{Client, ClientTlsConfig, TlsCertificates};

use crate::error::Error;
use crate::node::NodeSpec;

/// The builder's TLS options. `Debug` shows whether each is set, never the key.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    /// PEM CA certificates that replace the system's trust store.
    pub(crate) root_certs: Option<Vec<u8>>,
    /// PEM certificate chain and private key presented to the servers.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field(
                "root_certs",
                &self
                    .root_certs
                    .as_ref()
                    .map(|pem| format!("{} certificate(s)", pem_count(pem))),
            )
            .field("client_cert", &self.client.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How many certificates a PEM text holds (for `Debug`).
fn pem_count(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

impl Tls {
    fn is_set(&self) -> bool {
        self.root_certs.is_some() || self.client.is_some()
    }

    /// `spec` with the certificates applied to its client: every node must use `rediss://`
    /// when any are given (a plain node would send its password in the clear).
    pub(crate) fn apply(&self, mut spec: NodeSpec) -> Result<NodeSpec, Error> {
        let tls_node = matches!(
            spec.client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        );
        if tls_node {
            install_crypto_provider();
        }
        if !self.is_set() {
            return Ok(spec);
        }
        if !tls_node {
            return Err(Error::config(format!(
                "node {} does not use TLS, but TLS certificates were given (tls_root_certs or \
                 tls_client_cert); write its URL as rediss://host:port so that it is encrypted \
                 like the others",
                spec.shown
            )));
        }
        if let Some(pem) = &self.root_certs {
            if pem_count(pem) == 0 {
                return Err(Error::config(
                    "tls_root_certs holds no PEM certificate (no -----BEGIN CERTIFICATE----- \
                     line); give it the contents of your CA's .pem or .crt file",
                ));
            }
        }
        let certs = TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.root_certs.clone(),
        };
        spec.client = Client::build_with_tls(spec.client.get_connection_info().clone(), certs)
            .map_err(|e| {
                // redis' message names the PEM that does not parse, never its contents.
                Error::config(format!(
                    "the TLS certificates for node {} are not usable ({e}); give \
                     tls_root_certs the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----) \
                     and tls_client_cert a PEM certificate chain and its PKCS#8 private key",
                    spec.shown
                ))
            })?;
        Ok(spec)
    }
}

/// rustls needs a process-wide crypto provider; when the application installed none, ring
/// (which this crate's `tls-rustls` feature enables) is installed, as rustls itself does when
/// ring is its only provider. Without this, a build that also enables rustls' `aws-lc-rs` (through
/// another dependency) would panic at the first TLS connection.
fn install_crypto_provider() {
    #[cfg(feature = "tls-rustls")]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_need_tls_urls_and_valid_pem() {
        let tls = Tls {
            root_certs: Some(b"not a certificate".to_vec()),
            client: None,
        };
        let plain = NodeSpec::parse("redis://:pw@127.0.0.1:7001").expect("valid url");
        let err = tls
            .apply(plain)
            .expect_err("plain node with certificates")
            .to_string();
        assert!(err.contains("rediss://") && !err.contains("pw"), "{err}");
        let secure = || NodeSpec::parse("rediss://:pw@127.0.0.1:7001").expect("valid url");
        let err = tls.apply(secure()).expect_err("no PEM").to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let tls = Tls {
            root_certs: Some(
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            client: None,
        };
        let err = tls.apply(secure()).expect_err("bad PEM").to_string();
        assert!(err.contains("not usable") && !err.contains(":pw@"), "{err}");
        // Without certificates, a plain node is left alone.
        let plain = NodeSpec::parse("redis://127.0.0.1:7001").expect("valid url");
        assert!(Tls::default().apply(plain).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let tls = Tls {
            root_certs: Some(b"-----BEGIN CERTIFICATE-----\nx\n".to_vec()),
            client: Some((b"cert".to_vec(), b"SECRET-KEY".to_vec())),
        };
        let shown = format!("{tls:?}");
        assert!(
            shown.contains("1 certificate(s)") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}
