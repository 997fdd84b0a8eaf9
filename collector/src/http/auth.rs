//! Bearer tokens of the HTTP side: the admin token (enrol, remove, reset)
//! and the optional read token (everything else under `/api/v1`, the event
//! stream and `/metrics`). The admin token also reads. Tokens are compared
//! in constant time.
//!
//! Handlers ask for access by taking an extractor: [`Reader`] or [`Admin`].

use axum::{extract::FromRequestParts, http::request::Parts};
use subtle::ConstantTimeEq as _;

use super::AppState;
use crate::error::Error;

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Without it, the admin endpoints are disabled (403).
    pub admin: Option<String>,
    /// Without it, reading is open.
    pub read: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("admin", &self.admin.as_ref().map(|_| "<set>"))
            .field("read", &self.read.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn same(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
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

impl Tokens {
    /// Whether the request may read.
    pub fn check_read(&self, parts: &Parts) -> Result<(), Error> {
        let Some(read) = &self.read else {
            return Ok(());
        };
        match bearer(parts)? {
            None => Err(Error::Unauthenticated("a bearer token is required")),
            Some(token)
                if same(token, read) || self.admin.as_deref().is_some_and(|a| same(token, a)) =>
            {
                Ok(())
            }
            Some(_) => Err(Error::Unauthenticated("wrong token")),
        }
    }

    /// Whether the request may change the fleet.
    pub fn check_admin(&self, parts: &Parts) -> Result<(), Error> {
        let Some(admin) = &self.admin else {
            return Err(Error::Forbidden(
                "the admin API is disabled: start the collector with --admin-token",
            ));
        };
        match bearer(parts)? {
            None => Err(Error::Unauthenticated("the admin token is required")),
            Some(token) if same(token, admin) => Ok(()),
            Some(_) => Err(Error::Unauthenticated("wrong token")),
        }
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
        Tokens {
            admin: admin.map(str::to_owned),
            read: read.map(str::to_owned),
        }
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
}
