//! The duration values more than one command takes.

use std::time::Duration;

/// A database time limit: from 1 ms to a day (0 would turn it off).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
        return Err("must be from 1ms to 1day".into());
    }
    Ok(d)
}

/// An interval between two heartbeats or two screens: at least a second.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}
