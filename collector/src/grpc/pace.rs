//! How often one node's heartbeats are taken: a token bucket per node
//! ([`BURST`] heartbeats, refilled one per minimum interval). A heartbeat
//! beyond it is refused with `RESOURCE_EXHAUSTED` and the time after which
//! one will be taken again, which the agent waits. The counters are
//! cumulative, so the next heartbeat brings what the refused one had:
//! nothing is lost, the collector only does less work.
//!
//! The burst lets through what an agent sends at once after a restart or
//! an outage (its reboot journal holds at most 16 heartbeats, then the
//! newest reading). Only nodes whose token was checked get a bucket, so the
//! memory is bounded by the fleet; buckets that are full again are
//! forgotten when the map grows.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Heartbeats a node may send at once after a quiet time.
pub const BURST: f64 = 20.0;
/// Buckets kept before the full ones are forgotten.
const FORGET_ABOVE: usize = 4096;

/// The buckets of every node this collector heard from.
#[derive(Debug)]
pub struct Pace {
    min_interval: Duration,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_node: HashMap<String, Bucket>,
    /// Above this, full buckets are forgotten (then it doubles the map's
    /// size at the time).
    forget_above: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Pace {
    /// `min_interval` zero takes every heartbeat.
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            buckets: Mutex::new(Buckets {
                by_node: HashMap::new(),
                forget_above: FORGET_ABOVE,
            }),
        }
    }

    pub fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Takes one heartbeat of `node` at `now`, or says how long until one
    /// will be taken.
    pub fn admit(&self, node: &str, now: Instant) -> Result<(), Duration> {
        if self.min_interval.is_zero() {
            return Ok(());
        }
        let per_second = 1.0 / self.min_interval.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.by_node.len() >= buckets.forget_above && !buckets.by_node.contains_key(node) {
            buckets.forget_full(now, per_second);
        }
        let bucket = buckets.by_node.entry(node.to_owned()).or_insert(Bucket {
            tokens: BURST,
            refilled: now,
        });
        bucket.refill(now, per_second);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / per_second;
        Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: f64) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(BURST);
        self.refilled = now;
    }
}

impl Buckets {
    /// Forgets the buckets that are full again (their nodes would be let
    /// through as if new), and sets the next size at which to look.
    fn forget_full(&mut self, now: Instant, per_second: f64) {
        self.by_node.retain(|_, bucket| {
            bucket.refill(now, per_second);
            bucket.tokens < BURST
        });
        self.forget_above = (self.by_node.len() * 2).max(FORGET_ABOVE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let pace = Pace::new(Duration::from_secs(1));
        let start = Instant::now();
        for _ in 0..20 {
            pace.admit("a", start).expect("within the burst");
        }
        let wait = pace.admit("a", start).expect_err("beyond the burst");
        assert_eq!(wait, Duration::from_secs(1));
        // Another node is not touched.
        pace.admit("b", start).expect("another node");
        let later = start + Duration::from_millis(1500);
        pace.admit("a", later).expect("one refilled");
        let wait = pace.admit("a", later).expect_err("half a token");
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[test]
    fn zero_takes_everything() {
        let pace = Pace::new(Duration::ZERO);
        let now = Instant::now();
        for _ in 0..1000 {
            pace.admit("a", now).expect("no pace");
        }
    }

    #[test]
    fn full_buckets_are_forgotten_when_the_map_grows() {
        let pace = Pace::new(Duration::from_secs(1));
        let start = Instant::now();
        for _ in 0..20 {
            pace.admit("busy", start).expect("the burst");
        }
        for i in 0..FORGET_ABOVE - 1 {
            pace.admit(&format!("n{i}"), start).expect("first");
        }
        // 19.5 s later the others are full again and are forgotten when
        // the next new node comes; the busy one is not, and still waits.
        let later = start + Duration::from_millis(19_500);
        pace.admit("new", later).expect("first");
        {
            let buckets = pace.buckets.lock().expect("lock");
            assert_eq!(buckets.by_node.len(), 2, "busy and new");
        }
        pace.admit("busy", later).expect("19 refilled");
        assert!(pace.admit("busy", later).is_ok());
    }
}
