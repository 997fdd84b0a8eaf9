//! Free disk space under `target/`, checked before a build that needs a lot
//! of it, so that a full disk is named up front instead of surfacing as a
//! linker's bus error halfway through.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

const GIB: u64 = 1 << 30;

/// Bytes available to this user on the file system holding `path` (or the
/// nearest existing ancestor of it).
pub fn available(path: &Path) -> io::Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let c_path = CString::new(existing.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    // SAFETY: `statvfs` is plain old data, filled in by the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid pointer to the struct.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Prints a warning when less than `need_gib` GiB is free under `target`;
/// `what` names the job ("a clean test build").
pub fn warn_if_short(target: &Path, need_gib: u64, what: &str) {
    match available(target) {
        Ok(free) => {
            if let Some(warning) = shortage(target, free, need_gib, what) {
                eprintln!("{warning}");
            }
        }
        Err(err) => eprintln!(
            "warning: cannot tell the free space under {}: {err}",
            target.display()
        ),
    }
}

fn shortage(target: &Path, free: u64, need_gib: u64, what: &str) -> Option<String> {
    (free < need_gib.saturating_mul(GIB)).then(|| {
        format!(
            "warning: {free_gib:.1} GiB free on the file system of {target}; {what} \
             takes up to about {need_gib} GiB there. If it fails with \"No space left \
             on device\", free some (`cargo clean` drops old builds) and run it again.",
            free_gib = free as f64 / GIB as f64,
            target = target.display(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_is_measured_on_its_nearest_ancestor() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let here = available(dir.path()).expect("statvfs of a directory");
        let below = available(&dir.path().join("not/yet/made")).expect("statvfs of its ancestor");
        assert!(here > 0, "a writable temporary directory has free space");
        // Same file system, moments apart: allow for other writers.
        assert!(
            here.abs_diff(below) < 256 * 1024 * 1024,
            "{here} vs {below}"
        );
    }

    #[test]
    fn warns_only_below_the_need() {
        let target = Path::new("/srv/target");
        assert_eq!(shortage(target, 5 * GIB, 5, "a build"), None);
        let warning = shortage(target, 3 * GIB + GIB / 2, 5, "a build").expect("short of disk");
        assert!(
            warning.starts_with("warning: 3.5 GiB free on the file system of /srv/target; a build takes up to about 5 GiB"),
            "{warning}"
        );
    }
}
