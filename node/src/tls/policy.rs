//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version` as a rustls crypto
//! provider and a list of protocol versions, shared by every listener and the peer client.
//!
//! As in Go (so in etcd), the cipher-suite list restricts TLS 1.2 only: TLS 1.3 suites are
//! always all enabled, and TLS 1.3 names in the list are accepted and change nothing.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::ring::{cipher_suite as suite, default_provider};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::TlsError;
use crate::config::{TlsPolicy, TlsVersion};

/// The resolved policy.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
}

impl Policy {
    /// Refuses a suite name rustls does not implement, naming it and the supported ones.
    pub(super) fn new(config: &TlsPolicy) -> Result<Policy, TlsError> {
        let table = suites();
        let mut chosen = Vec::new();
        for name in &config.cipher_suites {
            match table.iter().find(|(go, _)| go == name) {
                Some((_, s)) => chosen.push(s.suite()),
                None => {
                    return Err(TlsError::CipherSuite {
                        name: name.clone(),
                        supported: table
                            .iter()
                            .map(|(go, _)| *go)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        let mut provider = default_provider();
        if !chosen.is_empty() {
            provider
                .cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13 || chosen.contains(&s.suite()));
        }
        let max = config.max_version.unwrap_or(TlsVersion::Tls13);
        let versions = [
            (TlsVersion::Tls12, &rustls::version::TLS12),
            (TlsVersion::Tls13, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| (config.min_version..=max).contains(v))
        .map(|(_, v)| v)
        .collect();
        Ok(Policy {
            provider: Arc::new(provider),
            versions,
        })
    }

    pub(super) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    pub(super) fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        &self.versions
    }
}

/// Go's name of each suite rustls (ring) implements.
fn suites() -> [(&'static str, SupportedCipherSuite); 9] {
    [
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        ("TLS_AES_128_GCM_SHA256", suite::TLS13_AES_128_GCM_SHA256),
        ("TLS_AES_256_GCM_SHA384", suite::TLS13_AES_256_GCM_SHA384),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            suite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ]
}

/// A verifier that accepts any peer certificate (still checking the handshake
/// signatures): etcd's `InsecureSkipVerify` for self-signed peer certificates.
pub(super) fn skip_verify(policy: &Policy) -> Arc<dyn ServerCertVerifier> {
    Arc::new(SkipVerify(policy.provider()))
}

#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(suites: &[&str], min: TlsVersion, max: Option<TlsVersion>) -> TlsPolicy {
        TlsPolicy {
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            min_version: min,
            max_version: max,
        }
    }

    #[test]
    fn suites_restrict_tls12_only() {
        let p = Policy::new(&policy(
            &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
            TlsVersion::Tls12,
            None,
        ))
        .expect("accepted");
        let names: Vec<String> = p
            .provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            names,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(p.versions.len(), 2);
    }

    #[test]
    fn an_unimplemented_suite_is_named_with_the_supported_ones() {
        let e = Policy::new(&policy(
            &["TLS_RSA_WITH_AES_128_CBC_SHA"],
            TlsVersion::Tls12,
            None,
        ))
        .expect_err("refused")
        .to_string();
        assert!(
            e.starts_with(
                "--cipher-suites: \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not implemented by cairn's \
                 TLS (rustls); supported: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "
            ),
            "{e}"
        );
    }

    #[test]
    fn versions_follow_min_and_max() {
        let only13 = Policy::new(&policy(&[], TlsVersion::Tls13, None)).expect("accepted");
        assert_eq!(only13.versions, [&rustls::version::TLS13]);
        let only12 = Policy::new(&policy(&[], TlsVersion::Tls12, Some(TlsVersion::Tls12)))
            .expect("accepted");
        assert_eq!(only12.versions, [&rustls::version::TLS12]);
    }
}
