//! The stale-pointer check of `cargo xtask lint`: every path into the
//! repository that a tracked source or document mentions (`collector/src/…`,
//! `docs/….md`, `deploy/…`) names a file or directory that exists, so that
//! comments and docs do not send a newcomer to a file that was moved or
//! never committed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// The top-level directories a mention must start with to be checked.
const ROOTS: [&str; 12] = [
    "agent/",
    "agent-ebpf/",
    "collector/",
    "common/",
    "proto/",
    "xtask/",
    "testkit/",
    "docs/",
    "deploy/",
    "migrations/",
    "fuzz/",
    ".ci/",
];

/// The kinds of file whose text is searched.
const SEARCHED: [&str; 9] = [
    "rs", "md", "toml", "js", "sql", "yaml", "yml", "proto", "service",
];

/// Fails with every mention of a path that does not exist.
pub fn check() -> anyhow::Result<()> {
    let root = workspace_root();
    let output = Command::new("git")
        .current_dir(&root)
        .args(["ls-files", "-z"])
        .output()
        .context("cannot run git ls-files")?;
    if !output.status.success() {
        bail!("git ls-files failed");
    }
    let mut stale = Vec::new();
    for file in output.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = PathBuf::from(String::from_utf8_lossy(file).into_owned());
        let searched = file
            .extension()
            .is_some_and(|e| SEARCHED.iter().any(|s| e == *s));
        // The fuzz corpora are data; the changelog records paths as they
        // were; this file's tests name missing paths on purpose.
        let exempt = file.starts_with("fuzz/corpus")
            || file == Path::new("CHANGELOG.md")
            || file == Path::new("xtask/src/lint/pointers.rs");
        if !searched || exempt {
            continue;
        }
        let Ok(text) = fs::read_to_string(root.join(&file)) else {
            continue;
        };
        for (line_number, line) in text.lines().enumerate() {
            for mention in mentions(line) {
                if !resolves(&root, &file, mention) {
                    stale.push(format!("{}:{}: {mention}", file.display(), line_number + 1));
                }
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "these paths are mentioned but do not exist (moved or renamed?):\n  {}",
            stale.join("\n  ")
        );
    }
    Ok(())
}

/// The repository paths a line mentions: words made of path characters
/// that start with a top-level directory and end in a file name with an
/// extension, or in `/`. Build output (a `target/` directory, as
/// `fuzz/target/`) is not a repository path: it exists only after a build.
fn mentions(line: &str) -> Vec<&str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
        .map(|word| word.trim_end_matches('.'))
        .filter(|word| ROOTS.iter().any(|root| word.starts_with(root)))
        .filter(|word| !word.split('/').any(|part| part == "target"))
        .filter(|word| {
            let name = word.rsplit('/').next().unwrap_or_default();
            word.ends_with('/') || name.contains('.')
        })
        .collect()
}

/// Whether `mention` in `file` names something that exists: from the
/// workspace root, from the file's directory, or from its crate's
/// directory (build scripts and `#[path]` use those).
fn resolves(root: &Path, file: &Path, mention: &str) -> bool {
    let dir = root.join(file).parent().map(Path::to_path_buf);
    let mut bases = vec![root.to_path_buf()];
    if let Some(dir) = dir {
        let krate = dir
            .ancestors()
            .find(|d| d.join("Cargo.toml").is_file())
            .map(Path::to_path_buf);
        bases.push(dir);
        bases.extend(krate);
    }
    bases.iter().any(|base| base.join(mention).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_repository_paths_with_a_file_name() {
        let line = "//! see `collector/src/ingest/store.rs`, docs/operations.md. and collector/ \
                    but not collector or xtask/src/bench, nor foo/bar.rs, nor fuzz/target/ \
                    or agent-ebpf/target/bpfel-unknown-none/release/tally.o";
        assert_eq!(
            mentions(line),
            [
                "collector/src/ingest/store.rs",
                "docs/operations.md",
                "collector/"
            ]
        );
    }

    #[test]
    fn paths_resolve_from_the_root_the_file_or_its_crate() {
        let root = workspace_root();
        let file = Path::new("proto/src/lib.rs");
        assert!(resolves(&root, file, "docs/architecture.md"));
        assert!(resolves(&root, file, "proto/tally/v1/heartbeat.proto"));
        assert!(!resolves(&root, file, "collector/src/no_such_module.rs"));
    }
}
