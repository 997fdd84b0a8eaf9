//! A node's token changed without touching anything else of the node:
//! rotated ([`rotate`]: a new token, the one before valid for a grace), its
//! grace ended by the first use of the new one ([`retire_previous`]), or
//! revoked ([`revoke`]: no token valid until the next rotation). Each
//! change is announced as a `nodes` event, so that every replica's token
//! book (`node_tokens.rs`) reads the node again.

use std::time::Duration;

use chrono::{NaiveDateTime, Utc};
use sqlx::{PgConnection, PgPool, Row as _};

use crate::{
    auth,
    error::Error,
    events::{NodeChange, Notice, Outbox},
};

/// The longest grace a rotation may give the token before it.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// A node's new token: show it once, it is not stored.
#[derive(Debug)]
pub struct Rotated {
    pub id: String,
    pub name: String,
    pub token: String,
    /// Until when the token before it is valid (UTC; at the latest: the
    /// first use of the new one ends it sooner); `None` when it is not.
    pub previous_valid_until: Option<NaiveDateTime>,
}

/// Gives the node with this id or name a new token. The one before stays
/// valid for `grace` (none when zero, or when the node was revoked or had
/// no usable token) or until the new one is first used.
pub async fn rotate(pool: &PgPool, node: &str, grace: Duration) -> Result<Rotated, Error> {
    if grace > MAX_GRACE {
        return Err(Error::InvalidArgument(format!(
            "grace: at most {} days",
            MAX_GRACE.as_secs() / 86_400
        )));
    }
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        r#"SELECT "id", "name", "tokenHash" FROM "nodes"
           WHERE "id" = (SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
                         ORDER BY ("id" = $1) DESC LIMIT 1)
           FOR UPDATE"#,
    )
    .bind(node)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Error::NoSuchNode(node.to_owned()))?;
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("name")?;
    let old_hash: Option<String> = row.try_get("tokenHash")?;
    let token =
        auth::new_token(&id).map_err(|e| Error::Invalid(format!("cannot make a token: {e}")))?;
    let now = Utc::now().naive_utc();
    let keeps_previous = !grace.is_zero()
        && old_hash
            .as_deref()
            .is_some_and(|hash| hash != auth::REVOKED && !hash.is_empty());
    let previous_valid_until = keeps_previous
        .then(|| chrono::Duration::from_std(grace).ok())
        .flatten()
        .and_then(|grace| now.checked_add_signed(grace));
    sqlx::query(
        r#"UPDATE "nodes"
           SET "tokenHash" = $2,
               "previousTokenHash" = CASE WHEN $3::timestamp IS NULL THEN NULL ELSE "tokenHash" END,
               "previousTokenValidUntil" = $3,
               "tokenRevokedAt" = NULL,
               "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
           WHERE "id" = $1"#,
    )
    .bind(&id)
    .bind(&token.hash)
    .bind(previous_valid_until)
    .execute(&mut *tx)
    .await?;
    announce(&mut tx, &id).await?;
    tx.commit().await?;
    tracing::info!(node = %id, %name, ?previous_valid_until, "node token rotated");
    Ok(Rotated {
        id,
        name,
        token: token.token,
        previous_valid_until,
    })
}

/// Makes every token of the node with this id or name invalid, keeping
/// everything else of it (counters, history, periods, audit trail); a
/// rotation gives it a token again. Its id.
pub async fn revoke(pool: &PgPool, node: &str) -> Result<String, Error> {
    let mut tx = pool.begin().await?;
    let id: Option<String> = sqlx::query_scalar(
        r#"UPDATE "nodes"
           SET "tokenHash" = $2, "previousTokenHash" = NULL, "previousTokenValidUntil" = NULL,
               "tokenRevokedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC'),
               "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
           WHERE "id" = (SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
                         ORDER BY ("id" = $1) DESC LIMIT 1)
           RETURNING "id""#,
    )
    .bind(node)
    .bind(auth::REVOKED)
    .fetch_optional(&mut *tx)
    .await?;
    let id = id.ok_or_else(|| Error::NoSuchNode(node.to_owned()))?;
    announce(&mut tx, &id).await?;
    tx.commit().await?;
    tracing::info!(node = %id, "node tokens revoked");
    Ok(id)
}

/// Ends the grace of the node's token before a rotation, if its current
/// token is still the one of hash `current_hash` (the node just used it).
pub async fn retire_previous(pool: &PgPool, id: &str, current_hash: &str) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        r#"UPDATE "nodes" SET "previousTokenHash" = NULL, "previousTokenValidUntil" = NULL
           WHERE "id" = $1 AND "tokenHash" = $2 AND "previousTokenHash" IS NOT NULL"#,
    )
    .bind(id)
    .bind(current_hash)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() > 0 {
        announce(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The `nodes` event of a token change, in `conn`'s transaction.
async fn announce(conn: &mut PgConnection, id: &str) -> Result<(), Error> {
    let mut outbox = Outbox::new();
    outbox.push(&Notice::Nodes {
        node_id: id,
        change: NodeChange::Token,
    });
    outbox.send(conn).await?;
    Ok(())
}
