//! Where the agent pins its maps and links on the bpf filesystem.
//!
//! ```text
//! <pin-dir>/                 default /sys/fs/bpf/tally
//!   TALLY_FAST               per-CPU counters by ifindex (below 4096)
//!   TALLY_COUNTERS           per-CPU counters per ifindex (4096 and up)
//!   TALLY_IFACES             name, state and attach mode per ifindex
//!   TALLY_META               the counter epoch
//!   links/<ifindex>-ingress  TCX links (kernel 6.6+)
//!   links/<ifindex>-egress
//! ```

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use tally_common::maps;

/// The default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tally";
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// A problem with the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinDirError {
    #[error(
        "{dir} is not on a bpf filesystem, so nothing can be pinned there; choose a --pin-dir under a \
         bpffs mount (mount one with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NotBpffs { dir: PathBuf },
    #[error(
        "cannot mount the bpf filesystem on {BPFFS_ROOT}: {source}; mount it by hand with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    Mount { source: io::Error },
    #[error("cannot create the pin directory {dir}: {source}")]
    Create { dir: PathBuf, source: io::Error },
}

/// The paths of the agent's pinned objects below one pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

/// Which TC hook a link is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

impl PinLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn fast(&self) -> PathBuf {
        self.map(maps::FAST)
    }

    pub fn counters(&self) -> PathBuf {
        self.map(maps::COUNTERS)
    }

    pub fn ifaces(&self) -> PathBuf {
        self.map(maps::IFACES)
    }

    pub fn meta(&self) -> PathBuf {
        self.map(maps::META)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.links_dir()
            .join(format!("{ifindex}-{}", hook.as_str()))
    }

    /// Parses a link pin's file name back into `(ifindex, hook)`.
    pub fn parse_link_name(name: &str) -> Option<(u32, Hook)> {
        let (index, hook) = name.split_once('-')?;
        let hook = match hook {
            "ingress" => Hook::Ingress,
            "egress" => Hook::Egress,
            _ => return None,
        };
        Some((index.parse().ok()?, hook))
    }

    /// The pinned links below `links/`, as `(ifindex, hook, path)`.
    pub fn pinned_links(&self) -> io::Result<Vec<(u32, Hook, PathBuf)>> {
        let entries = match fs::read_dir(self.links_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Some((ifindex, hook)) = name.to_str().and_then(Self::parse_link_name) {
                links.push((ifindex, hook, entry.path()));
            }
        }
        links.sort_by_key(|(ifindex, hook, _)| (*ifindex, *hook == Hook::Egress));
        Ok(links)
    }

    /// Whether a counter set is pinned here.
    pub fn has_counters(&self) -> bool {
        self.fast().exists() || self.counters().exists()
    }

    /// Whether the whole counter set (both counter maps and the epoch) is
    /// pinned here; a partial set cannot keep its epoch.
    pub fn has_complete_counters(&self) -> bool {
        self.fast().exists() && self.counters().exists() && self.meta().exists()
    }

    /// Creates the pin directory (and `links/`), mounting bpffs on
    /// `/sys/fs/bpf` first when the directory is below it and nothing is
    /// mounted there.
    pub fn prepare(&self) -> Result<(), PinDirError> {
        let existing = nearest_existing(&self.dir);
        if !is_bpffs(&existing) {
            let root = Path::new(BPFFS_ROOT);
            if self.dir.starts_with(root) && root.is_dir() && !is_bpffs(root) {
                mount_bpffs(root).map_err(|source| PinDirError::Mount { source })?;
            } else {
                return Err(PinDirError::NotBpffs {
                    dir: self.dir.clone(),
                });
            }
        }
        for dir in [self.dir.clone(), self.links_dir()] {
            fs::create_dir_all(&dir).map_err(|source| PinDirError::Create { dir, source })?;
        }
        Ok(())
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.exists() {
        match current.parent() {
            Some(parent) => current = parent.to_path_buf(),
            None => break,
        }
    }
    current
}

/// Whether `path` lies on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    // `f_type` is signed in glibc (`__fsword_t`) and unsigned in musl
    // (`unsigned long`); file system magic numbers are positive either way.
    #[allow(
        clippy::unnecessary_cast,
        clippy::cast_sign_loss,
        reason = "the type differs between C libraries"
    )]
    let f_type = stat.f_type as u64;
    rc == 0 && f_type == BPF_FS_MAGIC
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_bytes())?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An exclusive lock on the pin directory, held by `run` and `detach`, so that
/// two agents never manage the same pinned counters.
#[derive(Debug)]
pub struct PinLock {
    _file: fs::File,
}

impl PinLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(layout: &PinLayout) -> io::Result<Self> {
        let file = fs::File::open(layout.dir())?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            Ok(Self { _file: file })
        } else {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another tally-agent is using {}; stop it first (or give this one its own --pin-dir)",
                        layout.dir().display()
                    ),
                ))
            } else {
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        let layout = PinLayout::new("/sys/fs/bpf/tally");
        for hook in Hook::BOTH {
            let path = layout.link(42, hook);
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            assert_eq!(PinLayout::parse_link_name(name), Some((42, hook)));
        }
        assert_eq!(
            layout.link(7, Hook::Ingress),
            PathBuf::from("/sys/fs/bpf/tally/links/7-ingress")
        );
        assert_eq!(PinLayout::parse_link_name("x-ingress"), None);
        assert_eq!(PinLayout::parse_link_name("7-sideways"), None);
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_bpffs(dir.path()));
        let err = PinLayout::new(dir.path().join("tally"))
            .prepare()
            .expect_err("not bpffs");
        assert!(err.to_string().contains("not on a bpf filesystem"), "{err}");
    }
}
