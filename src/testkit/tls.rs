//! Certificates for a TLS [`LocalCluster`](super::LocalCluster): a throw-away CA, a server
//! certificate it signs for 127.0.0.1 and localhost, and a client certificate for mutual TLS,
//! generated at start (feature `testkit-tls`).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::{io_error, TestkitError};

/// The generated PEM texts and where the servers read theirs.
pub(super) struct TlsFiles {
    pub(super) ca_pem: String,
    pub(super) client_cert_pem: String,
    pub(super) client_key_pem: String,
    pub(super) ca_file: PathBuf,
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
}

/// Private keys are never shown.
impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

fn cert_error(what: &str, e: rcgen::Error) -> TestkitError {
    io_error(
        format!("generating the {what} certificate"),
        std::io::Error::other(e.to_string()),
    )
}

impl TlsFiles {
    /// A fresh CA, server and client certificate, written under `dir` (which must exist).
    pub(super) fn generate(dir: &Path) -> Result<TlsFiles, TestkitError> {
        let ca_key = KeyPair::generate().map_err(|e| cert_error("CA", e))?;
        let mut ca = CertificateParams::new(Vec::new()).map_err(|e| cert_error("CA", e))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so that another cluster's CA is another issuer, not a namesake.
        let name = format!("redquorum testkit CA {}", dir.display());
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| cert_error("CA", e))?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().map_err(|e| cert_error(name, e))?;
            let mut params = CertificateParams::new(sans).map_err(|e| cert_error(name, e))?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|e| cert_error(name, e))?;
            Ok::<_, TestkitError>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "server",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            "client",
            vec!["redquorum-testkit-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let ca_pem = ca_cert.pem();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text)
                .map_err(|e| io_error(format!("writing {}", path.display()), e))?;
            Ok::<_, TestkitError>(path)
        };
        Ok(TlsFiles {
            ca_file: write("ca.crt", &ca_pem)?,
            cert_file: write("server.crt", &server_cert)?,
            key_file: write("server.key", &server_key)?,
            ca_pem,
            client_cert_pem,
            client_key_pem,
        })
    }
}
