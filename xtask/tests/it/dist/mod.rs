//! The release artefacts of `cargo xtask dist`, as `cargo xtask test` builds
//! them before the tests (twice: into `TALLY_DIST_DIR` and, again, into
//! `TALLY_DIST_AGAIN_DIR`): static binaries that run in an empty root and
//! under qemu-user, tarballs with what INSTALL names, SBOMs, an OCI image of
//! both CPUs, packages whose files and scripts are the documented ones,
//! `.deb`s and install.sh that install, start, upgrade and remove tally in
//! Debian 12 with systemd and with OpenRC (`TALLY_DEBIAN_ROOT`,
//! `TALLY_DEBIAN_OPENRC_ROOT`, made by debootstrap), and bytes that do not
//! change between two runs.
//!
//! Run alone: `cargo xtask dist`, then `TALLY_DIST_DIR=target/tally-dist cargo
//! test -p xtask --test it -- dist::` (the reproducibility test also needs
//! `cargo xtask dist --out-dir target/tally-dist-again` and
//! `TALLY_DIST_AGAIN_DIR`).

mod binaries;
mod common;
mod container;
mod deb_in_debian;
mod debian_host;
mod image;
mod install_sh;
mod packages;
mod tarball;
