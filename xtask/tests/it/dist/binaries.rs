//! The binaries of both tarballs: static executables for their CPU, stripped,
//! with the dependency list embedded; the x86_64 ones run in an empty root
//! (no libc, no loader, only /proc and /sys), the aarch64 ones under
//! qemu-user.

use std::{fs, path::Path, process::Command};

use tally_testkit::skip::skip;

use super::common::{BINARIES, TARGETS, VERSION, dist_dir, run_ok, tarball, unpack};

/// The program headers, section headers and dynamic section `readelf` shows.
fn readelf(args: &[&str], binary: &Path) -> String {
    run_ok(Command::new("readelf").args(args).arg(binary))
}

#[test]
fn binaries_are_static_stripped_and_list_their_dependencies() {
    let Some(dist) = dist_dir("binaries_are_static_stripped_and_list_their_dependencies") else {
        return;
    };
    for (target, machine) in TARGETS {
        let unpacked = unpack(&tarball(&dist, target));
        for binary in BINARIES {
            let path = unpacked.top.join(binary);
            let what = format!("{target}/{binary}");
            let header = readelf(&["--file-header"], &path);
            assert!(
                header.contains(machine),
                "{what} is not for {machine}:\n{header}"
            );
            let programs = readelf(&["--program-headers"], &path);
            assert!(
                !programs.contains("INTERP"),
                "{what} asks for a loader:\n{programs}"
            );
            let dynamic = readelf(&["--dynamic"], &path);
            assert!(
                !dynamic.contains("(NEEDED)"),
                "{what} needs a library:\n{dynamic}"
            );
            let sections = readelf(&["--section-headers", "--wide"], &path);
            assert!(
                sections.contains(".dep-v0"),
                "{what} has no cargo-auditable list"
            );
            assert!(!sections.contains(".symtab"), "{what} is not stripped");
            assert!(!sections.contains(".debug_"), "{what} has debuginfo");
            let file = run_ok(Command::new("file").arg("--brief").arg(&path));
            assert!(
                file.contains("statically linked") || file.contains("static-pie linked"),
                "{what}: {file}"
            );
        }
    }
}

/// Runs `args` (a path inside `root`, then its arguments) chrooted into
/// `root`, with the host's /proc and /sys bound in a mount namespace of its
/// own (gone when the command ends).
fn in_empty_root(root: &Path, args: &[&str]) -> String {
    let script =
        r#"mount --bind /proc "$1/proc" && mount --bind /sys "$1/sys" && exec chroot "$@""#;
    run_ok(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(root)
            .args(args),
    )
}

#[test]
fn x86_64_binaries_run_in_an_empty_root() {
    const TEST: &str = "x86_64_binaries_run_in_an_empty_root";
    let Some(dist) = dist_dir(TEST) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(TEST, "chroot and mount need root");
        return;
    }
    let unpacked = unpack(&tarball(&dist, TARGETS[0].0));
    let root = tempfile::tempdir().expect("temp dir");
    for dir in ["proc", "sys"] {
        fs::create_dir(root.path().join(dir)).expect("mkdir");
    }
    for binary in BINARIES {
        fs::copy(unpacked.top.join(binary), root.path().join(binary)).expect("copy");
    }
    let files: Vec<_> = fs::read_dir(root.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        files.len(),
        4,
        "the root holds only the binaries, proc and sys"
    );

    for binary in BINARIES {
        let version = in_empty_root(root.path(), &[&format!("/{binary}"), "--version"]);
        assert!(
            version.starts_with(&format!("{binary} {VERSION} (")),
            "{binary} --version: {version}"
        );
    }
    let status = in_empty_root(
        root.path(),
        &["/tally-agent", "status", "--source", "procfs"],
    );
    assert!(status.contains("source   procfs"), "{status}");
    assert!(status.contains("INTERFACE"), "{status}");
    let help = in_empty_root(root.path(), &["/tally-collector", "--help"]);
    assert!(help.contains("serve"), "{help}");
}

#[test]
fn aarch64_binaries_run_under_qemu_user() {
    const TEST: &str = "aarch64_binaries_run_under_qemu_user";
    let Some(dist) = dist_dir(TEST) else {
        return;
    };
    let qemu = "qemu-aarch64-static";
    if Command::new(qemu).arg("--version").output().is_err() {
        skip(
            TEST,
            "qemu-aarch64-static is not installed (Debian package `qemu-user-static`)",
        );
        return;
    }
    let unpacked = unpack(&tarball(&dist, TARGETS[1].0));
    for binary in BINARIES {
        let path = unpacked.top.join(binary);
        let version = run_ok(Command::new(qemu).arg(&path).arg("--version"));
        assert!(
            version.starts_with(&format!("{binary} {VERSION} (")),
            "{binary} --version: {version}"
        );
        let help = run_ok(Command::new(qemu).arg(&path).arg("--help"));
        assert!(help.contains("Usage:"), "{binary} --help: {help}");
    }
}
