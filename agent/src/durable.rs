//! Small files that survive a crash: each is replaced whole (a temporary
//! file written and fsync'd, renamed over the old one, the directory
//! fsync'd), so that after a power cut it is either the old file or the
//! new one. Used for the reboot journal and the generation file in the
//! state directory ([`crate::state`]).
//!
//! No file here is opened through a symbolic link (`O_NOFOLLOW`, for
//! reading and writing): one planted at `journal.tmp` or `journal` makes the
//! open fail with a clear error instead of writing, or reading, where it
//! points.

use std::{
    fs, io,
    os::unix::fs::OpenOptionsExt as _,
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
/// old file or the new one: a temporary file `name.tmp` (mode 0600, never
/// through a symbolic link) is written and fsync'd, renamed over `name`, and
/// `dir` is fsync'd.
pub fn replace_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
    let temp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    if let Err((action, error)) = write_synced(&temp, bytes) {
        // What could not be opened is not ours to remove (a symbolic link
        // planted there stays for a person to look at).
        if action != CREATE {
            let _ = fs::remove_file(&temp);
        }
        return Err(WriteError {
            action,
            path: temp,
            error,
        });
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

/// The action of a failed open for writing.
const CREATE: &str = "create";

/// Writes `bytes` to a new file at `path` (mode 0600, not through a
/// symbolic link) and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    use std::{io::Write as _, os::unix::fs::PermissionsExt as _};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| (CREATE, explain_symlink(e)))?;
    // A file left there by an earlier run keeps its mode on open: 0600 all
    // the same.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| ("chmod", e))?;
    file.write_all(bytes).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("fsync", e))
}

/// Opens `path` for reading, never through a symbolic link (one there is
/// an error that says so).
pub fn open_for_reading(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(explain_symlink)
}

/// The error of an open with `O_NOFOLLOW` that met a symbolic link
/// (`ELOOP`), said plainly; any other error as it is.
fn explain_symlink(error: io::Error) -> io::Error {
    if error.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            error.kind(),
            "it is a symbolic link, and the agent follows none in its state directory: remove \
             it (and find out who put it there)",
        )
    } else {
        error
    }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    #[test]
    fn a_symlink_at_the_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let victim = elsewhere.path().join("victim");
        fs::write(&victim, b"precious\n").expect("write");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
        let temp = dir.path().join("journal.tmp");
        symlink(&victim, &temp).expect("plant a symlink");

        let error = replace_durably(dir.path(), "journal", b"new contents")
            .expect_err("a symbolic link is refused");
        let text = error.to_string();
        assert!(text.starts_with("cannot create "), "{text}");
        assert!(
            text.contains("journal.tmp: it is a symbolic link"),
            "{text}"
        );
        assert_eq!(
            error.error.kind(),
            io::Error::from_raw_os_error(libc::ELOOP).kind()
        );
        // Where it points is untouched, and so are the link and the target.
        assert_eq!(fs::read(&victim).expect("read"), b"precious\n");
        let mode = fs::metadata(&victim).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(
            fs::symlink_metadata(&temp)
                .expect("still there")
                .file_type()
                .is_symlink(),
            "left for a person to look at"
        );
        assert!(!dir.path().join("journal").exists());
    }

    #[test]
    fn a_symlink_is_not_read_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"not the journal").expect("write");
        let link = dir.path().join("journal");
        symlink(&target, &link).expect("plant a symlink");
        let error = open_for_reading(&link).expect_err("refused");
        assert!(
            error.to_string().starts_with("it is a symbolic link"),
            "{error}"
        );
        open_for_reading(&target).expect("a plain file opens");
    }

    #[test]
    fn the_new_file_is_private_even_over_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let temp = dir.path().join("generation.tmp");
        fs::write(&temp, b"left by a crash").expect("write");
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o666)).expect("chmod");
        replace_durably(dir.path(), "generation", b"{}").expect("write");
        let path = dir.path().join("generation");
        assert_eq!(fs::read(&path).expect("read"), b"{}");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!temp.exists());
    }
}
