//! Node enrolment: add (id and a secret token, only its hash stored), list,
//! remove. Adding and removing are announced as `nodes` live events.

use chrono::NaiveDateTime;
use sqlx::{PgConnection, PgPool};

use crate::{
    auth,
    error::Error,
    events::{NodeChange, Notice, Outbox},
};

/// A node just added: show the token once, it is not stored.
#[derive(Debug)]
pub struct Added {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// A row of `node list`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub hostname: Option<String>,
    pub last_seen: Option<NaiveDateTime>,
    pub total_upload: i64,
    pub total_download: i64,
    pub period_upload: i64,
    pub period_download: i64,
    pub period_start: NaiveDateTime,
}

/// Longest node name.
pub const MAX_NAME: usize = 128;

/// Adds a node named `name` with its `traffic_stats` row.
pub async fn add(pool: &PgPool, name: &str) -> Result<Added, Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "name: a node name is 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    let id = cuid::cuid1();
    let token =
        auth::new_token(&id).map_err(|e| Error::Invalid(format!("cannot make a token: {e}")))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        r#"INSERT INTO "nodes" ("id", "name", "tokenHash", "updatedAt")
           VALUES ($1, $2, $3, date_trunc('milliseconds', now() AT TIME ZONE 'UTC'))
           ON CONFLICT ("name") DO NOTHING"#,
    )
    .bind(&id)
    .bind(name)
    .bind(&token.hash)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::NodeExists(name.to_owned()));
    }
    sqlx::query(
        r#"INSERT INTO "traffic_stats" ("id", "nodeId", "updatedAt")
           VALUES ($1, $2, date_trunc('milliseconds', now() AT TIME ZONE 'UTC'))"#,
    )
    .bind(cuid::cuid1())
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    announce(&mut tx, &id, NodeChange::Added).await?;
    tx.commit().await?;
    Ok(Added {
        id,
        name: name.to_owned(),
        token: token.token,
    })
}

/// Every node, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Listed>, Error> {
    Ok(sqlx::query_as(
        r#"SELECT n."id", n."name", n."hostname", n."lastSeen",
                  t."totalUpload", t."totalDownload", t."periodUpload", t."periodDownload",
                  t."periodStart"
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           ORDER BY n."name""#,
    )
    .fetch_all(pool)
    .await?)
}

/// Removes the node with this id or name, and everything stored of it.
pub async fn remove(pool: &PgPool, node: &str) -> Result<String, Error> {
    let mut tx = pool.begin().await?;
    let id: Option<String> = sqlx::query_scalar(
        r#"DELETE FROM "nodes" WHERE "id" = (SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
                                             ORDER BY ("id" = $1) DESC LIMIT 1)
           RETURNING "id""#,
    )
    .bind(node)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(Error::NoSuchNode(node.to_owned()));
    };
    announce(&mut tx, &id, NodeChange::Removed).await?;
    tx.commit().await?;
    Ok(id)
}

/// Sends the `nodes` event of `change` in `conn`'s transaction.
async fn announce(conn: &mut PgConnection, id: &str, change: NodeChange) -> Result<(), Error> {
    let mut outbox = Outbox::new();
    outbox.push(&Notice::Nodes {
        node_id: id,
        change,
    });
    outbox.send(conn).await?;
    Ok(())
}
