//! Setting up the eBPF toolchain: the nightly's `rust-src` and a `bpf-linker`
//! linked against the nightly's own libLLVM.
//!
//! This file depends on `std` alone: `cargo xtask setup` uses it, and so does
//! `agent/build.rs` (through `#[path]`), so that a plain `cargo build` on a
//! fresh machine sets the toolchain up by itself. Every step checks first and
//! does nothing when its result is already there.

use std::{
    env, fmt, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// The nightly toolchain used for the BPF target, unless
/// `TALLY_EBPF_TOOLCHAIN` names another (e.g. a dated nightly).
pub const NIGHTLY: &str = "nightly";
/// The environment variable that overrides [`NIGHTLY`].
pub const TOOLCHAIN_ENV: &str = "TALLY_EBPF_TOOLCHAIN";

/// The toolchain the eBPF build uses.
pub fn toolchain_name() -> String {
    env::var(TOOLCHAIN_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| NIGHTLY.to_owned())
}
/// The bpf-linker release that builds against the nightly's LLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// A set-up step that failed, with what to do about it.
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

fn fail(message: impl Into<String>) -> SetupError {
    SetupError {
        message: message.into(),
    }
}

/// What `rustc +nightly -vV` says about the nightly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightlyInfo {
    /// The rustup toolchain name (`nightly` unless overridden).
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
fn clean_command(program: &str) -> Command {
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
    cmd
}

fn run_output(cmd: &mut Command) -> io::Result<Output> {
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

/// Finds the nightly toolchain, or says how to install it.
pub fn nightly() -> Result<NightlyInfo, SetupError> {
    nightly_named(&toolchain_name())
}

/// Finds the named toolchain, or says how to install it.
pub fn nightly_named(toolchain: &str) -> Result<NightlyInfo, SetupError> {
    let missing = || {
        fail(format!(
            "tally builds its eBPF programs with a nightly Rust toolchain, and none is installed.\n\
             Install it with:  rustup toolchain install {toolchain} --profile minimal --component rust-src\n\
             then run the build again (or `cargo xtask setup`)."
        ))
    };
    let out = run_output(clean_command("rustup").args(["run", toolchain, "rustc", "-vV"]))
        .map_err(|e| {
            fail(format!(
                "cannot run rustup ({e}); tally's eBPF build needs rustup with a {toolchain} toolchain"
            ))
        })?;
    if !out.status.success() {
        return Err(missing());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (release, commit_hash, llvm_major) = parse_rustc_vv(&text).ok_or_else(|| {
        fail(format!(
            "could not read the nightly's version from:\n{text}"
        ))
    })?;
    let out =
        run_output(clean_command("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))
            .map_err(|e| fail(format!("cannot ask the nightly for its sysroot: {e}")))?;
    if !out.status.success() {
        return Err(missing());
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(NightlyInfo {
        toolchain: toolchain.to_owned(),
        release,
        commit_hash,
        llvm_major,
        sysroot,
    })
}

/// Adds `rust-src` to the nightly unless it is there.
pub fn ensure_rust_src(nightly: &NightlyInfo, log: &mut dyn FnMut(&str)) -> Result<(), SetupError> {
    let core = nightly
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        return Ok(());
    }
    log(&format!(
        "adding rust-src to the {} toolchain",
        nightly.toolchain
    ));
    let status = clean_command("rustup")
        .args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &nightly.toolchain,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| fail(format!("cannot run rustup: {e}")))?;
    if !status.success() {
        return Err(fail(format!(
            "`rustup component add rust-src --toolchain {}` failed ({status}); run it by hand to see why",
            nightly.toolchain
        )));
    }
    Ok(())
}

/// The nightly's libLLVM (`<sysroot>/lib/libLLVM.so.*`) and its soname (the
/// file name, which rustup's builds use as soname).
fn nightly_libllvm(nightly: &NightlyInfo) -> Result<PathBuf, SetupError> {
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
fn stamp_text(nightly: &NightlyInfo) -> String {
    format!(
        "bpf-linker {BPF_LINKER_VERSION}\nnightly {} {}\nllvm {}\n",
        nightly.release, nightly.commit_hash, nightly.llvm_major
    )
}

/// Where tally keeps the LLVM prefix (symlinks) and the stamp.
fn state_dir(nightly: &NightlyInfo) -> Result<PathBuf, SetupError> {
    Ok(cargo_home()?
        .join("tally-ebpf")
        .join(format!("llvm-{}", nightly.llvm_major)))
}

fn bpf_linker_path() -> Result<PathBuf, SetupError> {
    Ok(cargo_home()?.join("bin").join("bpf-linker"))
}

fn bpf_linker_runs(path: &Path) -> bool {
    run_output(Command::new(path).arg("--version"))
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// Makes `<dir>/lib/libLLVM.so` and `<dir>/lib/<soname>` point at `target`.
fn make_llvm_prefix(dir: &Path, target: &Path) -> Result<(), SetupError> {
    let lib = dir.join("lib");
    fs::create_dir_all(&lib).map_err(|e| fail(format!("cannot create {}: {e}", lib.display())))?;
    let soname = target
        .file_name()
        .ok_or_else(|| fail(format!("{} has no file name", target.display())))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        if fs::read_link(&link).is_ok_and(|current| current == target) {
            continue;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).map_err(|e| {
            fail(format!(
                "cannot link {} -> {}: {e}",
                link.display(),
                target.display()
            ))
        })?;
    }
    Ok(())
}

/// Installs bpf-linker against the nightly's libLLVM unless a working one,
/// built for this very nightly, is already installed.
pub fn ensure_bpf_linker(
    nightly: &NightlyInfo,
    log: &mut dyn FnMut(&str),
) -> Result<(), SetupError> {
    let dir = state_dir(nightly)?;
    let stamp = dir.join("bpf-linker.stamp");
    let want = stamp_text(nightly);
    let linker = bpf_linker_path()?;
    let libllvm = nightly_libllvm(nightly)?;
    let prefix = dir.join("prefix");
    if fs::read_to_string(&stamp).is_ok_and(|have| have == want) && bpf_linker_runs(&linker) {
        // Keep the symlinks right even if someone removed them.
        make_llvm_prefix(&prefix, &libllvm)?;
        return Ok(());
    }
    make_llvm_prefix(&prefix, &libllvm)?;
    log(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against the {} toolchain's LLVM {} (takes a minute or two, once)",
        nightly.toolchain, nightly.llvm_major
    ));
    let out = clean_command("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", nightly.llvm_major),
        ])
        .env("LLVM_PREFIX", &prefix)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run cargo install: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(fail(format!(
            "installing bpf-linker failed ({}):\n{}\n\
             The recipe: LLVM_PREFIX={} cargo install bpf-linker --locked --no-default-features --features llvm-{}",
            out.status,
            tail.join("\n"),
            prefix.display(),
            nightly.llvm_major
        )));
    }
    if !bpf_linker_runs(&linker) {
        return Err(fail(format!(
            "bpf-linker was installed at {} but does not run; check that {} exists",
            linker.display(),
            libllvm.display()
        )));
    }
    let mut file = fs::File::create(&stamp)
        .map_err(|e| fail(format!("cannot write {}: {e}", stamp.display())))?;
    file.write_all(want.as_bytes())
        .map_err(|e| fail(format!("cannot write {}: {e}", stamp.display())))?;
    Ok(())
}

/// Everything the eBPF build needs; cheap when all is in place.
pub fn ensure_all(log: &mut dyn FnMut(&str)) -> Result<NightlyInfo, SetupError> {
    let nightly = nightly()?;
    ensure_rust_src(&nightly, log)?;
    ensure_bpf_linker(&nightly, log)?;
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
    fn a_missing_toolchain_says_what_to_run() {
        let err = nightly_named("tally-no-such-toolchain").expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains("rustup toolchain install tally-no-such-toolchain"),
            "{text}"
        );
        assert!(text.contains("rust-src"), "{text}");
    }

    #[test]
    fn rejects_output_without_llvm() {
        assert_eq!(parse_rustc_vv("release: 1.0.0\n"), None);
    }

    #[test]
    fn llvm_prefix_links_are_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("libLLVM.so.22.1-rust-x");
        fs::write(&target, b"").expect("write");
        let prefix = dir.path().join("prefix");
        make_llvm_prefix(&prefix, &target).expect("first");
        make_llvm_prefix(&prefix, &target).expect("second");
        for name in ["libLLVM.so", "libLLVM.so.22.1-rust-x"] {
            assert_eq!(
                fs::read_link(prefix.join("lib").join(name)).expect("link"),
                target
            );
        }
    }
}
