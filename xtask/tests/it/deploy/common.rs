//! What the deployment checks share: where `deploy/` and the freshly built
//! binaries are, the binaries' `--help` text, and saying why a check skips.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .join("deploy")
}

/// A binary of the workspace as built beside this test (`target/<profile>/`).
/// `cargo test --workspace` (what `cargo xtask test` runs) builds the agent
/// and the collector before it runs any test.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/deploy-<hash>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let path = profile.join(name);
    assert!(
        path.is_file(),
        "{} is not built: `cargo test --workspace` builds it, or `cargo build -p {name}`",
        path.display()
    );
    path
}

/// What `<binary> <args...> --help` prints.
pub fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(built_binary(binary))
        .args(args)
        .arg("--help")
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{binary} {args:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The settings (environment variables) of `tally-agent run`.
pub fn agent_help() -> String {
    help("tally-agent", &["run"])
}

/// The settings (environment variables) of `tally-collector serve`.
pub fn collector_help() -> String {
    help("tally-collector", &["serve"])
}

/// Says why `test` cannot run here, or fails when CI demands that it runs.
pub use tally_testkit::skip::skip;

/// The `NAME=value` settings of a systemd environment file, commented-out
/// examples (`#NAME=value`) included, as `(name, commented)`.
pub fn env_file_names(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|line| {
            let (body, commented) = match line.strip_prefix('#') {
                Some(rest) => (rest.trim_start(), true),
                None => (line.trim_start(), false),
            };
            let (name, _) = body.split_once('=')?;
            let is_name = !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| (name.to_owned(), commented))
        })
        .collect()
}

/// Whether a binary's `--help` text names the environment variable `name`.
pub fn help_names(help: &str, name: &str) -> bool {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| word == name)
}
