//! The agent's state directory (`run --state-dir`, default
//! `/var/lib/tally-agent`): what must outlive the process and the boot,
//! the reboot journal ([`crate::journal`]) and the generations of the
//! counter sets ([`crate::generation`]). Created (mode 0700) when
//! missing, and locked for the whole run: two agents sharing one would
//! deliver each other's journals as their own.

use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use crate::{generation::Generations, journal::Journal};

/// Where the state directory is unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tally-agent";

/// The state directory, locked by this process until dropped.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: fs::File,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}: {error}", path.display())]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot open the state directory {}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error(
        "another tally-agent is using the state directory {}; stop it first (or give this \
         one its own --state-dir)",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error("cannot lock the state directory {}: {error}", path.display())]
    Lock { path: PathBuf, error: io::Error },
    #[error("the state directory {} is not writable by this agent: {error}", path.display())]
    NotWritable { path: PathBuf, error: io::Error },
}

impl StateDir {
    /// Creates `path` (and its parents) with mode 0700 if missing, checks
    /// that the agent may write there, and locks it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let path = path.to_owned();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|error| StateError::Create {
                path: path.clone(),
                error,
            })?;
        let lock = fs::File::open(&path).map_err(|error| StateError::Open {
            path: path.clone(),
            error,
        })?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StateError::Busy { path }
            } else {
                StateError::Lock { path, error }
            });
        }
        writable(&path).map_err(|error| StateError::NotWritable {
            path: path.clone(),
            error,
        })?;
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reboot journal kept here.
    pub fn journal(&self) -> Journal {
        Journal::new(&self.path)
    }

    /// The generations of the counter sets, kept here.
    pub fn generations(&self) -> Generations {
        Generations::load(&self.path)
    }
}

/// Whether this process may create files in `dir` (the kernel's own check,
/// capabilities included).
fn writable(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string.
    let rc = unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn created_private_and_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("var/lib/tally-agent");
        let state = StateDir::open(&path).expect("open");
        assert_eq!(state.path(), path);
        let mode = fs::metadata(&path).expect("created").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(state.journal().path(), path.join("journal"));

        let busy = StateDir::open(&path).expect_err("locked");
        assert!(matches!(busy, StateError::Busy { .. }), "{busy:?}");
        assert!(busy.to_string().contains("--state-dir"), "{busy}");
        drop(state);
        // Free again, and an existing directory is used as it is.
        StateDir::open(&path).expect("open again");
    }

    #[test]
    fn a_file_in_the_way_is_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        fs::write(&path, "not a directory").expect("write");
        let error = StateDir::open(&path).expect_err("a file");
        assert!(
            error
                .to_string()
                .starts_with("cannot create the state directory"),
            "{error}"
        );
    }
}
