//! The node's token as given at start: from `--token-file` or TALLY_TOKEN
//! (one of them), one word of printable ASCII, and the token file's
//! permission bits checked ([`token_file_access`]: a warning, or under
//! `--strict` a refusal, when group or others may read or write it). The
//! same checks apply when the file is read again ([`super::token`]).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The environment variable that may hold the token itself.
pub const TOKEN_ENV: &str = "TALLY_TOKEN";

/// The token, from `--token-file` or TALLY_TOKEN (exactly one of them),
/// and the token file when group or others may read or write it; `strict`
/// (`--strict`) refuses such a file instead.
pub fn token(
    file: Option<&Path>,
    env: Option<String>,
    strict: bool,
) -> anyhow::Result<(String, Option<ExposedTokenFile>)> {
    match (file, env) {
        (Some(_), Some(_)) => bail!(
            "both --token-file (or TALLY_TOKEN_FILE) and {TOKEN_ENV} are set: give the token \
             one way only"
        ),
        (Some(path), None) => read_token_file(path, strict),
        (None, Some(text)) => Ok((
            parse_token(&text).with_context(|| format!("{TOKEN_ENV} is unusable"))?,
            None,
        )),
        (None, None) => bail!(
            "--collector needs the node's token: give --token-file PATH (or set {TOKEN_ENV}); \
             `tally-collector node add` prints it"
        ),
    }
}

/// What start-up does about a token file's permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFileAccess {
    /// Only its owner may read or write it: nothing to say.
    Private,
    /// Group or others may read or write it: a warning.
    Warn,
    /// The same under `--strict`: the agent refuses to start (or, reading
    /// the file again while it runs, keeps the token in use).
    Refuse,
}

/// What to do about a token file of the permission bits `mode`: anything
/// group or others may do with it (`mode & 0o077`) is worth a warning, or a
/// refusal when `strict`.
pub fn token_file_access(mode: u32, strict: bool) -> TokenFileAccess {
    match (mode & 0o077 == 0, strict) {
        (true, _) => TokenFileAccess::Private,
        (false, false) => TokenFileAccess::Warn,
        (false, true) => TokenFileAccess::Refuse,
    }
}

/// A `--token-file` that group or others may read or write, read all the
/// same because `--strict` was not given. `run` logs [`Self::warn`] once
/// every setting was checked, so that a refusal stays one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedTokenFile {
    /// The file, as given.
    pub path: PathBuf,
    /// Its permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

impl ExposedTokenFile {
    /// Logs the warning: the file, its mode, and the fix.
    pub fn warn(&self) {
        tracing::warn!(
            path = %self.path.display(),
            mode = %format!("{:04o}", self.mode),
            "the token file is readable or writable by group or others: run `chmod 0600 {}` \
             (with --strict the agent refuses such a file)",
            self.path.display()
        );
    }
}

/// Reads a token file: the token, surrounding whitespace ignored. Its mode
/// is checked first ([`token_file_access`]): under `strict` a file group or
/// others may read or write is an error, otherwise it is returned second,
/// to be warned about.
pub fn read_token_file(
    path: &Path,
    strict: bool,
) -> anyhow::Result<(String, Option<ExposedTokenFile>)> {
    use std::{io::Read as _, os::unix::fs::PermissionsExt as _};
    let cannot_read = || format!("cannot read --token-file {}", path.display());
    let mut file = fs::File::open(path).with_context(cannot_read)?;
    // The file that was opened (through a symbolic link, if it is one).
    let mode = file
        .metadata()
        .with_context(cannot_read)?
        .permissions()
        .mode()
        & 0o7777;
    let exposed = match token_file_access(mode, strict) {
        TokenFileAccess::Private => None,
        TokenFileAccess::Warn => Some(ExposedTokenFile {
            path: path.to_owned(),
            mode,
        }),
        TokenFileAccess::Refuse => bail!(
            "refusing --token-file {} (mode {mode:04o}): group or others may read or write the \
             node's token, and --strict (TALLY_STRICT) allows only its owner; run `chmod 0600 {}`",
            path.display(),
            path.display()
        ),
    };
    let mut text = String::new();
    file.read_to_string(&mut text).with_context(cannot_read)?;
    let token = parse_token(&text)
        .with_context(|| format!("--token-file {} is unusable", path.display()))?;
    Ok((token, exposed))
}

/// A token: one word of printable ASCII (the value is never echoed back).
pub fn parse_token(text: &str) -> anyhow::Result<String> {
    let token = text.trim();
    if token.is_empty() {
        bail!("it is empty; it should hold the token `tally-collector node add` printed");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("a token is one word of printable ASCII, without spaces or line breaks inside");
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use std::{fmt, io::Write as _};

    use super::*;

    fn err(result: anyhow::Result<impl fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("should fail"))
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        fs::File::create(&path)
            .and_then(|mut f| f.write_all(b"  tly_abc.DEF-123\n\n"))
            .expect("write");
        let (token, _) = read_token_file(&path, false).expect("token");
        assert_eq!(token, "tly_abc.DEF-123");

        fs::write(&path, " \n").expect("write");
        let empty = err(read_token_file(&path, false));
        assert!(empty.contains("is empty"), "{empty}");
        assert!(empty.contains(&path.display().to_string()), "{empty}");

        fs::write(&path, "two words\n").expect("write");
        let spaced = err(read_token_file(&path, false));
        assert!(spaced.contains("one word"), "{spaced}");
        assert!(
            !spaced.contains("two words"),
            "the token is never echoed: {spaced}"
        );

        let missing = err(read_token_file(&dir.path().join("nope"), false));
        assert!(missing.contains("cannot read --token-file"), "{missing}");
    }

    #[test]
    fn the_token_comes_one_way_only() {
        assert_eq!(
            token(None, Some(" secret\n".into()), false).expect("env"),
            ("secret".to_owned(), None)
        );
        let both = err(token(Some(Path::new("/t")), Some("secret".into()), false));
        assert!(both.contains("one way only"), "{both}");
        let none = err(token(None, None, false));
        assert!(none.contains("--token-file"), "{none}");
        assert!(none.contains(TOKEN_ENV), "{none}");
        let empty = err(token(None, Some(String::new()), false));
        assert!(
            empty.contains("TALLY_TOKEN is unusable: it is empty"),
            "{empty}"
        );
    }
}
