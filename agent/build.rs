//! Builds the eBPF object (`tally`, from `agent-ebpf`) for the agent to embed,
//! setting up the toolchain first when it is missing (nightly `rust-src`,
//! `bpf-linker` against the nightly's LLVM). `cargo xtask build-ebpf` runs the
//! same set-up code.

#[path = "../xtask/src/toolchain.rs"]
#[allow(dead_code, reason = "shared with xtask, which uses all of it")]
mod toolchain;

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed={}", toolchain::TOOLCHAIN_ENV);
    println!("cargo:rerun-if-changed=../xtask/src/toolchain.rs");
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if !skip {
        let mut log = |line: &str| println!("cargo:warning={line}");
        if let Err(err) = toolchain::ensure_all(&mut log) {
            for line in err.to_string().lines() {
                println!("cargo:warning={line}");
            }
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
        match toolchain::path_with_cargo_bin() {
            // SAFETY: build scripts are single-threaded here.
            Ok(path) => unsafe { std::env::set_var("PATH", path) },
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
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
    let toolchain = toolchain::toolchain_name();
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)) {
        eprintln!("error: building the eBPF programs failed: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
