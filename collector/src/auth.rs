//! Node tokens: `<node id>.<secret>`, where the secret is 32 random bytes in
//! hex. Only the SHA-256 of the secret is stored. The secret is random and
//! long, so a fast hash is enough (no password stretching needed), and every
//! heartbeat can be checked without slowing ingestion down.

use rand::{TryRngCore as _, rngs::OsRng};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::Error;

/// A node's credentials as presented: which node, and the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub node_id: String,
    pub secret_hash: String,
}

/// What is stored of a node's tokens: the current one's hash, and, for a
/// while after a rotation, the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeys {
    /// The current token's hash ([`REVOKED`] after `node revoke`).
    pub current: String,
    /// The token before the last rotation, and until when it is valid (UTC).
    pub previous: Option<(String, chrono::NaiveDateTime)>,
}

/// Which of a node's tokens a call presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Current,
    /// The token before a rotation, within its grace.
    Previous,
}

/// The `tokenHash` of a revoked node: not 64 hex digits, so no token's hash
/// is ever equal to it.
pub const REVOKED: &str = "revoked";

impl NodeKeys {
    /// Which token `credentials` are, at `now` (UTC), if any.
    pub fn admits(
        &self,
        credentials: &Credentials,
        now: chrono::NaiveDateTime,
    ) -> Option<Admitted> {
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|(hash, until)| now < *until && matches(credentials, hash));
        // Both are compared, whichever matches.
        match (matches(credentials, &self.current), previous) {
            (true, _) => Some(Admitted::Current),
            (false, true) => Some(Admitted::Previous),
            (false, false) => None,
        }
    }
}

/// A newly made token and what is stored of it.
pub struct NewToken {
    pub token: String,
    pub hash: String,
}

/// Makes a token for `node_id`.
pub fn new_token(node_id: &str) -> Result<NewToken, rand::rand_core::OsError> {
    let mut secret = [0u8; 32];
    OsRng.try_fill_bytes(&mut secret)?;
    let secret = hex(&secret);
    Ok(NewToken {
        token: format!("{node_id}.{secret}"),
        hash: hash_secret(&secret),
    })
}

/// Reads credentials from an `authorization: Bearer <token>` value.
pub fn from_bearer(value: Option<&str>) -> Result<Credentials, Error> {
    let value = value.ok_or(Error::Unauthenticated(
        "no `authorization: Bearer <token>` metadata",
    ))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or(Error::Unauthenticated(
            "the authorization metadata is not `Bearer <token>`",
        ))?
        .trim();
    let (node_id, secret) = token.split_once('.').ok_or(Error::Unauthenticated(
        "malformed token (expected <node id>.<secret>)",
    ))?;
    if node_id.is_empty() || node_id.len() > 64 || secret.len() != 64 {
        return Err(Error::Unauthenticated(
            "malformed token (expected <node id>.<secret>)",
        ));
    }
    Ok(Credentials {
        node_id: node_id.to_owned(),
        secret_hash: hash_secret(secret),
    })
}

/// Whether presented credentials match the stored hash (constant time).
pub fn matches(credentials: &Credentials, stored_hash: &str) -> bool {
    credentials
        .secret_hash
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_only_its_own_hash_matches() {
        let made = new_token("cnode1").expect("os rng");
        let credentials = from_bearer(Some(&format!("Bearer {}", made.token))).expect("parses");
        assert_eq!(credentials.node_id, "cnode1");
        assert!(matches(&credentials, &made.hash));
        let other = new_token("cnode1").expect("os rng");
        assert!(!matches(&credentials, &other.hash));
        assert_ne!(made.token, other.token);
        assert!(!made.token.contains(&made.hash));
    }

    #[test]
    fn the_previous_token_is_valid_until_its_time_only() {
        let old = new_token("n").expect("rng");
        let new = new_token("n").expect("rng");
        let at =
            |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("time");
        let keys = NodeKeys {
            current: new.hash.clone(),
            previous: Some((old.hash.clone(), at("2026-12-08 10:10:00"))),
        };
        let presented =
            |t: &NewToken| from_bearer(Some(&format!("Bearer {}", t.token))).expect("parses");
        let before = at("2026-12-08 10:09:59");
        assert_eq!(
            keys.admits(&presented(&new), before),
            Some(Admitted::Current)
        );
        assert_eq!(
            keys.admits(&presented(&old), before),
            Some(Admitted::Previous)
        );
        assert_eq!(
            keys.admits(&presented(&old), at("2026-12-08 10:10:00")),
            None
        );
        let stranger = new_token("n").expect("rng");
        assert_eq!(keys.admits(&presented(&stranger), before), None);
        let revoked = NodeKeys {
            current: REVOKED.to_owned(),
            previous: None,
        };
        assert_eq!(revoked.admits(&presented(&new), before), None);
    }

    #[test]
    fn the_stored_hash_is_sha256_in_lowercase_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_credentials_are_refused() {
        for value in [
            None,
            Some("cnode1.abc"),
            Some("Basic abc"),
            Some("Bearer nodot"),
            Some("Bearer .aaaa"),
            Some("Bearer cnode1.short"),
        ] {
            assert!(
                matches!(from_bearer(value), Err(Error::Unauthenticated(_))),
                "{value:?}"
            );
        }
    }
}
