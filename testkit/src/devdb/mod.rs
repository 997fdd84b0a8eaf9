//! Throwaway PostgreSQL clusters for tests, benchmarks and the local demo.
//!
//! [`TempCluster::start`] runs `initdb` in a fresh temporary directory and
//! starts `postgres` on it as a child process, listening on a Unix socket only
//! (no TCP unless [`Builder::tcp`] asks for it: a socket directory is
//! reachable from every network namespace that shares the file system, which
//! the end-to-end tests rely on). No other local user can use the cluster:
//! the socket directory is 0700, and every connection needs the superuser's
//! password, a random one of this cluster's ([`TempCluster::url`] holds it). The cluster
//! can be crashed ([`TempCluster::kill9`]), stopped and restarted on the same
//! data directory; dropping it shuts the server down and removes everything.
//!
//! The PostgreSQL 15 binaries are taken from `/usr/lib/postgresql/15/bin`, or
//! from the directory in the `TALLY_PG_BIN` environment variable. PostgreSQL
//! refuses to run as root, so when this process is root the server runs as
//! the `postgres` OS user; otherwise it runs as the current user.
//!
//! No server outlives this process. Dropping a cluster stops its server; a
//! cluster that is never dropped (one in a `static`, shared by the tests of a
//! test binary) is stopped and removed by an exit handler when the process
//! exits normally; and if the process is killed, the kernel sends the server
//! SIGQUIT (an immediate shutdown; only the files stay behind then).
//!
//! Process management is synchronous (it blocks for up to a few seconds while
//! the server starts or stops); only [`TempCluster::create_database`], which
//! talks SQL, is async and needs a tokio runtime.

use std::{
    ffi::CString,
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    hash::{BuildHasher as _, RandomState},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::{
        fs::{OpenOptionsExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex, Once, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// Where the PostgreSQL binaries are looked for unless `TALLY_PG_BIN` says
/// otherwise (Debian's and Ubuntu's `postgresql-15` package).
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long the server may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown ([`TempCluster::stop`]) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an immediate shutdown (on drop) or a SIGKILL may take to end
/// every process of the server.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server's state is polled while waiting.
const POLL: Duration = Duration::from_millis(10);
/// How many lines of the server log an error message quotes.
const LOG_TAIL_LINES: usize = 30;
/// The server's TLS certificate and key, in the cluster's directory.
const TLS_CERT_FILE: &str = "server.crt";
const TLS_KEY_FILE: &str = "server.key";

/// What can go wrong with a temporary cluster.
#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    /// `initdb` or `postgres` is not where it was looked for.
    #[error(
        "PostgreSQL binaries not found in {} (missing: {}); install them with \
         `apt install postgresql-15`, or set TALLY_PG_BIN to the directory that holds them",
        dir.display(),
        missing.join(", ")
    )]
    MissingBinaries {
        /// The directory that was searched.
        dir: PathBuf,
        /// The binaries that are not there.
        missing: Vec<String>,
    },
    /// This process is root but there is no `postgres` user to run as.
    #[error(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as \
         (PostgreSQL refuses to run as root; `apt install postgresql-15` creates the user)"
    )]
    NoPostgresUser,
    /// A file system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// `initdb` ran but failed.
    #[error("initdb failed ({status}):\n{output}")]
    Initdb {
        /// How initdb exited.
        status: ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The server exited while it was starting.
    #[error("PostgreSQL exited during start-up ({status}); server log tail:\n{log_tail}")]
    Exited {
        /// How the postmaster exited.
        status: ExitStatus,
        /// The end of the server log.
        log_tail: String,
    },
    /// The server did not become ready in time.
    #[error(
        "PostgreSQL did not accept connections within {waited:?}; server log tail:\n{log_tail}"
    )]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The end of the server log.
        log_tail: String,
    },
    /// Some processes of the server would not go away.
    #[error("PostgreSQL processes {pids:?} still running {waited:?} after SIGKILL")]
    Lingering {
        /// The processes still alive.
        pids: Vec<i32>,
        /// How long we waited.
        waited: Duration,
    },
    /// A SQL statement on the cluster failed.
    #[error("SQL on the temporary cluster failed: {0}")]
    Sql(#[from] sqlx::Error),
}

impl DevDbError {
    /// Whether the error means that this machine cannot run a temporary
    /// cluster at all (PostgreSQL not installed), as opposed to a failure of
    /// one that should have worked. Tests skip on the former.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::MissingBinaries { .. } | Self::NoPostgresUser)
    }
}

/// A cluster for the test named `test`, or `None` after saying why this
/// machine cannot run one (`SKIP <test>: …`, written past the test
/// harness's capture); a panic instead when `TALLY_REQUIRE_PRIVILEGED=1`
/// demands the test, or when a cluster that should work fails to start.
pub fn start_or_skip(test: &str) -> Option<TempCluster> {
    match TempCluster::start() {
        Ok(cluster) => Some(cluster),
        Err(e) if e.is_unavailable() => {
            crate::skip::skip(test, &format!("needs PostgreSQL 15 binaries ({e})"));
            None
        }
        Err(e) => panic!("{test}: cannot start a temporary PostgreSQL: {e}"),
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DevDbError {
    let what = what.into();
    move |source| DevDbError::Io { what, source }
}

/// The directory holding the PostgreSQL binaries: `TALLY_PG_BIN` if set,
/// else [`DEFAULT_PG_BIN`].
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("TALLY_PG_BIN")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PG_BIN), PathBuf::from)
}

/// Settings of a [`TempCluster`] before it starts; see [`TempCluster::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    fsync: bool,
    max_connections: u32,
    settings: Vec<(String, String)>,
    parent: Option<PathBuf>,
    tcp: bool,
    tls: Option<ServerTls>,
}

/// The certificate and key (PEM) the server presents to TLS clients.
#[derive(Debug, Clone)]
struct ServerTls {
    cert_pem: String,
    key_pem: String,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            fsync: false,
            max_connections: 200,
            settings: Vec::new(),
            parent: None,
            tcp: false,
            tls: None,
        }
    }
}

impl Builder {
    /// Whether the server flushes to disk (`fsync` and `full_page_writes`).
    /// Off by default, which is fast and still loses no committed
    /// transaction when the server (not the machine) crashes, as in
    /// [`TempCluster::kill9`]. Turn it on for realistic benchmarks.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// The server's `max_connections` (default 200).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Any other server setting, passed as `-c name=value`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Makes the cluster's directory inside `dir` (which must exist and be
    /// searchable by the server's OS user) instead of the system's temporary
    /// directory. A `dir` too long for a Unix socket path falls back to `/tmp`.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.parent = Some(dir.into());
        self
    }

    /// Listens on TCP at 127.0.0.1 as well, on a free port that is also the
    /// socket's number ([`TempCluster::tcp_url`]).
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Accepts TLS on TCP with this certificate chain and key (PEM); see
    /// [`tcp`](Self::tcp).
    pub fn tls(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some(ServerTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        });
        self
    }

    /// Creates the cluster and starts its server.
    pub fn start(self) -> Result<TempCluster, DevDbError> {
        TempCluster::start_with(self)
    }

    /// The `postgres` arguments for these settings (after `-D`, `-k`, `-p`);
    /// `dir` is the cluster's directory (where the TLS files are).
    fn server_args(&self, dir: &Path) -> Vec<String> {
        let flag = if self.fsync { "on" } else { "off" };
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let mut settings = vec![
            ("listen_addresses".to_owned(), listen.to_owned()),
            ("fsync".to_owned(), flag.to_owned()),
            ("full_page_writes".to_owned(), flag.to_owned()),
            (
                "max_connections".to_owned(),
                self.max_connections.to_string(),
            ),
        ];
        if self.tls.is_some() {
            settings.extend([
                ("ssl".to_owned(), "on".to_owned()),
                (
                    "ssl_cert_file".to_owned(),
                    dir.join(TLS_CERT_FILE).display().to_string(),
                ),
                (
                    "ssl_key_file".to_owned(),
                    dir.join(TLS_KEY_FILE).display().to_string(),
                ),
            ]);
        }
        settings.extend(self.settings.iter().cloned());
        settings
            .into_iter()
            .flat_map(|(name, value)| ["-c".to_owned(), format!("{name}={value}")])
            .collect()
    }
}

/// The OS user the server runs as, when it is not this process's user.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `postgres` when this process is root, else nobody (run as ourselves).
    fn for_current_user() -> Result<Option<Self>, DevDbError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        lookup_user("postgres").map(Some)
    }

    /// Makes `path` belong to this user.
    fn chown(self, path: &Path) -> Result<(), DevDbError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(io_error(format!(
            "cannot chown {} to postgres",
            path.display()
        )))
    }
}

/// The uid and gid of an OS user, from the password database.
fn lookup_user(name: &str) -> Result<RunAs, DevDbError> {
    let name = CString::new(name).map_err(|_| DevDbError::NoPostgresUser)?;
    // SAFETY: `passwd` is plain old data; all-zero is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is valid for the duration of the call and `buf`
    // is as long as we say; getpwnam_r is the thread-safe variant.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(DevDbError::NoPostgresUser);
    }
    Ok(RunAs {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// A throwaway PostgreSQL cluster: a temporary directory with a data
/// directory, a socket directory and a server log, and the server running
/// on it. Dropping it stops the server and removes the directory.
#[derive(Debug)]
pub struct TempCluster {
    /// Its entry in the exit handler's list.
    id: u64,
    /// Removed when the cluster is dropped (after the server stopped).
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    /// The superuser's password: random, for this cluster only.
    password: String,
    options: Builder,
    /// The running server, if it runs.
    postmaster: Option<Child>,
}

impl TempCluster {
    /// Settings for a cluster: `TempCluster::builder().fsync(true).start()`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Creates a cluster with the default settings and starts its server.
    pub fn start() -> Result<Self, DevDbError> {
        Self::builder().start()
    }

    fn start_with(options: Builder) -> Result<Self, DevDbError> {
        let bin_dir = pg_bin_dir();
        check_binaries(&bin_dir)?;
        let run_as = RunAs::for_current_user()?;
        let dir = make_temp_dir(run_as, options.parent.as_deref())?;
        let port = if options.tcp {
            pick_tcp_port(&dir.path().join("sock"))?
        } else {
            pick_port(&dir.path().join("sock"))
        };
        let mut cluster = Self {
            id: exit_handler::register(dir.path()),
            port,
            dir,
            bin_dir,
            run_as,
            password: random_password(),
            options,
            postmaster: None,
        };
        cluster.initdb()?;
        cluster.write_tls_files()?;
        cluster.launch()?;
        Ok(cluster)
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The server's port number (part of the socket's file name; the server
    /// does not listen on TCP).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path of a PostgreSQL binary, e.g. `bin("pgbench")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log (appended to across restarts).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Whether the server was started and has not been stopped or killed
    /// through this handle.
    pub fn is_running(&self) -> bool {
        self.postmaster.is_some()
    }

    /// The password of the superuser `postgres` (random, 32 hex digits).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A sqlx connection URL for database `db` of the superuser `postgres`,
    /// with its password, through the Unix socket (the `host` query
    /// parameter, a directory, overrides the `localhost` of the URL). TLS is
    /// off: there is none on a Unix socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@localhost/{}?host={}&port={}&sslmode=disable",
            self.password,
            percent_encode(db, false),
            percent_encode(&self.socket_dir().to_string_lossy(), true),
            self.port
        )
    }

    /// A connection URL for database `db` over TCP to 127.0.0.1, named
    /// `host` in the URL (`localhost`, `127.0.0.1`: what a certificate is
    /// checked against), with no query: the caller adds `?sslmode=…`. Only
    /// for a cluster built with [`Builder::tcp`].
    pub fn tcp_url(&self, db: &str, host: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{}/{}",
            self.password,
            self.port,
            percent_encode(db, false)
        )
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, DevDbError> {
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
        conn.close().await?;
        Ok(self.url(name))
    }

    /// Crashes the server: SIGKILL to the postmaster and every process it
    /// forked, as when the whole database host is killed. Waits until they
    /// are all gone, so that [`restart`](Self::restart) can start the server
    /// again on the same data directory (it then runs crash recovery).
    pub fn kill9(&mut self) -> Result<(), DevDbError> {
        match self.take_postmaster() {
            Some(postmaster) => kill_tree(postmaster),
            None => Ok(()),
        }
    }

    /// Stops the server cleanly (fast shutdown: SIGINT, which ends open
    /// sessions), falling back to an immediate shutdown and then SIGKILL.
    pub fn stop(&mut self) -> Result<(), DevDbError> {
        match self.take_postmaster() {
            Some(postmaster) => shut_down(postmaster, libc::SIGINT, STOP_TIMEOUT),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same data directory and port (stopping
    /// it first if it runs) and waits until it accepts connections.
    pub fn restart(&mut self) -> Result<(), DevDbError> {
        self.stop()?;
        self.launch()
    }

    /// Runs a PostgreSQL binary as the server's OS user, in the cluster's
    /// directory.
    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(self.bin(binary));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// Creates the data directory, with password authentication for every
    /// connection (SCRAM).
    fn initdb(&self) -> Result<(), DevDbError> {
        let pwfile = self.dir.path().join("pwfile");
        self.write_private(&pwfile, &self.password)?;
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-instructions"])
            .output()
            .map_err(io_error(format!(
                "cannot run {}",
                self.bin("initdb").display()
            )))?;
        fs::remove_file(&pwfile)
            .map_err(io_error(format!("cannot remove {}", pwfile.display())))?;
        if output.status.success() {
            return Ok(());
        }
        Err(DevDbError::Initdb {
            status: output.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }

    /// Writes the TLS certificate and key, if the cluster has them.
    fn write_tls_files(&self) -> Result<(), DevDbError> {
        let Some(tls) = &self.options.tls else {
            return Ok(());
        };
        self.write_private(&self.dir.path().join(TLS_CERT_FILE), &tls.cert_pem)?;
        self.write_private(&self.dir.path().join(TLS_KEY_FILE), &tls.key_pem)
    }

    /// Writes `text` to a new file at `path` that only the server's OS user
    /// may read (0600, its own).
    fn write_private(&self, path: &Path, text: &str) -> Result<(), DevDbError> {
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(text.as_bytes())
        };
        write().map_err(io_error(format!("cannot write {}", path.display())))?;
        if let Some(user) = self.run_as {
            user.chown(path)?;
        }
        Ok(())
    }

    /// Starts the postmaster and waits until it accepts connections.
    fn launch(&mut self) -> Result<(), DevDbError> {
        let log = self.open_log()?;
        let log_err = log
            .try_clone()
            .map_err(io_error("cannot duplicate the log file"))?;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(self.options.server_args(self.dir.path()))
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C in the terminal reaches the
            // program that owns the cluster, which stops it in its own time.
            .process_group(0);
        let postmaster = spawn_postmaster(command).map_err(io_error(format!(
            "cannot run {}",
            self.bin("postgres").display()
        )))?;
        exit_handler::set_postmaster(self.id, Some(pid_of(&postmaster)));
        self.postmaster = Some(postmaster);
        self.wait_ready()
    }

    /// The running postmaster, which from now on is the caller's to end.
    fn take_postmaster(&mut self) -> Option<Child> {
        exit_handler::set_postmaster(self.id, None);
        self.postmaster.take()
    }

    /// Opens the server log for appending, owned by the server's user.
    fn open_log(&self) -> Result<File, DevDbError> {
        let path = self.log_file();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(format!("cannot open {}", path.display())))?;
        if let Some(user) = self.run_as {
            user.chown(&path)?;
        }
        Ok(file)
    }

    /// Waits until the postmaster says in `postmaster.pid` that it is ready
    /// (as `pg_ctl` does), failing early if it exits.
    fn wait_ready(&mut self) -> Result<(), DevDbError> {
        let started = Instant::now();
        loop {
            let Some(postmaster) = self.postmaster.as_mut() else {
                unreachable!("wait_ready is called right after spawning");
            };
            if let Ok(Some(status)) = postmaster.try_wait() {
                self.take_postmaster();
                return Err(DevDbError::Exited {
                    status,
                    log_tail: self.log_tail(),
                });
            }
            let pid = postmaster.id();
            if read_status(&self.data_dir().join("postmaster.pid"), pid).as_deref() == Some("ready")
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let log_tail = self.log_tail();
                let _ = self.kill9();
                return Err(DevDbError::NotReady {
                    waited: READY_TIMEOUT,
                    log_tail,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// The last lines of the server log, for error messages.
    fn log_tail(&self) -> String {
        tail(&self.log_file(), LOG_TAIL_LINES)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_file().display()))
    }
}

impl Drop for TempCluster {
    /// Stops the server (immediate shutdown, then SIGKILL) before the
    /// temporary directory goes.
    fn drop(&mut self) {
        if let Some(postmaster) = self.take_postmaster()
            && let Err(e) = shut_down(postmaster, libc::SIGQUIT, KILL_TIMEOUT)
        {
            eprintln!("tally devdb: stopping the temporary PostgreSQL failed: {e}");
        }
        exit_handler::unregister(self.id);
    }
}

mod process;
#[cfg(test)]
mod tests;

pub use process::tail;
use process::*;
