//! Which interfaces the agent counts: every interface but loopback (`lo*`),
//! narrowed by `--include` and `--exclude` glob patterns on the name.

use glob::Pattern;

/// An invalid `--include` / `--exclude` pattern.
#[derive(Debug, thiserror::Error)]
#[error("invalid interface pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// The interface name filter. Patterns are shell globs (`*`, `?`, `[...]`)
/// matched against the whole name, never as substrings.
#[derive(Debug, Clone, Default)]
pub struct IfaceFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

pub use tally_proto::is_loopback;

fn compile(patterns: &[String]) -> Result<Vec<Pattern>, PatternError> {
    patterns
        .iter()
        .map(|p| {
            if p.is_empty() {
                return Err(PatternError {
                    pattern: p.clone(),
                    reason: "empty pattern".into(),
                });
            }
            Pattern::new(p).map_err(|e| PatternError {
                pattern: p.clone(),
                reason: e.msg.to_owned(),
            })
        })
        .collect()
}

impl IfaceFilter {
    /// `include` empty means "every interface"; `exclude` wins over `include`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, PatternError> {
        Ok(Self {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    /// Whether the interface called `name` is counted.
    pub fn counts(&self, name: &str) -> bool {
        if is_loopback(name) {
            return false;
        }
        let included = self.include.is_empty() || self.include.iter().any(|p| p.matches(name));
        included && !self.exclude.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> IfaceFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        IfaceFilter::new(&own(include), &own(exclude)).expect("valid patterns")
    }

    #[test]
    fn loopback_is_never_counted() {
        let f = filter(&["*", "lo"], &[]);
        for name in ["lo", "lo0", "loopback1"] {
            assert!(!f.counts(name), "{name}");
        }
        assert!(f.counts("eth0"));
    }

    #[test]
    fn default_counts_everything_else() {
        let f = filter(&[], &[]);
        for name in ["eth0", "veth1a2b", "docker0", "wg0", "enp3s0"] {
            assert!(f.counts(name), "{name}");
        }
    }

    #[test]
    fn exclude_is_a_glob_not_a_substring() {
        let f = filter(&[], &["veth*", "docker?"]);
        assert!(!f.counts("veth0"));
        assert!(!f.counts("docker0"));
        assert!(f.counts("docker10"), "? matches one character");
        assert!(f.counts("myveth0"), "patterns match the whole name");
        assert!(f.counts("eth0"));
    }

    #[test]
    fn patterns_match_whole_names_never_substrings() {
        // A pattern without wildcards is one exact name.
        let f = filter(&["eth"], &[]);
        assert!(!f.counts("eth0"));
        assert!(!f.counts("veth"));
        assert!(f.counts("eth"));
        // A wildcard at the end does not float to the middle of a name.
        let f = filter(&[], &["veth*"]);
        assert!(f.counts("aveth0"));
        assert!(f.counts("xveth"));
        assert!(!f.counts("veth0"));
        assert!(!f.counts("veth"));
        let f = filter(&["veth*"], &[]);
        assert!(!f.counts("aveth0"));
        assert!(f.counts("vethab12"));
    }

    #[test]
    fn include_narrows_and_exclude_wins() {
        let f = filter(&["eth*", "wg[0-9]"], &["eth9"]);
        assert!(f.counts("eth0"));
        assert!(f.counts("wg3"));
        assert!(!f.counts("wg10"));
        assert!(!f.counts("eth9"));
        assert!(!f.counts("veth0"));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let err = IfaceFilter::new(&["eth[".to_string()], &[]).expect_err("invalid");
        assert!(err.to_string().contains("eth["), "{err}");
        let err = IfaceFilter::new(&[], &[String::new()]).expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
