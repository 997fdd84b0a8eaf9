//! The HTTP side's admin and read tokens: from the flags and the token
//! files, each checked for its form ([`auth::check_form`]), and read again
//! from the files on SIGHUP.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tally_collector::http::{TokenSet, Tokens, auth};
use tokio::signal::unix::{SignalKind, signal};

use super::LOG_TARGET;

/// Where the tokens come from.
#[derive(Debug, Clone)]
pub struct TokenSources {
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub read_token: Option<String>,
    pub read_token_file: Option<PathBuf>,
}

impl TokenSources {
    /// Every valid token, or why one is refused (naming its flag or file
    /// and line, never the token).
    pub fn load(&self) -> anyhow::Result<TokenSet> {
        Ok(TokenSet {
            admin: tokens(
                "--admin-token",
                self.admin_token.as_deref(),
                self.admin_token_file.as_deref(),
            )?,
            read: tokens(
                "--read-token",
                self.read_token.as_deref(),
                self.read_token_file.as_deref(),
            )?,
        })
    }

    /// Reads the token files again on every SIGHUP (the flags' values stay),
    /// and replaces `tokens` when every token is valid; otherwise the old
    /// set stays and the reason is logged.
    pub fn reload_on_sighup(self, tokens: Tokens) -> anyhow::Result<()> {
        let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match self.load() {
                    Ok(set) => {
                        let (admin, read) = (set.admin.len(), set.read.len());
                        tokens.replace(set);
                        tracing::info!(
                            target: LOG_TARGET,
                            admin_tokens = admin,
                            read_tokens = read,
                            "HTTP tokens read again (SIGHUP)"
                        );
                    }
                    Err(error) => tracing::error!(
                        target: LOG_TARGET,
                        error = format!("{error:#}"),
                        "HTTP tokens not changed (SIGHUP): the files hold an invalid token"
                    ),
                }
            }
        });
        Ok(())
    }
}

/// The tokens of one kind: the flag's (`flag`) and the file's, checked.
fn tokens(flag: &str, value: Option<&str>, file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    if let Some(token) = value.filter(|token| !token.is_empty()) {
        auth::check_form(token).with_context(|| format!("{flag}: the token"))?;
        tokens.push(token.to_owned());
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {flag}-file {}", path.display()))?;
        let from_file = auth::parse_token_file(&text);
        if from_file.is_empty() {
            anyhow::bail!(
                "{flag}-file {} holds no token (one per line; # starts a comment)",
                path.display()
            );
        }
        for (i, token) in from_file.into_iter().enumerate() {
            auth::check_form(&token)
                .with_context(|| format!("{flag}-file {}: token {}", path.display(), i + 1))?;
            tokens.push(token);
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    fn sources(admin: Option<&str>, file: Option<PathBuf>) -> TokenSources {
        TokenSources {
            admin_token: admin.map(str::to_owned),
            admin_token_file: file,
            read_token: None,
            read_token_file: None,
        }
    }

    #[test]
    fn flags_and_files_add_up_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("admin");
        std::fs::write(&file, format!("# rotated on Monday\n{GOOD}x\n\n{GOOD}y\n")).expect("write");
        let set = sources(Some(GOOD), Some(file.clone()))
            .load()
            .expect("valid");
        assert_eq!(
            set.admin,
            [GOOD.to_owned(), format!("{GOOD}x"), format!("{GOOD}y")]
        );
        assert!(set.read.is_empty());

        let error = sources(Some("CHANGE-ME-openssl-rand-hex-32"), None)
            .load()
            .expect_err("placeholder");
        assert!(
            format!("{error:#}").contains("--admin-token: the token: is the example's placeholder"),
            "{error:#}"
        );

        std::fs::write(&file, format!("{GOOD}\nshort\n")).expect("write");
        let error = sources(None, Some(file.clone())).load().expect_err("short");
        let text = format!("{error:#}");
        assert!(text.contains("token 2: is 5 characters long"), "{text}");
        assert!(!text.contains(GOOD), "a token was shown: {text}");

        std::fs::write(&file, "# nothing\n").expect("write");
        assert!(sources(None, Some(file)).load().is_err(), "an empty file");
    }
}
