//! Calibration: an admin sets or offsets a node's period and total
//! counters, e.g. to match the provider's bill. The period is part of the
//! total, so changing the period by Δ changes the total by Δ too; setting
//! the total changes only the total. A calibration that would take a
//! counter below 0 or above 2^63 - 1, leave the period above the total, or
//! change nothing is refused and changes nothing. Each one is stored with
//! its actor, reason and the four counters before and after in
//! `calibrations`, and announced as a `calibration` live event, in the
//! transaction that changes the counters.

use std::{fmt, str::FromStr};

use chrono::NaiveDateTime;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _, postgres::PgRow};

use super::{Audit, Locked, lock_node, node_id, write_traffic};
use crate::{
    error::Error,
    events::{Notice, Outbox, TrafficCounters},
};

/// How one counter is adjusted: set to a value or offset by a number of
/// bytes (what `calibrate` takes as a CHANGE, and the API as a
/// `CounterChange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// To this value (0 to 2^63 - 1).
    Set(i64),
    /// By this many bytes (negative: fewer).
    Offset(i64),
}

impl Adjustment {
    /// A set value given as a decimal string; `field` names it in errors.
    pub fn set(field: &str, value: &str) -> Result<Adjustment, Error> {
        match value.trim().parse::<i64>() {
            Ok(value) if value >= 0 => Ok(Adjustment::Set(value)),
            _ => Err(Error::InvalidArgument(format!(
                "{field}: {value:?} is not a byte count from 0 to 9223372036854775807"
            ))),
        }
    }

    /// An offset given as a decimal string (with an optional sign);
    /// `field` names it in errors.
    pub fn offset(field: &str, value: &str) -> Result<Adjustment, Error> {
        value
            .trim()
            .parse::<i64>()
            .map(Adjustment::Offset)
            .map_err(|_| {
                Error::InvalidArgument(format!(
                    "{field}: {value:?} is not a whole number of bytes from \
                     -9223372036854775808 to 9223372036854775807"
                ))
            })
    }
}

/// The command line's form: `=N` sets, `+N` adds, `-N` subtracts.
impl FromStr for Adjustment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not a change: =N sets the counter to N bytes, +N adds N, -N subtracts N \
                 (N a whole number, e.g. =1000000, +5000, -5000)"
            )
        };
        let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
        if let Some(n) = s.strip_prefix('=') {
            if !digits(n) {
                return Err(bad());
            }
            return n.parse().map(Adjustment::Set).map_err(|_| bad());
        }
        if let Some(n) = s.strip_prefix('+')
            && digits(n)
        {
            return n.parse().map(Adjustment::Offset).map_err(|_| bad());
        }
        if let Some(n) = s.strip_prefix('-')
            && digits(n)
        {
            return s.parse().map(Adjustment::Offset).map_err(|_| bad());
        }
        Err(bad())
    }
}

impl fmt::Display for Adjustment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Adjustment::Set(n) => write!(f, "={n}"),
            Adjustment::Offset(n) if *n < 0 => write!(f, "{n}"),
            Adjustment::Offset(n) => write!(f, "+{n}"),
        }
    }
}

/// What a calibration changes; counters not named stay (but a change of
/// the period moves the total along).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub period_upload: Option<Adjustment>,
    pub period_download: Option<Adjustment>,
    pub total_upload: Option<Adjustment>,
    pub total_download: Option<Adjustment>,
}

/// A node's four counters, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub total_upload: i64,
    pub total_download: i64,
    pub period_upload: i64,
    pub period_download: i64,
}

impl From<&TrafficCounters> for Counters {
    fn from(t: &TrafficCounters) -> Self {
        Counters {
            total_upload: t.total_upload,
            total_download: t.total_download,
            period_upload: t.period_upload,
            period_download: t.period_download,
        }
    }
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// The counters after the changes, or why they are refused.
    ///
    /// Per direction: the period becomes its set value or moves by its
    /// offset (Δ = new - old); the total becomes its set value if it has
    /// one, else it moves by Δ plus its own offset.
    pub fn apply(&self, before: Counters) -> Result<Counters, Error> {
        if self.is_empty() {
            return Err(nothing_to_calibrate());
        }
        let (period_upload, total_upload) = direction(
            "upload",
            (before.period_upload, before.total_upload),
            (self.period_upload, self.total_upload),
        )?;
        let (period_download, total_download) = direction(
            "download",
            (before.period_download, before.total_download),
            (self.period_download, self.total_download),
        )?;
        let after = Counters {
            total_upload,
            total_download,
            period_upload,
            period_download,
        };
        if after == before {
            return Err(Error::Conflict(format!(
                "the calibration changes nothing: the counters are already total upload {}, \
                 total download {}, period upload {}, period download {}",
                before.total_upload,
                before.total_download,
                before.period_upload,
                before.period_download
            )));
        }
        Ok(after)
    }
}

fn nothing_to_calibrate() -> Error {
    Error::InvalidArgument(
        "nothing to calibrate: give a set or an offset for at least one of period upload, \
         period download, total upload and total download"
            .into(),
    )
}

/// One direction's (period, total) after `changes`, checked.
fn direction(
    name: &str,
    (period, total): (i64, i64),
    changes: (Option<Adjustment>, Option<Adjustment>),
) -> Result<(i64, i64), Error> {
    let wide = |change: Option<Adjustment>, now: i64| -> i128 {
        match change {
            None => i128::from(now),
            Some(Adjustment::Set(value)) => i128::from(value),
            Some(Adjustment::Offset(by)) => i128::from(now) + i128::from(by),
        }
    };
    let new_period = wide(changes.0, period);
    let moved = i128::from(total) + (new_period - i128::from(period));
    let new_total = match changes.1 {
        None => moved,
        Some(Adjustment::Set(value)) => i128::from(value),
        Some(Adjustment::Offset(by)) => moved + i128::from(by),
    };
    let check = |what: &str, value: i128| -> Result<i64, Error> {
        if value < 0 {
            return Err(Error::Conflict(format!(
                "{what} {name} would be {value} bytes: a counter cannot go below 0; nothing was changed"
            )));
        }
        i64::try_from(value).map_err(|_| {
            Error::Conflict(format!(
                "{what} {name} would be {value} bytes, more than 2^63 - 1; nothing was changed"
            ))
        })
    };
    let new_period = check("period", new_period)?;
    let new_total = check("total", new_total)?;
    if new_period > new_total {
        return Err(Error::Conflict(format!(
            "period {name} ({new_period}) would exceed total {name} ({new_total}): the period is \
             part of the total; nothing was changed"
        )));
    }
    Ok((new_period, new_total))
}

/// A stored calibration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calibration {
    pub id: i64,
    pub node_id: String,
    pub at: NaiveDateTime,
    pub actor: String,
    pub reason: String,
    pub before: Counters,
    pub after: Counters,
}

/// The table's columns; every statement is put together from constant text
/// only.
const COLUMNS: &str = r#""id", "nodeId", "at", "actor", "reason",
    "totalUploadBefore", "totalDownloadBefore", "periodUploadBefore", "periodDownloadBefore",
    "totalUploadAfter", "totalDownloadAfter", "periodUploadAfter", "periodDownloadAfter""#;

fn from_row(row: &PgRow) -> Result<Calibration, sqlx::Error> {
    let counters = |when: &str| -> Result<Counters, sqlx::Error> {
        Ok(Counters {
            total_upload: row.try_get(format!("totalUpload{when}").as_str())?,
            total_download: row.try_get(format!("totalDownload{when}").as_str())?,
            period_upload: row.try_get(format!("periodUpload{when}").as_str())?,
            period_download: row.try_get(format!("periodDownload{when}").as_str())?,
        })
    };
    Ok(Calibration {
        id: row.try_get("id")?,
        node_id: row.try_get("nodeId")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        reason: row.try_get("reason")?,
        before: counters("Before")?,
        after: counters("After")?,
    })
}

/// Calibrates the node whose id (or else name) is `node`: in one
/// transaction, locks its rows, applies `changes`, stores the audit row and
/// announces a `calibration` event. Refused calibrations change nothing.
pub async fn calibrate(
    pool: &PgPool,
    node: &str,
    changes: &Changes,
    audit: &Audit,
) -> Result<Calibration, Error> {
    // A request that can never apply is refused before anything is locked.
    if changes.is_empty() {
        return Err(nothing_to_calibrate());
    }
    let mut tx = pool.begin().await?;
    let Some(mut locked) = lock_node(&mut tx, node).await? else {
        return Err(Error::NoSuchNode(node.to_owned()));
    };
    let before = Counters::from(&locked.traffic);
    let after = changes.apply(before)?;
    locked.traffic.total_upload = after.total_upload;
    locked.traffic.total_download = after.total_download;
    locked.traffic.period_upload = after.period_upload;
    locked.traffic.period_download = after.period_download;
    write_traffic(&mut tx, &locked).await?;
    let calibration = insert(&mut tx, &locked, before, after, audit).await?;
    let mut outbox = Outbox::new();
    outbox.push(&Notice::Calibration {
        node_id: &locked.id,
        calibration_id: calibration.id,
        traffic: locked.traffic,
    });
    outbox.send(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(
        node = %calibration.node_id,
        calibration = calibration.id,
        actor = %calibration.actor,
        ?before,
        ?after,
        "node calibrated"
    );
    Ok(calibration)
}

async fn insert(
    conn: &mut PgConnection,
    node: &Locked,
    before: Counters,
    after: Counters,
    audit: &Audit,
) -> Result<Calibration, sqlx::Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"INSERT INTO "calibrations" ("nodeId", "at", "actor", "reason",
             "totalUploadBefore", "totalDownloadBefore", "periodUploadBefore",
             "periodDownloadBefore", "totalUploadAfter", "totalDownloadAfter",
             "periodUploadAfter", "periodDownloadAfter")
           VALUES ($1, date_trunc('milliseconds', now() AT TIME ZONE 'UTC'), $2, $3,
                   $4, $5, $6, $7, $8, $9, $10, $11)
           RETURNING {COLUMNS}"#
    )))
    .bind(&node.id)
    .bind(audit.actor())
    .bind(audit.reason())
    .bind(before.total_upload)
    .bind(before.total_download)
    .bind(before.period_upload)
    .bind(before.period_download)
    .bind(after.total_upload)
    .bind(after.total_download)
    .bind(after.period_upload)
    .bind(after.period_download)
    .fetch_one(&mut *conn)
    .await?;
    from_row(&row)
}

/// The calibrations of the node whose id (or else name) is `node`, newest
/// first, at most `limit`.
pub async fn list(pool: &PgPool, node: &str, limit: i64) -> Result<Vec<Calibration>, Error> {
    let limit = super::check_limit(limit)?;
    let mut conn = pool.acquire().await?;
    let id = node_id(&mut conn, node).await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        r#"SELECT {COLUMNS} FROM "calibrations" WHERE "nodeId" = $1
           ORDER BY "at" DESC, "id" DESC LIMIT $2"#
    )))
    .bind(&id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// The calibrations of node `id` made in [from, to), oldest first (for the
/// node's history).
pub async fn between(
    conn: &mut PgConnection,
    id: &str,
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> Result<Vec<Calibration>, sqlx::Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        r#"SELECT {COLUMNS} FROM "calibrations"
           WHERE "nodeId" = $1 AND "at" >= $2 AND "at" < $3
           ORDER BY "at", "id""#
    )))
    .bind(id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: Counters = Counters {
        total_upload: 1000,
        total_download: 2000,
        period_upload: 100,
        period_download: 200,
    };

    fn refused(changes: Changes) -> String {
        match changes.apply(BEFORE) {
            Err(Error::InvalidArgument(message) | Error::Conflict(message)) => message,
            other => panic!("{changes:?}: {other:?}"),
        }
    }

    #[test]
    fn a_period_change_moves_the_total_by_the_same_amount() {
        let after = Changes {
            period_upload: Some(Adjustment::Offset(-50)),
            period_download: Some(Adjustment::Set(500)),
            ..Changes::default()
        }
        .apply(BEFORE)
        .expect("valid");
        assert_eq!(
            after,
            Counters {
                total_upload: 950,
                total_download: 2300,
                period_upload: 50,
                period_download: 500,
            }
        );
    }

    #[test]
    fn setting_the_total_changes_only_the_total() {
        let after = Changes {
            total_upload: Some(Adjustment::Set(5000)),
            total_download: Some(Adjustment::Offset(-1800)),
            ..Changes::default()
        }
        .apply(BEFORE)
        .expect("valid");
        assert_eq!(
            after,
            Counters {
                total_upload: 5000,
                total_download: 200,
                ..BEFORE
            }
        );
        // Both given: the total's set value is final; its offset comes on
        // top of the period's move.
        let after = Changes {
            period_upload: Some(Adjustment::Set(300)),
            total_upload: Some(Adjustment::Set(700)),
            period_download: Some(Adjustment::Offset(10)),
            total_download: Some(Adjustment::Offset(5)),
        }
        .apply(BEFORE)
        .expect("valid");
        assert_eq!(
            after,
            Counters {
                total_upload: 700,
                total_download: 2015,
                period_upload: 300,
                period_download: 210,
            }
        );
    }

    #[test]
    fn inconsistent_or_empty_calibrations_are_refused() {
        let m = refused(Changes {
            period_upload: Some(Adjustment::Offset(-101)),
            ..Changes::default()
        });
        assert!(m.starts_with("period upload would be -1 bytes"), "{m}");
        let m = refused(Changes {
            total_download: Some(Adjustment::Set(199)),
            ..Changes::default()
        });
        assert!(
            m.starts_with("period download (200) would exceed total download (199)"),
            "{m}"
        );
        let m = refused(Changes {
            total_upload: Some(Adjustment::Offset(i64::MAX)),
            ..Changes::default()
        });
        assert!(m.contains("more than 2^63 - 1"), "{m}");
        let m = refused(Changes {
            period_upload: Some(Adjustment::Offset(i64::MAX - 950)),
            ..Changes::default()
        });
        assert!(m.starts_with("total upload would be"), "{m}");
        let m = refused(Changes {
            total_upload: Some(Adjustment::Offset(i64::MIN)),
            ..Changes::default()
        });
        assert!(m.starts_with("total upload would be -"), "{m}");
        assert!(refused(Changes::default()).starts_with("nothing to calibrate"));
        let m = refused(Changes {
            period_upload: Some(Adjustment::Set(100)),
            total_download: Some(Adjustment::Offset(0)),
            ..Changes::default()
        });
        assert!(m.starts_with("the calibration changes nothing"), "{m}");
        // No change given is a bad request; what the counters as they are
        // do not allow, a conflict (HTTP 409).
        assert!(matches!(
            Changes::default().apply(BEFORE),
            Err(Error::InvalidArgument(_))
        ));
        let below_zero = Changes {
            period_upload: Some(Adjustment::Offset(-101)),
            ..Changes::default()
        };
        assert!(matches!(below_zero.apply(BEFORE), Err(Error::Conflict(_))));
        // At the limits.
        let top = Changes {
            total_upload: Some(Adjustment::Set(i64::MAX)),
            period_upload: Some(Adjustment::Set(0)),
            ..Changes::default()
        }
        .apply(BEFORE)
        .expect("2^63 - 1 is allowed");
        assert_eq!((top.total_upload, top.period_upload), (i64::MAX, 0));
    }

    #[test]
    fn the_command_line_form_parses_and_prints() {
        for (text, change) in [
            ("=0", Adjustment::Set(0)),
            ("=9223372036854775807", Adjustment::Set(i64::MAX)),
            ("+5", Adjustment::Offset(5)),
            ("-5", Adjustment::Offset(-5)),
            ("-9223372036854775808", Adjustment::Offset(i64::MIN)),
        ] {
            assert_eq!(text.parse::<Adjustment>(), Ok(change), "{text}");
        }
        assert_eq!(Adjustment::Offset(7).to_string(), "+7");
        assert_eq!(Adjustment::Offset(-7).to_string(), "-7");
        assert_eq!(Adjustment::Set(7).to_string(), "=7");
        for bad in [
            "5",
            "=",
            "+",
            "=-5",
            "=+5",
            "+-5",
            "--5",
            "=1.5",
            "=9223372036854775808",
            "+1k",
            " =5",
        ] {
            let error = bad.parse::<Adjustment>().expect_err(bad);
            assert!(error.contains("=N sets the counter"), "{error}");
        }
    }

    #[test]
    fn the_json_forms_parse_and_name_the_field() {
        assert_eq!(Adjustment::set("f", "12").ok(), Some(Adjustment::Set(12)));
        assert_eq!(
            Adjustment::offset("f", "-12").ok(),
            Some(Adjustment::Offset(-12))
        );
        assert_eq!(
            Adjustment::offset("f", "+12").ok(),
            Some(Adjustment::Offset(12))
        );
        for bad in ["-1", "x", "", "1e3"] {
            let error = Adjustment::set("period.upload.set", bad).expect_err(bad);
            assert!(
                error.to_string().starts_with("period.upload.set: "),
                "{error}"
            );
        }
        let error = Adjustment::offset("total.download.offset", "9223372036854775808")
            .expect_err("too large");
        assert!(error.to_string().starts_with("total.download.offset: "));
    }
}
