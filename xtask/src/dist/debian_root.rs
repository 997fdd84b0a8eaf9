//! Debian 12 roots for the package tests (`dist::` in xtask's tests), made
//! once each with debootstrap (minbase, from deb.debian.org) under the
//! target directory, and kept: one with systemd (the tests boot a copy with
//! systemd-nspawn), one with OpenRC (the tests run its services in a copy).

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
/// The service managers the package tests install tally under.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Systemd,
    OpenRc,
}

impl Init {
    /// The root's name under the target directory.
    fn dir_name(self) -> String {
        match self {
            Init::Systemd => format!("debian-{SUITE}-systemd-root"),
            Init::OpenRc => format!("debian-{SUITE}-openrc-root"),
        }
    }

    /// What the root holds beyond minbase: systemd with a bus for
    /// systemctl, or OpenRC.
    fn include(self) -> &'static str {
        match self {
            Init::Systemd => "systemd,systemd-sysv,dbus",
            Init::OpenRc => "openrc",
        }
    }
}

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

/// The root for `init`, made first if it is not there (as root, about a
/// minute).
pub fn ensure(init: Init) -> anyhow::Result<PathBuf> {
    packages::ensure(&NEEDS)?;
    let root = target_dir().join(init.dir_name());
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
            .args([
                "--variant=minbase",
                &format!("--include={}", init.include()),
                SUITE,
            ])
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
