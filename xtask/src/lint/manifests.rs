//! The set-up checks of `cargo xtask lint`: every crate of the workspace takes
//! the workspace's lints (`[lints] workspace = true`), the fuzz crate (a
//! workspace of its own) repeats them, and `rustfmt.toml` is there.

use std::{fs, path::Path};

use anyhow::Context as _;

use super::workspace::Package;

/// The lines of the TOML table `[name]` (comments and blank lines left out).
fn table(manifest: &str, name: &str) -> Vec<String> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            inside = line.trim_start_matches('[').trim_end_matches(']').trim() == name;
        } else if inside && !line.is_empty() {
            lines.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    lines
}

/// Whether a package manifest has `[lints] workspace = true`.
fn takes_workspace_lints(manifest: &str) -> bool {
    table(manifest, "lints")
        .iter()
        .any(|l| l == "workspace = true")
}

/// The problems found, one line each.
fn problems(
    root: &Path,
    packages: &[(String, String)],
    root_manifest: &str,
    fuzz_manifest: &str,
) -> Vec<String> {
    let mut found: Vec<String> = packages
        .iter()
        .filter(|(_, text)| !takes_workspace_lints(text))
        .map(|(name, _)| format!("{name}: its Cargo.toml needs `[lints]\\nworkspace = true`"))
        .collect();
    for group in ["rust", "clippy"] {
        let mut want = table(root_manifest, &format!("workspace.lints.{group}"));
        let mut have = table(fuzz_manifest, &format!("lints.{group}"));
        want.sort();
        have.sort();
        if want != have {
            found.push(format!(
                "fuzz/Cargo.toml: [lints.{group}] must equal the workspace's [workspace.lints.{group}] ({want:?}), has {have:?}"
            ));
        }
    }
    if !root.join("rustfmt.toml").is_file() {
        found.push("rustfmt.toml is missing at the workspace root".to_owned());
    }
    found
}

/// Runs the checks; fails listing every problem.
pub fn check(root: &Path, packages: &[Package]) -> anyhow::Result<()> {
    let read = |path: &Path| {
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let manifests = packages
        .iter()
        .map(|p| Ok((p.name.clone(), read(&p.manifest)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let found = problems(
        root,
        &manifests,
        &read(&root.join("Cargo.toml"))?,
        &read(&root.join("fuzz/Cargo.toml"))?,
    );
    if found.is_empty() {
        return Ok(());
    }
    for problem in &found {
        eprintln!("error: {problem}");
    }
    anyhow::bail!("the workspace's set-up checks failed (see above)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "[workspace]\nmembers = [\"a\"]\n\n[workspace.lints.rust]\n\
                        unsafe_op_in_unsafe_fn = \"deny\"\n\n[workspace.lints.clippy]\nunwrap_used = \"warn\"\n";
    const FUZZ: &str = "[package]\nname = \"f\"\n# same as the workspace\n[lints.rust]\n\
                        unsafe_op_in_unsafe_fn = \"deny\"\n[lints.clippy]\nunwrap_used  =  \"warn\" # why\n";

    #[test]
    fn reads_workspace_lints() {
        assert!(takes_workspace_lints(
            "[package]\nname = \"a\"\n\n[lints]\nworkspace = true\n"
        ));
        assert!(takes_workspace_lints(
            "[lints]\nworkspace=true\n".replace("=", " = ").as_str()
        ));
        assert!(!takes_workspace_lints(
            "[package]\nworkspace = true\n[lints]\n"
        ));
        assert!(!takes_workspace_lints("[package]\nname = \"a\"\n"));
    }

    #[test]
    fn finds_a_crate_without_lints_and_drifted_fuzz_lints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packages = vec![
            ("good".to_owned(), "[lints]\nworkspace = true\n".to_owned()),
            ("bad".to_owned(), "[package]\nname = \"bad\"\n".to_owned()),
        ];
        let found = problems(
            dir.path(),
            &packages,
            ROOT,
            "[lints.rust]\nunsafe_op_in_unsafe_fn = \"deny\"\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("bad:"), "{found:?}");
        assert!(found[1].contains("[lints.clippy]"), "{found:?}");
        assert!(found[2].contains("rustfmt.toml"), "{found:?}");
    }

    #[test]
    fn all_in_order_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("rustfmt.toml"), "").expect("write");
        let packages = vec![("good".to_owned(), "[lints]\nworkspace = true\n".to_owned())];
        assert_eq!(
            problems(dir.path(), &packages, ROOT, FUZZ),
            Vec::<String>::new()
        );
    }
}
