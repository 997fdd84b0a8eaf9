//! The counter sets the collector followed for each node (`counter_sets`):
//! what rule 1 of the order of counter sets needs ("a set or a boot
//! followed before never counts again"). A row is added when a set is
//! first applied; the newest [`KEPT_PER_NODE`] are kept per node, so that a
//! node that starts counter sets in a loop cannot grow the table.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use sqlx::PgConnection;

use crate::{accounting::CounterSet, ingest::plan::Adopted};

/// Counter sets kept per node (years of daily reboots need far fewer to
/// decide; an older set's boot is then judged by the other rules).
pub const KEPT_PER_NODE: i64 = 64;

/// One `counter_sets` row, as far as deciding needs it.
#[derive(Debug, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct FollowedRow {
    node_id: String,
    boot_id: String,
    epoch: String,
}

/// The followed counter sets of `ids`, by node id.
pub(super) async fn load(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, Vec<CounterSet>>, sqlx::Error> {
    let mut followed: HashMap<String, Vec<CounterSet>> = HashMap::new();
    if ids.is_empty() {
        return Ok(followed);
    }
    let rows: Vec<FollowedRow> = sqlx::query_as(
        r#"SELECT "nodeId", "bootId", "epoch" FROM "counter_sets" WHERE "nodeId" = ANY($1)"#,
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    for row in rows {
        followed.entry(row.node_id).or_default().push(CounterSet {
            boot_id: row.boot_id,
            epoch: row.epoch,
        });
    }
    Ok(followed)
}

/// Records the sets first applied in the batch (`adopted`, per node in the
/// order they were applied) and forgets the oldest beyond the kept number.
pub(super) async fn record(
    conn: &mut PgConnection,
    adopted: &[(&str, &Adopted<'_>)],
    now: NaiveDateTime,
) -> Result<(), sqlx::Error> {
    if adopted.is_empty() {
        return Ok(());
    }
    // WITH ORDINALITY keeps the batch's order in the serial ids.
    sqlx::query(
        r#"INSERT INTO "counter_sets"
             ("nodeId", "bootId", "epoch", "generation", "epochCreatedAt", "followedAt")
           SELECT u.id, u.boot, u.epoch, u.generation, u.created, $1
           FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
             WITH ORDINALITY AS u(id, boot, epoch, generation, created, n)
           ORDER BY u.n
           ON CONFLICT ("nodeId", "bootId", "epoch") DO NOTHING"#,
    )
    .bind(now)
    .bind(adopted.iter().map(|a| a.0).collect::<Vec<_>>())
    .bind(
        adopted
            .iter()
            .map(|a| a.1.set.boot_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        adopted
            .iter()
            .map(|a| a.1.set.epoch.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(adopted.iter().map(|a| a.1.generation).collect::<Vec<_>>())
    .bind(
        adopted
            .iter()
            .map(|a| a.1.created_unix_ns)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    let mut ids: Vec<&str> = adopted.iter().map(|a| a.0).collect();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query(
        r#"DELETE FROM "counter_sets" o USING (
             SELECT "id", row_number() OVER (PARTITION BY "nodeId" ORDER BY "id" DESC) AS "newest"
             FROM "counter_sets" WHERE "nodeId" = ANY($1)
           ) r
           WHERE o."id" = r."id" AND r."newest" > $2"#,
    )
    .bind(&ids)
    .bind(KEPT_PER_NODE)
    .execute(conn)
    .await?;
    Ok(())
}
