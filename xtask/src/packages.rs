//! The Debian packages the demo and the tests use, installed with `apt-get`
//! when missing (as root, where apt-get exists); elsewhere a missing package
//! is named with the command that installs it.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, bail};

/// A Debian package, and how to tell that it is there.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub package: &'static str,
    /// Present when every one of these is an executable file (absolute
    /// paths as they are, other names looked up in `PATH`) and every one of
    /// `files` exists.
    pub programs: &'static [&'static str],
    /// Absolute paths of files the package brings (for packages without a
    /// program of their own).
    pub files: &'static [&'static str],
    pub why: &'static str,
}

const IPROUTE2: Need = Need {
    package: "iproute2",
    programs: &["ip", "tc"],
    files: &[],
    why: "network namespaces, veth pairs, tc",
};
const ETHTOOL: Need = Need {
    package: "ethtool",
    programs: &["ethtool"],
    files: &[],
    why: "offload features of veth pairs (segmentation off, GRO on)",
};
const POSTGRESQL: Need = Need {
    package: "postgresql-15",
    programs: &[
        "/usr/lib/postgresql/15/bin/initdb",
        "/usr/lib/postgresql/15/bin/postgres",
    ],
    files: &[],
    why: "throwaway PostgreSQL clusters",
};

/// What `cargo xtask demo` needs.
pub const DEMO: &[Need] = &[IPROUTE2, ETHTOOL, POSTGRESQL];

/// What `cargo xtask test` needs.
pub const TEST: &[Need] = &[
    IPROUTE2,
    ETHTOOL,
    POSTGRESQL,
    Need {
        package: "util-linux",
        programs: &["unshare", "setpriv"],
        files: &[],
        why: "tests in other namespaces and as an unprivileged user",
    },
    Need {
        package: "prometheus",
        programs: &["promtool"],
        files: &[],
        why: "`promtool check metrics` on /metrics",
    },
    Need {
        package: "chromium",
        programs: &["chromium"],
        files: &[],
        why: "the dashboard's browser test",
    },
    Need {
        package: "chromium-driver",
        programs: &["chromedriver"],
        files: &[],
        why: "the dashboard's browser test",
    },
    Need {
        package: "python3-venv",
        programs: &["/usr/bin/python3"],
        files: &["/usr/lib/python3.11/ensurepip/__init__.py"],
        why: "a Python environment for schemathesis, the HTTP API's schema test",
    },
    Need {
        package: "systemd",
        programs: &["systemd-analyze"],
        files: &[],
        why: "`systemd-analyze verify` on the deployment kit's units",
    },
    Need {
        package: "rpm",
        programs: &["rpm"],
        files: &[],
        why: "querying the .rpm packages and installing them into an empty root",
    },
    Need {
        package: "qemu-user-static",
        programs: &["qemu-aarch64-static"],
        files: &[],
        why: "running the aarch64 binaries",
    },
    Need {
        package: "file",
        programs: &["file"],
        files: &[],
        why: "telling static executables",
    },
    Need {
        package: "binutils",
        programs: &["readelf"],
        files: &[],
        why: "reading the release binaries' headers and sections",
    },
];

fn present(program: &str) -> bool {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.starts_with('/') {
        return executable(Path::new(program));
    }
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| executable(&dir.join(program))))
}

/// The packages of `needs` that are missing.
pub fn missing(needs: &[Need]) -> Vec<Need> {
    let mut missing: Vec<Need> = Vec::new();
    for need in needs {
        let absent = !need.programs.iter().all(|p| present(p))
            || !need.files.iter().all(|f| Path::new(f).exists());
        if absent && !missing.iter().any(|m| m.package == need.package) {
            missing.push(*need);
        }
    }
    missing
}

/// Installs what is missing of `needs` with apt-get (as root). Without
/// root or apt-get, fails naming the packages and the command to run.
pub fn ensure(needs: &[Need]) -> anyhow::Result<()> {
    let missing = missing(needs);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|n| n.package).collect();
    for need in &missing {
        eprintln!(
            "setup: missing Debian package {} ({})",
            need.package, need.why
        );
    }
    let root = running_as_root();
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing Debian packages; install them with: apt-get install {}",
            names.join(" ")
        );
    }
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("cannot run apt-get {}", args.join(" ")))?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&names);
    apt(&install)?;
    eprintln!("setup: installed {}", names.join(" "));
    Ok(())
}

/// Whether this process runs as root (read from /proc, no FFI).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_program_is_found_and_an_absent_one_is_not() {
        assert!(present("sh"));
        assert!(present("/bin/sh"));
        assert!(!present("tally-no-such-program"));
        assert!(!present("/nonexistent/tally"));
    }

    #[test]
    fn missing_lists_each_package_once() {
        let absent = Need {
            package: "tally-absent",
            programs: &["tally-no-such-program"],
            files: &[],
            why: "test",
        };
        let here = Need {
            package: "coreutils",
            programs: &["sh"],
            files: &[],
            why: "test",
        };
        let missing = missing(&[absent, here, absent]);
        let names: Vec<&str> = missing.iter().map(|n| n.package).collect();
        assert_eq!(names, ["tally-absent"]);
    }
}
