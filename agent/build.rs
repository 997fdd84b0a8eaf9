//! Builds the eBPF object (`tally`, from `agent-ebpf`) for the agent to embed,
//! with the nightly pinned in `agent-ebpf/rust-toolchain.toml`.
//!
//! It only builds: it checks (cheaply, changing nothing) that the toolchain
//! is set up — the nightly with `rust-src`, `bpf-linker` built against that
//! nightly's LLVM — and otherwise stops with one message naming
//! `cargo xtask setup`, which installs what is missing. `AYA_BUILD_SKIP=1`
//! skips the check and the eBPF build. It also gives the crate the commit
//! it is built from (`TALLY_COMMIT`, common/build/version.rs).

#[path = "../common/build/version.rs"]
mod version;

#[path = "../xtask/src/toolchain/check.rs"]
#[allow(dead_code, reason = "shared with xtask, which uses all of it")]
mod toolchain;

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=../common/build/version.rs");
    version::emit_commit();
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed={}", toolchain::TOOLCHAIN_ENV);
    println!("cargo:rerun-if-changed=../xtask/src/toolchain/check.rs");
    println!("cargo:rerun-if-changed=../{}", toolchain::PIN_FILE_PATH);
    // The same test as aya-build's, which then skips the eBPF build.
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let nightly = if skip {
        String::new()
    } else {
        match toolchain::check() {
            Ok(nightly) => nightly.toolchain,
            Err(err) => {
                for line in err.to_string().lines() {
                    println!("cargo::error={line}");
                }
                return ExitCode::FAILURE;
            }
        }
    };
    match toolchain::path_with_cargo_bin() {
        // SAFETY: build scripts are single-threaded here.
        Ok(path) => unsafe { std::env::set_var("PATH", path) },
        Err(err) => {
            println!("cargo::error={err}");
            return ExitCode::FAILURE;
        }
    }
    let package = aya_build::Package {
        name: "tally-agent-ebpf",
        root_dir: "../agent-ebpf",
        ..Default::default()
    };
    // The nested cargo's progress lines would reach the user as warnings;
    // real compiler diagnostics still come through its JSON messages.
    // SAFETY: build scripts are single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&nightly)) {
        println!("cargo::error=building the eBPF programs failed: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
