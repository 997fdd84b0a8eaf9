//! The API's request and value types: extractors that turn malformed query
//! strings, paths and JSON bodies into our JSON error (400
//! `invalid_argument`) instead of axum's plain-text rejections, parsers for
//! timestamp and duration parameters that name the parameter when they
//! refuse, and the JSON forms of counters (decimal strings) and times
//! (RFC 3339 UTC with milliseconds).

use std::{borrow::Cow, time::Duration};

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::request::Parts,
};
use chrono::{DateTime, NaiveDateTime, SecondsFormat};
use serde::{Serialize, Serializer, de::DeserializeOwned};
use utoipa::openapi::{
    KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat, Type, schema::SchemaType,
};

use crate::error::Error;

/// The query string, deserialized into `T` (unknown parameters are
/// ignored).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| Query(query.0))
            .map_err(|rejection| {
                Error::InvalidArgument(format!("query string: {}", rejection.body_text()))
            })
    }
}

/// The path's parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| Path(path.0))
            .map_err(|rejection| Error::InvalidArgument(format!("path: {}", rejection.body_text())))
    }
}

/// A JSON request body: a JSON object (serde would also take an array as
/// a struct, its members in order).
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidArgument(format!("request body: {reason}"));
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(request, state)
            .await
            .map_err(|rejection| invalid(rejection.body_text()))?;
        let kind = match &value {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Array(_) => Some("an array"),
            serde_json::Value::String(_) => Some("a string"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Null => Some("null"),
        };
        if let Some(kind) = kind {
            return Err(invalid(format!("a JSON object is expected, not {kind}")));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|error| invalid(error.to_string()))
    }
}

/// A timestamp parameter: RFC 3339 with `Z` or an offset (a `+` that the
/// query string turned into a space is taken as `+`), as UTC.
pub fn timestamp(parameter: &str, value: &str) -> Result<NaiveDateTime, Error> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|error| match value.rfind(' ') {
            Some(at) if at > 10 => {
                DateTime::parse_from_rfc3339(&format!("{}+{}", &value[..at], &value[at + 1..]))
            }
            _ => Err(error),
        })
        .map(|t| t.naive_utc())
        .map_err(|error| {
            Error::InvalidArgument(format!(
                "{parameter}: {value:?} is not an RFC 3339 timestamp such as 2026-11-25T10:00:00Z ({error})"
            ))
        })
}

/// A duration parameter such as `90s`, `5m`, `1h` or `7d`.
pub fn duration(parameter: &str, value: &str) -> Result<Duration, Error> {
    humantime::parse_duration(value).map_err(|error| {
        Error::InvalidArgument(format!(
            "{parameter}: {value:?} is not a duration such as 5m, 1h or 7d ({error})"
        ))
    })
}

/// A duration as `24h`, `90m` or `45s`: the largest of these units that
/// divides it.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds > 0 && seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds > 0 && seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// A counter in JSON: a decimal string, exact where a JSON number (a double
/// for most readers) would not be above 2^53.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(pub i128);

impl From<i64> for Counter {
    fn from(value: i64) -> Self {
        Counter(i128::from(value))
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl utoipa::PartialSchema for Counter {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some("^-?[0-9]+$"))
            .description(Some(
                "A 64-bit counter (bytes, or packets) as a decimal string: JSON numbers are \
                 doubles for most readers and lose the last digits above 2^53.",
            ))
            .examples(["9007199254740993"])
            .into()
    }
}

impl utoipa::ToSchema for Counter {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Counter")
    }
}

/// A time in JSON: RFC 3339 in UTC with milliseconds and `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub NaiveDateTime);

impl Time {
    pub fn rfc3339(&self) -> String {
        self.0
            .and_utc()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

impl utoipa::PartialSchema for Time {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 in UTC with milliseconds and `Z`."))
            .examples(["2026-11-25T10:00:00.000Z"])
            .into()
    }
}

impl utoipa::ToSchema for Time {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Time")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_times_serialize_as_strings() {
        let big = (1_i64 << 53) + 1;
        assert_eq!(
            serde_json::to_string(&Counter::from(big)).expect("json"),
            "\"9007199254740993\""
        );
        assert_eq!(
            serde_json::to_string(&Counter(i128::from(i64::MAX) * 2)).expect("json"),
            "\"18446744073709551614\""
        );
        let t = timestamp("to", "2026-11-25T11:00:00.5+01:00").expect("timestamp");
        assert_eq!(Time(t).rfc3339(), "2026-11-25T10:00:00.500Z");
    }

    #[test]
    fn timestamps_are_rfc3339_and_errors_name_the_parameter() {
        let plus_as_space = timestamp("from", "2026-11-25T11:00:00 01:00").expect("timestamp");
        assert_eq!(Time(plus_as_space).rfc3339(), "2026-11-25T10:00:00.000Z");
        for bad in [
            "yesterday",
            "2026-11-25",
            "2026-11-25T10:00:00",
            "",
            "1764064800",
        ] {
            let error = timestamp("from", bad).expect_err(bad).to_string();
            assert!(error.starts_with("from: "), "{error}");
        }
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(duration("step", "5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(
            duration("window", "7d").ok(),
            Some(Duration::from_secs(7 * 86_400))
        );
        let error = duration("window", "soon").expect_err("bad").to_string();
        assert!(error.starts_with("window: \"soon\""), "{error}");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }
}
