//! Failed authentications on the HTTP side, per source address: each is
//! logged at warn (at a pace, [`crate::log_pace`]), and an address with
//! [`MAX_FAILURES`] (or the limit set) within [`WINDOW`] is answered 429
//! until its window ends, right token or not, so that tokens cannot be
//! guessed at speed.
//!
//! The memory is bounded: past [`REMEMBERED`] addresses, ended windows are
//! forgotten first, and if every window is still open, all of them (an
//! attacker with that many addresses gets a fresh start, never unbounded
//! memory).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::log_pace::LogPace;

/// Failures an address may have within [`WINDOW`], unless set.
pub const MAX_FAILURES: u32 = 10;
/// How long failures count, from an address's first.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most.
pub const REMEMBERED: usize = 65_536;

/// The failures of the HTTP side's clients.
#[derive(Debug)]
pub struct FailedAuth {
    max_failures: u32,
    state: Mutex<State>,
}

impl Default for FailedAuth {
    fn default() -> Self {
        Self::new(MAX_FAILURES)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Per address: when its window started, and its failures in it.
    windows: HashMap<IpAddr, (Instant, u32)>,
    logged: LogPace<IpAddr>,
}

impl FailedAuth {
    /// An address is held off after `max_failures` within [`WINDOW`].
    pub fn new(max_failures: u32) -> Self {
        Self {
            max_failures: max_failures.max(1),
            state: Mutex::default(),
        }
    }

    /// `Err(wait)` while `address` has had too many failures: how long until
    /// it may try again.
    pub fn check(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.windows.get(&address) {
            Some(&(started, failures)) if failures >= self.max_failures => {
                let ends = started + WINDOW;
                if now < ends { Err(ends - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `address` (why: `reason`) and logs it, at a pace.
    pub fn record(&self, address: IpAddr, reason: &str, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.windows.len() >= REMEMBERED && !state.windows.contains_key(&address) {
            state
                .windows
                .retain(|_, (started, _)| now.saturating_duration_since(*started) < WINDOW);
            if state.windows.len() >= REMEMBERED {
                state.windows.clear();
            }
        }
        let window = state.windows.entry(address).or_insert((now, 0));
        if now.saturating_duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        let failures = window.1;
        if let Some(events) = state.logged.event(address, now) {
            tracing::warn!(
                %address,
                reason,
                failures_in_window = failures,
                failures_since_last_line = events,
                held_off = failures >= self.max_failures,
                "HTTP authentication failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_address_is_held_off_after_too_many_failures_until_its_window_ends() {
        let failed = FailedAuth::default();
        let start = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(failed.check(A, start), Ok(()), "before failure {i}");
            failed.record(A, "wrong token", start + Duration::from_secs(u64::from(i)));
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(
            failed.check(A, later),
            Err(WINDOW - Duration::from_secs(20))
        );
        assert_eq!(
            failed.check(B, later),
            Ok(()),
            "other addresses are not held off"
        );
        assert_eq!(failed.check(A, start + WINDOW), Ok(()));
        // A new window starts with the next failure.
        failed.record(A, "wrong token", start + WINDOW);
        assert_eq!(failed.check(A, start + WINDOW), Ok(()));
    }

    #[test]
    fn fewer_failures_than_the_limit_per_window_never_lock_out() {
        let failed = FailedAuth::default();
        let start = Instant::now();
        for window in 0..5_u32 {
            for i in 0..MAX_FAILURES - 1 {
                let now = start + WINDOW * window + Duration::from_secs(u64::from(i));
                failed.record(A, "wrong token", now);
                assert_eq!(failed.check(A, now), Ok(()), "window {window}, failure {i}");
            }
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let failed = FailedAuth::default();
        let now = Instant::now();
        for i in 0..(REMEMBERED as u32 + 10) {
            failed.record(IpAddr::V4(i.into()), "wrong token", now);
        }
        let state = failed.state.lock().expect("lock");
        assert!(state.windows.len() <= REMEMBERED, "{}", state.windows.len());
    }
}
