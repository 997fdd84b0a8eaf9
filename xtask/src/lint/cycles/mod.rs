//! The import-cycle check of `cargo xtask lint`: in every crate of the
//! workspace (and of the fuzz workspace), sibling modules must not depend on
//! each other in a cycle ([`graph`] says what a dependency is).
//!
//! Cycles listed in [`ALLOW_LIST`] are reported but accepted, until they are
//! removed; a cycle not on the list fails, and so does an entry that is no
//! longer a cycle, so that the list can only shrink.

mod graph;
mod lexer;
mod modules;

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::Context as _;

use super::workspace::Package;

/// The known cycles still accepted, relative to the workspace root.
pub const ALLOW_LIST: &str = "xtask/import-cycles.allow";

/// The entries of the allow-list: `<crate root file> <module> <module>…`.
fn allowed(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What the check found, as lines to print, and whether it fails.
#[derive(Debug, Default)]
struct Report {
    lines: Vec<String>,
    failed: bool,
}

/// Compares the cycles found (by allow-list key) with the allow-list.
fn compare(found: &[(String, graph::Cycle)], allow: &BTreeSet<String>) -> Report {
    let mut report = Report::default();
    for (key, cycle) in found {
        let chain: Vec<String> = cycle.chain.iter().map(|m| modules::display(m)).collect();
        let members: Vec<String> = cycle.members.iter().map(|m| modules::display(m)).collect();
        let root = key.split_whitespace().next().unwrap_or_default();
        let what = format!(
            "import cycle in {root} among {}: {}",
            members.join(", "),
            chain.join(" -> ")
        );
        if allow.contains(key) {
            report
                .lines
                .push(format!("known {what} (listed in {ALLOW_LIST})"));
            continue;
        }
        report.failed = true;
        report.lines.push(format!("error: {what}"));
        for edge in &cycle.edges {
            report.lines.push(format!(
                "    {} -> {}  ({})",
                modules::display(&edge.from),
                modules::display(&edge.to),
                edge.evidence
            ));
        }
        report.lines.push(format!(
            "    (remove it; or, only if it is old, list it in {ALLOW_LIST}: {key})"
        ));
    }
    let found_keys: BTreeSet<&String> = found.iter().map(|(key, _)| key).collect();
    for stale in allow.iter().filter(|entry| !found_keys.contains(entry)) {
        report.failed = true;
        report.lines.push(format!(
            "error: {ALLOW_LIST} lists a cycle that is gone (good!): remove the line `{stale}`"
        ));
    }
    report
}

/// Finds the cycles of every target of `packages`, keyed as in the allow-list.
fn find(root: &Path, packages: &[Package]) -> anyhow::Result<Vec<(String, graph::Cycle)>> {
    let mut roots: Vec<&Path> = packages
        .iter()
        .flat_map(|p| p.targets.iter().map(|t| t.as_path()))
        .collect();
    roots.sort();
    roots.dedup();
    let mut found = Vec::new();
    for file in roots {
        let mut krate = modules::read_crate(file)?;
        for reference in &mut krate.references {
            if let Ok(relative) = reference.file.strip_prefix(root) {
                reference.file = relative.to_path_buf();
            }
        }
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for cycle in graph::cycles(&krate) {
            found.push((format!("{name} {}", cycle.key()), cycle));
        }
    }
    Ok(found)
}

/// Runs the check over `packages` (whose files lie under `root`).
pub fn check(root: &Path, packages: &[Package]) -> anyhow::Result<()> {
    let list = root.join(ALLOW_LIST);
    let text =
        fs::read_to_string(&list).with_context(|| format!("cannot read {}", list.display()))?;
    let report = compare(&find(root, packages)?, &allowed(&text));
    for line in &report.lines {
        eprintln!("{line}");
    }
    if report.failed {
        anyhow::bail!("import cycles between modules (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_cycle(root: &str) -> (String, graph::Cycle) {
        let krate = modules::Crate {
            modules: vec![vec![], vec!["a".to_owned()], vec!["b".to_owned()]],
            references: ["a", "b"]
                .iter()
                .zip(["crate::b::x", "crate::a::y"])
                .map(|(from, path)| modules::Reference {
                    from: vec![(*from).to_owned()],
                    segments: path.split("::").map(str::to_owned).collect(),
                    file: format!("src/{from}.rs").into(),
                    line: 3,
                })
                .collect(),
        };
        let cycle = graph::cycles(&krate).pop().expect("a cycle");
        (format!("{root} {}", cycle.key()), cycle)
    }

    #[test]
    fn the_allow_list_ignores_comments_and_spacing() {
        let list = allowed("# must shrink\n\nsrc/lib.rs  crate::a   crate::b\n");
        assert_eq!(
            list.into_iter().collect::<Vec<_>>(),
            vec!["src/lib.rs crate::a crate::b"]
        );
    }

    #[test]
    fn a_new_cycle_fails_with_its_chain_and_evidence() {
        let report = compare(&[a_cycle("src/lib.rs")], &BTreeSet::new());
        assert!(report.failed);
        let text = report.lines.join("\n");
        assert!(
            text.contains("import cycle in src/lib.rs among crate::a, crate::b: crate::a -> crate::b -> crate::a"),
            "{text}"
        );
        assert!(text.contains("src/a.rs:3: crate::b::x"), "{text}");
    }

    #[test]
    fn a_listed_cycle_passes() {
        let allow = allowed("src/lib.rs crate::a crate::b");
        let report = compare(&[a_cycle("src/lib.rs")], &allow);
        assert!(!report.failed, "{:?}", report.lines);
    }

    #[test]
    fn a_stale_entry_fails() {
        let allow = allowed("src/lib.rs crate::a crate::b\nsrc/main.rs crate::x crate::y");
        let report = compare(&[a_cycle("src/lib.rs")], &allow);
        assert!(report.failed);
        assert!(
            report
                .lines
                .join("\n")
                .contains("remove the line `src/main.rs crate::x crate::y`"),
            "{:?}",
            report.lines
        );
    }
}
