//! The agent's two clocks: CLOCK_BOOTTIME, which orders readings within a
//! boot (the sequence of a heartbeat), and the wall clock, which
//! stamps readings and epochs for people and for the collector's clock
//! check.

use std::time::{SystemTime, UNIX_EPOCH};

/// CLOCK_BOOTTIME in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_BOOTTIME exists on
    // every kernel this agent runs on (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Cannot happen with a valid clock id; the sequencer's floor still
        // keeps the sequence growing.
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The wall clock, nanoseconds since the Unix epoch (0 before 1970).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
