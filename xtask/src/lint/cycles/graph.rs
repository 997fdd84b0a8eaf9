//! From the paths a crate's modules write to cycles between its modules.
//!
//! A path written in module `M` that names something in module `T` (the
//! longest prefix of the path that is a module) makes the child of their
//! common ancestor that holds `M` depend on the one that holds `T`. So
//! `crate::period` using `crate::ingest::store::x` makes `crate::period`
//! depend on `crate::ingest`, and the siblings under each module must form
//! no cycle. A module using its ancestors (`use super::*`) or its own
//! descendants adds nothing. Names re-exported by an ancestor count as the
//! ancestor's.

use std::collections::{BTreeMap, BTreeSet};

use super::modules::{Crate, ModPath, Reference, display};

/// One dependency between sibling modules and the first path that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: ModPath,
    pub to: ModPath,
    pub evidence: String,
}

/// A cycle: sibling modules each reachable from every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The members, sorted.
    pub members: Vec<ModPath>,
    /// One chain through them, first member repeated at the end.
    pub chain: Vec<ModPath>,
    /// Every dependency between the members.
    pub edges: Vec<Edge>,
}

impl Cycle {
    /// How the allow-list names it: the members, sorted, space-separated.
    pub fn key(&self) -> String {
        self.members
            .iter()
            .map(|m| display(m))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The module a path names: resolves `crate`/`super`/`self`, then takes the
/// longest prefix that is a module. `None` for a path above the root.
fn target(reference: &Reference, modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut segments = reference.segments.iter().peekable();
    let mut base = match segments.next().map(String::as_str) {
        Some("crate") => ModPath::new(),
        Some("self") => reference.from.clone(),
        Some("super") => {
            let mut base = reference.from.clone();
            base.pop()?;
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                base.pop()?;
            }
            base
        }
        _ => return None,
    };
    for segment in segments {
        base.push(segment.clone());
        if !modules.contains(&base) {
            base.pop();
            break;
        }
    }
    Some(base)
}

/// The sibling dependency a path makes, if any.
fn edge(reference: &Reference, modules: &BTreeSet<ModPath>) -> Option<Edge> {
    let to = target(reference, modules)?;
    let from = &reference.from;
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None; // an ancestor, a descendant or itself
    }
    Some(Edge {
        from: from[..=common].to_vec(),
        to: to[..=common].to_vec(),
        evidence: format!(
            "{}:{}: {}",
            reference.file.display(),
            reference.line,
            reference.segments.join("::")
        ),
    })
}

/// Strongly connected components of more than one node (Tarjan's algorithm).
fn components(
    nodes: &[ModPath],
    edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<ModPath, usize>,
        low: BTreeMap<ModPath, usize>,
        stack: Vec<ModPath>,
        on_stack: BTreeSet<ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit(s: &mut State<'_>, node: &ModPath) {
        let n = s.index.len();
        s.index.insert(node.clone(), n);
        s.low.insert(node.clone(), n);
        s.stack.push(node.clone());
        s.on_stack.insert(node.clone());
        for next in s.edges.get(node).into_iter().flatten() {
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node.clone(), low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node.clone(), low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(&top);
                let done = &top == node;
                component.push(top);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in nodes {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.found.sort();
    state.found
}

/// A shortest chain from the first member back to it, inside the component.
fn chain(members: &[ModPath], edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<ModPath> {
    let Some(start) = members.first() else {
        return Vec::new();
    };
    let inside: BTreeSet<&ModPath> = members.iter().collect();
    let mut came_from: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next_frontier = Vec::new();
        for node in frontier {
            for next in edges.get(node).into_iter().flatten() {
                if next == start {
                    let mut path = vec![start.clone(), node.clone()];
                    let mut at = node;
                    while let Some(prev) = came_from.get(at) {
                        path.push((*prev).clone());
                        at = prev;
                    }
                    path.reverse();
                    return path;
                }
                if inside.contains(next) && !came_from.contains_key(next) {
                    came_from.insert(next, node);
                    next_frontier.push(next);
                }
            }
        }
        frontier = next_frontier;
    }
    Vec::new()
}

/// Every cycle between sibling modules of the crate.
pub fn cycles(krate: &Crate) -> Vec<Cycle> {
    let modules: BTreeSet<ModPath> = krate.modules.iter().cloned().collect();
    let mut first_edge: BTreeMap<(ModPath, ModPath), Edge> = BTreeMap::new();
    for reference in &krate.references {
        if let Some(edge) = edge(reference, &modules) {
            first_edge
                .entry((edge.from.clone(), edge.to.clone()))
                .or_insert(edge);
        }
    }
    let mut adjacency: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, to) in first_edge.keys() {
        adjacency
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    let nodes: Vec<ModPath> = adjacency.keys().cloned().collect();
    components(&nodes, &adjacency)
        .into_iter()
        .map(|members| {
            let inside: BTreeSet<&ModPath> = members.iter().collect();
            let edges = first_edge
                .values()
                .filter(|e| inside.contains(&e.from) && inside.contains(&e.to))
                .cloned()
                .collect();
            Cycle {
                chain: chain(&members, &adjacency),
                members,
                edges,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn module(path: &str) -> ModPath {
        path.split("::")
            .filter(|s| !s.is_empty() && *s != "crate")
            .map(str::to_owned)
            .collect()
    }

    fn reference(from: &str, path: &str) -> Reference {
        Reference {
            from: module(from),
            segments: path.split("::").map(str::to_owned).collect(),
            file: PathBuf::from("src/x.rs"),
            line: 1,
        }
    }

    fn krate(modules: &[&str], refs: &[(&str, &str)]) -> Crate {
        Crate {
            modules: modules.iter().map(|m| module(m)).collect(),
            references: refs.iter().map(|(f, p)| reference(f, p)).collect(),
        }
    }

    const MODULES: [&str; 7] = [
        "crate",
        "crate::period",
        "crate::ingest",
        "crate::ingest::store",
        "crate::cli",
        "crate::top",
        "crate::billing_cli",
    ];

    #[test]
    fn finds_a_cycle_through_submodules() {
        let found = cycles(&krate(
            &MODULES,
            &[
                ("crate::period", "crate::ingest::store::Row"),
                ("crate::ingest::store", "super::super::period::Period"),
            ],
        ));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key(), "crate::ingest crate::period");
        assert_eq!(found[0].chain.len(), 3);
        assert_eq!(found[0].edges.len(), 2);
    }

    #[test]
    fn a_three_cycle_is_one_chain() {
        let found = cycles(&krate(
            &MODULES,
            &[
                ("crate::cli", "crate::top::run"),
                ("crate::top", "crate::billing_cli"),
                ("crate::billing_cli", "crate::cli::Args"),
            ],
        ));
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0]
                .chain
                .iter()
                .map(|m| display(m))
                .collect::<Vec<_>>(),
            vec![
                "crate::billing_cli",
                "crate::cli",
                "crate::top",
                "crate::billing_cli"
            ]
        );
    }

    #[test]
    fn ancestors_descendants_and_one_way_uses_are_no_cycle() {
        let found = cycles(&krate(
            &MODULES,
            &[
                ("crate::ingest::store", "super::Batch"),
                ("crate::ingest", "self::store::Row"),
                ("crate", "crate::period::Period"),
                ("crate::period", "crate::Error"),
                ("crate::cli", "crate::top::run"),
                ("crate::ingest", "crate::period::Period"),
            ],
        ));
        assert_eq!(found, Vec::new());
    }

    #[test]
    fn resolves_super_and_self() {
        let modules: BTreeSet<ModPath> = MODULES.iter().map(|m| module(m)).collect();
        let target =
            |from: &str, path: &str| target(&reference(from, path), &modules).map(|m| display(&m));
        assert_eq!(
            target("crate::ingest::store", "super::super::cli::x").as_deref(),
            Some("crate::cli")
        );
        assert_eq!(
            target("crate::ingest", "self::store::Row").as_deref(),
            Some("crate::ingest::store")
        );
        assert_eq!(target("crate", "super::x"), None);
    }
}
