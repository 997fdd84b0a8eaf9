//! The reboot journal: the agent's last heartbeat(s), kept in a small file
//! (`<state dir>/journal`) until the collector answered them.
//!
//! On stop the agent writes its final reading here *before* it tries to send
//! it, so that the traffic between the last regular heartbeat and a shutdown
//! or reboot is counted even when the collector was unreachable then: the
//! next start delivers what the journal holds before any other heartbeat.
//! It may hold more than one heartbeat (at most one per counter set, i.e.
//! per boot id and epoch, oldest first): a run that stopped before it could
//! deliver an older journal keeps that one too.
//!
//! # Format (version 1)
//!
//! ```text
//! 0   8 bytes  magic "TALLYJNL"
//! 8   u32 LE   format version (1)
//! 12  u32 LE   payload length in bytes
//! 16  u32 LE   CRC-32 (IEEE) of bytes 8..16 and the payload
//! 20  payload  the heartbeats, each a length-delimited protobuf
//!              `tally.v1.HeartbeatRequest`
//! ```
//!
//! A write goes to a temporary file in the same directory, is fsync'd,
//! renamed over the journal, and the directory is fsync'd: after a crash the
//! journal is either the old one or the new one. A file that is not a
//! complete journal of this format (torn, damaged, foreign, from another
//! format version) is moved aside to `journal.corrupt` with an error log
//! and treated as absent. No journal file is ever opened through a symbolic
//! link (`O_NOFOLLOW`): one planted at `journal` or `journal.tmp` is an
//! error that says so, and where it points is left as it was.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use prost::Message as _;
use tally_proto::{limits, v1::HeartbeatRequest};

use crate::durable;

/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "journal";
/// Where a journal that cannot be read is moved.
pub const CORRUPT_NAME: &str = "journal.corrupt";
/// Where a heartbeat the collector refused for good is kept.
pub const REJECTED_NAME: &str = "journal.rejected";

const MAGIC: [u8; 8] = *b"TALLYJNL";
/// The format version this agent writes and reads.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;

/// The most heartbeats a journal holds (one per counter set that could not
/// be delivered); beyond it the oldest are dropped.
pub const MAX_ENTRIES: usize = 16;
/// The largest payload: [`MAX_ENTRIES`] heartbeats of the largest size the
/// collector takes, with their length prefixes.
const MAX_PAYLOAD: usize = MAX_ENTRIES * (limits::MAX_MESSAGE_BYTES + 8);

/// Why a journal could not be written, read, moved or removed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{0} heartbeats do not fit in the journal (at most {MAX_ENTRIES})")]
    TooMany(usize),
}

/// Why a file is not a journal this agent can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corrupt {
    #[error("not a tally journal (no journal header)")]
    Foreign,
    #[error("journal format {0}, while this agent reads format {VERSION}")]
    Version(u32),
    #[error("torn: {found} bytes where the header announces {expected}")]
    Torn { expected: u64, found: u64 },
    #[error("{0} bytes, larger than any journal")]
    TooLarge(u64),
    #[error("checksum mismatch (damaged on disk)")]
    Checksum,
    #[error("the heartbeats in it do not decode: {0}")]
    Decode(String),
    #[error("it holds no heartbeat")]
    Empty,
}

/// The journal of one state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal in `dir` (the state directory; not touched until used).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<state dir>/journal`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Where a journal that could not be read was moved.
    pub fn corrupt_path(&self) -> PathBuf {
        self.dir.join(CORRUPT_NAME)
    }

    /// Where heartbeats the collector refused for good are kept.
    pub fn rejected_path(&self) -> PathBuf {
        self.dir.join(REJECTED_NAME)
    }

    /// Replaces the journal with `entries` (oldest first), atomically and
    /// durably; no entries removes it.
    pub fn write(&self, entries: &[HeartbeatRequest]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return self.remove().map(drop);
        }
        self.write_as(FILE_NAME, entries)
    }

    /// Keeps `entries` in `journal.rejected` (in the journal's format,
    /// replacing an earlier one), for a person to look at.
    pub fn write_rejected(&self, entries: &[HeartbeatRequest]) -> Result<PathBuf, JournalError> {
        self.write_as(REJECTED_NAME, entries)?;
        Ok(self.rejected_path())
    }

    /// The heartbeats in the journal, oldest first: `None` when there is no
    /// journal, or when the file was corrupt (then it was moved aside to
    /// `journal.corrupt`, with an error log).
    pub fn read(&self) -> Result<Option<Vec<HeartbeatRequest>>, JournalError> {
        let path = self.path();
        let io = |action, error| JournalError::Io {
            action,
            path: path.clone(),
            error,
        };
        // Never through a symbolic link: one there is an error, not a
        // journal.
        let mut file = match durable::open_for_reading(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io("open", error)),
        };
        let size = file.metadata().map_err(|e| io("inspect", e))?.len();
        let decoded = if size > (HEADER_LEN + MAX_PAYLOAD) as u64 {
            Err(Corrupt::TooLarge(size))
        } else {
            use io::Read as _;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
            decode(&bytes)
        };
        match decoded {
            Ok(entries) => Ok(Some(entries)),
            Err(corrupt) => {
                let aside = self.corrupt_path();
                fs::rename(&path, &aside).map_err(|e| io("move aside", e))?;
                sync_dir(&self.dir)?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason = %corrupt,
                    "the reboot journal cannot be read; moved it aside and going on without it \
                     (the last heartbeat of an earlier run is lost, if it held one)"
                );
                Ok(None)
            }
        }
    }

    /// Removes the journal; `Ok(false)` when there was none.
    pub fn remove(&self) -> Result<bool, JournalError> {
        let path = self.path();
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(JournalError::Io {
                action: "remove",
                path,
                error,
            }),
        }
    }

    /// Replaces `name` in the state directory with `entries`, durably.
    fn write_as(&self, name: &str, entries: &[HeartbeatRequest]) -> Result<(), JournalError> {
        let bytes = encode(entries)?;
        durable::replace_durably(&self.dir, name, &bytes).map_err(JournalError::from)
    }
}

impl From<durable::WriteError> for JournalError {
    fn from(e: durable::WriteError) -> Self {
        JournalError::Io {
            action: e.action,
            path: e.path,
            error: e.error,
        }
    }
}

/// fsync of a directory, so that a rename or removal in it is durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    durable::sync_dir(dir).map_err(JournalError::from)
}

/// The journal file for `entries`.
pub fn encode(entries: &[HeartbeatRequest]) -> Result<Vec<u8>, JournalError> {
    if entries.len() > MAX_ENTRIES {
        return Err(JournalError::TooMany(entries.len()));
    }
    let mut payload = Vec::new();
    for entry in entries {
        // Writing into a Vec cannot run out of room.
        let _ = entry.encode_length_delimited(&mut payload);
    }
    let length = u32::try_from(payload.len()).map_err(|_| JournalError::TooMany(entries.len()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&length.to_le_bytes());
    let crc = crc32(&[&bytes[8..16], &payload]);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// The heartbeats in a journal file, or why it is not one.
pub fn decode(bytes: &[u8]) -> Result<Vec<HeartbeatRequest>, Corrupt> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(Corrupt::Foreign);
    }
    if bytes.len() < HEADER_LEN {
        return Err(Corrupt::Torn {
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(Corrupt::Version(version));
    }
    let length = word(12) as usize;
    if length > MAX_PAYLOAD {
        return Err(Corrupt::TooLarge((HEADER_LEN + length) as u64));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != length {
        return Err(Corrupt::Torn {
            expected: (HEADER_LEN + length) as u64,
            found: bytes.len() as u64,
        });
    }
    if crc32(&[&bytes[8..16], payload]) != word(16) {
        return Err(Corrupt::Checksum);
    }
    let mut rest = payload;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let entry = HeartbeatRequest::decode_length_delimited(&mut rest)
            .map_err(|e| Corrupt::Decode(e.to_string()))?;
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(Corrupt::Empty);
    }
    if entries.len() > MAX_ENTRIES {
        return Err(Corrupt::Decode(format!(
            "{} heartbeats (at most {MAX_ENTRIES})",
            entries.len()
        )));
    }
    Ok(entries)
}

/// What the journal keeps once `last` was taken: `pending` (oldest first)
/// without any other heartbeat of `last`'s counter set (its counters are
/// cumulative, so the newest of a set carries everything), then `last`.
/// Beyond [`MAX_ENTRIES`] the oldest are dropped: returned second.
pub fn merge(
    pending: Vec<HeartbeatRequest>,
    last: HeartbeatRequest,
) -> (Vec<HeartbeatRequest>, Vec<HeartbeatRequest>) {
    let same_set = |r: &HeartbeatRequest| r.boot_id == last.boot_id && r.epoch == last.epoch;
    let mut newest = last.clone();
    let mut kept = Vec::with_capacity(pending.len() + 1);
    for entry in pending {
        if same_set(&entry) {
            if entry.sequence > newest.sequence {
                newest = entry;
            }
        } else {
            kept.push(entry);
        }
    }
    kept.push(newest);
    let excess = kept.len().saturating_sub(MAX_ENTRIES);
    let dropped = kept.drain(..excess).collect();
    (kept, dropped)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it) over `parts` in
/// order.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use tally_proto::v1::{InterfaceCounters, LoadAverage};

    use super::*;

    fn heartbeat(boot: &str, epoch: &str, sequence: u64) -> HeartbeatRequest {
        HeartbeatRequest {
            boot_id: boot.into(),
            epoch: epoch.into(),
            epoch_created_unix_ns: 1_700_000_000_000_000_000,
            generation: 1,
            counters_start_at_zero: true,
            sequence,
            agent_time_unix_ns: 1_700_000_001_000_000_000,
            interfaces: vec![InterfaceCounters {
                name: "eth0".into(),
                ifindex: 2,
                rx_bytes: 123_456_789_012,
                tx_bytes: 987_654_321,
                rx_packets: 1_000,
                tx_packets: 2_000,
                ..InterfaceCounters::default()
            }],
            load: Some(LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            }),
            hostname: "web-1".into(),
            kernel_release: "6.18.44".into(),
            agent_version: "0.1.0".into(),
            source: "ebpf".into(),
            last_of_boot: true,
        }
    }

    fn state_dir() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        (dir, journal)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[]), 0);
    }

    #[test]
    fn round_trip() {
        let (dir, journal) = state_dir();
        assert_eq!(journal.read().expect("read"), None, "absent");
        let entries = vec![heartbeat("boot-1", "e1", 41), heartbeat("boot-2", "e2", 7)];
        journal.write(&entries).expect("write");
        assert_eq!(journal.read().expect("read"), Some(entries.clone()));
        assert_eq!(names(dir.path()), ["journal"], "no temporary file left");
        let mode = fs::metadata(journal.path()).expect("meta").permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.mode() & 0o777, 0o600);

        // A new write replaces it whole; reading does not consume it.
        let one = vec![heartbeat("boot-3", "e3", 9)];
        journal.write(&one).expect("write");
        assert_eq!(journal.read().expect("read"), Some(one.clone()));
        assert_eq!(journal.read().expect("read"), Some(one));

        assert!(journal.remove().expect("remove"));
        assert_eq!(journal.read().expect("read"), None);
        assert!(!journal.remove().expect("remove again"), "already gone");
        // Writing nothing removes it too.
        journal.write(&entries).expect("write");
        journal.write(&[]).expect("write nothing");
        assert!(!journal.path().exists());
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_torn_journal_is_moved_aside() {
        let (dir, journal) = state_dir();
        let bytes = encode(&[heartbeat("boot-1", "e1", 41)]).expect("encode");
        // Cut anywhere: in the magic, in the header, in the payload.
        for cut in [0, 3, 8, 19, HEADER_LEN, HEADER_LEN + 5, bytes.len() - 1] {
            fs::write(journal.path(), &bytes[..cut]).expect("write");
            assert_eq!(journal.read().expect("read"), None, "cut at {cut}");
            assert!(!journal.path().exists(), "cut at {cut}");
            assert_eq!(
                fs::read(journal.corrupt_path()).expect("moved aside"),
                &bytes[..cut]
            );
        }
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(
            decode(cut),
            Err(Corrupt::Torn {
                expected: bytes.len() as u64,
                found: cut.len() as u64
            })
        );
        // A journal with bytes after its end is not one either.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(Corrupt::Torn { .. })));
        assert_eq!(names(dir.path()), ["journal.corrupt"]);
    }

    #[test]
    fn a_damaged_journal_fails_its_checksum() {
        let bytes = encode(&[heartbeat("boot-1", "e1", 41)]).expect("encode");
        for at in [8, 12, HEADER_LEN, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                decode(&damaged).is_err(),
                "a flipped bit at {at} went unseen"
            );
        }
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 3] ^= 0x01;
        assert_eq!(decode(&flipped), Err(Corrupt::Checksum));
    }

    #[test]
    fn a_foreign_file_is_moved_aside() {
        let (dir, journal) = state_dir();
        for foreign in [
            &b"{\"sequence\": 5}"[..],
            b"\x00\x00\x00\x00",
            // A bare protobuf heartbeat, without the header.
            &heartbeat("boot-1", "e1", 41).encode_to_vec(),
        ] {
            fs::write(journal.path(), foreign).expect("write");
            assert_eq!(journal.read().expect("read"), None);
            assert_eq!(fs::read(journal.corrupt_path()).expect("aside"), foreign);
        }
        assert_eq!(decode(b"not a journal at all"), Err(Corrupt::Foreign));
        // Another format version is not read as this one.
        let mut newer = encode(&[heartbeat("boot-1", "e1", 41)]).expect("encode");
        newer[8] = 2;
        assert_eq!(decode(&newer), Err(Corrupt::Version(2)));
        // A header whose checksum holds over a payload that is not heartbeats.
        let payload = [0xFFu8; 6];
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&VERSION.to_le_bytes());
        bad.extend_from_slice(&6u32.to_le_bytes());
        let crc = crc32(&[&bad[8..16], &payload]);
        bad.extend_from_slice(&crc.to_le_bytes());
        bad.extend_from_slice(&payload);
        assert!(matches!(decode(&bad), Err(Corrupt::Decode(_))));
        // An empty payload.
        let mut empty = MAGIC.to_vec();
        empty.extend_from_slice(&VERSION.to_le_bytes());
        empty.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32(&[&empty[8..16]]);
        empty.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&empty), Err(Corrupt::Empty));
        assert_eq!(names(dir.path()), ["journal.corrupt"]);
    }

    #[test]
    fn a_missing_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path().join("missing"));
        assert_eq!(journal.read().expect("nothing to read"), None);
        assert!(!journal.remove().expect("nothing to remove"));
        let error = journal
            .write(&[heartbeat("boot-1", "e1", 41)])
            .expect_err("no directory to write in");
        let text = error.to_string();
        assert!(text.contains("cannot create"), "{text}");
        assert!(text.contains("missing/journal.tmp"), "{text}");
        assert!(!dir.path().join("missing").exists(), "not created here");
    }

    #[test]
    fn symbolic_links_in_the_state_dir_are_never_followed() {
        use std::os::unix::fs::symlink;
        let (dir, journal) = state_dir();
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let victim = elsewhere.path().join("shadow");
        fs::write(&victim, b"root:x:0:0\n").expect("write");

        // Writing: the temporary file is a link to another file.
        symlink(&victim, dir.path().join("journal.tmp")).expect("plant a symlink");
        let error = journal
            .write(&[heartbeat("boot-1", "e1", 41)])
            .expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("journal.tmp: it is a symbolic link"),
            "{text}"
        );
        assert_eq!(fs::read(&victim).expect("read"), b"root:x:0:0\n");
        assert!(!journal.path().exists());

        // Reading: the journal itself is a link to a valid journal.
        fs::remove_file(dir.path().join("journal.tmp")).expect("remove");
        let valid = encode(&[heartbeat("boot-1", "e1", 41)]).expect("encode");
        fs::write(&victim, &valid).expect("write");
        symlink(&victim, journal.path()).expect("plant a symlink");
        let error = journal.read().expect_err("refused");
        assert!(
            error.to_string().contains("journal: it is a symbolic link"),
            "{error}"
        );
        assert_eq!(fs::read(&victim).expect("read"), valid, "left as it was");
        assert_eq!(names(dir.path()), ["journal"], "not moved aside either");
    }

    #[test]
    fn rejected_heartbeats_are_kept_apart() {
        let (dir, journal) = state_dir();
        let refused = vec![heartbeat("boot-1", "e1", 41)];
        let path = journal.write_rejected(&refused).expect("write");
        assert_eq!(path, dir.path().join("journal.rejected"));
        assert_eq!(
            decode(&fs::read(&path).expect("read")).expect("decode"),
            refused
        );
        assert_eq!(journal.read().expect("read"), None);
    }

    #[test]
    fn merging_keeps_one_heartbeat_per_counter_set() {
        let old = heartbeat("boot-1", "e1", 41);
        let earlier_run = heartbeat("boot-2", "e2", 10);
        let last = heartbeat("boot-2", "e2", 20);
        let (kept, dropped) = merge(vec![old.clone(), earlier_run], last.clone());
        assert_eq!(kept, [old.clone(), last.clone()]);
        assert!(dropped.is_empty());

        // A newer one of the same set stays (the clock never goes back, but
        // the journal does not rely on it).
        let newer = heartbeat("boot-2", "e2", 30);
        let (kept, _) = merge(vec![newer.clone()], last.clone());
        assert_eq!(kept, [newer]);

        // Another epoch of the same boot is another counter set.
        let other_epoch = heartbeat("boot-2", "e3", 5);
        let (kept, _) = merge(vec![other_epoch.clone()], last.clone());
        assert_eq!(kept, [other_epoch, last.clone()]);

        // Full: the oldest go.
        let many: Vec<HeartbeatRequest> = (0..MAX_ENTRIES)
            .map(|i| heartbeat(&format!("boot-{i}"), "e", 1))
            .collect();
        let (kept, dropped) = merge(many.clone(), heartbeat("boot-new", "e", 1));
        assert_eq!(kept.len(), MAX_ENTRIES);
        assert_eq!(dropped, [many[0].clone()]);
        assert_eq!(kept.last().map(|r| r.boot_id.as_str()), Some("boot-new"));
        assert!(matches!(
            encode(&[many, vec![old]].concat()),
            Err(JournalError::TooMany(17))
        ));
    }
}
