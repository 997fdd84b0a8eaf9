//! The node's token as the heartbeat calls carry it, and reading it again
//! while the agent runs.
//!
//! [`Credentials`] holds the `authorization` value (`Bearer <token>`), shared
//! by the sender task and the last heartbeat and read for every call. A
//! token read again replaces it for the next call; its generation tells the
//! client that a heartbeat stream opened with the old token is to be ended
//! and opened again (an open call keeps the metadata it was opened with).
//! Nothing else changes: no restart, no new attachment, no new counter set.
//!
//! A token from `--token-file` is read again ([`spawn_watch`]) on SIGHUP and
//! when the file changes: its device, inode, size, modification time or mode
//! bits, as `stat` follows a symbolic link to it, looked at every
//! [`POLL_EVERY`] (a rename over it, a Kubernetes secret's update and a
//! `chmod` all show). It is checked as at start (`read_token_file`: one word
//! of printable ASCII; a file group or others may read or write is refused
//! under `--strict`, warned about otherwise). A file that cannot be read or
//! used keeps the token in use, with one warning per change (and per
//! SIGHUP). A token from TALLY_TOKEN is read at start only: SIGHUP only
//! says so.

use std::{
    fmt, fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::Signal,
    task::JoinHandle,
    time::{self, MissedTickBehavior},
};
use tonic::metadata::{Ascii, MetadataValue};

use super::token_file::{TOKEN_ENV, read_token_file};

/// How often the token file's metadata is looked at.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The `authorization` value every heartbeat call carries, replaceable while
/// the agent runs. Clones share it.
#[derive(Clone)]
pub struct Credentials(Arc<RwLock<Current>>);

struct Current {
    /// `Bearer <token>`, marked sensitive so that it is never logged.
    authorization: MetadataValue<Ascii>,
    /// Raised by every change of the token.
    generation: u64,
}

impl Credentials {
    /// The credentials of `token` (checked already: `parse_token`).
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(RwLock::new(Current {
            authorization: authorization(token)?,
            generation: 0,
        }))))
    }

    /// The value to send as `authorization`, and its generation.
    pub fn current(&self) -> (MetadataValue<Ascii>, u64) {
        let current = self.0.read().unwrap_or_else(PoisonError::into_inner);
        (current.authorization.clone(), current.generation)
    }

    /// The generation of the token in use: it changes with the token.
    pub fn generation(&self) -> u64 {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Makes `token` the one the next call carries; returns whether it
    /// differs from the one in use (the same token again changes nothing,
    /// not even the generation).
    pub fn replace(&self, token: &str) -> anyhow::Result<bool> {
        let authorization = authorization(token)?;
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if current.authorization == authorization {
            return Ok(false);
        }
        current.authorization = authorization;
        current.generation = current.generation.wrapping_add(1);
        Ok(true)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &"Bearer <redacted>")
            .field("generation", &self.generation())
            .finish()
    }
}

/// `Bearer <token>` as sensitive gRPC metadata.
fn authorization(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("the token cannot be sent as gRPC metadata")?;
    value.set_sensitive(true);
    Ok(value)
}

/// Where the token came from, and so whether it is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token-file`: read again on SIGHUP and when it changes. `stamp`:
    /// the file as it was looked at just before it was read at start.
    File {
        path: PathBuf,
        strict: bool,
        stamp: Stamp,
    },
    /// TALLY_TOKEN: read at start only.
    Env,
}

/// What of a file's metadata tells that it changed: device, inode, size,
/// modification time (seconds, nanoseconds) and mode; or why it cannot be
/// looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Result<(u64, u64, u64, i64, i64, u32), io::ErrorKind>);

impl Stamp {
    /// Looks at `path` (following a symbolic link, as reading it does).
    pub fn of(path: &Path) -> Self {
        Self(
            fs::metadata(path)
                .map(|m| {
                    (
                        m.dev(),
                        m.ino(),
                        m.size(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.mode(),
                    )
                })
                .map_err(|e| e.kind()),
        )
    }
}

/// Why the token file was read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Hangup,
    FileChanged,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Hangup => "SIGHUP",
            Reason::FileChanged => "file changed",
        }
    }
}

/// Starts the task that reads the token file again on SIGHUP (`hangup`)
/// and when it changes (looked at every `poll`), replacing `credentials`
/// with a new valid token. For a token from TALLY_TOKEN it only answers
/// SIGHUP, saying that such a token is not read again. `None` when there is
/// nothing to do (no file and no SIGHUP to answer).
pub fn spawn_watch(
    credentials: Credentials,
    source: TokenSource,
    hangup: Option<Signal>,
    poll: Duration,
) -> Option<JoinHandle<()>> {
    match source {
        TokenSource::File {
            path,
            strict,
            stamp,
        } => {
            let file = WatchedFile {
                path,
                strict,
                seen: stamp,
                credentials,
            };
            Some(tokio::spawn(file.watch(hangup, poll)))
        }
        TokenSource::Env => {
            let mut hangup = hangup?;
            Some(tokio::spawn(async move {
                loop {
                    hangup_received(&mut hangup).await;
                    tracing::info!(
                        "SIGHUP: the node token came from {TOKEN_ENV}, which is read at start \
                         only (restart the agent to change it; a restart loses no counts)"
                    );
                }
            }))
        }
    }
}

/// Resolves on the next SIGHUP (never, without a listener).
async fn hangup_received(hangup: &mut Signal) {
    if hangup.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
}

/// The token file being watched.
struct WatchedFile {
    path: PathBuf,
    strict: bool,
    /// The file as it was when last read (or found unreadable).
    seen: Stamp,
    credentials: Credentials,
}

impl WatchedFile {
    async fn watch(mut self, mut hangup: Option<Signal>, poll: Duration) {
        let mut ticks = time::interval_at(time::Instant::now() + poll, poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup_received(hangup).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = hangup => self.read_again(Reason::Hangup),
                _ = ticks.tick() => {
                    if Stamp::of(&self.path) != self.seen {
                        self.read_again(Reason::FileChanged);
                    }
                }
            }
        }
    }

    /// Reads the file again: a valid token replaces the one in use; any
    /// problem keeps it, with a warning saying why.
    fn read_again(&mut self, reason: Reason) {
        // Before reading: a change while it is read shows at the next look.
        self.seen = Stamp::of(&self.path);
        let path = self.path.display();
        let (token, exposed) = match read_token_file(&self.path, self.strict) {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(
                    path = %path,
                    reason = reason.as_str(),
                    error = %format!("{error:#}"),
                    "the node token file cannot be used: keeping the token in use"
                );
                return;
            }
        };
        match self.credentials.replace(&token) {
            Ok(changed) => tracing::info!(
                path = %path,
                reason = reason.as_str(),
                changed,
                "node token read again"
            ),
            Err(error) => tracing::warn!(
                path = %path,
                reason = reason.as_str(),
                error = %format!("{error:#}"),
                "the node token file cannot be used: keeping the token in use"
            ),
        }
        if let Some(exposed) = exposed {
            exposed.warn();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        os::unix::fs::PermissionsExt as _,
        sync::{Arc, Mutex},
        time::Instant,
    };

    use super::*;

    const A: &str = "tly_a.token-one";
    const B: &str = "tly_b.token-two";

    fn bearer(credentials: &Credentials) -> String {
        let (value, _) = credentials.current();
        value.to_str().expect("ascii").to_owned()
    }

    #[test]
    fn a_new_token_replaces_the_old_one_and_raises_the_generation() {
        let credentials = Credentials::new(A).expect("credentials");
        let shared = credentials.clone();
        let (value, generation) = credentials.current();
        assert_eq!(value, format!("Bearer {A}").as_str());
        assert!(value.is_sensitive());
        assert_eq!(generation, 0);

        assert!(!credentials.replace(A).expect("same"), "the same token");
        assert_eq!(
            credentials.generation(),
            0,
            "the same token changes nothing"
        );

        assert!(credentials.replace(B).expect("replaced"));
        assert_eq!(bearer(&shared), format!("Bearer {B}"), "clones share it");
        assert_eq!(shared.generation(), 1);
        assert!(shared.current().0.is_sensitive());
        let debug = format!("{shared:?}");
        assert!(!debug.contains(B) && !debug.contains(A), "{debug}");

        assert!(credentials.replace("two\nlines").is_err());
        assert_eq!(bearer(&shared), format!("Bearer {B}"), "kept");
        assert_eq!(shared.generation(), 1);
    }

    #[test]
    fn stamps_tell_a_changed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let missing = Stamp::of(&path);
        assert_eq!(missing, Stamp(Err(io::ErrorKind::NotFound)));
        fs::write(&path, A).expect("write");
        let first = Stamp::of(&path);
        assert_ne!(first, missing);
        assert_eq!(Stamp::of(&path), first, "unchanged");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let chmodded = Stamp::of(&path);
        assert_ne!(chmodded, first, "a chmod shows");
        // A rename over it: another inode, even with the same size and time.
        let next = dir.path().join("token.new");
        fs::write(&next, B).expect("write");
        fs::set_permissions(&next, fs::Permissions::from_mode(0o640)).expect("chmod");
        let modified = fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        fs::File::options()
            .write(true)
            .open(&next)
            .and_then(|f| f.set_modified(modified))
            .expect("set mtime");
        fs::rename(&next, &path).expect("rename");
        assert_ne!(Stamp::of(&path), chmodded, "a rename shows");
    }

    /// What the watcher logs, for the tests that count its warnings.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
        }
    }

    impl io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("logs").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A current-thread runtime whose thread logs into `Logs` (the watcher
    /// task runs on it).
    fn runtime_logging() -> (
        tokio::runtime::Runtime,
        Logs,
        tracing::subscriber::DefaultGuard,
    ) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (runtime, logs, guard)
    }

    /// Writes `text` into `path` in place (no new inode), mode 0600.
    fn rewrite(path: &Path, text: &str) {
        fs::File::create(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// Waits (on the runtime) until `done` holds, at most 5 s.
    async fn until(what: &str, logs: &Logs, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} within 5 s; logs:\n{}",
                logs.text()
            );
            time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts watching the token file at `path` (holding `first`) with a
    /// short poll interval.
    fn watching(path: &Path, strict: bool, first: &str) -> (Credentials, JoinHandle<()>) {
        let stamp = Stamp::of(path);
        let credentials = Credentials::new(first).expect("credentials");
        let source = TokenSource::File {
            path: path.to_owned(),
            strict,
            stamp,
        };
        let task = spawn_watch(credentials.clone(), source, None, Duration::from_millis(20))
            .expect("a task");
        (credentials, task)
    }

    #[test]
    fn a_changed_token_file_is_read_again_and_a_bad_one_keeps_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        rewrite(&path, &format!("{A}\n"));
        let (runtime, logs, _guard) = runtime_logging();
        runtime.block_on(async {
            let (credentials, task) = watching(&path, false, A);
            // Nothing changed: nothing read.
            time::sleep(Duration::from_millis(100)).await;
            assert_eq!(credentials.generation(), 0);
            assert!(!logs.text().contains("read again"), "{}", logs.text());

            // Written in place with another length: B from now on.
            rewrite(&path, &format!("  {B}-and-more\n"));
            until("B read", &logs, || credentials.generation() == 1).await;
            assert_eq!(bearer(&credentials), format!("Bearer {B}-and-more"));
            let text = logs.text();
            assert!(text.contains("node token read again"), "{text}");
            assert!(text.contains("reason=\"file changed\""), "{text}");
            assert!(!text.contains(B), "never the token: {text}");

            // An empty file: the token in use is kept, with one warning
            // however often the file is looked at.
            rewrite(&path, "\n");
            until("the warning", &logs, || {
                logs.text().contains("cannot be used")
            })
            .await;
            time::sleep(Duration::from_millis(200)).await;
            assert_eq!(bearer(&credentials), format!("Bearer {B}-and-more"));
            assert_eq!(credentials.generation(), 1);
            let text = logs.text();
            assert_eq!(text.matches("cannot be used").count(), 1, "{text}");
            assert!(text.contains("is empty"), "says why: {text}");

            // Gone: kept too, one warning.
            fs::remove_file(&path).expect("rm");
            until("the second warning", &logs, || {
                logs.text().matches("cannot be used").count() == 2
            })
            .await;
            time::sleep(Duration::from_millis(200)).await;
            let text = logs.text();
            assert_eq!(text.matches("cannot be used").count(), 2, "{text}");
            assert!(text.contains("No such file"), "{text}");
            assert_eq!(credentials.generation(), 1);

            // Back, through a rename, with A.
            let next = dir.path().join("token.new");
            rewrite(&next, A);
            fs::rename(&next, &path).expect("rename");
            until("A again", &logs, || credentials.generation() == 2).await;
            assert_eq!(bearer(&credentials), format!("Bearer {A}"));

            // Group-readable without --strict: used, with the warning.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            until("the exposure warning", &logs, || {
                logs.text()
                    .contains("readable or writable by group or others")
            })
            .await;
            assert_eq!(credentials.generation(), 2, "the same token");
            task.abort();
        });
    }

    #[test]
    fn under_strict_a_token_file_others_may_read_keeps_the_old_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        rewrite(&path, A);
        let (runtime, logs, _guard) = runtime_logging();
        runtime.block_on(async {
            let (credentials, task) = watching(&path, true, A);
            // B, but readable by others: refused, A kept.
            rewrite(&path, &format!("{B}\n"));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            until("the refusal", &logs, || {
                logs.text().contains("cannot be used")
            })
            .await;
            time::sleep(Duration::from_millis(100)).await;
            assert_eq!(bearer(&credentials), format!("Bearer {A}"));
            assert_eq!(credentials.generation(), 0);
            let text = logs.text();
            assert!(text.contains("refusing --token-file"), "{text}");
            assert!(text.contains("(mode 0644)"), "{text}");
            assert_eq!(text.matches("cannot be used").count(), 1, "once: {text}");

            // Made private: B now.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            until("B read", &logs, || credentials.generation() == 1).await;
            assert_eq!(bearer(&credentials), format!("Bearer {B}"));
            task.abort();
        });
    }

    #[test]
    fn sighup_reads_the_token_file_again_even_when_it_looks_unchanged() {
        use tokio::signal::unix::{SignalKind, signal};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        rewrite(&path, A);
        let (runtime, logs, _guard) = runtime_logging();
        runtime.block_on(async {
            // Listened for before any is sent (the default action would end
            // the test process). No other test of this binary listens for
            // SIGHUP, so none gets this one.
            let hangup = signal(SignalKind::hangup()).expect("listen for SIGHUP");
            let credentials = Credentials::new(A).expect("credentials");
            let source = TokenSource::File {
                path: path.clone(),
                strict: false,
                stamp: Stamp::of(&path),
            };
            // A poll too rare to matter: only SIGHUP reads it.
            let task = spawn_watch(
                credentials.clone(),
                source,
                Some(hangup),
                Duration::from_secs(3600),
            )
            .expect("a task");
            rewrite(&path, B);
            // SAFETY: kill has no memory-safety preconditions.
            let sent = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
            assert_eq!(sent, 0, "kill: {}", io::Error::last_os_error());
            until("B read", &logs, || credentials.generation() == 1).await;
            assert_eq!(bearer(&credentials), format!("Bearer {B}"));
            let text = logs.text();
            assert!(text.contains("node token read again"), "{text}");
            assert!(text.contains("reason=\"SIGHUP\""), "{text}");
            task.abort();
        });
    }
}
