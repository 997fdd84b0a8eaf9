//! The eBPF toolchain: the nightly pinned in `agent-ebpf/rust-toolchain.toml`
//! (or `TALLY_EBPF_TOOLCHAIN`), its `rust-src`, and `bpf-linker` built
//! against that nightly's LLVM.
//!
//! [`check`] only looks (and `agent/build.rs` includes it, so a build refuses
//! with one message naming `cargo xtask setup`); [`setup`] installs what is
//! missing, for `cargo xtask setup` and every task that builds the agent.

pub mod check;
pub mod setup;

pub use check::{BPF_LINKER_VERSION, NightlyInfo, path_with_cargo_bin, toolchain_name};
pub use setup::ensure_all;
