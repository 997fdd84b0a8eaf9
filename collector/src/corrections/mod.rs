//! Corrections by admins, each kept with who made it and why:
//! [`calibrate`] sets or offsets a node's period and total counters (every
//! change audited in `calibrations`), [`anomalies`] lists the deltas the
//! ingest held as too large and accepts (counts) or discards them.
//!
//! Both lock a node's rows as heartbeat batches do (`nodes`, then
//! `traffic_stats`, in one statement), so a correction and a batch never
//! deadlock and never lose each other's bytes, and both announce what they
//! did as a live event in their transaction.

pub mod anomalies;
pub mod calibrate;

use sqlx::PgConnection;

use crate::{error::Error, events::TrafficCounters};

/// Longest actor (in characters, after trimming).
pub const MAX_ACTOR: usize = 200;
/// Longest reason (in characters, after trimming).
pub const MAX_REASON: usize = 1000;

/// Who made a correction and why (both required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    actor: String,
    reason: String,
}

impl Audit {
    /// Checks and trims `actor` (1 to [`MAX_ACTOR`] characters, one line)
    /// and `reason` (1 to [`MAX_REASON`] characters; line breaks and tabs
    /// allowed, other control characters not).
    pub fn new(actor: &str, reason: &str) -> Result<Audit, Error> {
        let actor = actor.trim();
        let reason = reason.trim();
        let length = |text: &str, max: usize| (1..=max).contains(&text.chars().count());
        if !length(actor, MAX_ACTOR) || actor.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "actor: who makes the change is required: 1 to {MAX_ACTOR} characters on one line"
            )));
        }
        if !length(reason, MAX_REASON)
            || reason
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        {
            return Err(Error::InvalidArgument(format!(
                "reason: why the change is made is required: 1 to {MAX_REASON} characters \
                 without control characters other than line breaks and tabs"
            )));
        }
        Ok(Audit {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        })
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A node's id and `traffic_stats`, as locked.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Locked {
    id: String,
    #[sqlx(flatten)]
    traffic: TrafficCounters,
}

/// Locks the rows of the node whose id (or else name) is `node`, as
/// heartbeat batches lock them: `nodes` then `traffic_stats`, in one
/// statement. `None` when there is no such node.
async fn lock_node(conn: &mut PgConnection, node: &str) -> Result<Option<Locked>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT n."id", t."totalUpload", t."totalDownload", t."periodUpload",
                  t."periodDownload", t."periodStart"
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           WHERE n."id" = (SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
                           ORDER BY ("id" = $1) DESC LIMIT 1)
           FOR UPDATE OF n, t"#,
    )
    .bind(node)
    .fetch_optional(&mut *conn)
    .await
}

/// Writes a locked node's counters (and `updatedAt`).
async fn write_traffic(conn: &mut PgConnection, node: &Locked) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE "traffic_stats" SET
             "totalUpload" = $2, "totalDownload" = $3,
             "periodUpload" = $4, "periodDownload" = $5,
             "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
           WHERE "nodeId" = $1"#,
    )
    .bind(&node.id)
    .bind(node.traffic.total_upload)
    .bind(node.traffic.total_download)
    .bind(node.traffic.period_upload)
    .bind(node.traffic.period_download)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The id (or else name) of a node, as its id; [`Error::NoSuchNode`] when
/// there is none.
async fn node_id(conn: &mut PgConnection, node: &str) -> Result<String, Error> {
    sqlx::query_scalar(
        r#"SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
           ORDER BY ("id" = $1) DESC LIMIT 1"#,
    )
    .bind(node)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::NoSuchNode(node.to_owned()))
}

/// Most rows a list returns, and how many without a limit.
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

/// Refuses a list limit outside 1..=[`MAX_LIMIT`].
pub fn check_limit(limit: i64) -> Result<i64, Error> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(Error::InvalidArgument(format!(
            "limit: {limit} is not from 1 to {MAX_LIMIT}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_and_reason_are_required_and_trimmed() {
        let audit = Audit::new("  alice ", "\tmatch bill #123\n").expect("valid");
        assert_eq!(
            (audit.actor(), audit.reason()),
            ("alice", "match bill #123")
        );
        Audit::new("a", "line one\nline two").expect("line breaks in a reason");
        Audit::new(&"é".repeat(MAX_ACTOR), &"x".repeat(MAX_REASON)).expect("at the limits");
        for (actor, reason, field) in [
            ("", "why", "actor:"),
            ("   ", "why", "actor:"),
            ("a\nb", "why", "actor:"),
            (&"a".repeat(MAX_ACTOR + 1), "why", "actor:"),
            ("alice", "", "reason:"),
            ("alice", " \n ", "reason:"),
            ("alice", "bell\u{7}", "reason:"),
            ("alice", &"x".repeat(MAX_REASON + 1), "reason:"),
        ] {
            match Audit::new(actor, reason) {
                Err(Error::InvalidArgument(message)) => {
                    assert!(message.starts_with(field), "{message}")
                }
                other => panic!("{actor:?} {reason:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(check_limit(1).ok(), Some(1));
        assert_eq!(check_limit(MAX_LIMIT).ok(), Some(MAX_LIMIT));
        for bad in [0, -1, MAX_LIMIT + 1] {
            assert!(check_limit(bad).is_err(), "{bad}");
        }
    }
}
