//! The collector settings of `run`, checked before anything is attached: the
//! URL and its transport (TLS with `--ca`, or plaintext only with
//! `--insecure-plaintext`), the node's token, the CA bundle, and the client
//! certificate (`--client-cert`, `--client-key`) for a collector that
//! requires one.
//!
//! A `--token-file` that group or others may read or write gets a warning
//! at start ([`ExposedTokenFile`]), or, with `--strict`, stops the start
//! ([`token_file_access`]).

use std::{fmt, fs, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

use super::{
    token::{Credentials, Stamp, TokenSource},
    token_file::{ExposedTokenFile, token},
};
use crate::cli::CollectorArgs;

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
    /// `Bearer <token>`, marked sensitive so that it is never logged;
    /// replaced when the token file is read again with a new token.
    pub credentials: Credentials,
    /// Where the token came from: a token file is read again on SIGHUP and
    /// when it changes.
    pub token_source: TokenSource,
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
            .field("credentials", &self.credentials)
            .field("token_source", &self.token_source)
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
        if transport == Transport::Plaintext && args.client_cert.is_some() {
            bail!(
                "--client-cert is for TLS but the collector URL {url:?} is plaintext http://: \
                 use https://"
            );
        }
        // Looked at before it is read: a change from now on shows.
        let token_source = match &args.token_file {
            Some(path) => TokenSource::File {
                path: path.clone(),
                strict: args.strict,
                stamp: Stamp::of(path),
            },
            None => TokenSource::Env,
        };
        let (token, exposed_token_file) =
            token(args.token_file.as_deref(), token_env, args.strict)?;
        let credentials = Credentials::new(&token)?;

        let mut endpoint = Endpoint::from(uri)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("tally-agent/", env!("CARGO_PKG_VERSION")))
            .context("invalid user agent")?;
        if transport == Transport::Tls {
            let ca = args.ca.as_deref().context("https:// needs --ca")?;
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(read_ca(ca)?)
                .timeout(CONNECT_TIMEOUT);
            let mut settings = format!("--ca {}", ca.display());
            if let Some((cert, key)) = client_files(args)? {
                tls = tls.identity(read_identity(cert, key)?);
                settings = format!(
                    "{settings}, --client-cert {} and --client-key {}",
                    cert.display(),
                    key.display()
                );
            }
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("cannot set up TLS with {settings}"))?;
        }
        Ok(Some(Self {
            url: url.to_owned(),
            endpoint,
            credentials,
            token_source,
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

/// The PEM line a certificate starts with.
const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";
/// How every PEM private key's first line ends (`-----BEGIN PRIVATE
/// KEY-----`, `… RSA PRIVATE KEY-----`, `… EC PRIVATE KEY-----`).
const PEM_PRIVATE_KEY: &[u8] = b"PRIVATE KEY-----";

/// Whether `pem` contains `marker`.
fn holds(pem: &[u8], marker: &[u8]) -> bool {
    pem.windows(marker.len()).any(|w| w == marker)
}

/// Reads the CA bundle and checks that it holds at least one PEM certificate
/// (tonic would otherwise accept an empty trust store and fail every
/// handshake later).
fn read_ca(path: &Path) -> anyhow::Result<Certificate> {
    let pem = fs::read(path).with_context(|| format!("cannot read --ca {}", path.display()))?;
    if !holds(&pem, PEM_CERTIFICATE) {
        bail!(
            "--ca {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(Certificate::from_pem(pem))
}

/// `--client-cert` and `--client-key`, both or neither (the command line
/// requires each with the other).
fn client_files(args: &CollectorArgs) -> anyhow::Result<Option<(&Path, &Path)>> {
    match (args.client_cert.as_deref(), args.client_key.as_deref()) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("--client-cert needs --client-key: the certificate's private key"),
        (None, Some(_)) => bail!("--client-key needs --client-cert: the certificate of that key"),
    }
}

/// Reads the client certificate and its key, checking that the one holds a
/// PEM certificate and the other a PEM private key (a mix-up is named here,
/// not as a handshake failure later).
fn read_identity(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    let cert_pem =
        fs::read(cert).with_context(|| format!("cannot read --client-cert {}", cert.display()))?;
    if !holds(&cert_pem, PEM_CERTIFICATE) {
        bail!(
            "--client-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        );
    }
    let key_pem =
        fs::read(key).with_context(|| format!("cannot read --client-key {}", key.display()))?;
    if !holds(&key_pem, PEM_PRIVATE_KEY) {
        bail!(
            "--client-key {} holds no PEM private key (-----BEGIN PRIVATE KEY-----, or an RSA \
             or EC one)",
            key.display()
        );
    }
    Ok(Identity::from_pem(cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::token_file::{TokenFileAccess, read_token_file, token_file_access};

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

    fn args(url: &str) -> CollectorArgs {
        CollectorArgs {
            collector: Some(url.to_owned()),
            token_file: None,
            ca: None,
            client_cert: None,
            client_key: None,
            insecure_plaintext: false,
            strict: false,
            final_heartbeat_timeout: Duration::from_secs(5),
            state_dir: "/var/lib/tally-agent".into(),
        }
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
    fn the_config_is_built_and_keeps_the_token_secret() {
        let mut plain = args("http://127.0.0.1:50051");
        plain.insecure_plaintext = true;
        let config = CollectorConfig::from_args(&plain, Some("s3cret".into()))
            .expect("ok")
            .expect("some");
        let (authorization, generation) = config.credentials.current();
        assert_eq!(authorization, "Bearer s3cret");
        assert!(authorization.is_sensitive());
        assert_eq!(generation, 0);
        assert_eq!(config.token_source, TokenSource::Env, "not read again");
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

    /// A CA, and a client certificate it signed with its key, in `dir`:
    /// the settings of an https:// collector with them.
    fn tls_with_client_certificate(dir: &Path) -> CollectorArgs {
        let pki = tally_testkit::certs::Pki::new(&["node-1"]).expect("certificates");
        let (cert, key) = pki.write_server(dir).expect("write");
        let ca = dir.join("ca.pem");
        fs::write(&ca, &pki.ca_pem).expect("write");
        let mut tls = args("https://collector:4443");
        tls.ca = Some(ca);
        tls.client_cert = Some(cert);
        tls.client_key = Some(key);
        tls
    }

    #[test]
    fn a_client_certificate_is_used_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls_with_client_certificate(dir.path());
        CollectorConfig::from_args(&tls, Some("t".into()))
            .expect("a client certificate and its key")
            .expect("some");
    }

    #[test]
    fn client_certificate_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls_with_client_certificate(dir.path());
        let cert = tls.client_cert.clone().expect("cert");
        let key = tls.client_key.clone().expect("key");
        let from =
            |settings: &CollectorArgs| err(CollectorConfig::from_args(settings, Some("t".into())));

        // The two files swapped: each is named.
        let mut swapped = tls.clone();
        swapped.client_cert = Some(key.clone());
        swapped.client_key = Some(cert.clone());
        assert_eq!(
            from(&swapped),
            format!(
                "--client-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                key.display()
            )
        );
        let mut no_key = tls.clone();
        no_key.client_key = Some(cert.clone());
        let message = from(&no_key);
        assert_eq!(
            message,
            format!(
                "--client-key {} holds no PEM private key (-----BEGIN PRIVATE KEY-----, or an \
                 RSA or EC one)",
                cert.display()
            )
        );

        // Missing files: the flag and the file, and why.
        let missing = dir.path().join("missing.pem");
        let mut gone = tls.clone();
        gone.client_cert = Some(missing.clone());
        let message = from(&gone);
        assert!(
            message.starts_with(&format!("cannot read --client-cert {}", missing.display())),
            "{message}"
        );
        assert!(message.contains("No such file"), "{message}");
        let mut gone = tls.clone();
        gone.client_key = Some(missing.clone());
        let message = from(&gone);
        assert!(
            message.starts_with(&format!("cannot read --client-key {}", missing.display())),
            "{message}"
        );

        // A key that says it is one but is not: tonic's refusal, with the
        // files named.
        let broken = dir.path().join("broken-key.pem");
        fs::write(
            &broken,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let mut bad_key = tls.clone();
        bad_key.client_key = Some(broken.clone());
        let message = from(&bad_key);
        assert!(
            message.contains("cannot set up TLS with --ca")
                && message.contains(&format!("--client-key {}", broken.display())),
            "{message}"
        );

        // One without the other (the command line refuses that already).
        let mut half = tls.clone();
        half.client_key = None;
        assert!(from(&half).contains("--client-cert needs --client-key"));
        let mut half = tls;
        half.client_cert = None;
        assert!(from(&half).contains("--client-key needs --client-cert"));
    }

    #[test]
    fn a_client_certificate_is_refused_for_a_plaintext_collector() {
        let mut plain = args("http://127.0.0.1:50051");
        plain.insecure_plaintext = true;
        plain.client_cert = Some("/etc/tally/agent.crt".into());
        plain.client_key = Some("/etc/tally/agent.key".into());
        assert_eq!(
            err(CollectorConfig::from_args(&plain, Some("t".into()))),
            "--client-cert is for TLS but the collector URL \"http://127.0.0.1:50051\" is \
             plaintext http://: use https://"
        );
    }

    #[test]
    fn a_token_file_is_read_again_and_an_environment_token_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        fs::write(&path, "tly_abc\n").expect("write");
        let mut settings = args("http://127.0.0.1:50051");
        settings.insecure_plaintext = true;
        settings.token_file = Some(path.clone());
        settings.strict = true;
        let stamp = Stamp::of(&path);
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = CollectorConfig::from_args(&settings, None)
            .expect("ok")
            .expect("some");
        let TokenSource::File {
            path: watched,
            strict,
            stamp: seen,
        } = config.token_source
        else {
            panic!("a token file is watched: {:?}", config.token_source)
        };
        assert_eq!((watched, strict), (path.clone(), true));
        assert_eq!(seen, Stamp::of(&path), "as it was read");
        assert_ne!(seen, stamp, "the chmod before the read shows");
    }
}
