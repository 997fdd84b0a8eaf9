//! Small files that survive a crash: each is replaced whole (a temporary
//! file written and fsync'd, renamed over the old one, the directory
//! fsync'd), so that after a power cut it is either the old file or the
//! new one. Used for the reboot journal and the generation file in the
//! state directory ([`crate::state`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Why a file in the state directory could not be written durably.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {error}", path.display())]
pub struct WriteError {
    pub action: &'static str,
    pub path: PathBuf,
    pub error: io::Error,
}

/// Replaces `dir/name` with `bytes` so that after a crash it is either the
/// old file or the new one: a temporary file `name.tmp` (mode 0600) is
/// written and fsync'd, renamed over `name`, and `dir` is fsync'd.
pub fn replace_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
    let temp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let written = write_synced(&temp, bytes).map_err(|(action, error)| WriteError {
        action,
        path: temp.clone(),
        error,
    });
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    if let Err(error) = fs::rename(&temp, &target) {
        let _ = fs::remove_file(&temp);
        return Err(WriteError {
            action: "rename the new file to",
            path: target,
            error,
        });
    }
    sync_dir(dir)
}

/// Writes `bytes` to a new file at `path` (mode 0600) and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ("create", e))?;
    file.write_all(bytes).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("fsync", e))
}

/// fsync of a directory, so that a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| WriteError {
            action: "fsync the directory",
            path: dir.to_owned(),
            error,
        })
}
