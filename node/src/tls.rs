//! TLS (rustls with ring) for https listeners and for the peer transport's client side.
//! The files are read once at start-up; a missing or malformed one stops start-up with its
//! flag, its path and what is wrong, before any listener serves.
//!
//! As etcd 3.5 does, a listener with a trusted CA file requires client certificates (with
//! or without `--client-cert-auth`, which validation only accepts with a CA file): a client
//! without one, or with one that does not chain to the CA or is outside its validity
//! period, is refused at the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why the TLS set-up of a listener or of the peer client failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One configured file cannot be used.
    #[error("{flag} {path:?}: {problem}")]
    File {
        flag: String,
        path: String,
        problem: String,
    },
    /// The files are fine one by one but rustls refuses them together.
    #[error("{0}")]
    Config(String),
}

/// Which flags a set of files came from, so errors name the flag the user wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`.
    Client,
    /// `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`.
    Peer,
}

impl Side {
    fn flag(self, name: &str) -> String {
        match self {
            Side::Client => format!("--{name}"),
            Side::Peer => format!("--peer-{name}"),
        }
    }
}

/// The protocols an https listener offers: gRPC needs HTTP/2; /health and /metrics are
/// also fetched over HTTP/1.1 (curl, Prometheus).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The acceptor of an https listener, or `None` when no certificate is configured.
pub fn acceptor(files: &TlsFiles, side: Side) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&files.cert_file, &files.key_file) else {
        return Ok(None);
    };
    let chain = certificates(side, "cert-file", cert_path)?;
    let key = private_key(side, key_path)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.trusted_ca_file {
        Some(ca) => {
            let roots = Arc::new(roots(side, ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| file_error(side, "trusted-ca-file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        file_error(
            side,
            "key-file",
            key_path,
            format!("does not go with {}: {e}", cert_path.display()),
        )
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// What the peer transport dials https peers with: `--peer-cert-file`/`--peer-key-file` as
/// its client certificate (for peers with `--peer-client-cert-auth`) and
/// `--peer-trusted-ca-file` to verify them. `None` without a peer certificate.
pub fn peer_client(
    files: &TlsFiles,
) -> Result<Option<tonic::transport::ClientTlsConfig>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&files.cert_file, &files.key_file) else {
        return Ok(None);
    };
    // Parsed here only so a bad file is named at start-up; tonic takes the PEM text.
    certificates(Side::Peer, "cert-file", cert_path)?;
    private_key(Side::Peer, key_path)?;
    let mut config =
        tonic::transport::ClientTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            read(Side::Peer, "cert-file", cert_path)?,
            read(Side::Peer, "key-file", key_path)?,
        ));
    if let Some(ca) = &files.trusted_ca_file {
        roots(Side::Peer, ca)?;
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(
            Side::Peer,
            "trusted-ca-file",
            ca,
        )?));
    }
    Ok(Some(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(side: Side, name: &str, path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        flag: side.flag(name),
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn read(side: Side, name: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(side, name, path, format!("cannot read: {e}")))
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    side: Side,
    name: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(side, name, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| file_error(side, name, path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(side, name, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn private_key(side: Side, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(side, "key-file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "no PEM private key in it".to_string(),
            e => format!("malformed PEM: {e}"),
        };
        file_error(side, "key-file", path, problem)
    })
}

fn roots(side: Side, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(side, "trusted-ca-file", path)? {
        roots.add(cert).map_err(|e| {
            file_error(
                side,
                "trusted-ca-file",
                path,
                format!("not a CA certificate: {e}"),
            )
        })?;
    }
    Ok(roots)
}
