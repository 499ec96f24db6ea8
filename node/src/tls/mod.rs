//! TLS (rustls with ring) for https listeners and for the peer transport's client side.
//! The files are read and checked at start-up; a missing or malformed one stops start-up
//! with its flag, its path and what is wrong, before any listener serves. Afterwards they
//! are watched ([`reload`]): a rotated certificate, key or CA is used by the next
//! handshakes, and a bad replacement is logged and the previous files kept.
//!
//! As etcd 3.5 does, a listener with a trusted CA file requires client certificates (with
//! or without `--client-cert-auth`, which validation only accepts with a CA file): a client
//! without one, or with one that does not chain to the CA or is outside its validity
//! period, is refused at the handshake.

mod auto;
mod policy;
mod reload;

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, TlsFiles};
use policy::Policy;
use reload::Reloading;

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
    /// A `--cipher-suites` name rustls does not implement.
    #[error("--cipher-suites: {name:?} is not implemented by cairn's TLS (rustls); supported: {supported}")]
    CipherSuite { name: String, supported: String },
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

/// Everything TLS a node serves and dials with; `None` where no certificate is configured.
pub struct NodeTls {
    /// https client and metrics listeners.
    pub client: Option<Arc<ServerTls>>,
    /// https peer listeners.
    pub peer: Option<Arc<ServerTls>>,
    /// How https peer URLs are dialled.
    pub peer_client: Option<Arc<PeerClientTls>>,
}

/// Reads (or, with `--auto-tls`/`--peer-auto-tls`, first generates) every certificate of
/// `cfg` and builds the listeners' and the peer client's TLS from them.
pub fn start(cfg: &Config) -> Result<NodeTls, TlsError> {
    let policy = Policy::new(&cfg.tls_policy)?;
    let client_hosts = cfg
        .listen_client_urls
        .iter()
        .chain(&cfg.listen_client_http_urls);
    let client = auto::files(
        &cfg.client_tls,
        Side::Client,
        &cfg.data_dir,
        client_hosts,
        cfg.self_signed_cert_validity,
    )?;
    let peer = auto::files(
        &cfg.peer_tls,
        Side::Peer,
        &cfg.data_dir,
        cfg.listen_peer_urls.iter(),
        cfg.self_signed_cert_validity,
    )?;
    Ok(NodeTls {
        client: ServerTls::new(&client.files, Side::Client, &policy)?.map(Arc::new),
        peer: ServerTls::new(&peer.files, Side::Peer, &policy)?.map(Arc::new),
        peer_client: PeerClientTls::new(&peer.files, &policy, peer.self_signed)?.map(Arc::new),
    })
}

/// The TLS of an https listener, following changes of its files.
pub struct ServerTls(Reloading<TlsAcceptor>);

impl ServerTls {
    fn new(files: &TlsFiles, side: Side, policy: &Policy) -> Result<Option<ServerTls>, TlsError> {
        if files.cert_file.is_none() {
            return Ok(None);
        }
        let (files, policy) = (files.clone(), policy.clone());
        let watched = watched_paths(&files);
        let reloading =
            Reloading::new(side, watched, move || server_config(&files, side, &policy))?;
        Ok(Some(ServerTls(reloading)))
    }

    /// The acceptor for the next handshake, with the current files.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.0.current().1
    }
}

/// What the peer transport dials https peers with, following changes of its files:
/// `--peer-cert-file`/`--peer-key-file` as its client certificate (for peers with
/// `--peer-client-cert-auth`) and `--peer-trusted-ca-file` to verify them.
pub struct PeerClientTls(Reloading<TlsConnector>);

impl PeerClientTls {
    fn new(
        files: &TlsFiles,
        policy: &Policy,
        self_signed: bool,
    ) -> Result<Option<PeerClientTls>, TlsError> {
        if files.cert_file.is_none() {
            return Ok(None);
        }
        let (files, policy) = (files.clone(), policy.clone());
        let watched = watched_paths(&files);
        let reloading = Reloading::new(Side::Peer, watched, move || {
            client_config(&files, &policy, self_signed)
        })?;
        Ok(Some(PeerClientTls(reloading)))
    }

    /// The connector for new connections and its generation, which changes when the
    /// files were reloaded (so cached channels know to reconnect with the new files).
    pub fn connector(&self) -> (u64, TlsConnector) {
        self.0.current()
    }
}

/// The protocols an https listener offers: gRPC needs HTTP/2; /health and /metrics are
/// also fetched over HTTP/1.1 (curl, Prometheus).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn watched_paths(files: &TlsFiles) -> Vec<(&'static str, std::path::PathBuf)> {
    [
        ("cert-file", &files.cert_file),
        ("key-file", &files.key_file),
        ("trusted-ca-file", &files.trusted_ca_file),
    ]
    .into_iter()
    .filter_map(|(name, path)| Some((name, path.clone()?)))
    .collect()
}

fn server_config(files: &TlsFiles, side: Side, policy: &Policy) -> Result<TlsAcceptor, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&files.cert_file, &files.key_file) else {
        return Err(TlsError::Config(format!(
            "{} and {} must be set together",
            side.flag("cert-file"),
            side.flag("key-file")
        )));
    };
    let chain = certificates(side, "cert-file", cert_path)?;
    let key = private_key(side, key_path)?;
    let builder = ServerConfig::builder_with_provider(policy.provider())
        .with_protocol_versions(policy.versions())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.trusted_ca_file {
        Some(ca) => {
            let roots = Arc::new(roots(side, ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, policy.provider())
                .build()
                .map_err(|e| file_error(side, "trusted-ca-file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| mismatch(side, cert_path, key_path, e))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The peer client's config; `self_signed` (peer auto TLS) skips verifying the peers'
/// certificates, as etcd does for its own self-signed ones.
fn client_config(
    files: &TlsFiles,
    policy: &Policy,
    self_signed: bool,
) -> Result<TlsConnector, TlsError> {
    let side = Side::Peer;
    let (Some(cert_path), Some(key_path)) = (&files.cert_file, &files.key_file) else {
        return Err(TlsError::Config(
            "--peer-cert-file and --peer-key-file must be set together".into(),
        ));
    };
    let chain = certificates(side, "cert-file", cert_path)?;
    let key = private_key(side, key_path)?;
    let builder = ClientConfig::builder_with_provider(policy.provider())
        .with_protocol_versions(policy.versions())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if self_signed {
        builder
            .dangerous()
            .with_custom_certificate_verifier(policy::skip_verify(policy))
    } else {
        let roots = match &files.trusted_ca_file {
            Some(ca) => roots(side, ca)?,
            None => RootCertStore::empty(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| mismatch(side, cert_path, key_path, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

fn mismatch(side: Side, cert: &Path, key: &Path, e: impl std::fmt::Display) -> TlsError {
    file_error(
        side,
        "key-file",
        key,
        format!("does not go with {}: {e}", cert.display()),
    )
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
