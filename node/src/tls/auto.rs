//! `--auto-tls` and `--peer-auto-tls`, as etcd's `transport.SelfCert`: a self-signed
//! certificate for the hosts of the listen URLs, in `<data-dir>/fixtures/client` or
//! `fixtures/peer` as `cert.pem` and `key.pem`. Existing files there are used as they are
//! (not regenerated, even when expired), so a restart keeps the same certificate. Given
//! cert and key files win over auto TLS, which is then ignored with a warning.
//!
//! Differences from etcd: the key is ECDSA P-256 in PKCS#8 (etcd: P-521, SEC1), since
//! rustls's ring provider has no P-521 signing.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::{file_error, Side, TlsError};
use crate::config::TlsFiles;

/// The files a side serves with after auto TLS.
pub(super) struct Resolved {
    pub files: TlsFiles,
    /// The certificate is auto TLS's own: peers dialled with it are not verified.
    pub self_signed: bool,
}

/// `files`, with the self-signed certificate filled in when auto TLS applies.
pub(super) fn files<'u>(
    files: &TlsFiles,
    side: Side,
    data_dir: &Path,
    listen_urls: impl Iterator<Item = &'u url::Url>,
    validity_years: u64,
) -> Result<Resolved, TlsError> {
    let mut resolved = Resolved {
        files: files.clone(),
        self_signed: false,
    };
    if !files.auto_tls {
        return Ok(resolved);
    }
    if files.cert_file.is_some() {
        tracing::warn!("ignoring {} since certs given", side.flag("auto-tls"));
        return Ok(resolved);
    }
    let dir = data_dir
        .join(crate::storage::FIXTURES_DIR)
        .join(match side {
            Side::Client => "client",
            Side::Peer => "peer",
        });
    let hosts: Vec<String> = listen_urls
        .filter_map(|u| u.host_str())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    let (cert, key) = self_cert(&dir, side, hosts, validity_years)?;
    resolved.files.cert_file = Some(cert);
    resolved.files.key_file = Some(key);
    resolved.self_signed = true;
    Ok(resolved)
}

/// `dir/cert.pem` and `dir/key.pem`, generated unless both exist.
fn self_cert(
    dir: &Path,
    side: Side,
    hosts: Vec<String>,
    validity_years: u64,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let flag = "auto-tls";
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    if validity_years == 0 {
        return Err(TlsError::Config(
            "selfSignedCertValidity is invalid,it should be greater than 0".into(),
        ));
    }
    let (cert, key) =
        generate(side, hosts, validity_years).map_err(|e| file_error(side, flag, dir, e))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| file_error(side, flag, dir, format!("cannot create: {e}")))?;
    write(&cert_path, 0o644, &cert).map_err(|e| file_error(side, flag, &cert_path, e))?;
    write(&key_path, 0o600, &key).map_err(|e| file_error(side, flag, &key_path, e))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate ({})", side.flag(flag));
    Ok((cert_path, key_path))
}

/// The PEM certificate and key: organization `etcd`, valid from now for `years` years of
/// 365 days, for server authentication (and client authentication on the peer side, where
/// the same certificate is shown when dialling peers).
fn generate(side: Side, hosts: Vec<String>, years: u64) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(hosts)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    let days = i64::try_from(years.saturating_mul(365)).unwrap_or(i64::MAX);
    params.not_after = now.saturating_add(time::Duration::days(days));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if side == Side::Peer {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, mode: u32, text: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write: {e}"))
}
