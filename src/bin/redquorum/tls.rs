//! TLS options for `rediss://` masters (built with the `tls-rustls` or `tls-native-tls`
//! feature): the CA to trust and, for mutual TLS, the client's certificate and key.

use std::path::Path;

use clap::Args;
use redquorum::RedLockBuilder;

use crate::exit::{self, Failure};

/// `--tls-ca`, `--tls-cert`, `--tls-key` (none without a TLS feature).
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM file of the CA(s) that signed the masters' certificates, trusted instead of the system's store (rediss:// URLs only)
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[arg(long, value_name = "FILE", env = "REDQUORUM_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for masters that require one (tls-auth-clients yes); needs --tls-key
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "REDQUORUM_TLS_CERT"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM (PKCS#8) private key of --tls-cert
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "REDQUORUM_TLS_KEY"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// `builder` with the files' certificates; a usage error names a file that cannot be read.
    pub fn apply(&self, builder: RedLockBuilder) -> Result<RedLockBuilder, Failure> {
        #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
        {
            let mut builder = builder;
            if let Some(ca) = &self.tls_ca {
                builder = builder.tls_root_certs(read(ca, "--tls-ca")?);
            }
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                builder =
                    builder.tls_client_cert(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
            }
            Ok(builder)
        }
        #[cfg(not(any(feature = "tls-rustls", feature = "tls-native-tls")))]
        Ok(builder)
    }
}

#[cfg_attr(
    not(any(feature = "tls-rustls", feature = "tls-native-tls")),
    allow(dead_code)
)]
fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("cannot read {flag} {}: {e}", path.display()),
        )
    })
}
