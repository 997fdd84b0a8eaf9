//! Reading one crate's modules: from its root file, every `mod name;` (with
//! `#[path]`) and `mod name { … }`, and in each module the paths that start
//! with `crate::`, `super::` or `self::` (in `use` trees and in code).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::lexer::{Kind, Token, tokens};

/// A module path below the crate root (`[]` is the root, `["a", "b"]` is
/// `crate::a::b`).
pub type ModPath = Vec<String>;

/// `crate::a::b` for a module path.
pub fn display(path: &[String]) -> String {
    std::iter::once("crate")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

/// A path in a module's code, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The module the path is written in.
    pub from: ModPath,
    /// Its segments, the leading `crate`/`super`/`self` included.
    pub segments: Vec<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// A crate's modules and the paths written in them.
#[derive(Debug, Default)]
pub struct Crate {
    pub modules: Vec<ModPath>,
    pub references: Vec<Reference>,
}

/// Where the file of `mod name;` is, declared in `file` inside the inline
/// modules `inline` of that file.
fn child_file(
    file: &Path,
    is_mod_rs: bool,
    inline: &[String],
    name: &str,
    attr: Option<&str>,
) -> Vec<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new("."));
    if let (Some(attr), true) = (attr, inline.is_empty()) {
        return vec![dir.join(attr)];
    }
    let mut base = dir.to_path_buf();
    if !is_mod_rs && let Some(stem) = file.file_stem() {
        base.push(stem);
    }
    base.extend(inline);
    match attr {
        Some(attr) => vec![base.join(attr)],
        None => vec![
            base.join(format!("{name}.rs")),
            base.join(name).join("mod.rs"),
        ],
    }
}

/// The paths of one `use` tree (from just after `use` to its `;`).
fn use_paths(tokens: &[Token]) -> Vec<(Vec<String>, usize)> {
    fn tree(
        tokens: &[Token],
        pos: &mut usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, usize)>,
    ) {
        let mut path = prefix.to_vec();
        let line = tokens.get(*pos).map_or(0, |t| t.line);
        while let Some(token) = tokens.get(*pos) {
            match &token.kind {
                Kind::Ident(name) if name == "as" => {
                    *pos += 2;
                    break;
                }
                Kind::Ident(name) => {
                    if name != "self" || path.is_empty() {
                        path.push(name.clone());
                    }
                    *pos += 1;
                }
                Kind::PathSep => *pos += 1,
                Kind::Punct('{') => {
                    *pos += 1;
                    while tokens.get(*pos).is_some_and(|t| t.kind != Kind::Punct('}')) {
                        tree(tokens, pos, &path, out);
                        if tokens.get(*pos).is_some_and(|t| t.kind == Kind::Punct(',')) {
                            *pos += 1;
                        }
                    }
                    *pos += 1;
                    return;
                }
                Kind::Punct('*') => {
                    *pos += 1;
                    break;
                }
                _ => break,
            }
        }
        out.push((path, line));
    }
    let mut out = Vec::new();
    let mut pos = 0;
    // `use ::ext::…` names another crate.
    if tokens.first().is_some_and(|t| t.kind == Kind::PathSep) {
        return out;
    }
    tree(tokens, &mut pos, &[], &mut out);
    out
}

fn is_path_start(kind: &Kind) -> bool {
    matches!(kind, Kind::Ident(name) if matches!(name.as_str(), "crate" | "super" | "self"))
}

/// One file's declared child modules and written paths.
struct FileScan {
    /// (module path, `#[path]` value, inline modules of the file around it).
    children: Vec<(ModPath, Option<String>, Vec<String>)>,
    inline_modules: Vec<ModPath>,
    references: Vec<Reference>,
}

fn scan(file: &Path, module: &ModPath, source: &str) -> FileScan {
    let toks = tokens(source);
    let mut out = FileScan {
        children: Vec::new(),
        inline_modules: Vec::new(),
        references: Vec::new(),
    };
    // Inline modules open around the current token: (name, brace depth).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut path_attr: Option<String> = None;
    let current = |inline: &[(String, usize)]| {
        let mut path = module.clone();
        path.extend(inline.iter().map(|(name, _)| name.clone()));
        path
    };
    let ident_at = |i: usize| match toks.get(i).map(|t| &t.kind) {
        Some(Kind::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut i = 0;
    while let Some(token) = toks.get(i) {
        match &token.kind {
            Kind::Punct('{') => depth += 1,
            Kind::Punct('}') => {
                if inline.last().is_some_and(|(_, open)| *open == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Kind::Punct('#') if ident_at(i + 2) == Some("path") => {
                if let Some(Kind::Str(value)) = toks.get(i + 4).map(|t| &t.kind) {
                    path_attr = Some(value.clone());
                }
            }
            Kind::Ident(name) if name == "mod" => {
                if let Some(child) = ident_at(i + 1) {
                    let mut path = current(&inline);
                    path.push(child.to_owned());
                    match toks.get(i + 2).map(|t| &t.kind) {
                        Some(Kind::Punct(';')) => {
                            let within: Vec<String> =
                                inline.iter().map(|(n, _)| n.clone()).collect();
                            out.children.push((path, path_attr.take(), within));
                        }
                        Some(Kind::Punct('{')) => {
                            out.inline_modules.push(path);
                            inline.push((child.to_owned(), depth + 1));
                            depth += 1;
                            i += 3;
                            path_attr = None;
                            continue;
                        }
                        _ => {}
                    }
                }
                path_attr = None;
            }
            Kind::Ident(name) if name == "use" => {
                let end = toks[i..]
                    .iter()
                    .position(|t| t.kind == Kind::Punct(';'))
                    .map_or(toks.len(), |n| i + n);
                for (segments, line) in use_paths(&toks[i + 1..end]) {
                    if segments
                        .first()
                        .is_some_and(|s| matches!(s.as_str(), "crate" | "super" | "self"))
                    {
                        out.references.push(Reference {
                            from: current(&inline),
                            segments,
                            file: file.to_path_buf(),
                            line,
                        });
                    }
                }
                i = end + 1;
                continue;
            }
            kind if is_path_start(kind)
                && toks.get(i + 1).is_some_and(|t| t.kind == Kind::PathSep) =>
            {
                let mut segments = Vec::new();
                let mut j = i;
                while let Some(name) = ident_at(j) {
                    segments.push(name.to_owned());
                    if toks.get(j + 1).is_some_and(|t| t.kind == Kind::PathSep) {
                        j += 2;
                    } else {
                        break;
                    }
                }
                out.references.push(Reference {
                    from: current(&inline),
                    segments,
                    file: file.to_path_buf(),
                    line: token.line,
                });
                i = j + 1;
                continue;
            }
            Kind::Punct(';') => path_attr = None,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Reads the crate whose root file is `root`, following its `mod` items.
/// A declared module whose file is missing (one for another platform) is
/// left out.
pub fn read_crate(root: &Path) -> anyhow::Result<Crate> {
    let mut krate = Crate {
        modules: vec![Vec::new()],
        references: Vec::new(),
    };
    // (file, its module path, whether its children live beside it).
    let mut queue = vec![(root.to_path_buf(), ModPath::new(), true)];
    while let Some((file, module, is_mod_rs)) = queue.pop() {
        let source =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let found = scan(&file, &module, &source);
        krate.modules.extend(found.inline_modules);
        krate.references.extend(found.references);
        for (path, attr, within) in found.children {
            let name = path.last().cloned().unwrap_or_default();
            let candidates = child_file(&file, is_mod_rs, &within, &name, attr.as_deref());
            if let Some(child) = candidates.into_iter().find(|c| c.is_file()) {
                // A file named by `#[path]` keeps its children beside it, as
                // a `mod.rs` does.
                let child_is_mod_rs =
                    attr.is_some() || child.file_name().is_some_and(|n| n == "mod.rs");
                krate.modules.push(path.clone());
                queue.push((child, path, child_is_mod_rs));
            }
        }
    }
    krate.modules.sort();
    krate.modules.dedup();
    Ok(krate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(source: &str) -> Vec<String> {
        scan(Path::new("src/lib.rs"), &vec!["m".to_owned()], source)
            .references
            .into_iter()
            .map(|r| format!("{} {}", display(&r.from), r.segments.join("::")))
            .collect()
    }

    #[test]
    fn use_trees_expand() {
        assert_eq!(
            paths("use crate::{a::{self, b::C}, d as e};\nuse super::*;\nuse std::fmt;"),
            vec![
                "crate::m crate::a",
                "crate::m crate::a::b::C",
                "crate::m crate::d",
                "crate::m super",
            ]
        );
    }

    #[test]
    fn code_paths_and_inline_modules() {
        assert_eq!(
            paths(
                "fn f() { crate::a::g(); self.x; }\nmod tests { fn t() { super::super::b::h(); } }"
            ),
            vec!["crate::m crate::a::g", "crate::m::tests super::super::b::h"]
        );
    }

    #[test]
    fn mod_declarations() {
        let found = scan(
            Path::new("src/lib.rs"),
            &Vec::new(),
            "mod a;\n#[path = \"x/y.rs\"] pub mod b;\nmod c { mod d; }",
        );
        let children: Vec<_> = found
            .children
            .iter()
            .map(|(p, attr, within)| (display(p), attr.clone(), within.clone()))
            .collect();
        assert_eq!(
            children,
            vec![
                ("crate::a".to_owned(), None, vec![]),
                ("crate::b".to_owned(), Some("x/y.rs".to_owned()), vec![]),
                ("crate::c::d".to_owned(), None, vec!["c".to_owned()]),
            ]
        );
        assert_eq!(found.inline_modules, vec![vec!["c".to_owned()]]);
    }

    #[test]
    fn child_files() {
        let at = |file: &str, mod_rs: bool, inline: &[&str], attr: Option<&str>| {
            let inline: Vec<String> = inline.iter().map(|s| (*s).to_owned()).collect();
            child_file(Path::new(file), mod_rs, &inline, "x", attr)
        };
        assert_eq!(
            at("src/lib.rs", true, &[], None),
            vec![PathBuf::from("src/x.rs"), PathBuf::from("src/x/mod.rs")]
        );
        assert_eq!(
            at("src/a.rs", false, &[], None)[0],
            PathBuf::from("src/a/x.rs")
        );
        assert_eq!(
            at("src/a.rs", false, &["i"], None)[0],
            PathBuf::from("src/a/i/x.rs")
        );
        assert_eq!(
            at("src/a.rs", false, &[], Some("../y.rs")),
            vec![PathBuf::from("src/../y.rs")]
        );
    }
}
