//! Where the artefacts are and how to open them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use tally_testkit::skip::skip;

/// The release's version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The two targets, with the CPU name `readelf -h` gives their binaries.
pub const TARGETS: [(&str, &str); 2] = [
    ("x86_64-unknown-linux-musl", "Advanced Micro Devices X86-64"),
    ("aarch64-unknown-linux-musl", "AArch64"),
];

pub const BINARIES: [&str; 2] = ["tally-agent", "tally-collector"];

/// The directory named by `variable`, or `None` after saying why the test
/// skips.
pub fn dir_from(variable: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(dir) if Path::new(&dir).is_dir() => Some(PathBuf::from(dir)),
        _ => {
            skip(
                test,
                &format!("{variable} names no directory of `cargo xtask dist` artefacts"),
            );
            None
        }
    }
}

/// The artefacts `cargo xtask test` built, or `None` (skipped).
pub fn dist_dir(test: &str) -> Option<PathBuf> {
    dir_from("TALLY_DIST_DIR", test)
}

/// `tally-<version>-<target>.tar.gz` in `dir`.
pub fn tarball(dir: &Path, target: &str) -> PathBuf {
    dir.join(format!("tally-{VERSION}-{target}.tar.gz"))
}

/// A tarball unpacked into a temporary directory; `top` is its one
/// top-level directory.
pub struct Unpacked {
    _dir: tempfile::TempDir,
    pub top: PathBuf,
}

pub fn unpack(tarball: &Path) -> Unpacked {
    let dir = tempfile::tempdir().expect("temp dir");
    run_ok(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(tarball)
            .arg("--directory")
            .arg(dir.path()),
    );
    let top = dir.path().join(
        tarball
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .expect("a .tar.gz"),
    );
    assert!(
        top.is_dir(),
        "{} holds no {}",
        tarball.display(),
        top.display()
    );
    Unpacked { _dir: dir, top }
}

/// Runs `cmd`, asserts that it succeeded, and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every regular file under `dir`, as sorted paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
