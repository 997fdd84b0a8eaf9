//! The documentation check of `cargo xtask lint` and `cargo xtask test`:
//! `cargo doc --workspace --no-deps` with every rustdoc warning (a broken
//! or private intra-doc link, a bare URL, an unclosed HTML tag, …) an
//! error, so that CI fails on one.
//!
//! On the host this includes the eBPF crate, whose classifiers are compiled
//! only for the BPF target (`#[cfg(target_arch = "bpf")]`); `lint` also
//! documents it for that target ([`check_ebpf`]) so that their doc comments
//! are checked too.

use std::{env, process::Command};

use crate::{ebpf_cargo, status_ok, toolchain, workspace_root};

/// `RUSTDOCFLAGS` as given, with `-D warnings` added.
fn rustdocflags() -> String {
    let given = env::var("RUSTDOCFLAGS").unwrap_or_default();
    format!("{given} -D warnings").trim().to_owned()
}

/// Documents every crate of the workspace for the host, failing on any
/// rustdoc warning.
pub fn check() -> anyhow::Result<()> {
    status_ok(
        Command::new("cargo")
            .current_dir(workspace_root())
            .env("PATH", toolchain::path_with_cargo_bin()?)
            .env("RUSTDOCFLAGS", rustdocflags())
            .args(["doc", "--workspace", "--no-deps"]),
    )
}

/// Documents the eBPF crate for the BPF target (where its classifiers
/// exist), failing on any rustdoc warning.
pub fn check_ebpf() -> anyhow::Result<()> {
    status_ok(
        ebpf_cargo("doc")?
            .env("RUSTDOCFLAGS", rustdocflags())
            .arg("--no-deps"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn warnings_are_errors() {
        assert!(super::rustdocflags().ends_with("-D warnings"));
    }
}
