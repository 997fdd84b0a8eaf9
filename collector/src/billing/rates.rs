//! A period's 5-minute rates, from the node's per-minute history: the peak
//! and the 95th percentile (nearest rank), in bytes per second of the
//! larger direction. Slots are aligned to UTC; every slot of the span
//! counts, and a slot without history is 0.

use chrono::NaiveDateTime;
use sqlx::{PgConnection, PgPool, Row as _};

/// Length of one rate slot, in seconds.
pub const SLOT_SECONDS: i64 = 300;

/// Peak and 95th percentile rates, bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub peak: i64,
    pub p95: i64,
}

/// The rates of `node_id` over `[start, end)`, from the minutes of history
/// that overlap it (a period that starts mid-minute, after a manual reset,
/// has its first minute's bytes, which that minute shares with the period
/// before: history has no finer grain).
pub async fn of_span(
    conn: &mut PgConnection,
    node_id: &str,
    start: NaiveDateTime,
    end: NaiveDateTime,
) -> Result<Rates, sqlx::Error> {
    let rows = sqlx::query(
        r#"SELECT SUM("upload")::int8 AS up, SUM("download")::int8 AS down
           FROM "node_history"
           WHERE "nodeId" = $1 AND "bucket" > $2 - interval '1 minute' AND "bucket" < $3
           GROUP BY date_bin('5 minutes', "bucket", TIMESTAMP '2000-01-01')"#,
    )
    .bind(node_id)
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await?;
    let mut up = Vec::with_capacity(rows.len());
    let mut down = Vec::with_capacity(rows.len());
    for row in rows {
        up.push(row.try_get::<Option<i64>, _>("up")?.unwrap_or(0) / SLOT_SECONDS);
        down.push(row.try_get::<Option<i64>, _>("down")?.unwrap_or(0) / SLOT_SECONDS);
    }
    Ok(from_slots(slots(start, end), up, down))
}

/// Closed periods whose rates [`fill_pending`] computes in one round, at
/// most.
pub const FILLED_PER_ROUND: i64 = 200;

/// Computes the rates of closed periods archived without them (by a
/// heartbeat batch, a sweep or a reset, which hold row locks then), each
/// outside any lock; returns how many it filled. Several collectors may do
/// this at once: a period's rates are written only while it has none, and
/// two collectors computing them at once compute the same figures.
pub async fn fill_pending(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let pending = sqlx::query(
        r#"SELECT "id", "nodeId", "start", "end" FROM "billing_periods"
           WHERE "p95Rate" IS NULL ORDER BY "id" LIMIT $1"#,
    )
    .bind(FILLED_PER_ROUND)
    .fetch_all(pool)
    .await?;
    let mut filled = 0;
    for row in pending {
        let id: i64 = row.try_get("id")?;
        let node: String = row.try_get("nodeId")?;
        let mut conn = pool.acquire().await?;
        let rates = of_span(&mut conn, &node, row.try_get("start")?, row.try_get("end")?).await?;
        filled += sqlx::query(
            r#"UPDATE "billing_periods" SET "peakRate" = $2, "p95Rate" = $3
               WHERE "id" = $1 AND "p95Rate" IS NULL"#,
        )
        .bind(id)
        .bind(rates.peak)
        .bind(rates.p95)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(filled)
}

/// How many 5-minute slots (UTC-aligned) `[start, end)` touches.
pub fn slots(start: NaiveDateTime, end: NaiveDateTime) -> usize {
    if end <= start {
        return 0;
    }
    let first = start.and_utc().timestamp().div_euclid(SLOT_SECONDS);
    let last = (end.and_utc().timestamp_millis() - 1).div_euclid(SLOT_SECONDS * 1000);
    usize::try_from(last - first + 1).unwrap_or(0)
}

/// The rates of a span of `total` slots, of which those listed have the
/// given rates per direction (the rest are 0).
pub fn from_slots(total: usize, mut up: Vec<i64>, mut down: Vec<i64>) -> Rates {
    let peak = up.iter().chain(down.iter()).copied().max().unwrap_or(0);
    let percentile = |rates: &mut Vec<i64>| {
        let missing = total.saturating_sub(rates.len());
        rates.extend(std::iter::repeat_n(0, missing));
        super::p95(rates)
    };
    Rates {
        peak,
        p95: percentile(&mut up).max(percentile(&mut down)),
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 11, 1)
            .and_then(|d| d.and_hms_opt(h, m, s))
            .expect("valid")
    }

    #[test]
    fn slots_are_utc_aligned() {
        assert_eq!(slots(at(0, 0, 0), at(1, 0, 0)), 12);
        assert_eq!(slots(at(0, 2, 0), at(0, 6, 0)), 2);
        assert_eq!(slots(at(0, 5, 0), at(0, 5, 0)), 0);
        assert_eq!(slots(at(0, 0, 0), at(0, 0, 1)), 1);
    }

    #[test]
    fn empty_slots_count_as_zero() {
        // 20 slots, one busy: the 95th percentile (19th smallest) is 0.
        let rates = from_slots(20, vec![1000], vec![10]);
        assert_eq!(rates, Rates { peak: 1000, p95: 0 });
        // 20 slots, two busy: the 19th smallest is the smaller busy one.
        let rates = from_slots(20, vec![1000, 500], vec![0, 0]);
        assert_eq!(
            rates,
            Rates {
                peak: 1000,
                p95: 500
            }
        );
        // The larger direction's percentile is billed.
        let rates = from_slots(1, vec![3], vec![7]);
        assert_eq!(rates, Rates { peak: 7, p95: 7 });
    }
}
