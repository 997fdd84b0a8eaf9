//! Checking the eBPF toolchain without changing anything: the pinned nightly
//! (from `agent-ebpf/rust-toolchain.toml`), its `rust-src`, and a
//! `bpf-linker` built against that nightly's own libLLVM.
//!
//! This file depends on `std` alone: `agent/build.rs` includes it (through
//! `#[path]`) to refuse, with one clear message, a build whose toolchain is
//! not ready; `cargo xtask setup` ([`super::setup`]) uses it to know what to
//! install. Nothing here installs or writes anything.

use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// The file that pins the eBPF build's nightly, as committed (read at compile
/// time, so the build script is rebuilt when it changes).
pub const PIN_FILE: &str = include_str!("../../../agent-ebpf/rust-toolchain.toml");
/// Where [`PIN_FILE`] lives, relative to the workspace root.
pub const PIN_FILE_PATH: &str = "agent-ebpf/rust-toolchain.toml";
/// The environment variable that overrides the pinned nightly.
pub const TOOLCHAIN_ENV: &str = "TALLY_EBPF_TOOLCHAIN";
/// The bpf-linker release that builds against the nightly's LLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The command that sets the toolchain up, named by every "not ready" error.
pub const SETUP_COMMAND: &str = "cargo xtask setup";

/// A toolchain that is not ready, or a check that could not be made, with
/// what to do about it.
#[derive(Debug)]
pub struct SetupError {
    pub message: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SetupError {}

pub(super) fn fail(message: impl Into<String>) -> SetupError {
    SetupError {
        message: message.into(),
    }
}

/// The `channel = "…"` of a `rust-toolchain.toml`'s `[toolchain]` table.
pub fn pinned_channel(toml: &str) -> Option<String> {
    toml.lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .find(|value| !value.is_empty())
}

/// The toolchain the eBPF build uses: `TALLY_EBPF_TOOLCHAIN` when set, else
/// the nightly pinned in [`PIN_FILE_PATH`].
pub fn toolchain_name() -> Result<String, SetupError> {
    if let Some(name) = env::var(TOOLCHAIN_ENV).ok().filter(|s| !s.is_empty()) {
        return Ok(name);
    }
    pinned_channel(PIN_FILE)
        .ok_or_else(|| fail(format!("{PIN_FILE_PATH} has no `channel = \"…\"` line")))
}

/// What `rustc -vV` says about the eBPF build's nightly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightlyInfo {
    /// The rustup toolchain name (the pinned nightly unless overridden).
    pub toolchain: String,
    pub release: String,
    pub commit_hash: String,
    pub llvm_major: u32,
    pub sysroot: PathBuf,
}

/// Parses the `release`, `commit-hash` and `LLVM version` lines of `rustc -vV`.
pub fn parse_rustc_vv(text: &str) -> Option<(String, String, u32)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name).map(|rest| rest.trim().to_owned()))
    };
    let release = field("release:")?;
    let commit = field("commit-hash:").unwrap_or_else(|| "unknown".to_owned());
    let llvm = field("LLVM version:")?;
    let major = llvm.split('.').next()?.parse().ok()?;
    Some((release, commit, major))
}

/// A command with the environment of an enclosing cargo build removed, so
/// that a nested `rustup`/`cargo` call behaves as if run from a shell.
pub(super) fn clean_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let inherited_build_var = key.starts_with("CARGO_")
            && key != "CARGO_HOME"
            && key != "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"
            || matches!(
                key,
                "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOC"
                    | "RUSTUP_TOOLCHAIN"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if inherited_build_var {
            cmd.env_remove(key);
        }
    }
    // A check must never install a toolchain behind the user's back.
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn run_output(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null()).output()
}

/// The cargo home (`$CARGO_HOME`, else `~/.cargo`).
pub fn cargo_home() -> Result<PathBuf, SetupError> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo"))
        .ok_or_else(|| fail("neither CARGO_HOME nor HOME is set: cannot find cargo's home"))
}

/// Asks rustup about the named toolchain: `Ok(None)` when it is not
/// installed.
pub fn nightly_named(toolchain: &str) -> Result<Option<NightlyInfo>, SetupError> {
    let out = run_output(clean_command("rustup").args(["run", toolchain, "rustc", "-vV"]))
        .map_err(|e| {
            fail(format!(
                "cannot run rustup ({e}); tally's eBPF build needs rustup (with the {toolchain} toolchain)"
            ))
        })?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (release, commit_hash, llvm_major) = parse_rustc_vv(&text).ok_or_else(|| {
        fail(format!(
            "could not read {toolchain}'s version from:\n{text}"
        ))
    })?;
    let out =
        run_output(clean_command("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))
            .map_err(|e| fail(format!("cannot ask {toolchain} for its sysroot: {e}")))?;
    if !out.status.success() {
        return Ok(None);
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(Some(NightlyInfo {
        toolchain: toolchain.to_owned(),
        release,
        commit_hash,
        llvm_major,
        sysroot,
    }))
}

/// Whether the nightly has its `rust-src` component (`-Z build-std` needs it).
pub fn has_rust_src(nightly: &NightlyInfo) -> bool {
    nightly
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

/// The nightly's libLLVM (`<sysroot>/lib/libLLVM.so.*`), whose file name
/// rustup's builds use as soname.
pub fn nightly_libllvm(nightly: &NightlyInfo) -> Result<PathBuf, SetupError> {
    let lib = nightly.sysroot.join("lib");
    let entries =
        fs::read_dir(&lib).map_err(|e| fail(format!("cannot read {}: {e}", lib.display())))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        fail(format!(
            "the {toolchain} toolchain has no libLLVM.so.* in {}; reinstall it with \
             `rustup toolchain install {toolchain} --force`",
            lib.display(),
            toolchain = nightly.toolchain
        ))
    })
}

/// What a working bpf-linker was built against, written next to it.
pub fn stamp_text(nightly: &NightlyInfo) -> String {
    format!(
        "bpf-linker {BPF_LINKER_VERSION}\nnightly {} {}\nllvm {}\n",
        nightly.release, nightly.commit_hash, nightly.llvm_major
    )
}

/// Where tally keeps the LLVM prefix (symlinks) and the stamp.
pub fn state_dir(nightly: &NightlyInfo) -> Result<PathBuf, SetupError> {
    Ok(cargo_home()?
        .join("tally-ebpf")
        .join(format!("llvm-{}", nightly.llvm_major)))
}

/// The stamp [`stamp_text`] is written to once bpf-linker works.
pub fn stamp_path(nightly: &NightlyInfo) -> Result<PathBuf, SetupError> {
    Ok(state_dir(nightly)?.join("bpf-linker.stamp"))
}

/// Where `cargo install` puts bpf-linker.
pub fn bpf_linker_path() -> Result<PathBuf, SetupError> {
    Ok(cargo_home()?.join("bin").join("bpf-linker"))
}

/// Whether the binary at `path` starts (its libLLVM found) and answers.
pub fn bpf_linker_runs(path: &Path) -> bool {
    run_output(Command::new(path).arg("--version"))
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// Whether bpf-linker was built for this very nightly (the stamp says so) and
/// runs.
pub fn bpf_linker_ready(nightly: &NightlyInfo) -> Result<bool, SetupError> {
    let stamp = stamp_path(nightly)?;
    let built_for_this_nightly =
        fs::read_to_string(&stamp).is_ok_and(|have| have == stamp_text(nightly));
    Ok(built_for_this_nightly && bpf_linker_runs(&bpf_linker_path()?))
}

/// Checks, without changing anything, that the eBPF build can run: the
/// nightly is installed with `rust-src`, and bpf-linker was built for it and
/// runs. Otherwise says what is missing and to run [`SETUP_COMMAND`].
pub fn check() -> Result<NightlyInfo, SetupError> {
    let toolchain = toolchain_name()?;
    let not_ready = |what: String| {
        fail(format!(
            "the eBPF toolchain is not set up: {what}.\n\
             Run `{SETUP_COMMAND}` (once, a few minutes), then build again."
        ))
    };
    let Some(nightly) = nightly_named(&toolchain)? else {
        return Err(not_ready(format!(
            "the {toolchain} toolchain (pinned in {PIN_FILE_PATH}) is not installed"
        )));
    };
    if !has_rust_src(&nightly) {
        return Err(not_ready(format!(
            "the {toolchain} toolchain has no rust-src component"
        )));
    }
    if !bpf_linker_ready(&nightly)? {
        return Err(not_ready(format!(
            "no bpf-linker {BPF_LINKER_VERSION} built against {toolchain}'s LLVM {} runs at {}",
            nightly.llvm_major,
            bpf_linker_path()?.display()
        )));
    }
    Ok(nightly)
}

/// `PATH` with cargo's bin directory in front, so that rustc finds bpf-linker
/// even where a shell profile did not add it.
pub fn path_with_cargo_bin() -> Result<std::ffi::OsString, SetupError> {
    let bin = cargo_home()?.join("bin");
    let mut paths = vec![bin];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).map_err(|e| fail(format!("cannot build PATH: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rustc_version_output() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                    commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\n\
                    commit-date: 2026-05-19\nhost: x86_64-unknown-linux-gnu\n\
                    release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        let (release, commit, major) = parse_rustc_vv(text).expect("parses");
        assert_eq!(release, "1.97.0-nightly");
        assert_eq!(commit, "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a");
        assert_eq!(major, 22);
    }

    #[test]
    fn rejects_output_without_llvm() {
        assert_eq!(parse_rustc_vv("release: 1.0.0\n"), None);
    }

    #[test]
    fn a_missing_toolchain_is_none() {
        assert_eq!(
            nightly_named("tally-no-such-toolchain").expect("rustup runs"),
            None
        );
    }

    #[test]
    fn the_pin_is_a_dated_nightly() {
        let channel = pinned_channel(PIN_FILE).expect("a channel line");
        let date = channel.strip_prefix("nightly-").expect("a nightly");
        let parts: Vec<&str> = date.split('-').collect();
        assert_eq!(parts.len(), 3, "{channel}: nightly-YYYY-MM-DD");
        assert!(
            parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
            "{channel}: nightly-YYYY-MM-DD"
        );
    }

    #[test]
    fn reads_the_channel_line() {
        let toml = "# channel = \"commented\"\n[toolchain]\nchannel = \"nightly-2026-05-20\"\n\
                    components = [\"rust-src\"]\n";
        assert_eq!(pinned_channel(toml).as_deref(), Some("nightly-2026-05-20"));
        assert_eq!(pinned_channel("[toolchain]\nprofile = \"minimal\"\n"), None);
    }
}
