//! `token-auth`: HMAC-SHA256 signed bearer tokens with an expiry, turned into a principal
//! and its roles; roles grant read and write access to key prefixes.
//!
//! A token is `cairn.<payload>.<signature>`: `payload` is the base64url (no padding) of
//! the JSON claims `{"sub": "alice", "roles": ["app"], "exp": 1767225600}` (`exp` in Unix
//! seconds), `signature` the base64url HMAC-SHA256 of `cairn.<payload>` under the
//! configured secret. [`mint`] makes one. Tokens without the `cairn.` prefix are not this
//! plugin's (another authenticator may claim them; the node refuses a token nobody claims).
//!
//! Config:
//! ```json
//! {"secret": "a long random string",
//!  "roles": {"app": {"read": ["/app/"], "write": ["/app/"]}, "root": {"read": [""], "write": [""]}},
//!  "anonymous": {"read": ["/public/"]}}
//! ```
//! A request is allowed when every key range it touches lies under a prefix one of the
//! principal's roles grants for that access (`""` is the whole keyspace). Requests that
//! touch no key (leases, status, member list) need an authenticated principal; compaction,
//! snapshots, defragmentation, alarms and membership changes need the role `root`. Callers
//! without a token get the `anonymous` grants (none by default).

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cairn_plugin_sdk::{
    AuthRequest, Credentials, Decision, Identity, Operation, Plugin, PrincipalSource,
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "cairn.";

/// The role that may run the node-wide operations.
const ROOT: &str = "root";

/// Admin RPCs that change or copy the whole node, as etcd reserves them for root.
const ROOT_ONLY: &[&str] = &[
    "Snapshot",
    "Defragment",
    "Alarm",
    "MemberAdd",
    "MemberRemove",
    "MemberUpdate",
    "MemberPromote",
    "MoveLeader",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    secret: String,
    #[serde(default)]
    roles: BTreeMap<String, Grants>,
    #[serde(default)]
    anonymous: Grants,
}

/// Key prefixes a role may read and write.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grants {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

/// What a token says.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Makes a token for `claims` signed with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// Checks a token's signature and expiry at `now`; `Ok(None)` when it is not one of ours.
pub fn verify(secret: &[u8], token: &str, now: u64) -> Result<Option<Claims>, String> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let (signed, signature) = token.rsplit_once('.').ok_or("malformed token")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "malformed signature")?;
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    // Constant-time comparison: the signature is the secret-derived part.
    m.verify_slice(&signature).map_err(|_| "bad signature")?;
    let payload = URL_SAFE_NO_PAD
        .decode(&signed[PREFIX.len()..])
        .map_err(|_| "malformed payload")?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|e| format!("malformed claims: {e}"))?;
    if claims.exp <= now {
        return Err(format!("token of {} expired at {}", claims.sub, claims.exp));
    }
    Ok(Some(claims))
}

pub struct TokenAuth;

impl Plugin for TokenAuth {
    fn authenticate(credentials: Credentials) -> Result<Option<Identity>, String> {
        let Some(token) = credentials.token else {
            return Ok(None);
        };
        let config: Config = cairn_plugin_sdk::config()?;
        let now = cairn_plugin_sdk::host::unix_seconds();
        Ok(
            verify(config.secret.as_bytes(), &token, now)?.map(|c| Identity {
                name: c.sub,
                roles: c.roles,
            }),
        )
    }

    fn authorize(request: AuthRequest) -> Decision {
        let config: Config = match cairn_plugin_sdk::config() {
            Ok(c) => c,
            Err(e) => return Decision::deny(e),
        };
        decide(&config, &request)
    }
}

fn decide(config: &Config, request: &AuthRequest) -> Decision {
    let principal = &request.principal;
    let anonymous = matches!(principal.source, PrincipalSource::Anonymous);
    let grants: Vec<&Grants> = if anonymous {
        vec![&config.anonymous]
    } else {
        principal
            .roles
            .iter()
            .filter_map(|r| config.roles.get(r))
            .collect()
    };
    let who = if anonymous {
        "anonymous"
    } else {
        &principal.name
    };
    match &request.operation {
        Operation::Compact => return root_only(principal.has_role(ROOT), who, "Compact"),
        Operation::Admin(rpc) if ROOT_ONLY.contains(&rpc.as_str()) => {
            return root_only(principal.has_role(ROOT), who, rpc)
        }
        _ if request.keys.is_empty() && anonymous => {
            return Decision::deny("anonymous callers may only read and write granted keys")
        }
        _ => {}
    }
    for access in &request.keys {
        let granted = grants.iter().any(|g| {
            let prefixes = if access.write { &g.write } else { &g.read };
            prefixes.iter().any(|p| access.within(p.as_bytes()))
        });
        if !granted {
            let verb = if access.write { "write" } else { "read" };
            return Decision::deny(format!(
                "{who} may not {verb} {}",
                String::from_utf8_lossy(&access.key)
            ));
        }
    }
    Decision::Allow
}

fn root_only(is_root: bool, who: &str, what: &str) -> Decision {
    if is_root {
        Decision::Allow
    } else {
        Decision::deny(format!("{what} needs the {ROOT} role; {who} lacks it"))
    }
}

cairn_plugin_sdk::export_plugin!(TokenAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_plugin_sdk::testing::Harness;
    use cairn_plugin_sdk::Principal;
    use serde_json::json;

    const SECRET: &str = "s3cret";

    fn host(now: u64) -> Harness {
        Harness::new().clock(0, now).config(json!({
            "secret": SECRET,
            "roles": {
                "app": {"read": ["/app/"], "write": ["/app/"]},
                "reader": {"read": ["/app/", "/public/"]},
                "root": {"read": [""], "write": [""]},
            },
            "anonymous": {"read": ["/public/"]},
        }))
    }

    fn token(sub: &str, roles: &[&str], exp: u64) -> String {
        mint(
            SECRET.as_bytes(),
            &Claims {
                sub: sub.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                exp,
            },
        )
    }

    #[test]
    fn a_valid_token_names_the_principal_and_its_roles() {
        let _h = host(1000);
        let got = TokenAuth::authenticate(Credentials::token(token("alice", &["app"], 2000)));
        assert_eq!(
            got,
            Ok(Some(Identity {
                name: "alice".into(),
                roles: vec!["app".into()]
            }))
        );
    }

    #[test]
    fn expired_forged_and_foreign_tokens() {
        let _h = host(1000);
        let expired = TokenAuth::authenticate(Credentials::token(token("alice", &[], 1000)));
        assert!(expired.is_err_and(|e| e.contains("expired")));

        // Claims changed after signing: the signature no longer matches.
        let good = token("alice", &["app"], 2000);
        let (_, sig) = good.rsplit_once('.').expect("signed");
        let forged_claims = Claims {
            sub: "alice".into(),
            roles: vec!["root".into()],
            exp: 2000,
        };
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap_or_default());
        let forged = format!("{PREFIX}{forged_payload}.{sig}");
        let got = TokenAuth::authenticate(Credentials::token(forged));
        assert_eq!(got, Err("bad signature".to_string()));

        // Signed with another secret.
        let other = mint(b"other", &forged_claims);
        assert!(TokenAuth::authenticate(Credentials::token(other)).is_err());

        assert_eq!(
            TokenAuth::authenticate(Credentials::token("simple.42")),
            Ok(None),
            "another authenticator's token"
        );
    }

    fn alice(roles: &[&str]) -> Principal {
        Principal::from_plugin("token-auth", "alice", roles)
    }

    #[test]
    fn roles_grant_prefixes() {
        let _h = host(1000);
        let allowed = |r: AuthRequest| TokenAuth::authorize(r).is_allowed();
        assert!(allowed(
            AuthRequest::new(alice(&["app"]), Operation::Txn).write("/app/k", "")
        ));
        assert!(allowed(
            AuthRequest::new(alice(&["app"]), Operation::Range).read("/app/", "/app0")
        ));
        assert!(!allowed(
            AuthRequest::new(alice(&["reader"]), Operation::Txn).write("/app/k", "")
        ));
        assert!(!allowed(
            AuthRequest::new(alice(&["app"]), Operation::Range).read("/app/", "\0")
        ));
        assert!(!allowed(
            AuthRequest::new(alice(&["app"]), Operation::Txn)
                .write("/app/k", "")
                .read("/other", "")
        ));
        assert!(allowed(
            AuthRequest::new(alice(&["root"]), Operation::Range).read("\0", "\0")
        ));
        assert!(allowed(AuthRequest::new(alice(&[]), Operation::LeaseGrant)));
        assert!(!allowed(AuthRequest::new(
            alice(&["app"]),
            Operation::Compact
        )));
        assert!(allowed(AuthRequest::new(
            alice(&["root"]),
            Operation::Compact
        )));
        assert!(!allowed(AuthRequest::new(
            alice(&["app"]),
            Operation::Admin("Snapshot".into())
        )));
    }

    #[test]
    fn anonymous_callers_get_the_anonymous_grants_only() {
        let _h = host(1000);
        let anon = Principal::anonymous;
        assert!(TokenAuth::authorize(
            AuthRequest::new(anon(), Operation::Range).read("/public/x", "")
        )
        .is_allowed());
        let denied =
            TokenAuth::authorize(AuthRequest::new(anon(), Operation::Txn).write("/public/x", ""));
        assert_eq!(denied, Decision::deny("anonymous may not write /public/x"));
        assert!(
            !TokenAuth::authorize(AuthRequest::new(anon(), Operation::LeaseGrant)).is_allowed()
        );
    }

    #[test]
    fn a_config_without_a_secret_refuses() {
        let _h = Harness::new().config(json!({"roles": {}}));
        assert!(TokenAuth::authenticate(Credentials::token("cairn.x.y")).is_err());
        assert!(
            !TokenAuth::authorize(AuthRequest::new(alice(&["root"]), Operation::Range))
                .is_allowed()
        );
    }
}
