//! Exponential backoff with "decorrelated jitter": each delay is drawn
//! uniformly between the base and three times the previous delay, capped.
//! Agents that lost the collector together do not come back in lockstep, and
//! the delay never drops below the base.

use std::time::Duration;

use rand::{Rng, SeedableRng as _, rngs::StdRng};

/// The delays between attempts while the collector is away.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    previous: Duration,
    rng: StdRng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self::with_rng(base, cap, StdRng::from_os_rng())
    }

    pub fn with_rng(base: Duration, cap: Duration, rng: StdRng) -> Self {
        let cap = cap.max(base);
        Self {
            base,
            cap,
            previous: base,
            rng,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let unit: f64 = self.rng.random();
        self.previous = decorrelated(self.base, self.cap, self.previous, unit);
        self.previous
    }

    /// Back to the base after a success.
    pub fn reset(&mut self) {
        self.previous = self.base;
    }
}

/// `min(cap, base + unit × (3 × previous − base))` for `unit` in `[0, 1)`.
pub fn decorrelated(base: Duration, cap: Duration, previous: Duration, unit: f64) -> Duration {
    let high = previous.saturating_mul(3).max(base);
    let span = high - base;
    (base + span.mul_f64(unit.clamp(0.0, 1.0))).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn delays_stay_between_base_and_cap() {
        let mut backoff = Backoff::with_rng(BASE, CAP, StdRng::seed_from_u64(7));
        for _ in 0..10_000 {
            let delay = backoff.next_delay();
            assert!((BASE..=CAP).contains(&delay), "{delay:?}");
        }
    }

    #[test]
    fn the_window_grows_threefold_up_to_the_cap() {
        // The largest draw each time: 1.5 s, 4.5 s, 13.5 s, then the cap.
        let mut previous = BASE;
        let mut seen = Vec::new();
        for _ in 0..5 {
            previous = decorrelated(BASE, CAP, previous, 1.0);
            seen.push(previous);
        }
        assert_eq!(
            seen,
            [1_500, 4_500, 13_500, 30_000, 30_000].map(Duration::from_millis)
        );
        // The smallest draw is always the base.
        assert_eq!(decorrelated(BASE, CAP, CAP, 0.0), BASE);
        // A cap below the base is raised to it.
        let mut tight = Backoff::with_rng(BASE, Duration::ZERO, StdRng::seed_from_u64(1));
        assert_eq!(tight.next_delay(), BASE);
    }

    #[test]
    fn jitter_spreads_the_delays_and_grows_on_average() {
        let mut backoff = Backoff::with_rng(BASE, CAP, StdRng::seed_from_u64(42));
        let first: Vec<Duration> = (0..200)
            .map(|_| {
                backoff.reset();
                backoff.next_delay()
            })
            .collect();
        // First attempt: anywhere in [0.5 s, 1.5 s), not one fixed value.
        assert!(
            first
                .iter()
                .all(|d| (BASE..Duration::from_millis(1_500)).contains(d))
        );
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(distinct.len() > 150, "{} distinct", distinct.len());

        // After many failures the delays sit well above the first ones.
        backoff.reset();
        let late: Vec<Duration> = (0..2_000).map(|_| backoff.next_delay()).skip(20).collect();
        let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
        assert!(mean(&late) > Duration::from_secs(10), "{:?}", mean(&late));
        assert!(
            mean(&first) < Duration::from_millis(1_100),
            "{:?}",
            mean(&first)
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::with_rng(BASE, CAP, StdRng::seed_from_u64(3));
        for _ in 0..50 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(1_500));
    }
}
