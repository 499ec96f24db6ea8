//! etcd's JWT tokens (`server/auth/jwt.go`, `options.go`): `--auth-token
//! jwt,pub-key=PATH,priv-key=PATH,sign-method=ALG,ttl=5m`. A token carries etcd's claims
//! (`username`, `revision`, `exp`) and is signed, so any member with the public key checks
//! it without raft or memory of issued tokens. A member given only `pub-key` verifies but
//! cannot sign (etcd's verify-only provider). As in etcd, a permission change does not
//! revoke a JWT: its `revision` claim falls behind the auth store's and the permission
//! check answers `auth: revision in header is old`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

use super::AuthError;

/// etcd's `DefaultTTL`.
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// The `jwt` options of `--auth-token`, parsed (files not read yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    pub sign_method: Algorithm,
    pub pub_key: Option<PathBuf>,
    pub priv_key: Option<PathBuf>,
    pub ttl: Duration,
    /// Options etcd does not know: warned about at start-up, as etcd does.
    pub unknown: Vec<String>,
}

/// A key that cannot be used, found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--auth-token: {option}={}: {problem}", path.display())]
    File {
        option: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// `JwtOptions::parse` refuses this already; a hand-made `JwtOptions` may not.
    #[error("--auth-token: missing key data")]
    Missing,
}

impl JwtOptions {
    /// etcd's `decomposeOpts` and `jwtOptions.Parse` for the text after `jwt,`; the message
    /// of an error says which option is wrong (etcd logs it and answers `auth: invalid
    /// auth options`).
    pub fn parse(opts: &str) -> Result<JwtOptions, String> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = opt
                .split_once('=')
                .filter(|(_, v)| !v.contains('='))
                .ok_or_else(|| format!("invalid auth options: {opt:?} is not name=value"))?;
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(format!("invalid auth options: {name} given twice"));
            }
            pairs.push((name, value));
        }
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .filter(|v| !v.is_empty())
        };
        let ttl = match get("ttl") {
            Some(ttl) => crate::config::go_duration(ttl).map_err(|e| format!("ttl: {e}"))?,
            None => DEFAULT_TTL,
        };
        let method = get("sign-method").unwrap_or_default();
        let sign_method = match Algorithm::from_str(method) {
            Ok(alg) => alg,
            // Go's jwt library knows these; ring, which signs here, has no P-521 curve.
            Err(_) if method == "ES512" => {
                return Err("sign-method ES512 is not supported (no P-521 curve); use ES256 or ES384".into())
            }
            Err(_) => return Err(format!("invalid auth signature method {method:?}: must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512")),
        };
        let pub_key = get("pub-key").map(PathBuf::from);
        let priv_key = get("priv-key").map(PathBuf::from);
        let needs = if is_hmac(sign_method) {
            priv_key.is_none()
        } else {
            priv_key.is_none() && pub_key.is_none()
        };
        if needs {
            return Err("missing key data: give priv-key (and pub-key), or pub-key alone to only verify tokens".into());
        }
        let unknown = pairs
            .iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| !["sign-method", "pub-key", "priv-key", "ttl"].contains(&n.as_str()))
            .collect();
        Ok(JwtOptions {
            sign_method,
            pub_key,
            priv_key,
            ttl,
            unknown,
        })
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// etcd's token claims.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies JWT tokens with the configured keys.
pub struct JwtTokens {
    method: Algorithm,
    /// None on a verify-only member.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtTokens {
    /// Reads and checks the key files (etcd's `jwtOptions.Key`): each must hold a key for
    /// the sign method, and a pair must match.
    pub fn load(opts: &JwtOptions) -> Result<JwtTokens, KeyError> {
        if !opts.unknown.is_empty() {
            tracing::warn!(keys = ?opts.unknown, "unknown JWT options");
        }
        let method = opts.sign_method;
        let private = match &opts.priv_key {
            Some(path) => Some((read("priv-key", path)?, path.as_path())),
            None => None,
        };
        let unusable = |option, path: &Path, e: String| {
            key_error(
                option,
                path,
                format!("not a usable key for {method:?}: {e}"),
            )
        };
        let signing = match &private {
            Some((pem, path)) => {
                Some(encoding_key(method, pem).map_err(|e| unusable("priv-key", path, e))?)
            }
            None => None,
        };
        let verifying = match (&opts.pub_key, &private) {
            (_, Some((secret, _))) if is_hmac(method) => DecodingKey::from_secret(secret),
            (Some(path), _) => decoding_key(method, &read("pub-key", path)?)
                .map_err(|e| unusable("pub-key", path, e))?,
            (None, Some((pem, path))) => {
                public_of(method, pem).map_err(|e| unusable("priv-key", path, e))?
            }
            (None, None) => return Err(KeyError::Missing),
        };
        let mut validation = Validation::new(method);
        // As Go's jwt library: `exp` is checked to the second when present, nothing else.
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let tokens = JwtTokens {
            method,
            signing,
            verifying,
            validation,
            ttl: opts.ttl,
        };
        tokens.check_pair(opts)?;
        Ok(tokens)
    }

    /// etcd's `ErrKeyMismatch`: a token signed with the private key must verify with the
    /// public key.
    fn check_pair(&self, opts: &JwtOptions) -> Result<(), KeyError> {
        let (Some(_), Some(path)) = (&self.signing, &opts.pub_key) else {
            return Ok(());
        };
        let matches = self
            .sign("probe", 1)
            .ok()
            .and_then(|probe| self.verify(&probe))
            .is_some();
        if matches {
            Ok(())
        } else {
            Err(key_error(
                "pub-key",
                path,
                "public and private keys don't match".into(),
            ))
        }
    }

    /// Whether this member can issue tokens (etcd's `ErrVerifyOnly` otherwise).
    pub fn can_sign(&self) -> Result<(), AuthError> {
        match self.signing {
            Some(_) => Ok(()),
            None => Err(AuthError::VerifyOnly),
        }
    }

    /// A token for `username` at auth `revision`, valid for the TTL (etcd's `assign`).
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, AuthError> {
        let key = self.signing.as_ref().ok_or(AuthError::VerifyOnly)?;
        let exp = (SystemTime::now() + self.ttl)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.method), &claims, key).map_err(|e| {
            tracing::error!(user = username, error = %e, "failed to sign a JWT token");
            AuthError::SignFailed
        })
    }

    /// The user and auth revision of a token signed with this key that has not expired
    /// (etcd's `info`).
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &self.validation) {
            Ok(data) => Some((data.claims.username, data.claims.revision)),
            Err(e) => {
                tracing::warn!(error = %e, "failed to parse a JWT token");
                None
            }
        }
    }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| key_error(option, path, e.to_string()))
}

fn key_error(option: &'static str, path: &Path, problem: String) -> KeyError {
    KeyError::File {
        option,
        path: path.to_path_buf(),
        problem,
    }
}

fn encoding_key(method: Algorithm, pem: &[u8]) -> Result<EncodingKey, String> {
    let key = match method {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(pem),
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(pem).map_err(|e| e.to_string())?
        }
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).map_err(|e| e.to_string())?,
        _ => EncodingKey::from_rsa_pem(pem).map_err(|e| e.to_string())?,
    };
    // jsonwebtoken keeps the DER as is; signing once finds a key ring cannot use now,
    // not at the first login.
    jsonwebtoken::encode(&Header::new(method), &serde_json::json!({}), &key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

fn decoding_key(method: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    match method {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    }
    .map_err(|e| e.to_string())
}

/// The verifying key of a private key, for a member given only `priv-key` (etcd verifies
/// with the private key's public half).
fn public_of(method: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    use ring::signature::{self, KeyPair};
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    let bad = |e: ring::error::KeyRejected| e.to_string();
    match (method, &der) {
        (Algorithm::ES256 | Algorithm::ES384, PrivateKeyDer::Pkcs8(der)) => {
            let alg = if method == Algorithm::ES256 {
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let rng = ring::rand::SystemRandom::new();
            let pair = signature::EcdsaKeyPair::from_pkcs8(alg, der.secret_pkcs8_der(), &rng)
                .map_err(bad)?;
            Ok(DecodingKey::from_ec_der(pair.public_key().as_ref()))
        }
        (Algorithm::EdDSA, PrivateKeyDer::Pkcs8(der)) => {
            let pair =
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
                    .map_err(bad)?;
            Ok(DecodingKey::from_ed_der(pair.public_key().as_ref()))
        }
        (Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA, _) => {
            Err("expected a PKCS#8 private key (-----BEGIN PRIVATE KEY-----)".into())
        }
        (_, PrivateKeyDer::Pkcs8(der)) => {
            rsa_public(signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(bad)?)
        }
        (_, PrivateKeyDer::Pkcs1(der)) => {
            rsa_public(signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(bad)?)
        }
        _ => Err("expected an RSA private key".into()),
    }
}

fn rsa_public(pair: ring::signature::RsaKeyPair) -> Result<DecodingKey, String> {
    use ring::signature::KeyPair;
    Ok(DecodingKey::from_rsa_der(pair.public_key().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_etcds_defaults_and_refusals() {
        let opts = JwtOptions::parse("pub-key=a.pub,sign-method=RS256").expect("valid");
        assert_eq!(opts.ttl, Duration::from_secs(300));
        assert_eq!(opts.pub_key.as_deref(), Some(Path::new("a.pub")));
        assert_eq!(opts.priv_key, None);
        assert!(opts.unknown.is_empty());
        let opts =
            JwtOptions::parse("priv-key=k,sign-method=ES256,ttl=90s,colour=red").expect("valid");
        assert_eq!(opts.ttl, Duration::from_secs(90));
        assert_eq!(opts.unknown, ["colour"]);
        for (opts, want) in [
            ("priv-key=k", "invalid auth signature method \"\""),
            (
                "priv-key=k,sign-method=rs256",
                "invalid auth signature method",
            ),
            ("priv-key=k,sign-method=ES512", "ES512 is not supported"),
            ("sign-method=RS256", "missing key data"),
            ("pub-key=p,sign-method=HS256", "missing key data"),
            (
                "priv-key=k,priv-key=j,sign-method=RS256",
                "priv-key given twice",
            ),
            ("priv-key,sign-method=RS256", "not name=value"),
            (
                "priv-key=k,sign-method=RS256,ttl=5",
                "ttl: time: missing unit",
            ),
        ] {
            let got = JwtOptions::parse(opts).expect_err("invalid");
            assert!(got.contains(want), "{opts}: {got}");
        }
    }

    /// Writes a PEM pair made by rcgen for `alg` into `dir` as `name.key` and `name.pub`.
    fn pair(dir: &Path, name: &str, alg: &'static rcgen::SignatureAlgorithm) -> (PathBuf, PathBuf) {
        let pair = rcgen::KeyPair::generate_for(alg).expect("key pair");
        let (private, public) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.pub")),
        );
        std::fs::write(&private, pair.serialize_pem()).expect("write");
        std::fs::write(&public, pair.public_key_pem()).expect("write");
        (private, public)
    }

    fn options(method: Algorithm, priv_key: Option<&Path>, pub_key: Option<&Path>) -> JwtOptions {
        JwtOptions {
            sign_method: method,
            pub_key: pub_key.map(Path::to_path_buf),
            priv_key: priv_key.map(Path::to_path_buf),
            ttl: DEFAULT_TTL,
            unknown: Vec::new(),
        }
    }

    #[test]
    fn a_private_key_alone_signs_and_verifies_and_a_public_key_alone_only_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (method, alg) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ] {
            let (private, public) = pair(dir.path(), &format!("{method:?}"), alg);
            let signer = JwtTokens::load(&options(method, Some(&private), None)).expect("load");
            let token = signer.sign("alice", 7).expect("sign");
            assert_eq!(signer.verify(&token), Some(("alice".to_string(), 7)));
            let verifier = JwtTokens::load(&options(method, None, Some(&public))).expect("load");
            assert_eq!(verifier.verify(&token), Some(("alice".to_string(), 7)));
            assert_eq!(verifier.sign("alice", 7), Err(AuthError::VerifyOnly));
        }
    }

    #[test]
    fn keys_that_do_not_match_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, _) = pair(dir.path(), "a", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other) = pair(dir.path(), "b", &rcgen::PKCS_ECDSA_P256_SHA256);
        let opts = options(Algorithm::ES256, Some(&private), Some(&other));
        let err = JwtTokens::load(&opts).err().expect("refused").to_string();
        assert!(err.contains("public and private keys don't match"), "{err}");
        assert!(err.contains("b.pub"), "{err}");
    }
}
