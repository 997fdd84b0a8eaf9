//! The CPUs tally ships for, and how to cross-build for each on this machine
//! (x86_64 Debian): Rust's musl targets from rustup link fully static with
//! their own musl; the only C code (ring's) is compiled by `musl-gcc`
//! (Debian's `musl-tools`) for x86_64 and by Debian's `aarch64-linux-gnu-gcc`
//! for aarch64 (with glibc's headers for that CPU: ring's C code uses only
//! freestanding ones and `string.h`, whose functions musl provides too),
//! which also drives the aarch64 link.

use std::{fmt, str::FromStr};

use crate::packages::Need;

/// A release target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    X86_64,
    Aarch64,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::X86_64, Target::Aarch64];

    /// The Rust target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Target::X86_64 => "x86_64-unknown-linux-musl",
            Target::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Debian's name for the CPU (`Architecture:` of a `.deb`).
    pub fn deb_arch(self) -> &'static str {
        match self {
            Target::X86_64 => "amd64",
            Target::Aarch64 => "arm64",
        }
    }

    /// RPM's name for the CPU.
    pub fn rpm_arch(self) -> &'static str {
        match self {
            Target::X86_64 => "x86_64",
            Target::Aarch64 => "aarch64",
        }
    }

    /// The C compiler for the target's C code (cc-rs's `CC_<triple>`), and
    /// the linker when it is not the host's `cc`.
    fn c_compiler(self) -> &'static str {
        match self {
            Target::X86_64 => "musl-gcc",
            Target::Aarch64 => "aarch64-linux-gnu-gcc",
        }
    }

    /// The environment for `cargo build --target <triple>`: the C compiler
    /// and archiver, the linker.
    pub fn cross_env(self) -> Vec<(String, String)> {
        let under = self.triple().replace('-', "_");
        let mut env = vec![(format!("CC_{under}"), self.c_compiler().to_owned())];
        if self == Target::Aarch64 {
            env.push((format!("AR_{under}"), "aarch64-linux-gnu-ar".to_owned()));
            env.push((
                format!("CARGO_TARGET_{}_LINKER", under.to_uppercase()),
                self.c_compiler().to_owned(),
            ));
        }
        env
    }

    /// The Debian packages the cross-build needs.
    pub fn needs(self) -> &'static [Need] {
        match self {
            Target::X86_64 => &[Need {
                package: "musl-tools",
                programs: &["musl-gcc"],
                files: &[],
                why: "compiling ring's C code against musl for x86_64",
            }],
            Target::Aarch64 => &[
                Need {
                    package: "gcc-aarch64-linux-gnu",
                    programs: &["aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ar"],
                    files: &[],
                    why: "compiling ring's C code and linking for aarch64",
                },
                Need {
                    package: "libc6-dev-arm64-cross",
                    programs: &[],
                    files: &["/usr/aarch64-linux-gnu/include/stdint.h"],
                    why: "the C headers ring's C code includes, for aarch64",
                },
            ],
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triple())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL
            .into_iter()
            .find(|t| t.triple() == s || t.deb_arch() == s || t.rpm_arch() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.triple()).collect();
                format!("unknown target {s:?}; one of: {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_each_of_their_names() {
        for target in Target::ALL {
            for name in [target.triple(), target.deb_arch(), target.rpm_arch()] {
                assert_eq!(name.parse::<Target>(), Ok(target));
            }
        }
        let err = "riscv64".parse::<Target>().expect_err("unknown");
        assert!(err.contains("x86_64-unknown-linux-musl"), "{err}");
    }

    #[test]
    fn aarch64_links_with_the_cross_gcc() {
        let env = Target::Aarch64.cross_env();
        assert!(env.contains(&(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER".to_owned(),
            "aarch64-linux-gnu-gcc".to_owned()
        )));
    }
}
