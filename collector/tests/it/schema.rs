//! The database schema against a real PostgreSQL: `traffic_stats` as the
//! migrations create it is exactly the seed's (a compatibility contract), and
//! every migration applies and reverts cleanly.

use crate::common;

use sqlx::{AssertSqlSafe, Connection as _, PgConnection, migrate::Migrator};
use tally_testkit::devdb::TempCluster;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The seed's `nodes` table reduced to what `traffic_stats` refers to.
const MINIMAL_NODES_SQL: &str =
    r#"CREATE TABLE "nodes" ("id" TEXT NOT NULL, CONSTRAINT "nodes_pkey" PRIMARY KEY ("id"));"#;

/// Verbatim from the seed's "Manual Migration (Alternative)" section
/// (`seed/000_36f264ec81ef2619.txt` of the design documents): the
/// `traffic_stats` table that a backend written for the seed expects.
const SEED_TRAFFIC_STATS_SQL: &str = r#"
-- Create traffic_stats table
CREATE TABLE "traffic_stats" (
    "id" TEXT NOT NULL,
    "nodeId" TEXT NOT NULL,
    "totalUpload" BIGINT NOT NULL DEFAULT 0,
    "totalDownload" BIGINT NOT NULL DEFAULT 0,
    "periodUpload" BIGINT NOT NULL DEFAULT 0,
    "periodDownload" BIGINT NOT NULL DEFAULT 0,
    "periodStart" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lastRxBytes" BIGINT,
    "lastTxBytes" BIGINT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "traffic_stats_pkey" PRIMARY KEY ("id")
);

-- Create unique index on nodeId
CREATE UNIQUE INDEX "traffic_stats_nodeId_key" ON "traffic_stats"("nodeId");

-- Add foreign key constraint
ALTER TABLE "traffic_stats" ADD CONSTRAINT "traffic_stats_nodeId_fkey"
    FOREIGN KEY ("nodeId") REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE;
"#;

/// The table that keeps track of applied migrations (sqlx's default name).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A new database on `cluster` holding what `sql` creates.
async fn database_from_sql(cluster: &TempCluster, name: &str, sql: &str) -> PgConnection {
    let url = cluster
        .create_database(name)
        .await
        .expect("create database");
    let mut conn = connect(&url).await;
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("SQL for database {name} failed: {e}"));
    conn
}

/// The seed's tables, created by the seed's own SQL.
async fn seed_database(cluster: &TempCluster, name: &str, traffic_stats_sql: &str) -> PgConnection {
    database_from_sql(
        cluster,
        name,
        &format!("{MINIMAL_NODES_SQL}\n{traffic_stats_sql}"),
    )
    .await
}

/// A new database with every migration applied.
async fn migrated_database(cluster: &TempCluster, name: &str) -> PgConnection {
    let url = cluster
        .create_database(name)
        .await
        .expect("create database");
    let mut conn = connect(&url).await;
    MIGRATOR.run(&mut conn).await.expect("apply migrations");
    conn
}

/// Everything the catalog says about table `public.<table>` that a client of
/// the table could depend on, one line per fact, in a stable order: the
/// table itself, its columns (position, name, type with modifiers,
/// nullability, default, identity, generation, collation), its constraints
/// (name, kind, definition) and its indexes (name, definition). Empty when
/// the table does not exist.
///
/// Both databases compared keep their tables in schema `public`, so the
/// schema-qualified names in the definitions need no normalising.
async fn table_shape(conn: &mut PgConnection, table: &str) -> Vec<String> {
    let mut lines = Vec::new();
    lines.extend(relation_lines(conn, table).await);
    lines.extend(column_lines(conn, table).await);
    lines.extend(constraint_lines(conn, table).await);
    lines.extend(index_lines(conn, table).await);
    lines
}

async fn relation_lines(conn: &mut PgConnection, table: &str) -> Vec<String> {
    let rows: Vec<(String, String, String, String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind::text, c.relpersistence::text,
                coalesce(array_to_string(c.reloptions, ','), ''), c.relrowsecurity
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = $1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .expect("read pg_class");
    rows.into_iter()
        .map(|(name, kind, persistence, options, rls)| {
            format!(
                "table {name:?} relkind={kind} persistence={persistence} \
                 options=[{options}] row_security={rls}"
            )
        })
        .collect()
}

async fn column_lines(conn: &mut PgConnection, table: &str) -> Vec<String> {
    type Row = (
        i16,
        String,
        String,
        bool,
        Option<String>,
        String,
        String,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod),
                a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                a.attidentity::text, a.attgenerated::text, co.collname::text
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         LEFT JOIN pg_collation co ON co.oid = a.attcollation
         WHERE n.nspname = 'public' AND c.relname = $1
           AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .expect("read pg_attribute");
    rows.into_iter()
        .map(
            |(position, name, ty, not_null, default, identity, generated, collation)| {
                let mut line = format!("column {position} {name:?} {ty}");
                if not_null {
                    line.push_str(" NOT NULL");
                }
                if let Some(default) = default {
                    line.push_str(&format!(" DEFAULT {default}"));
                }
                if !identity.is_empty() {
                    line.push_str(&format!(" IDENTITY({identity})"));
                }
                if !generated.is_empty() {
                    line.push_str(&format!(" GENERATED({generated})"));
                }
                if let Some(collation) = collation {
                    line.push_str(&format!(" COLLATE {collation:?}"));
                }
                line
            },
        )
        .collect()
}

async fn constraint_lines(conn: &mut PgConnection, table: &str) -> Vec<String> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT con.conname::text, con.contype::text, pg_get_constraintdef(con.oid)
         FROM pg_constraint con
         JOIN pg_class c ON c.oid = con.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = $1
         ORDER BY con.conname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .expect("read pg_constraint");
    rows.into_iter()
        .map(|(name, kind, definition)| format!("constraint {name:?} ({kind}) {definition}"))
        .collect()
}

async fn index_lines(conn: &mut PgConnection, table: &str) -> Vec<String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid)
         FROM pg_index i
         JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_class c ON c.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = $1
         ORDER BY ic.relname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .expect("read pg_index");
    rows.into_iter()
        .map(|(name, definition)| format!("index {name:?} {definition}"))
        .collect()
}

/// The names of all relations (tables, sequences, views, types' tables...)
/// in schema `public` but sqlx's bookkeeping table, and of all types that
/// are not implicit row types, sorted.
async fn public_objects(conn: &mut PgConnection) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT format('%s %s', c.relkind, c.relname)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public'
           AND c.relname NOT IN ($1, $1 || '_pkey')
         UNION ALL
         SELECT format('type %s', t.typname)
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'public' AND t.typrelid = 0 AND t.typelem = 0
         ORDER BY 1",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await
    .expect("list schema public");
    rows.into_iter().map(|(name,)| name).collect()
}

/// The shape of the whole schema `public` (but sqlx's bookkeeping): every
/// object, and every table's [`table_shape`].
async fn schema_shape(conn: &mut PgConnection) -> Vec<String> {
    let objects = public_objects(conn).await;
    let mut lines = objects.clone();
    for object in &objects {
        if let Some(table) = object.strip_prefix("r ") {
            lines.extend(table_shape(conn, table).await);
        }
    }
    lines
}

/// `None` when the two shapes are equal, else a readable diff: `-` for what
/// only `expected` has, `+` for what only `actual` has.
fn diff(expected: &[String], actual: &[String]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut out = String::new();
    for line in expected.iter().filter(|line| !actual.contains(line)) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in actual.iter().filter(|line| !expected.contains(line)) {
        out.push_str(&format!("+ {line}\n"));
    }
    if out.is_empty() {
        // Same lines in another order (or repeated): show both in full.
        out = format!(
            "expected:\n  {}\nactual:\n  {}\n",
            expected.join("\n  "),
            actual.join("\n  ")
        );
    }
    Some(out)
}

#[tokio::test]
async fn traffic_stats_is_exactly_the_seeds() {
    let Some(cluster) = common::cluster("traffic_stats_is_exactly_the_seeds") else {
        return;
    };
    let mut seed = seed_database(&cluster, "seed", SEED_TRAFFIC_STATS_SQL).await;
    let mut migrated = migrated_database(&cluster, "migrated").await;

    let expected = table_shape(&mut seed, "traffic_stats").await;
    let actual = table_shape(&mut migrated, "traffic_stats").await;
    // Guard against comparing two empty descriptions.
    let columns = expected
        .iter()
        .filter(|line| line.starts_with("column "))
        .count();
    assert_eq!(
        columns,
        11,
        "the seed's traffic_stats:\n{}",
        expected.join("\n")
    );

    if let Some(diff) = diff(&expected, &actual) {
        panic!(
            "traffic_stats from the migrations differs from the seed's \
             (- seed, + migrations):\n{diff}"
        );
    }
}

#[tokio::test]
async fn the_comparison_catches_a_difference() {
    let Some(cluster) = common::cluster("the_comparison_catches_a_difference") else {
        return;
    };
    let mut seed = seed_database(&cluster, "seed", SEED_TRAFFIC_STATS_SQL).await;
    let expected = table_shape(&mut seed, "traffic_stats").await;

    let changes = [
        // Another default for one column.
        (
            r#""totalUpload" BIGINT NOT NULL DEFAULT 0"#,
            r#""totalUpload" BIGINT NOT NULL DEFAULT 1"#,
            "totalUpload",
        ),
        // Another precision of a timestamp.
        (
            r#""periodStart" TIMESTAMP(3)"#,
            r#""periodStart" TIMESTAMP(6)"#,
            "periodStart",
        ),
        // Another index name.
        (
            r#"INDEX "traffic_stats_nodeId_key""#,
            r#"INDEX "traffic_stats_nodeId_idx""#,
            "traffic_stats_nodeId_idx",
        ),
        // Another foreign key action.
        (
            "ON UPDATE CASCADE",
            "ON UPDATE RESTRICT",
            "traffic_stats_nodeId_fkey",
        ),
    ];
    for (i, (from, to, mentioned)) in changes.into_iter().enumerate() {
        assert!(
            SEED_TRAFFIC_STATS_SQL.contains(from),
            "{from:?} is not in the seed's SQL"
        );
        let altered_sql = SEED_TRAFFIC_STATS_SQL.replace(from, to);
        let mut altered = seed_database(&cluster, &format!("altered{i}"), &altered_sql).await;
        let actual = table_shape(&mut altered, "traffic_stats").await;
        let Some(diff) = diff(&expected, &actual) else {
            panic!("replacing {from:?} with {to:?} went unnoticed");
        };
        assert!(
            diff.contains(mentioned),
            "the diff for {from:?} -> {to:?} does not mention {mentioned}:\n{diff}"
        );
    }
}

#[tokio::test]
async fn migrations_apply_and_revert_cleanly() {
    let Some(cluster) = common::cluster("migrations_apply_and_revert_cleanly") else {
        return;
    };
    let url = cluster
        .create_database("steps")
        .await
        .expect("create database");
    let mut conn = connect(&url).await;

    let versions: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    assert!(!versions.is_empty(), "no migrations found");
    assert!(
        MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_down_migration())
            .count()
            == versions.len(),
        "every migration needs its .down.sql"
    );

    // Apply one at a time, noting the schema after each step.
    let mut shapes = vec![schema_shape(&mut conn).await];
    for &version in &versions {
        MIGRATOR
            .run_to(version, &mut conn)
            .await
            .unwrap_or_else(|e| panic!("applying migration {version} failed: {e}"));
        let shape = schema_shape(&mut conn).await;
        assert!(
            shapes.last() != Some(&shape),
            "migration {version} changed nothing"
        );
        shapes.push(shape);
    }
    assert!(
        shapes[0].is_empty(),
        "a fresh database has objects: {:?}",
        shapes[0]
    );

    // Revert one at a time: each step must restore the schema that was there
    // before the migration it reverts.
    for (i, &version) in versions.iter().enumerate().rev() {
        let previous = if i == 0 { 0 } else { versions[i - 1] };
        MIGRATOR
            .undo(&mut conn, previous)
            .await
            .unwrap_or_else(|e| panic!("reverting migration {version} failed: {e}"));
        let now = schema_shape(&mut conn).await;
        if let Some(diff) = diff(&shapes[i], &now) {
            panic!("reverting migration {version} left (- before it, + after revert):\n{diff}");
        }
    }
    let (applied,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*) FROM {MIGRATIONS_TABLE}"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("count applied migrations");
    assert_eq!(
        applied, 0,
        "{MIGRATIONS_TABLE} still lists migrations after reverting all"
    );

    // And everything applies again, to the same schema.
    MIGRATOR
        .run(&mut conn)
        .await
        .expect("applying the migrations again");
    let again = schema_shape(&mut conn).await;
    let last = shapes.last().expect("shapes has the fresh state at least");
    if let Some(diff) = diff(last, &again) {
        panic!("applying the migrations again gave another schema:\n{diff}");
    }
}
