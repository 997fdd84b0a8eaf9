//! Setting the eBPF toolchain up (`cargo xtask setup`): the pinned nightly,
//! its `rust-src` (and `clippy`, for lint), and `bpf-linker` built against the nightly's own libLLVM.
//! Every step checks first ([`super::check`]) and does nothing when its
//! result is already there.

use std::{fs, path::Path, process::Stdio};

use super::check::{
    self, BPF_LINKER_VERSION, NightlyInfo, PIN_FILE_PATH, SetupError, clean_command, fail,
};

fn run_rustup(args: &[&str], what: &str) -> Result<(), SetupError> {
    let status = clean_command("rustup")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| fail(format!("cannot run rustup: {e}")))?;
    if !status.success() {
        return Err(fail(format!(
            "`rustup {}` ({what}) failed ({status}); run it by hand to see why",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Installs the named toolchain (minimal profile, with the [`COMPONENTS`])
/// unless it is there, and returns what it is.
pub fn ensure_nightly(
    toolchain: &str,
    log: &mut dyn FnMut(&str),
) -> Result<NightlyInfo, SetupError> {
    if let Some(nightly) = check::nightly_named(toolchain)? {
        return Ok(nightly);
    }
    log(&format!(
        "installing the {toolchain} toolchain (pinned in {PIN_FILE_PATH})"
    ));
    run_rustup(
        &[
            "toolchain",
            "install",
            toolchain,
            "--profile",
            "minimal",
            "--component",
            COMPONENTS[0],
            "--component",
            COMPONENTS[1],
        ],
        "installing the eBPF build's nightly",
    )?;
    check::nightly_named(toolchain)?.ok_or_else(|| {
        fail(format!(
            "rustup installed {toolchain}, but `rustup run {toolchain} rustc -vV` still fails"
        ))
    })
}

/// The nightly's components setup installs: `rust-src` for the build
/// (`-Z build-std`), `clippy` for `cargo xtask lint` on the eBPF and fuzz
/// crates. The same list as in the pin file.
pub const COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

/// Whether the nightly has the component (a file it brings is there).
fn has_component(nightly: &NightlyInfo, component: &str) -> bool {
    match component {
        "rust-src" => check::has_rust_src(nightly),
        _ => nightly
            .sysroot
            .join("bin")
            .join(format!("cargo-{component}"))
            .exists(),
    }
}

/// Adds the [`COMPONENTS`] the nightly lacks.
pub fn ensure_components(
    nightly: &NightlyInfo,
    log: &mut dyn FnMut(&str),
) -> Result<(), SetupError> {
    for component in COMPONENTS {
        if has_component(nightly, component) {
            continue;
        }
        log(&format!(
            "adding {component} to the {} toolchain",
            nightly.toolchain
        ));
        run_rustup(
            &[
                "component",
                "add",
                component,
                "--toolchain",
                &nightly.toolchain,
            ],
            &format!("adding {component}"),
        )?;
    }
    Ok(())
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
    let libllvm = check::nightly_libllvm(nightly)?;
    let prefix = check::state_dir(nightly)?.join("prefix");
    // Keep the symlinks right even if someone removed them: bpf-linker finds
    // its libLLVM through them.
    make_llvm_prefix(&prefix, &libllvm)?;
    if check::bpf_linker_ready(nightly)? {
        return Ok(());
    }
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
    let linker = check::bpf_linker_path()?;
    if !check::bpf_linker_runs(&linker) {
        return Err(fail(format!(
            "bpf-linker was installed at {} but does not run; check that {} exists",
            linker.display(),
            libllvm.display()
        )));
    }
    let stamp = check::stamp_path(nightly)?;
    fs::write(&stamp, check::stamp_text(nightly))
        .map_err(|e| fail(format!("cannot write {}: {e}", stamp.display())))
}

/// Everything the eBPF build needs; cheap when all is in place.
pub fn ensure_all(log: &mut dyn FnMut(&str)) -> Result<NightlyInfo, SetupError> {
    let nightly = ensure_nightly(&check::toolchain_name()?, log)?;
    ensure_components(&nightly, log)?;
    ensure_bpf_linker(&nightly, log)?;
    // What the build script checks must now hold.
    check::check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_file_lists_the_same_components() {
        let line = check::PIN_FILE
            .lines()
            .find(|l| l.trim_start().starts_with("components"))
            .expect("a components line");
        for component in COMPONENTS {
            assert!(line.contains(&format!("\"{component}\"")), "{line}");
        }
        assert_eq!(line.matches('"').count(), 2 * COMPONENTS.len(), "{line}");
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
