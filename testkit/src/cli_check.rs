//! One check for every tally command line (the agent's and the
//! collector's), used by their tests: each command has a description, and
//! each option a help text that explains more than its name, shows its
//! default (or says what happens without it) and its environment variable.
//! Options that take a value read a `TALLY_…` variable unless the policy
//! names them with a reason; only secrets hide their variable's value.

use clap::{Command, error::ErrorKind};

/// What a command line allows beyond the rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy<'a> {
    /// `(command, long option, reason)`: options that take a value and
    /// read no environment variable. An entry that no longer applies fails
    /// the check.
    pub no_env: &'a [(&'a str, &'a str, &'a str)],
    /// Long names of options whose values are secrets.
    pub secrets: &'a [&'a str],
    /// Variables allowed besides `TALLY_…` (e.g. `DATABASE_URL`).
    pub other_env: &'a [&'a str],
}

/// Every command of the tree below `root`, built (global options
/// propagated), with the words that run it (`["tally-agent", "run"]`).
pub fn commands(mut root: Command) -> Vec<(Vec<String>, Command)> {
    fn walk(path: Vec<String>, command: &Command, out: &mut Vec<(Vec<String>, Command)>) {
        out.push((path.clone(), command.clone()));
        for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
            let mut path = path.clone();
            path.push(sub.get_name().to_owned());
            walk(path, sub, out);
        }
    }
    root.build();
    let mut out = Vec::new();
    walk(vec![root.get_name().to_owned()], &root, &mut out);
    out
}

/// What the user sees for `<path> --help`, white space collapsed (lines
/// wrap anywhere).
pub fn rendered_help(root: Command, path: &[String]) -> String {
    let args = path.iter().map(String::as_str).chain(["--help"]);
    match root.try_get_matches_from(args) {
        Err(error) if error.kind() == ErrorKind::DisplayHelp => error
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        other => panic!("`{} --help` did not print help: {other:?}", path.join(" ")),
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Checks the whole tree below `root`; panics naming the first option (or
/// command) that breaks the rule.
pub fn check(root: &Command, policy: &Policy<'_>) {
    let mut unused: Vec<(&str, &str)> = policy.no_env.iter().map(|(c, a, _)| (*c, *a)).collect();
    for (path, command) in commands(root.clone()) {
        let at = path.join(" ");
        assert!(
            command
                .get_about()
                .is_some_and(|a| !a.to_string().trim().is_empty()),
            "`{at}` has no description"
        );
        let help = rendered_help(root.clone(), &path);
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            let name = arg.get_long().unwrap_or(id);
            let text = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            // More than the flag's own name: at least three other words.
            let own = words(name);
            let other = words(&text)
                .into_iter()
                .filter(|w| !own.contains(w))
                .count();
            assert!(
                other >= 3,
                "`{at}` {name}: help {text:?} only restates the name"
            );

            let takes_value = arg.get_action().takes_values();
            if !arg.is_positional() && takes_value && arg.get_env().is_none() {
                let exception = (path.last().map_or("", String::as_str), name);
                assert!(
                    policy.no_env.iter().any(|(c, a, _)| (*c, *a) == exception),
                    "`{at}` --{name} takes a value but reads no environment variable: \
                     give it env = \"TALLY_…\" or name it in the policy's no_env with the reason"
                );
                unused.retain(|e| *e != exception);
            }
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(
                    env.starts_with("TALLY_") || policy.other_env.contains(&env.as_ref()),
                    "`{at}` --{name}: {env} is not a TALLY_ variable"
                );
                assert!(
                    help.contains(&format!("[env: {env}")),
                    "`{at} --help` does not show [env: {env}]:\n{help}"
                );
                assert_eq!(
                    arg.is_hide_env_values_set(),
                    policy.secrets.contains(&name),
                    "`{at}` --{name}: secrets, and only they, hide their variable's value"
                );
            }
            let defaults: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if takes_value && !defaults.is_empty() {
                let shown = format!("[default: {}]", defaults.join(", "));
                assert!(
                    help.contains(&shown),
                    "`{at} --help` does not show {shown}:\n{help}"
                );
            } else if takes_value && !arg.is_positional() {
                let lower = text.to_lowercase();
                assert!(
                    ["without", "default", "required"]
                        .iter()
                        .any(|w| lower.contains(w)),
                    "`{at}` --{name} has no default: its help must say what happens without it"
                );
            }
        }
    }
    assert!(
        unused.is_empty(),
        "no_env names options that are gone or read a variable now: {unused:?}"
    );
}

/// Checks a binary's `--version` line: `<name> <version> (<commit>)`, the
/// commit being the one checked out in `repo` (its first 12 hex digits,
/// after a release tag and with `-dirty` as `git describe` puts it), or
/// `unknown` where git cannot tell. Panics with what was printed otherwise.
pub fn assert_version_line(printed: &str, name: &str, version: &str, repo: &std::path::Path) {
    let commit = std::process::Command::new("git")
        .current_dir(repo)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let line = printed.trim_end();
    let prefix = format!("{name} {version} (");
    let inside = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`--version` printed {line:?}, not `{prefix}<commit>)`"));
    match commit {
        Some(commit) => assert!(
            inside.contains(&commit),
            "`--version` printed {line:?}: the commit checked out is {commit}"
        ),
        None => assert_eq!(
            inside, "unknown",
            "`--version` printed {line:?} outside a checkout"
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn root(option: Arg) -> Command {
        Command::new("t")
            .about("A test command line")
            .subcommand(Command::new("run").about("Runs the thing").arg(option))
    }

    fn fails(command: &Command, policy: &Policy<'_>) -> String {
        let command = command.clone();
        let policy = *policy;
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            check(&command, &policy)
        }))
        .expect_err("the check refuses it");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_well_explained_option_passes() {
        let ok = Arg::new("rate")
            .long("rate")
            .env("TALLY_RATE")
            .default_value("5")
            .help("How many heartbeats are sent per minute");
        check(&root(ok), &Policy::default());
    }

    #[test]
    fn each_rule_is_enforced() {
        let base = || {
            Arg::new("rate")
                .long("rate")
                .help("How many heartbeats are sent per minute")
        };
        let no_env = root(base().default_value("5"));
        assert!(fails(&no_env, &Policy::default()).contains("reads no environment variable"));
        let allowed = Policy {
            no_env: &[("run", "rate", "one-off")],
            ..Policy::default()
        };
        check(&no_env, &allowed);
        let gone = root(base().env("TALLY_RATE").default_value("5"));
        assert!(fails(&gone, &allowed).contains("gone or read a variable"));
        let terse = root(base().help("The rate").env("TALLY_RATE").default_value("5"));
        assert!(fails(&terse, &Policy::default()).contains("only restates"));
        let silent = root(base().env("TALLY_RATE"));
        assert!(fails(&silent, &Policy::default()).contains("what happens without it"));
        let foreign = root(base().env("RATE").default_value("5"));
        assert!(fails(&foreign, &Policy::default()).contains("not a TALLY_ variable"));
        let hidden = root(
            base()
                .env("TALLY_RATE")
                .default_value("5")
                .hide_env_values(true),
        );
        assert!(fails(&hidden, &Policy::default()).contains("secrets"));
        let switch = root(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print JSON for scripts instead"),
        );
        check(&switch, &Policy::default());
    }
}
