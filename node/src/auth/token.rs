//! etcd's simple tokens (`server/auth/simple_token.go`): `<16 random letters>.<log index>`.
//! The proposer picks the letters; applying the authentication records the token on every
//! member, so any member accepts it. The table is member-local memory, as in etcd: tokens
//! do not survive a restart, and each member expires a token `--auth-token-ttl` after its
//! last use. Expiry is local bookkeeping beside apply's result, never part of the
//! replicated state.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;

/// etcd's `defaultSimpleTokenLength`.
const PREFIX_LEN: usize = 16;
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A new random token prefix (etcd's `genTokenPrefix`).
pub fn prefix() -> String {
    let mut rng = rand::thread_rng();
    (0..PREFIX_LEN)
        .map(|_| char::from(LETTERS[rng.gen_range(0..LETTERS.len())]))
        .collect()
}

/// The full token for a prefix applied at log `index`.
pub(super) fn token(prefix: &str, index: u64) -> String {
    format!("{prefix}.{index}")
}

/// Issued simple tokens: token -> (user, expiry).
pub(super) struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl SimpleTokens {
    pub(super) fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn assign(&self, token: String, user: &str) {
        let now = Instant::now();
        let mut tokens = self.lock();
        tokens.retain(|_, (_, expiry)| *expiry > now);
        tokens.insert(token, (user.to_string(), now + self.ttl));
    }

    /// The user of a live token; using it extends its life by the TTL, as etcd does.
    pub(super) fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.lock();
        match tokens.get_mut(token) {
            Some((user, expiry)) if *expiry > now => {
                *expiry = now + self.ttl;
                Some(user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub(super) fn invalidate_user(&self, user: &str) {
        self.lock().retain(|_, (name, _)| name != user);
    }

    /// Drops every token (auth disabled).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_after_the_ttl_and_use_extends_them() {
        let tokens = SimpleTokens::new(Duration::from_millis(300));
        tokens.assign(token("abc", 7), "alice");
        assert_eq!(tokens.user("abc.7").as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(200));
        assert!(tokens.user("abc.7").is_some(), "used within the TTL");
        std::thread::sleep(Duration::from_millis(200));
        assert!(tokens.user("abc.7").is_some(), "the last use extended it");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(tokens.user("abc.7"), None);
    }

    #[test]
    fn prefixes_are_sixteen_letters() {
        let p = prefix();
        assert_eq!(p.len(), PREFIX_LEN);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(p, prefix());
    }
}
