//! Archiving a period that ended: one `billing_periods` row with its
//! counters, its billing mode and what closed it, whoever closes it (a
//! heartbeat batch that meets the boundary, the minute sweep, or a reset on
//! request). Its rates are filled in later, outside the closing
//! transaction's row locks.

use chrono::NaiveDateTime;
use sqlx::PgConnection;

use crate::billing::Mode;

/// What closed an archived period (`billing_periods."closedBy"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The node's anchor day came (with a heartbeat, or the sweep).
    Schedule,
    /// A reset on request (command line or admin API).
    Request,
}

impl ClosedBy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Schedule => "schedule",
            ClosedBy::Request => "request",
        }
    }
}

/// Inserts one `billing_periods` row, its rates to be computed later
/// ([`crate::billing::rates::fill_pending`]).
pub async fn insert(
    conn: &mut PgConnection,
    node_id: &str,
    (start, end): (NaiveDateTime, NaiveDateTime),
    (upload, download): (i64, i64),
    mode: Mode,
    closed_by: ClosedBy,
    now: NaiveDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO "billing_periods" ("nodeId", "start", "end", "upload", "download",
             "mode", "closedBy", "closedAt")
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
    )
    .bind(node_id)
    .bind(start)
    .bind(end)
    .bind(upload)
    .bind(download)
    .bind(mode.as_str())
    .bind(closed_by.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
