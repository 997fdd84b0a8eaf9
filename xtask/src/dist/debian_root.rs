//! A Debian 12 root for the package tests (`dist::` in xtask's tests): made
//! once with debootstrap (minbase with systemd, dbus and apt, from
//! deb.debian.org) under the target directory, and kept; the tests boot a
//! copy of it with systemd-nspawn.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{
    packages::{self, Need},
    status_ok, target_dir,
};

/// The Debian release of the root.
const SUITE: &str = "bookworm";
/// Written last: a root without it is an interrupted debootstrap.
const COMPLETE_MARKER: &str = ".tally-debootstrap-complete";
/// What the root holds beyond minbase: an init to boot, a bus for systemctl.
const INCLUDE: &str = "systemd,systemd-sysv,dbus";

pub const NEEDS: [Need; 2] = [
    Need {
        package: "debootstrap",
        programs: &["debootstrap"],
        files: &[],
        why: "a Debian 12 root for the package tests",
    },
    Need {
        package: "systemd-container",
        programs: &["systemd-nspawn"],
        files: &[],
        why: "booting that root for the package tests",
    },
];

/// The root, made first if it is not there (as root, about a minute).
pub fn ensure() -> anyhow::Result<PathBuf> {
    packages::ensure(&NEEDS)?;
    let root = target_dir().join(format!("debian-{SUITE}-root"));
    if root.join(COMPLETE_MARKER).exists() {
        return Ok(root);
    }
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    eprintln!(
        "setup: making a Debian {SUITE} root in {} (debootstrap)",
        root.display()
    );
    status_ok(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&root)
            .arg("http://deb.debian.org/debian"),
    )?;
    // What Debian's installer writes and debootstrap does not: the static
    // (musl) binaries resolve names from /etc/hosts and DNS only.
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    )
    .with_context(|| format!("cannot write {}/etc/hosts", root.display()))?;
    fs::write(root.join(COMPLETE_MARKER), "")
        .with_context(|| format!("cannot mark {} complete", root.display()))?;
    Ok(root)
}
