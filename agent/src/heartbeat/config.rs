//! The collector settings of `run`, checked before anything is attached: the
//! URL and its transport (TLS with `--ca`, or plaintext only with
//! `--insecure-plaintext`), the node's token, and the CA bundle.
//!
//! A `--token-file` that group or others may read or write gets a warning
//! at start ([`ExposedTokenFile`]), or, with `--strict`, stops the start
//! ([`token_file_access`]).

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, ClientTlsConfig, Endpoint, Uri},
};

use crate::cli::CollectorArgs;

/// The environment variable that may hold the token itself.
pub const TOKEN_ENV: &str = "TALLY_TOKEN";

/// How long one heartbeat call may take, connecting included.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (TCP, and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the heartbeat sender needs, checked.
#[derive(Clone)]
pub struct CollectorConfig {
    /// The URL as given, for logs.
    pub url: String,
    pub endpoint: Endpoint,
    /// `Bearer <token>`, marked sensitive so that it is never logged.
    pub authorization: MetadataValue<Ascii>,
    pub rpc_timeout: Duration,
    /// How long the last heartbeat on SIGTERM may take (zero: none).
    pub final_timeout: Duration,
    /// The token file, when group or others may read or write it: to be
    /// warned about once every setting was checked.
    pub exposed_token_file: Option<ExposedTokenFile>,
}

impl fmt::Debug for CollectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorConfig")
            .field("url", &self.url)
            .field("authorization", &"Bearer <redacted>")
            .field("rpc_timeout", &self.rpc_timeout)
            .field("final_timeout", &self.final_timeout)
            .field("exposed_token_file", &self.exposed_token_file)
            .finish_non_exhaustive()
    }
}

/// How the agent talks to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plaintext,
}

impl CollectorConfig {
    /// The checked settings, or `None` without `--collector`. `token_env` is
    /// the value of TALLY_TOKEN, if set.
    pub fn from_args(
        args: &CollectorArgs,
        token_env: Option<String>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = args.collector.as_deref() else {
            return Ok(None);
        };
        let (uri, transport) = check_url(url, args.ca.is_some(), args.insecure_plaintext)?;
        let (token, exposed_token_file) =
            token(args.token_file.as_deref(), token_env, args.strict)?;
        let mut authorization: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .context("the token cannot be sent as gRPC metadata")?;
        authorization.set_sensitive(true);

        let mut endpoint = Endpoint::from(uri)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("tally-agent/", env!("CARGO_PKG_VERSION")))
            .context("invalid user agent")?;
        if transport == Transport::Tls {
            let ca = args.ca.as_deref().context("https:// needs --ca")?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(read_ca(ca)?)
                .timeout(CONNECT_TIMEOUT);
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("cannot set up TLS with --ca {}", ca.display()))?;
        }
        Ok(Some(Self {
            url: url.to_owned(),
            endpoint,
            authorization,
            rpc_timeout: RPC_TIMEOUT,
            final_timeout: args.final_heartbeat_timeout,
            exposed_token_file,
        }))
    }
}

/// Checks the collector URL against the TLS flags: `https://` needs `--ca`,
/// `http://` needs `--insecure-plaintext`, and neither takes a path.
pub fn check_url(url: &str, has_ca: bool, insecure: bool) -> anyhow::Result<(Uri, Transport)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid --collector URL {url:?} (try https://HOST:PORT)"))?;
    if uri.host().is_none_or(str::is_empty) {
        bail!("invalid --collector URL {url:?}: no host (try https://HOST:PORT)");
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        bail!("invalid --collector URL {url:?}: give only the scheme, host and port");
    }
    match uri.scheme_str() {
        Some("https") => {
            if insecure {
                bail!(
                    "--insecure-plaintext contradicts the https:// collector URL {url:?}: \
                     drop one of them"
                );
            }
            if !has_ca {
                bail!(
                    "the https:// collector {url:?} needs --ca PATH: the PEM certificate of \
                     the CA that signed the collector's certificate (the agent trusts no \
                     built-in roots)"
                );
            }
            Ok((uri, Transport::Tls))
        }
        Some("http") => {
            if has_ca {
                bail!(
                    "--ca is for TLS but the collector URL {url:?} is plaintext http://: \
                     use https://"
                );
            }
            if !insecure {
                bail!(
                    "refusing to send the token unencrypted to {url:?}: use an https:// URL \
                     with --ca, or pass --insecure-plaintext if plaintext is really meant"
                );
            }
            Ok((uri, Transport::Plaintext))
        }
        _ => bail!("invalid --collector URL {url:?}: it must start with https:// or http://"),
    }
}

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
    /// The same under `--strict`: the agent refuses to start.
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
             (with --strict the agent refuses to start)",
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

/// Reads the CA bundle and checks that it holds at least one PEM certificate
/// (tonic would otherwise accept an empty trust store and fail every
/// handshake later).
fn read_ca(path: &Path) -> anyhow::Result<Certificate> {
    let pem = fs::read(path).with_context(|| format!("cannot read --ca {}", path.display()))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        bail!(
            "--ca {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(Certificate::from_pem(pem))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn err(result: anyhow::Result<impl fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("should fail"))
    }

    #[test]
    fn https_needs_a_ca_and_no_plaintext_flag() {
        let (uri, transport) = check_url("https://collector:4443", true, false).expect("ok");
        assert_eq!(transport, Transport::Tls);
        assert_eq!(uri.port_u16(), Some(4443));
        assert!(err(check_url("https://collector:4443", false, false)).contains("needs --ca"));
        assert!(
            err(check_url("https://collector:4443", true, true))
                .contains("--insecure-plaintext contradicts")
        );
    }

    #[test]
    fn http_needs_the_explicit_plaintext_flag() {
        let (_, transport) = check_url("http://127.0.0.1:50051", false, true).expect("ok");
        assert_eq!(transport, Transport::Plaintext);
        let refused = err(check_url("http://127.0.0.1:50051", false, false));
        assert!(
            refused.contains("refusing to send the token unencrypted"),
            "{refused}"
        );
        assert!(refused.contains("--insecure-plaintext"), "{refused}");
        assert!(err(check_url("http://127.0.0.1:50051", true, true)).contains("--ca is for TLS"));
    }

    #[test]
    fn malformed_urls_are_refused() {
        for (url, says) in [
            ("collector:4443", "must start with https:// or http://"),
            ("ftp://collector", "must start with https:// or http://"),
            ("https://", "invalid --collector URL"),
            (
                "https://collector:4443/v1/heartbeat",
                "only the scheme, host and port",
            ),
            ("https://exa mple:1", "invalid --collector URL"),
        ] {
            let message = err(check_url(url, true, false));
            assert!(message.contains(says), "{url}: {message}");
        }
        // A trailing slash is harmless.
        check_url("https://collector:4443/", true, false).expect("ok");
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
    fn a_token_file_others_may_read_is_a_warning_or_under_strict_a_refusal() {
        use TokenFileAccess::*;
        for mode in [0o600, 0o400, 0o700, 0o4600] {
            assert_eq!(token_file_access(mode, false), Private, "{mode:o}");
            assert_eq!(token_file_access(mode, true), Private, "{mode:o}");
        }
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o777] {
            assert_eq!(token_file_access(mode, false), Warn, "{mode:o}");
            assert_eq!(token_file_access(mode, true), Refuse, "{mode:o}");
        }

        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        fs::write(&path, "tly_abc\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        // Without --strict the token is read all the same, to be warned
        // about.
        assert_eq!(
            read_token_file(&path, false).expect("warned"),
            (
                "tly_abc".to_owned(),
                Some(ExposedTokenFile {
                    path: path.clone(),
                    mode: 0o644
                })
            )
        );
        let refused = err(read_token_file(&path, true));
        assert_eq!(
            refused,
            format!(
                "refusing --token-file {0} (mode 0644): group or others may read or write the \
                 node's token, and --strict (TALLY_STRICT) allows only its owner; run `chmod \
                 0600 {0}`",
                path.display()
            )
        );
        assert!(!refused.contains("tly_abc"), "the token is never echoed");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_token_file(&path, true).expect("private"),
            ("tly_abc".to_owned(), None)
        );

        // Through the settings, as `run` reads them.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let mut settings = args("http://127.0.0.1:50051");
        settings.insecure_plaintext = true;
        settings.token_file = Some(path.clone());
        let config = CollectorConfig::from_args(&settings, None)
            .expect("a warning only")
            .expect("some");
        assert_eq!(
            config.exposed_token_file.map(|e| e.mode),
            Some(0o640),
            "to be warned about"
        );
        settings.strict = true;
        let refused = err(CollectorConfig::from_args(&settings, None));
        assert!(
            refused.starts_with("refusing --token-file") && refused.contains("(mode 0640)"),
            "{refused}"
        );
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

    fn args(url: &str) -> CollectorArgs {
        CollectorArgs {
            collector: Some(url.to_owned()),
            token_file: None,
            ca: None,
            insecure_plaintext: false,
            strict: false,
            final_heartbeat_timeout: Duration::from_secs(5),
            state_dir: "/var/lib/tally-agent".into(),
        }
    }

    #[test]
    fn the_config_is_built_and_keeps_the_token_secret() {
        let mut plain = args("http://127.0.0.1:50051");
        plain.insecure_plaintext = true;
        let config = CollectorConfig::from_args(&plain, Some("s3cret".into()))
            .expect("ok")
            .expect("some");
        assert_eq!(config.authorization, "Bearer s3cret");
        assert!(config.authorization.is_sensitive());
        assert!(!format!("{config:?}").contains("s3cret"));
        let none = CollectorArgs {
            collector: None,
            ..plain
        };
        assert!(
            CollectorConfig::from_args(&none, None)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn the_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        fs::write(&ca, "not a certificate\n").expect("write");
        let mut tls = args("https://collector:4443");
        tls.ca = Some(ca.clone());
        let message = err(CollectorConfig::from_args(&tls, Some("t".into())));
        assert!(message.contains("holds no PEM certificate"), "{message}");
        tls.ca = Some(dir.path().join("missing.pem"));
        let message = err(CollectorConfig::from_args(&tls, Some("t".into())));
        assert!(message.contains("cannot read --ca"), "{message}");
    }
}
