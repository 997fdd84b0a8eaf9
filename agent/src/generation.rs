//! Generations of counter sets (`tally.v1` `HeartbeatRequest.generation`):
//! a number kept in the state directory (`<state dir>/generation`) that is
//! higher for every counter set this node's agent starts than for any it
//! started before or saw the collector follow. It lets the collector order
//! the counter sets of different boots without the node's wall clock, which
//! may be days off after a reboot.
//!
//! A set keeps its generation for its life, across agent restarts: the file
//! remembers the generations of the newest few sets by boot id and epoch.
//! When the collector answers STALE with OLDER_GENERATION for the agent's
//! own current set (the state directory was lost, so the count began again
//! at 1), the agent raises that set's generation above the one the
//! collector follows ([`Generations::raise`]): the collector never followed
//! the set, so it then counts it in full, once.
//!
//! The file is small JSON, replaced durably on every change (a new set, a
//! raise, a higher generation seen); one that cannot be read is logged and
//! started again (the collector's answers then restore the count). It is
//! never read or written through a symbolic link (`O_NOFOLLOW`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "generation";
/// Counter sets whose generations are remembered (a reading of the set
/// before the newest may still be on its way).
const KEPT_SETS: usize = 8;

/// A counter set's name: its boot and epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Set {
    boot_id: String,
    epoch: String,
    generation: u64,
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The highest generation used here or seen followed by the collector.
    highest: u64,
    /// The newest sets, oldest first.
    sets: Vec<Set>,
}

/// The generations of this node's counter sets.
#[derive(Debug)]
pub struct Generations {
    dir: PathBuf,
    record: Record,
}

impl Generations {
    /// What the state directory `dir` holds (nothing yet when there is no
    /// file, or one that cannot be read: logged).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE_NAME);
        let read = match read_file(&path) {
            Ok(bytes) => parse(&bytes).map_err(|e| e.to_string()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(error) => Err(error.to_string()),
        };
        let record = read.unwrap_or_else(|error| {
            tracing::error!(
                path = %path.display(),
                %error,
                "cannot read the counter sets' generations; counting them again from the \
                 collector's answers"
            );
            Record::default()
        });
        Self {
            dir: dir.to_owned(),
            record,
        }
    }

    /// The generations a generation file's contents `bytes` hold, for the
    /// state directory `dir` (where changes are written); why they cannot
    /// be read. [`Generations::load`] without the file system and the
    /// fallback, for the fuzz target of the file's parser.
    pub fn from_file_contents(dir: &Path, bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Self {
            dir: dir.to_owned(),
            record: parse(bytes)?,
        })
    }

    /// The generation of the counter set `(boot_id, epoch)`: the one it was
    /// given, or, for a set not seen here before, one above every
    /// generation used or seen (written to the state directory first).
    pub fn of(&mut self, boot_id: &str, epoch: &str) -> u64 {
        if let Some(set) = self.find(boot_id, epoch) {
            return set.generation;
        }
        let generation = self.record.highest.saturating_add(1);
        self.set(boot_id, epoch, generation);
        tracing::info!(boot_id, epoch, generation, "a new counter set");
        generation
    }

    /// The collector follows a counter set of `generation` for this node:
    /// the next set starts above it.
    pub fn seen(&mut self, generation: u64) {
        if generation > self.record.highest {
            self.record.highest = generation;
            self.save();
        }
    }

    /// Gives the set `(boot_id, epoch)` a generation above `followed` and
    /// every generation used here; returns it. Only for a set the collector
    /// answered OLDER_GENERATION: one it never followed.
    pub fn raise(&mut self, boot_id: &str, epoch: &str, followed: u64) -> u64 {
        let generation = self.record.highest.max(followed).saturating_add(1);
        self.set(boot_id, epoch, generation);
        generation
    }

    fn find(&self, boot_id: &str, epoch: &str) -> Option<&Set> {
        self.record
            .sets
            .iter()
            .find(|s| s.boot_id == boot_id && s.epoch == epoch)
    }

    fn set(&mut self, boot_id: &str, epoch: &str, generation: u64) {
        self.record
            .sets
            .retain(|s| !(s.boot_id == boot_id && s.epoch == epoch));
        self.record.sets.push(Set {
            boot_id: boot_id.to_owned(),
            epoch: epoch.to_owned(),
            generation,
        });
        let excess = self.record.sets.len().saturating_sub(KEPT_SETS);
        self.record.sets.drain(..excess);
        self.record.highest = self.record.highest.max(generation);
        self.save();
    }

    fn save(&self) {
        // Serializing plain strings and numbers cannot fail.
        let bytes = serde_json::to_vec(&self.record).unwrap_or_default();
        if let Err(error) = durable::replace_durably(&self.dir, FILE_NAME, &bytes) {
            tracing::error!(
                %error,
                "cannot keep the counter sets' generations: after a reboot the collector may \
                 take this node's new counter set for an old one until the agent raises it"
            );
        }
    }
}

/// The file at `path`, never read through a symbolic link.
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    durable::open_for_reading(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The file's contents.
fn parse(bytes: &[u8]) -> Result<Record, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_set_gets_a_higher_generation_that_outlives_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut generations = Generations::load(dir.path());
        assert_eq!(generations.of("boot-1", "a"), 1);
        assert_eq!(generations.of("boot-1", "a"), 1, "a set keeps its own");
        assert_eq!(generations.of("boot-1", "b"), 2);
        // A reading of the older set still on its way keeps its number.
        assert_eq!(generations.of("boot-1", "a"), 1);
        drop(generations);

        let mut again = Generations::load(dir.path());
        assert_eq!(again.of("boot-1", "b"), 2, "the same set after a restart");
        assert_eq!(again.of("boot-2", "c"), 3, "a reboot's set");
    }

    #[test]
    fn what_the_collector_follows_is_a_floor_and_a_raise_goes_above_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut generations = Generations::load(dir.path());
        assert_eq!(generations.of("boot-1", "a"), 1);
        generations.seen(7);
        generations.seen(3);
        assert_eq!(generations.of("boot-1", "b"), 8);
        // The state directory was lost: the count starts again...
        let lost = tempfile::tempdir().expect("tempdir");
        let mut fresh = Generations::load(lost.path());
        assert_eq!(fresh.of("boot-2", "c"), 1);
        // ...until the collector says it follows 8.
        assert_eq!(fresh.raise("boot-2", "c", 8), 9);
        assert_eq!(fresh.of("boot-2", "c"), 9);
        assert_eq!(fresh.of("boot-2", "d"), 10);
        assert_eq!(Generations::load(lost.path()).of("boot-2", "c"), 9);
    }

    #[test]
    fn only_the_newest_sets_are_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut generations = Generations::load(dir.path());
        for i in 0..20 {
            generations.of("boot", &format!("e{i}"));
        }
        let kept = Generations::load(dir.path());
        assert_eq!(kept.record.sets.len(), KEPT_SETS);
        assert_eq!(kept.record.highest, 20);
        assert_eq!(kept.find("boot", "e19").map(|s| s.generation), Some(20));
        assert!(kept.find("boot", "e0").is_none());
    }

    #[test]
    fn a_symbolic_link_is_neither_read_nor_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let victim = elsewhere.path().join("victim");
        let planted = br#"{"highest":41,"sets":[]}"#;
        std::fs::write(&victim, planted).expect("write");
        std::os::unix::fs::symlink(&victim, dir.path().join(FILE_NAME)).expect("symlink");
        std::os::unix::fs::symlink(&victim, dir.path().join("generation.tmp")).expect("symlink");
        let mut generations = Generations::load(dir.path());
        assert_eq!(generations.of("boot", "a"), 1, "not read through the link");
        assert_eq!(
            std::fs::read(&victim).expect("read"),
            planted,
            "not written"
        );
    }

    #[test]
    fn an_unreadable_file_starts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").expect("write");
        let mut generations = Generations::load(dir.path());
        assert_eq!(generations.of("boot", "a"), 1);
        assert_eq!(Generations::load(dir.path()).of("boot", "a"), 1);
    }
}
