//! The agent's state directory (`run --state-dir`, default
//! `/var/lib/tally-agent`): what must outlive the process and the boot,
//! the reboot journal ([`crate::journal`]) and the generations of the
//! counter sets ([`crate::generation`]). Created (mode 0700) when
//! missing, and locked for the whole run: two agents sharing one would
//! deliver each other's journals as their own.
//!
//! It must be the agent's alone: a directory that is a symbolic link, that
//! another user owns, or that group or others may write is refused
//! ([`StateDir::open`]), whatever the other settings: whoever can write
//! there can forge the heartbeats the next start delivers, or point the
//! agent's writes elsewhere.

use std::{
    fs, io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
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
    #[error(
        "refusing the state directory {}: it is a symbolic link{}, and the agent follows none \
         there; give the directory itself as --state-dir (TALLY_STATE_DIR)",
        path.display(),
        target.as_ref().map(|t| format!(" to {}", t.display())).unwrap_or_default()
    )]
    Symlink {
        path: PathBuf,
        target: Option<PathBuf>,
    },
    #[error(
        "refusing the state directory {dir} (owner uid {owner}, mode {mode:04o}): it must be \
         owned by uid {euid} (the agent's user) and writable by no one else, or other users \
         could forge or destroy the reboot journal; fix it with `chown {euid} {dir} && chmod \
         0700 {dir}`",
        dir = path.display()
    )]
    NotPrivate {
        path: PathBuf,
        /// The directory's owner.
        owner: u32,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
        /// The agent's effective uid.
        euid: u32,
    },
}

impl StateDir {
    /// Creates `path` (and its parents) with mode 0700 if missing, checks
    /// that it is the agent's alone ([`check_private`]) and that the agent
    /// may write there, and locks it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        // Without a trailing slash, which would make the kernel follow a
        // symbolic link there despite O_NOFOLLOW.
        let path: PathBuf = path.components().collect();
        if let Some(error) = symlink_error(&path) {
            return Err(error);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|error| StateError::Create {
                path: path.clone(),
                error,
            })?;
        // Not through a symbolic link either (one put there since the check
        // above): what is checked below is what is locked and used.
        let lock = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|error| {
                symlink_error(&path).unwrap_or_else(|| StateError::Open {
                    path: path.clone(),
                    error,
                })
            })?;
        let meta = lock.metadata().map_err(|error| StateError::Open {
            path: path.clone(),
            error,
        })?;
        check_private(&path, &meta, effective_uid())?;
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

    /// Where the directory is.
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

/// Refuses a state directory `path` whose metadata `meta` (of the directory
/// itself, not through a symbolic link) says someone but the user `euid`
/// could change what is in it: owned by another user, or writable by group
/// or others.
pub fn check_private(path: &Path, meta: &fs::Metadata, euid: u32) -> Result<(), StateError> {
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    if is_private(owner, mode, euid) {
        Ok(())
    } else {
        Err(StateError::NotPrivate {
            path: path.to_owned(),
            owner,
            mode,
            euid,
        })
    }
}

/// Whether a directory of `owner` with the permission bits `mode` is the
/// user `euid`'s alone: owned by it, writable by neither group nor others.
pub fn is_private(owner: u32, mode: u32, euid: u32) -> bool {
    owner == euid && mode & 0o022 == 0
}

/// The refusal of `path` when it is a symbolic link (with where it points,
/// when that can be read); `None` when it is not one or is missing.
fn symlink_error(path: &Path) -> Option<StateError> {
    let meta = fs::symlink_metadata(path).ok()?;
    meta.file_type().is_symlink().then(|| StateError::Symlink {
        path: path.to_owned(),
        target: fs::read_link(path).ok(),
    })
}

/// The effective uid of this process.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

    /// A directory `dir/name` with the permission bits `mode`.
    fn dir_with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir(&path).expect("mkdir");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let euid = effective_uid();
        for mode in [0o777, 0o775, 0o757, 0o1777, 0o720] {
            let path = dir_with_mode(dir.path(), &format!("state-{mode:o}"), mode);
            let error = StateDir::open(&path).expect_err("writable by others");
            assert!(
                matches!(error, StateError::NotPrivate { mode: m, .. } if m == mode),
                "{mode:o}: {error:?}"
            );
            let text = error.to_string();
            let shown = path.display();
            assert_eq!(
                text,
                format!(
                    "refusing the state directory {shown} (owner uid {euid}, mode {mode:04o}): \
                     it must be owned by uid {euid} (the agent's user) and writable by no one \
                     else, or other users could forge or destroy the reboot journal; fix it \
                     with `chown {euid} {shown} && chmod 0700 {shown}`"
                )
            );
            assert!(!text.contains('\n'), "one line: {text}");
            // Left as it was: nothing written, nothing changed.
            let now = fs::symlink_metadata(&path)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(now & 0o7777, mode);
            assert_eq!(fs::read_dir(&path).expect("list").count(), 0);
        }
        // Readable by others is fine (a hostPath that kubelet made 0755).
        for mode in [0o700, 0o750, 0o755] {
            let path = dir_with_mode(dir.path(), &format!("ok-{mode:o}"), mode);
            StateDir::open(&path).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
    }

    #[test]
    fn only_the_agents_own_directory_is_private() {
        assert!(is_private(0, 0o700, 0));
        assert!(is_private(998, 0o755, 998));
        assert!(!is_private(65534, 0o700, 0), "another owner");
        assert!(
            !is_private(0, 0o700, 998),
            "root's, while the agent is not root"
        );
        assert!(!is_private(998, 0o770, 998), "group-writable");
        assert!(!is_private(998, 0o702, 998), "writable by others");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir_with_mode(dir.path(), "state", 0o700);
        let meta = fs::symlink_metadata(&path).expect("meta");
        // As another uid than the owner: the decision alone.
        let error = check_private(&path, &meta, meta.uid() + 1).expect_err("not ours");
        let text = error.to_string();
        assert!(
            text.contains(&format!("(owner uid {}, mode 0700)", meta.uid())),
            "{text}"
        );
        assert!(
            text.contains(&format!("chown {} {}", meta.uid() + 1, path.display())),
            "{text}"
        );
        // For real, where the test may give the directory away.
        if effective_uid() != 0 {
            eprintln!("not root: cannot give a directory to another user; decision tested only");
            return;
        }
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown to nobody");
        let error = StateDir::open(&path).expect_err("nobody's directory");
        assert!(
            matches!(
                error,
                StateError::NotPrivate {
                    owner: 65534,
                    mode: 0o700,
                    euid: 0,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("fix it with `chown 0 "),
            "{error}"
        );
        assert_eq!(
            fs::read_dir(&path).expect("list").count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir_with_mode(dir.path(), "real", 0o700);
        let link = dir.path().join("state");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let error = StateDir::open(&link).expect_err("a symbolic link");
        assert!(matches!(error, StateError::Symlink { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "refusing the state directory {}: it is a symbolic link to {}, and the agent \
                 follows none there; give the directory itself as --state-dir (TALLY_STATE_DIR)",
                link.display(),
                real.display()
            )
        );
        assert_eq!(fs::read_dir(&real).expect("list").count(), 0);
        // Also when named with a trailing slash (which resolves a link).
        let slash = PathBuf::from(format!("{}/", link.display()));
        let error = StateDir::open(&slash).expect_err("a symbolic link");
        assert!(matches!(error, StateError::Symlink { .. }), "{error:?}");
        // The directory itself is fine.
        StateDir::open(&real).expect("open");

        // A dangling one: nothing is created where it points.
        let nowhere = dir.path().join("nowhere");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(&nowhere, &dangling).expect("symlink");
        let error = StateDir::open(&dangling).expect_err("a symbolic link");
        assert!(matches!(error, StateError::Symlink { .. }), "{error:?}");
        assert!(!nowhere.exists());
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
