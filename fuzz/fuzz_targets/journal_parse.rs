//! The agent's state files as they may be found on disk after a crash, a
//! damaged disk or a foreign write: the reboot journal
//! (`tally_agent::journal::decode`, then `merge` and `encode`) and the
//! generation file (`tally_agent::generation::Generations`). The first
//! byte says what the rest is:
//!
//! - 0: a journal file as it is;
//! - 1: a journal's payload, under a correct header (length and CRC), so
//!   that the fuzzer reaches the heartbeats' decoding;
//! - 2: a generation file, then the operations the agent does with it.
//!
//! Nothing may panic. A journal that decodes holds 1 to `MAX_ENTRIES`
//! heartbeats, encodes again to a journal that decodes to the same, and
//! merging a last heartbeat keeps at most `MAX_ENTRIES`, the last one's
//! counter set once, at the end. A generation file that parses gives every
//! counter set one generation for its life and a new set one above all
//! used or seen.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tally_agent::{generation::Generations, journal};
use tally_proto::v1::HeartbeatRequest;

fuzz_target!(|input: &[u8]| {
    let Some((&what, rest)) = input.split_first() else {
        return;
    };
    match what {
        0 => journal_file(rest),
        1 => journal_file(&with_header(rest)),
        2 => generation_file(rest),
        _ => {}
    }
});

/// `payload` under a version-1 journal header with its length and CRC.
fn with_header(payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut file = b"TALLYJNL".to_vec();
    file.extend_from_slice(&journal::VERSION.to_le_bytes());
    file.extend_from_slice(&length.to_le_bytes());
    let crc = journal::crc32(&[&file[8..16], payload]);
    file.extend_from_slice(&crc.to_le_bytes());
    file.extend_from_slice(payload);
    file
}

fn journal_file(bytes: &[u8]) {
    let Ok(entries) = journal::decode(bytes) else {
        return;
    };
    assert!(!entries.is_empty() && entries.len() <= journal::MAX_ENTRIES);
    // Heartbeats are compared encoded: a NaN load is not equal to itself.
    let again = journal::encode(&entries).expect("what was read can be written");
    let read_again = journal::decode(&again).expect("a journal written reads");
    assert_eq!(
        encoded(&read_again),
        encoded(&entries),
        "a journal written from what was read reads the same"
    );

    // The agent's stop: a last heartbeat merged into what is pending.
    let Some((last, pending)) = entries.split_last() else {
        return;
    };
    let last = HeartbeatRequest {
        sequence: last.sequence.wrapping_add(1),
        ..last.clone()
    };
    let same_set = |r: &HeartbeatRequest| r.boot_id == last.boot_id && r.epoch == last.epoch;
    let others: Vec<&HeartbeatRequest> = pending.iter().filter(|r| !same_set(r)).collect();
    let (kept, dropped) = journal::merge(pending.to_vec(), last.clone());
    assert!(!kept.is_empty() && kept.len() <= journal::MAX_ENTRIES);
    assert_eq!(kept.iter().filter(|r| same_set(r)).count(), 1);
    let newest = kept.last().expect("not empty");
    assert!(same_set(newest), "the last heartbeat's set is kept last");
    let highest = pending
        .iter()
        .filter(|r| same_set(r))
        .map(|r| r.sequence)
        .fold(last.sequence, u64::max);
    assert_eq!(newest.sequence, highest, "the newest of the set is kept");
    // The other sets, oldest first: those dropped, then those kept.
    let rest: Vec<Vec<u8>> = dropped
        .iter()
        .chain(&kept[..kept.len() - 1])
        .map(Message::encode_to_vec)
        .collect();
    let others: Vec<Vec<u8>> = others.into_iter().map(Message::encode_to_vec).collect();
    assert_eq!(rest, others);
}

fn encoded<'a>(entries: impl IntoIterator<Item = &'a HeartbeatRequest>) -> Vec<Vec<u8>> {
    entries.into_iter().map(Message::encode_to_vec).collect()
}

fn generation_file(bytes: &[u8]) {
    // Never written: the directory does not exist (a write error is logged).
    let dir = std::path::Path::new("/nonexistent/tally-fuzz");
    let Ok(mut generations) = Generations::from_file_contents(dir, bytes) else {
        return;
    };
    let a = generations.of("fuzz-boot", "fuzz-a");
    assert_eq!(
        generations.of("fuzz-boot", "fuzz-a"),
        a,
        "a set keeps its generation"
    );
    let b = generations.of("fuzz-boot", "fuzz-b");
    assert!(
        b > a || b == u64::MAX,
        "a new set is above the ones before: {a} then {b}"
    );
    assert_eq!(generations.of("fuzz-boot", "fuzz-a"), a);
    let followed = a.saturating_add(b % 1000);
    let raised = generations.raise("fuzz-boot", "fuzz-b", followed);
    assert!(
        raised > followed.max(b) || raised == u64::MAX,
        "a raise goes above what the collector follows and every generation used"
    );
    assert_eq!(generations.of("fuzz-boot", "fuzz-b"), raised);
    generations.seen(raised.saturating_add(5));
    let c = generations.of("fuzz-boot", "fuzz-c");
    assert!(c > raised.saturating_add(5) || c == u64::MAX);
}
