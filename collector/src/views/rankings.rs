//! Rankings: every node ordered by traffic (total, current period, or a
//! recent window of history), value descending, then name, then id.

use std::{fmt, str::FromStr, time::Duration};

use chrono::NaiveDateTime;
use sqlx::{AssertSqlSafe, PgPool, Row as _};

use super::BIGINT_MAX;
use crate::error::Error;

/// Which counters are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum By {
    /// The totals since the node was enrolled.
    #[default]
    Total,
    /// The current period's counters.
    Period,
    /// The history of the last [`Query::window`].
    Window,
}

/// Which direction is ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    Upload,
    Download,
    /// Upload plus download.
    #[default]
    Both,
}

impl By {
    pub const ALL: [By; 3] = [By::Total, By::Period, By::Window];

    pub fn as_str(self) -> &'static str {
        match self {
            By::Total => "total",
            By::Period => "period",
            By::Window => "window",
        }
    }
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::Upload, Direction::Download, Direction::Both];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
            Direction::Both => "both",
        }
    }
}

fn parse<T: Copy>(s: &str, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    all.iter().copied().find(|v| name(*v) == s).ok_or_else(|| {
        let expected: Vec<_> = all.iter().map(|v| name(*v)).collect();
        format!("{s:?} is not one of {}", expected.join(", "))
    })
}

impl FromStr for By {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse(s, &By::ALL, By::as_str)
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse(s, &Direction::ALL, Direction::as_str)
    }
}

impl fmt::Display for By {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most nodes in one ranking.
pub const MAX_LIMIT: u32 = 1000;
/// The shortest and the longest window.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// What to rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub by: By,
    pub direction: Direction,
    /// 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// For [`By::Window`]: how far back history counts, from
    /// [`MIN_WINDOW`] to [`MAX_WINDOW`].
    pub window: Duration,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            by: By::Total,
            direction: Direction::Both,
            limit: 10,
            window: Duration::from_secs(86_400),
        }
    }
}

impl Query {
    /// Refuses a limit or a window out of bounds (naming the parameter).
    pub fn check(&self) -> Result<(), Error> {
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return Err(Error::InvalidArgument(format!(
                "limit: {} is not from 1 to {MAX_LIMIT}",
                self.limit
            )));
        }
        if self.window < MIN_WINDOW || self.window > MAX_WINDOW {
            return Err(Error::InvalidArgument(format!(
                "window: {} is not from 1m to 366d",
                humantime::format_duration(self.window)
            )));
        }
        Ok(())
    }
}

/// One node's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    /// 1 for the first.
    pub rank: u32,
    pub id: String,
    pub name: String,
    pub upload: i64,
    pub download: i64,
    /// What was ranked: upload, download or their sum (which may exceed an
    /// `i64`).
    pub value: i128,
}

/// A ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// For [`By::Window`]: the oldest minute counted (`now - window`).
    pub since: Option<NaiveDateTime>,
    pub nodes: Vec<Ranked>,
}

/// Ranks the nodes as `query` asks, at `now` (for the window).
pub async fn rank(pool: &PgPool, query: &Query, now: NaiveDateTime) -> Result<Ranking, Error> {
    query.check()?;
    let window = chrono::Duration::from_std(query.window)
        .map_err(|_| Error::InvalidArgument("window: too long".into()))?;
    let since = (query.by == By::Window).then(|| now - window);
    // Only fixed SQL is put together here; values are bound.
    let source = match query.by {
        By::Total => r#"SELECT n."id", n."name", t."totalUpload" AS up, t."totalDownload" AS down
               FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id""#
            .to_owned(),
        By::Period => {
            r#"SELECT n."id", n."name", t."periodUpload" AS up, t."periodDownload" AS down
               FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id""#
                .to_owned()
        }
        By::Window => format!(
            r#"SELECT n."id", n."name", COALESCE(h.up, 0) AS up, COALESCE(h.down, 0) AS down
               FROM "nodes" n LEFT JOIN (
                 SELECT "nodeId", LEAST(sum("upload"), {BIGINT_MAX})::bigint AS up,
                        LEAST(sum("download"), {BIGINT_MAX})::bigint AS down
                 FROM "node_history" WHERE "bucket" >= $2 GROUP BY "nodeId"
               ) h ON h."nodeId" = n."id""#
        ),
    };
    let value = match query.direction {
        Direction::Upload => "up::numeric",
        Direction::Download => "down::numeric",
        Direction::Both => "up::numeric + down::numeric",
    };
    let sql = format!(
        r#"WITH v AS ({source})
           SELECT "id", "name", up, down FROM v
           ORDER BY {value} DESC, "name" COLLATE "C", "id" COLLATE "C"
           LIMIT $1"#
    );
    let mut statement = sqlx::query(AssertSqlSafe(sql)).bind(i64::from(query.limit));
    if let Some(since) = since {
        statement = statement.bind(since);
    }
    let rows = statement.fetch_all(pool).await?;
    let nodes = rows
        .iter()
        .zip(1..)
        .map(|(row, rank)| {
            let upload: i64 = row.try_get("up")?;
            let download: i64 = row.try_get("down")?;
            Ok(Ranked {
                rank,
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                upload,
                download,
                value: match query.direction {
                    Direction::Upload => i128::from(upload),
                    Direction::Download => i128::from(download),
                    Direction::Both => i128::from(upload) + i128::from(download),
                },
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Ranking { since, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for by in By::ALL {
            assert_eq!(by.as_str().parse::<By>(), Ok(by));
        }
        for direction in Direction::ALL {
            assert_eq!(direction.to_string().parse::<Direction>(), Ok(direction));
        }
        assert_eq!(
            "sideways".parse::<Direction>(),
            Err(r#""sideways" is not one of upload, download, both"#.to_owned())
        );
        assert!("Total".parse::<By>().is_err(), "case matters");
    }

    #[test]
    fn limits_and_windows_are_bounded() {
        let ok = Query::default();
        assert!(ok.check().is_ok());
        for limit in [0, MAX_LIMIT + 1] {
            let e = Query { limit, ..ok }.check().expect_err("limit");
            assert!(e.to_string().starts_with("limit:"), "{e}");
        }
        for window in [Duration::from_secs(59), MAX_WINDOW + Duration::from_secs(1)] {
            let e = Query { window, ..ok }.check().expect_err("window");
            assert!(e.to_string().starts_with("window:"), "{e}");
        }
    }
}
