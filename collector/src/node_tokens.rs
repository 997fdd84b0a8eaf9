//! Every enrolled node's token hash, in memory, so that a heartbeat's
//! token is checked before anything of its message is read or decoded, and
//! without a database query: a flood of wrong or unknown tokens costs a
//! hash and a map lookup each.
//!
//! Loaded at start, kept current by the live events (`nodes`: a node
//! enrolled or removed, on any replica, reloads that node; `resync`, after
//! the event connection was lost, reloads all) and reloaded every
//! [`RELOAD_EVERY`] (nodes enrolled by hand in SQL, without an event). The
//! batch that stores a heartbeat checks the token again against the
//! locked row, so a removed node's heartbeat already on its way is still
//! refused there.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use serde::Deserialize;
use sqlx::{PgPool, Row as _};
use tokio::sync::{broadcast, watch};

use crate::{
    auth::{Admitted, Credentials, NodeKeys},
    events::{Event, Kind},
};

/// How often the whole book is read again, whatever the events said.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);

/// The token hashes by node id.
#[derive(Debug, Default)]
pub struct NodeTokens {
    hashes: RwLock<HashMap<String, NodeKeys>>,
}

/// The columns of a node's keys, in [`keys_of`]'s order.
const KEYS_COLUMNS: &str = r#""tokenHash", "previousTokenHash", "previousTokenValidUntil""#;

/// A node's keys from a row with [`KEYS_COLUMNS`].
fn keys_of(row: &sqlx::postgres::PgRow) -> Result<NodeKeys, sqlx::Error> {
    let previous: Option<String> = row.try_get("previousTokenHash")?;
    let until: Option<chrono::NaiveDateTime> = row.try_get("previousTokenValidUntil")?;
    Ok(NodeKeys {
        current: row.try_get("tokenHash")?,
        previous: previous.zip(until),
    })
}

impl NodeTokens {
    /// Every node's token hash, read now.
    pub async fn load(pool: &PgPool) -> Result<Arc<Self>, sqlx::Error> {
        let book = Arc::new(Self::default());
        book.reload(pool).await?;
        Ok(book)
    }

    /// Which of a node's tokens `credentials` are, if any (the same answer
    /// for an unknown node and a wrong secret).
    pub fn admits(&self, credentials: &Credentials) -> Option<Admitted> {
        let now = chrono::Utc::now().naive_utc();
        let hashes = self.hashes.read().unwrap_or_else(PoisonError::into_inner);
        hashes
            .get(&credentials.node_id)
            .and_then(|keys| keys.admits(credentials, now))
    }

    /// Whether the node still has a token from before a rotation.
    pub fn has_previous(&self, node_id: &str) -> bool {
        self.hashes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_id)
            .is_some_and(|keys| keys.previous.is_some())
    }

    /// Ends the grace of the token before a rotation, now that the node
    /// used its new one (`current_hash`), and tells every replica.
    pub async fn retire_previous(
        &self,
        pool: &PgPool,
        node_id: &str,
        current_hash: &str,
    ) -> Result<(), crate::error::Error> {
        crate::token_rotation::retire_previous(pool, node_id, current_hash).await?;
        self.reload_node(pool, node_id).await?;
        Ok(())
    }

    /// Whether the book holds a node of this id.
    pub fn knows(&self, node_id: &str) -> bool {
        self.hashes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(node_id)
    }

    /// How many nodes the book holds.
    pub fn len(&self) -> usize {
        self.hashes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Reads every node's token hash again.
    pub async fn reload(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"SELECT "id", {KEYS_COLUMNS} FROM "nodes""#
        )))
        .fetch_all(pool)
        .await?;
        let mut fresh = HashMap::with_capacity(rows.len());
        for row in rows {
            fresh.insert(row.try_get("id")?, keys_of(&row)?);
        }
        *self.hashes.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Reads one node's token hash again (gone when the node is).
    pub async fn reload_node(&self, pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"SELECT {KEYS_COLUMNS} FROM "nodes" WHERE "id" = $1"#
        )))
        .bind(id)
        .fetch_optional(pool)
        .await?;
        let keys = row.as_ref().map(keys_of).transpose()?;
        let mut hashes = self.hashes.write().unwrap_or_else(PoisonError::into_inner);
        match keys {
            Some(keys) => hashes.insert(id.to_owned(), keys),
            None => hashes.remove(id),
        };
        Ok(())
    }

    /// Keeps the book current from `events` (and every [`RELOAD_EVERY`])
    /// until `stopping` turns true.
    pub async fn follow(
        self: Arc<Self>,
        pool: PgPool,
        mut events: broadcast::Receiver<Event>,
        mut stopping: watch::Receiver<bool>,
    ) {
        /// What an event (or the clock) calls for.
        enum Reload {
            All,
            Node(String),
            Nothing,
        }
        // Once soon (a node enrolled between the load and the moment the
        // event connection began to listen), then every RELOAD_EVERY.
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(2),
            RELOAD_EVERY,
        );
        loop {
            let reload = tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                _ = every.tick() => Reload::All,
                event = events.recv() => match event {
                    Ok(event) => match event.kind {
                        Kind::Nodes => node_of(&event).map_or(Reload::All, Reload::Node),
                        Kind::Resync => Reload::All,
                        _ => Reload::Nothing,
                    },
                    // Events were missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => Reload::All,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let result = match reload {
                Reload::All => self.reload(&pool).await,
                Reload::Node(id) => self.reload_node(&pool, &id).await,
                Reload::Nothing => Ok(()),
            };
            if let Err(error) = result {
                tracing::warn!(%error, "cannot read the nodes' tokens; keeping the ones known");
            }
        }
    }
}

/// The node a `nodes` event is about.
fn node_of(event: &Event) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NodeEvent {
        node_id: String,
    }
    serde_json::from_str::<NodeEvent>(&event.data)
        .ok()
        .map(|e| e.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth;

    #[test]
    fn only_a_known_node_with_its_own_secret_is_admitted() {
        let made = auth::new_token("n1").expect("rng");
        let book = NodeTokens::default();
        book.hashes.write().expect("lock").insert(
            "n1".into(),
            NodeKeys {
                current: made.hash.clone(),
                previous: None,
            },
        );
        let credentials =
            auth::from_bearer(Some(&format!("Bearer {}", made.token))).expect("parses");
        assert_eq!(book.admits(&credentials), Some(Admitted::Current));
        let other = auth::new_token("n1").expect("rng");
        let wrong = auth::from_bearer(Some(&format!("Bearer {}", other.token))).expect("parses");
        assert_eq!(book.admits(&wrong), None, "wrong secret");
        let stranger = auth::new_token("n2").expect("rng");
        let unknown =
            auth::from_bearer(Some(&format!("Bearer {}", stranger.token))).expect("parses");
        assert_eq!(book.admits(&unknown), None, "unknown node");
    }

    #[test]
    fn a_nodes_event_names_its_node() {
        let event = Event {
            kind: Kind::Nodes,
            data: Arc::from(r#"{"type":"nodes","nodeId":"cabc","change":"removed"}"#),
        };
        assert_eq!(node_of(&event).as_deref(), Some("cabc"));
    }
}
