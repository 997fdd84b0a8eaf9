//! Bearer tokens of the HTTP side: admin tokens (enrol, remove, reset)
//! and optional read tokens (everything else under `/api/v1`, the event
//! stream and `/metrics`). Admin tokens also read. Several of each may be
//! valid at once (so that one can be rotated without a gap), and the set
//! can be replaced while the collector runs ([`Tokens::replace`], on
//! SIGHUP). Tokens are compared in constant time; wrong ones are logged
//! and, past a limit, their address is held off (`http/failed_auth.rs`).
//!
//! Handlers ask for access by taking an extractor: [`Reader`] or [`Admin`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use subtle::ConstantTimeEq as _;

use super::{AppState, failed_auth::FailedAuth};
use crate::error::Error;

/// Wrong tokens an address may send within a minute, unless set.
pub const MAX_FAILED_AUTHENTICATIONS: u32 = super::failed_auth::MAX_FAILURES;

/// The shortest token accepted at start ([`check_form`]).
pub const MIN_TOKEN_LEN: usize = 32;

/// The tokens that are valid now.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    /// Without any, the admin endpoints are disabled (403).
    pub admin: Vec<String>,
    /// Without any, reading is open.
    pub read: Vec<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("admin", &self.admin.len())
            .field("read", &self.read.len())
            .finish()
    }
}

/// The HTTP side's tokens, shared by every clone: what the handlers check
/// and what SIGHUP replaces.
#[derive(Clone, Default)]
pub struct Tokens {
    set: Arc<RwLock<TokenSet>>,
    failures: Arc<FailedAuth>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tokens").field(&*self.read_set()).finish()
    }
}

/// Why a token is refused at start or reload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFormError {
    #[error(
        "is {0} characters long: use at least {MIN_TOKEN_LEN} random characters (`openssl rand -hex 32`)"
    )]
    TooShort(usize),
    #[error(
        "is the example's placeholder (CHANGE-ME…): put a real token in its place (`openssl rand -hex 32`)"
    )]
    Placeholder,
    #[error("holds white space or a control character")]
    NotPrintable,
}

/// Whether `token` may be an admin or read token: at least
/// [`MIN_TOKEN_LEN`] characters, printable, and not a placeholder of the
/// example files.
pub fn check_form(token: &str) -> Result<(), TokenFormError> {
    if token
        .to_ascii_lowercase()
        .replace(['-', '_'], "")
        .contains("changeme")
    {
        return Err(TokenFormError::Placeholder);
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenFormError::NotPrintable);
    }
    let len = token.chars().count();
    if len < MIN_TOKEN_LEN {
        return Err(TokenFormError::TooShort(len));
    }
    Ok(())
}

/// The tokens of a token file: one per line; blank lines and lines that
/// start with `#` are skipped, white space around a token is not part of it.
pub fn parse_token_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn matches_any(given: &str, tokens: &[String]) -> bool {
    // Every token is compared, so that the time says nothing of which.
    tokens.iter().fold(false, |found, expected| {
        found | bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    })
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(parts: &Parts) -> Result<Option<&str>, Error> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::Unauthenticated("the Authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(Error::Unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// The client's address, as the connection loop recorded it (unspecified
/// for a request that did not come through it).
fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Admin,
}

impl Tokens {
    /// These tokens.
    pub fn new(set: TokenSet) -> Self {
        Self {
            set: Arc::new(RwLock::new(set)),
            failures: Arc::default(),
        }
    }

    /// These tokens, with an address held off after `max_failures` wrong
    /// ones within a minute (instead of [`MAX_FAILED_AUTHENTICATIONS`]).
    pub fn with_failure_limit(set: TokenSet, max_failures: u32) -> Self {
        Self {
            set: Arc::new(RwLock::new(set)),
            failures: Arc::new(FailedAuth::new(max_failures)),
        }
    }

    /// Makes `set` the valid tokens, for this and every clone.
    pub fn replace(&self, set: TokenSet) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// How many admin and read tokens are valid.
    pub fn counts(&self) -> (usize, usize) {
        let set = self.read_set();
        (set.admin.len(), set.read.len())
    }

    fn read_set(&self) -> std::sync::RwLockReadGuard<'_, TokenSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the request may read.
    pub fn check_read(&self, parts: &Parts) -> Result<(), Error> {
        self.check(parts, Access::Read)
    }

    /// Whether the request may change the fleet.
    pub fn check_admin(&self, parts: &Parts) -> Result<(), Error> {
        self.check(parts, Access::Admin)
    }

    fn check(&self, parts: &Parts, access: Access) -> Result<(), Error> {
        let set = self.read_set();
        match access {
            Access::Read if set.read.is_empty() => return Ok(()),
            Access::Admin if set.admin.is_empty() => {
                return Err(Error::Forbidden(
                    "the admin API is disabled: start the collector with --admin-token",
                ));
            }
            _ => {}
        }
        let address = peer(parts);
        let now = Instant::now();
        // No token: nothing guessed, nothing held off.
        let token = match bearer(parts) {
            Ok(Some(token)) => Ok(token),
            Ok(None) if access == Access::Admin => {
                return Err(Error::Unauthenticated("the admin token is required"));
            }
            Ok(None) => return Err(Error::Unauthenticated("a bearer token is required")),
            Err(error) => Err(error),
        };
        if let Err(retry_after) = self.failures.check(address, now) {
            return Err(Error::TooManyFailedAuthentications { retry_after });
        }
        let token = token.inspect_err(|error| {
            self.failures.record(address, &error.to_string(), now);
        })?;
        let valid = matches_any(token, &set.admin)
            || (access == Access::Read && matches_any(token, &set.read));
        if valid {
            return Ok(());
        }
        let reason = if access == Access::Admin && matches_any(token, &set.read) {
            "a read token where the admin token is required"
        } else {
            "wrong token"
        };
        self.failures.record(address, reason, now);
        Err(Error::Unauthenticated("wrong token"))
    }
}

/// Proof that the request may read.
#[derive(Debug, Clone, Copy)]
pub struct Reader;

/// Proof that the request carries the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Reader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        state.tokens.check_read(parts).map(|()| Reader)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        state.tokens.check_admin(parts).map(|()| Admin)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = Request::builder().uri("/api/v1/nodes");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.body(()).expect("request").into_parts().0
    }

    fn tokens(admin: Option<&str>, read: Option<&str>) -> Tokens {
        Tokens::new(TokenSet {
            admin: admin.into_iter().map(str::to_owned).collect(),
            read: read.into_iter().map(str::to_owned).collect(),
        })
    }

    #[test]
    fn reading_is_open_without_a_read_token() {
        let t = tokens(Some("adm"), None);
        assert!(t.check_read(&parts(None)).is_ok());
        assert!(t.check_read(&parts(Some("Bearer anything"))).is_ok());
    }

    #[test]
    fn a_read_token_is_required_when_configured() {
        let t = tokens(Some("adm"), Some("rd"));
        assert!(t.check_read(&parts(Some("Bearer rd"))).is_ok());
        assert!(
            t.check_read(&parts(Some("bearer adm"))).is_ok(),
            "admin reads"
        );
        for bad in [None, Some("Bearer rd2"), Some("Basic rd"), Some("rd")] {
            assert!(
                matches!(t.check_read(&parts(bad)), Err(Error::Unauthenticated(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn admin_needs_the_admin_token() {
        let t = tokens(Some("adm"), Some("rd"));
        assert!(t.check_admin(&parts(Some("Bearer adm"))).is_ok());
        for bad in [None, Some("Bearer rd"), Some("Bearer ad"), Some("Bearer")] {
            assert!(
                matches!(t.check_admin(&parts(bad)), Err(Error::Unauthenticated(_))),
                "{bad:?}"
            );
        }
        let disabled = tokens(None, None);
        assert!(matches!(
            disabled.check_admin(&parts(Some("Bearer adm"))),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn several_tokens_and_a_replaced_set() {
        let t = Tokens::new(TokenSet {
            admin: vec!["adm1".into(), "adm2".into()],
            read: vec!["rd1".into(), "rd2".into()],
        });
        for token in ["adm1", "adm2"] {
            assert!(
                t.check_admin(&parts(Some(&format!("Bearer {token}"))))
                    .is_ok()
            );
        }
        for token in ["adm1", "adm2", "rd1", "rd2"] {
            assert!(
                t.check_read(&parts(Some(&format!("Bearer {token}"))))
                    .is_ok()
            );
        }
        let shared = t.clone();
        shared.replace(TokenSet {
            admin: vec!["adm3".into()],
            read: vec![],
        });
        assert!(
            t.check_admin(&parts(Some("Bearer adm1"))).is_err(),
            "the old one is gone"
        );
        assert!(t.check_admin(&parts(Some("Bearer adm3"))).is_ok());
        assert!(
            t.check_read(&parts(None)).is_ok(),
            "no read token: reading is open"
        );
    }

    #[test]
    fn wrong_tokens_hold_the_address_off_but_missing_ones_do_not() {
        // (And a request without a token is still told that one is
        // missing while its address is held off.)
        let t = tokens(Some("adm"), Some("rd"));
        for _ in 0..50 {
            assert!(matches!(
                t.check_read(&parts(None)),
                Err(Error::Unauthenticated(_))
            ));
        }
        for _ in 0..super::super::failed_auth::MAX_FAILURES {
            assert!(matches!(
                t.check_admin(&parts(Some("Bearer guess"))),
                Err(Error::Unauthenticated(_))
            ));
        }
        assert!(matches!(
            t.check_admin(&parts(Some("Bearer adm"))),
            Err(Error::TooManyFailedAuthentications { .. })
        ));
        assert!(matches!(
            t.check_admin(&parts(None)),
            Err(Error::Unauthenticated("the admin token is required"))
        ));
    }

    #[test]
    fn token_forms() {
        let good = "0123456789abcdef0123456789abcdef";
        assert_eq!(check_form(good), Ok(()));
        assert_eq!(check_form(&good[1..]), Err(TokenFormError::TooShort(31)));
        assert_eq!(
            check_form("CHANGE-ME-openssl-rand-hex-32-0123456789"),
            Err(TokenFormError::Placeholder)
        );
        assert_eq!(
            check_form("changeme0123456789abcdef0123456789"),
            Err(TokenFormError::Placeholder)
        );
        assert_eq!(
            check_form("0123456789abcdef 0123456789abcdef"),
            Err(TokenFormError::NotPrintable)
        );
        assert_eq!(
            parse_token_file("# admins\n\n  tok-a  \ntok-b\n#old\n"),
            vec!["tok-a".to_owned(), "tok-b".to_owned()]
        );
    }
}
