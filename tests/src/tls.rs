//! TLS for the tests: certificate authorities and certificates made with rcgen in each
//! test, and a raw rustls client that reports what a server's handshake shows (which
//! certificate, whether a protocol version or cipher suite is accepted), which etcdctl
//! cannot tell.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};
use tokio_rustls::TlsConnector;

/// A certificate authority of a test.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ring generates keys");
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca { cert, key }
    }

    /// Writes `<name>-ca.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, self.cert.pem()).expect("writing a test CA");
        path
    }

    /// Writes `<name>.pem` and `<name>-key.pem`: a certificate for 127.0.0.1 and localhost,
    /// for servers and clients both (as the seed documents' cfssl profiles make them),
    /// with common name `name`; `expired` makes one whose validity ended in 2021.
    pub fn issue(&self, dir: &Path, name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("valid names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("ring generates keys");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed certificate");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("writing a test certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing a test key");
        (cert_path, key_path)
    }
}

/// The first certificate of a PEM file, as a server would send it.
pub fn certificate_der(path: &Path) -> Result<Vec<u8>> {
    let cert = CertificateDer::from_pem_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(cert.to_vec())
}

/// What a raw client offers: the CA it trusts (`None`: it trusts any certificate, as
/// etcdctl's `--insecure-skip-tls-verify`), the versions and, if set, only these suites
/// (rustls's names, as `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`), and the client
/// certificate and key it shows, if any.
pub struct Offer<'a> {
    pub ca: Option<&'a Path>,
    pub versions: &'a [&'static SupportedProtocolVersion],
    pub suites: &'a [&'a str],
    pub identity: Option<(&'a Path, &'a Path)>,
}

impl Offer<'_> {
    pub const TLS12: &'static [&'static SupportedProtocolVersion] = &[&rustls::version::TLS12];
    pub const ALL: &'static [&'static SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];

    fn config(&self) -> Result<ClientConfig> {
        let mut provider = ring::default_provider();
        if !self.suites.is_empty() {
            provider
                .cipher_suites
                .retain(|s| self.suites.contains(&format!("{:?}", s.suite()).as_str()));
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(self.versions)?;
        let builder = match self.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(CertificateDer::from_pem_file(ca)?)?;
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate)),
        };
        let mut config = match self.identity {
            Some((cert, key)) => builder.with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert)?],
                PrivateKeyDer::from_pem_file(key)?,
            )?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Handshakes with `addr` (`127.0.0.1:port`) and returns the certificate the server
    /// presented (DER), or why the handshake failed.
    pub async fn handshake(&self, addr: &str) -> Result<Vec<u8>> {
        let connector = TlsConnector::from(Arc::new(self.config()?));
        let name = ServerName::try_from("127.0.0.1")?;
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
            let first = certs.first().context("the server sent no certificate")?;
            Ok(first.to_vec())
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .context("handshake timed out")?
    }
}

/// Accepts any server certificate and handshake signature: etcd's `--auto-tls` keys are
/// ECDSA P-521, which ring cannot verify, and these tests only look at what is presented.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP521_SHA512,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA512,
        ]
    }
}

/// The first bytes a rustls client sends: a whole TLS record with its ClientHello, for
/// tests that cut it short or corrupt it.
pub fn client_hello() -> Result<Vec<u8>> {
    let config = Offer {
        ca: None,
        versions: Offer::ALL,
        suites: &[],
        identity: None,
    }
    .config()?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1")?)?;
    let mut out = Vec::new();
    conn.write_tls(&mut out)?;
    Ok(out)
}
