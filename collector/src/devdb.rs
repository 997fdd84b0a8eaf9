//! Throwaway PostgreSQL clusters for tests, benchmarks and the local demo.
//!
//! [`TempCluster::start`] runs `initdb` in a fresh temporary directory and
//! starts `postgres` on it as a child process, listening on a Unix socket only
//! (no TCP: a socket directory is reachable from every network namespace that
//! shares the file system, which the end-to-end tests rely on). The cluster
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
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
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
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            fsync: false,
            max_connections: 200,
            settings: Vec::new(),
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

    /// Creates the cluster and starts its server.
    pub fn start(self) -> Result<TempCluster, DevDbError> {
        TempCluster::start_with(self)
    }

    /// The `postgres` arguments for these settings (after `-D`, `-k`, `-p`).
    fn server_args(&self) -> Vec<String> {
        let flag = if self.fsync { "on" } else { "off" };
        let mut settings = vec![
            ("listen_addresses".to_owned(), String::new()),
            ("fsync".to_owned(), flag.to_owned()),
            ("full_page_writes".to_owned(), flag.to_owned()),
            (
                "max_connections".to_owned(),
                self.max_connections.to_string(),
            ),
        ];
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
        let dir = make_temp_dir(run_as)?;
        let mut cluster = Self {
            id: exit_handler::register(dir.path()),
            port: pick_port(&dir.path().join("sock")),
            dir,
            bin_dir,
            run_as,
            options,
            postmaster: None,
        };
        cluster.initdb()?;
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

    /// A sqlx connection URL for database `db` of the superuser `postgres`,
    /// through the Unix socket (the `host` query parameter, a directory,
    /// overrides the `localhost` of the URL). TLS is off: there is none on a
    /// Unix socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{}?host={}&port={}&sslmode=disable",
            percent_encode(db, false),
            percent_encode(&self.socket_dir().to_string_lossy(), true),
            self.port
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

    /// Creates the data directory.
    fn initdb(&self) -> Result<(), DevDbError> {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .output()
            .map_err(io_error(format!(
                "cannot run {}",
                self.bin("initdb").display()
            )))?;
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
            .args(self.options.server_args())
            .stdout(log)
            .stderr(log_err);
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

/// Checks that the binaries a cluster needs are in `dir`.
fn check_binaries(dir: &Path) -> Result<(), DevDbError> {
    let missing: Vec<String> = ["initdb", "postgres"]
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DevDbError::MissingBinaries {
            dir: dir.to_owned(),
            missing,
        })
    }
}

/// Creates the cluster's temporary directory and its socket directory, both
/// owned by the server's user and open for others to traverse (so that
/// clients running as other users can reach the socket).
fn make_temp_dir(run_as: Option<RunAs>) -> Result<tempfile::TempDir, DevDbError> {
    // A Unix socket path has at most 107 bytes: stay in /tmp if TMPDIR is long.
    let mut base = std::env::temp_dir();
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix("tally-pg-")
        .tempdir_in(&base)
        .map_err(io_error(format!(
            "cannot create a directory in {}",
            base.display()
        )))?;
    let sock = dir.path().join("sock");
    fs::create_dir(&sock).map_err(io_error(format!("cannot create {}", sock.display())))?;
    for path in [dir.path(), sock.as_path()] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(io_error(format!("cannot chmod {}", path.display())))?;
        if let Some(user) = run_as {
            user.chown(path)?;
        }
    }
    Ok(dir)
}

/// A random port number in 20000..60000 whose socket file does not exist in
/// `socket_dir`. The server listens on no TCP port, so the number only names
/// the socket (and seeds the key of its System V shared memory, where
/// PostgreSQL handles collisions itself).
fn pick_port(socket_dir: &Path) -> u16 {
    loop {
        let random = RandomState::new().hash_one(Instant::now());
        let port = 20_000 + u16::try_from(random % 40_000).unwrap_or(0);
        if !socket_dir.join(format!(".s.PGSQL.{port}")).exists() {
            return port;
        }
    }
}

/// The status line of `postmaster.pid` ("starting", "ready", ...) if the file
/// belongs to the postmaster `pid` (a crashed server leaves a stale one).
fn read_status(pid_file: &Path, pid: u32) -> Option<String> {
    let text = fs::read_to_string(pid_file).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != pid.to_string() {
        return None;
    }
    // Line 8: the postmaster's status (see pg_ctl and miscadmin.h).
    Some(lines.nth(6)?.trim().to_owned())
}

/// Asks the postmaster to shut down with `signal` (SIGINT: fast, SIGQUIT:
/// immediate); it ends its children before it exits. Falls back to an
/// immediate shutdown and finally to SIGKILL of everything.
fn shut_down(
    mut postmaster: Child,
    signal: libc::c_int,
    timeout: Duration,
) -> Result<(), DevDbError> {
    let pid = pid_of(&postmaster);
    send(pid, signal);
    if wait_exit(&mut postmaster, timeout)?.is_some() {
        return Ok(());
    }
    if signal != libc::SIGQUIT {
        send(pid, libc::SIGQUIT);
        if wait_exit(&mut postmaster, KILL_TIMEOUT)?.is_some() {
            return Ok(());
        }
    }
    kill_tree(postmaster)
}

/// SIGKILLs the postmaster and all its children and waits until they are gone.
fn kill_tree(mut postmaster: Child) -> Result<(), DevDbError> {
    let children = send_kill_tree(pid_of(&postmaster));
    postmaster
        .wait()
        .map_err(io_error("cannot wait for the killed postmaster"))?;
    wait_gone(&children, KILL_TIMEOUT)
}

/// Sends SIGKILL to the postmaster `pid` and all its children; returns the
/// children's pids.
fn send_kill_tree(pid: i32) -> Vec<i32> {
    // A stopped postmaster forks no more children while we list them.
    send(pid, libc::SIGSTOP);
    let children = children_of(pid);
    send(pid, libc::SIGKILL);
    for &child in &children {
        send(child, libc::SIGKILL);
    }
    children
}

/// Starts the postmaster from a thread that lasts as long as this process,
/// asking the kernel to send it SIGQUIT (an immediate shutdown) when that
/// thread ends: the kernel ties this "parent death signal" to the thread
/// that forked, so a test thread or a pool thread would not do.
fn spawn_postmaster(mut command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<io::Result<mpsc::Sender<Request>>> = OnceLock::new();

    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("tally-devdb-spawner".to_owned())
            .spawn(move || {
                // Ends never: the sender lives in a static.
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })?;
        Ok(requests)
    });
    let spawner = spawner
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the spawner thread: {e}")))?;
    let (reply, answer) = mpsc::channel();
    let gone = || io::Error::other("the spawner thread is gone");
    spawner.send((command, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// Stops the servers of clusters that were never dropped (such as one in a
/// `static`) and removes their directories when the process exits.
mod exit_handler {
    use super::*;

    struct Entry {
        id: u64,
        dir: PathBuf,
        postmaster: Option<i32>,
    }

    static LIVE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

    /// Adds a cluster's directory to the list; returns the cluster's id.
    pub(super) fn register(dir: &Path) -> u64 {
        static HOOK: Once = Once::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        HOOK.call_once(|| {
            // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
            unsafe {
                libc::atexit(at_exit);
            }
        });
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        with_list(|list| {
            list.push(Entry {
                id,
                dir: dir.to_owned(),
                postmaster: None,
            });
        });
        id
    }

    /// Notes the cluster's running postmaster (or that none runs).
    pub(super) fn set_postmaster(id: u64, pid: Option<i32>) {
        with_list(|list| {
            if let Some(entry) = list.iter_mut().find(|entry| entry.id == id) {
                entry.postmaster = pid;
            }
        });
    }

    /// Forgets a cluster that was dropped.
    pub(super) fn unregister(id: u64) {
        with_list(|list| list.retain(|entry| entry.id != id));
    }

    fn with_list(f: impl FnOnce(&mut Vec<Entry>)) {
        let mut list = LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut list);
    }

    /// Runs in `exit()`: immediate shutdown of every server still running,
    /// SIGKILL after a bounded wait, then the directories go.
    extern "C" fn at_exit() {
        // Never block in exit(): skip if another thread holds the list.
        let entries = match LIVE.try_lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        for entry in entries {
            if let Some(pid) = entry.postmaster {
                send(pid, libc::SIGQUIT);
                // Our unreaped child becomes a zombie, which counts as gone.
                if wait_gone(&[pid], KILL_TIMEOUT).is_err() {
                    let children = send_kill_tree(pid);
                    let _ = wait_gone(&children, KILL_TIMEOUT);
                }
            }
            let _ = fs::remove_dir_all(&entry.dir);
        }
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>, DevDbError> {
    let started = Instant::now();
    loop {
        let status = child
            .try_wait()
            .map_err(io_error("cannot wait for the postmaster"))?;
        if status.is_some() || started.elapsed() > timeout {
            return Ok(status);
        }
        thread::sleep(POLL);
    }
}

/// Waits until none of `pids` runs any more (orphans that nobody reaps stay
/// zombies, which count as gone: they hold no shared memory).
fn wait_gone(pids: &[i32], timeout: Duration) -> Result<(), DevDbError> {
    let started = Instant::now();
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&pid| is_running(pid))
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(DevDbError::Lingering {
                pids: alive,
                waited: timeout,
            });
        }
        thread::sleep(POLL);
    }
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
fn send(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// The processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|fields| fields.get(1) == Some(&parent.to_string()))
        })
        .collect()
}

/// The last `lines` lines of a text file (reading at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything but unreserved characters (and `/` if
/// `keep_slash`, for a query value that is a path).
fn percent_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A cluster, or `None` after saying why when this machine has no
    /// PostgreSQL (a failure instead with `TALLY_REQUIRE_PRIVILEGED=1`), as
    /// in the integration tests' `common::cluster`.
    fn cluster(test: &str) -> Option<TempCluster> {
        match TempCluster::start() {
            Ok(cluster) => Some(cluster),
            Err(e) if e.is_unavailable() => {
                if std::env::var("TALLY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                    panic!("{test}: cannot run ({e}) but TALLY_REQUIRE_PRIVILEGED=1");
                }
                // Past the test harness's capture, so that the skip shows.
                let _ = writeln!(
                    io::stderr(),
                    "SKIP {test}: needs PostgreSQL 15 binaries ({e})"
                );
                None
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    async fn select_one(url: &str) -> Result<i32, sqlx::Error> {
        let mut conn = PgConnection::connect(url).await?;
        let (one,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(one)
    }

    #[test]
    fn urls_are_percent_encoded() {
        assert_eq!(percent_encode("/tmp/a b", true), "/tmp/a%20b");
        assert_eq!(percent_encode("a/b&c", false), "a%2Fb%26c");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }

    #[test]
    fn the_url_is_understood_by_sqlx() {
        let url =
            "postgres://postgres@localhost/my%20db?host=/tmp/x%20y/sock&port=23456&sslmode=disable";
        let options: sqlx::postgres::PgConnectOptions = url.parse().expect("parse");
        assert_eq!(
            options.get_socket(),
            Some(Path::new("/tmp/x y/sock").to_path_buf()).as_ref()
        );
        assert_eq!(options.get_port(), 23456);
        assert_eq!(options.get_database(), Some("my db"));
        assert_eq!(options.get_username(), "postgres");
    }

    #[test]
    fn missing_binaries_say_where_and_how() {
        let e = check_binaries(Path::new("/nonexistent/pg/bin")).expect_err("no binaries there");
        assert!(e.is_unavailable());
        let text = e.to_string();
        assert!(text.contains("/nonexistent/pg/bin"), "{text}");
        assert!(text.contains("initdb, postgres"), "{text}");
        assert!(text.contains("apt install postgresql-15"), "{text}");
    }

    #[test]
    fn settings_become_server_flags() {
        let args = TempCluster::builder()
            .fsync(true)
            .max_connections(42)
            .setting("shared_buffers", "64MB")
            .server_args();
        let args = args.join(" ");
        assert!(args.contains("-c listen_addresses= "), "{args}");
        assert!(
            args.contains("-c fsync=on -c full_page_writes=on"),
            "{args}"
        );
        assert!(args.contains("-c max_connections=42"), "{args}");
        assert!(args.ends_with("-c shared_buffers=64MB"), "{args}");
        assert!(
            Builder::default()
                .server_args()
                .join(" ")
                .contains("fsync=off")
        );
    }

    #[tokio::test]
    async fn survives_kill9_and_restarts_on_the_same_data() {
        let Some(mut cluster) = cluster("survives_kill9_and_restarts_on_the_same_data") else {
            return;
        };
        let url = cluster
            .create_database("app")
            .await
            .expect("create database");
        assert_eq!(select_one(&url).await.expect("select 1"), 1);
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
            .execute(&mut conn)
            .await
            .expect("write");

        cluster.kill9().expect("kill -9");
        assert!(!cluster.is_running());
        assert!(
            select_one(&url).await.is_err(),
            "the server still answers after kill -9"
        );
        drop(conn);

        cluster.restart().expect("restart after kill -9");
        assert_eq!(select_one(&url).await.expect("select 1 after restart"), 1);
        let mut conn = PgConnection::connect(&url)
            .await
            .expect("connect after restart");
        let (n,): (i32,) = sqlx::query_as("SELECT n FROM kept")
            .fetch_one(&mut conn)
            .await
            .expect("committed data survives kill -9");
        assert_eq!(n, 7);
        conn.close().await.expect("close");

        // A clean stop and start works too, and a second kill -9 as well.
        cluster.restart().expect("restart while running");
        cluster.kill9().expect("second kill -9");
        cluster.restart().expect("second restart");
        assert_eq!(select_one(&url).await.expect("select 1 at the end"), 1);
    }

    #[test]
    fn drop_ends_every_server_process_and_removes_the_directory() {
        let Some(cluster) = cluster("drop_ends_every_server_process_and_removes_the_directory")
        else {
            return;
        };
        let postmaster = cluster.postmaster.as_ref().map(pid_of).expect("running");
        let mut pids = children_of(postmaster);
        assert!(!pids.is_empty(), "the postmaster has no children");
        pids.push(postmaster);
        let dir = cluster.dir.path().to_owned();
        drop(cluster);
        assert!(
            pids.iter().all(|&pid| !is_running(pid)),
            "left running: {pids:?}"
        );
        assert!(!dir.exists(), "{} is still there", dir.display());
    }

    /// Not a test by itself: run in a child process by the two tests below.
    /// Keeps a cluster in a `static` (never dropped), prints where it is,
    /// then exits, or hangs until killed if `TALLY_DEVDB_HELPER=hang`.
    #[test]
    #[ignore = "a helper process for the exit tests"]
    fn helper_keeps_a_static_cluster() {
        static KEPT: OnceLock<TempCluster> = OnceLock::new();
        let Ok(mode) = std::env::var("TALLY_DEVDB_HELPER") else {
            return;
        };
        let Some(cluster) = cluster("helper_keeps_a_static_cluster") else {
            return;
        };
        let cluster = KEPT.get_or_init(|| cluster);
        let pid = cluster.postmaster.as_ref().map(pid_of).unwrap_or_default();
        let mut out = io::stdout();
        let _ = writeln!(out, "CLUSTER {pid} {}", cluster.dir.path().display());
        let _ = out.flush();
        if mode == "hang" {
            thread::sleep(Duration::from_secs(60));
        }
    }

    /// Runs the helper above in a child process; returns it with the
    /// postmaster's pid and the cluster's directory, or `None` if this
    /// machine cannot run PostgreSQL.
    fn run_helper(mode: &str) -> Option<(Child, i32, PathBuf)> {
        let available = check_binaries(&pg_bin_dir()).and(RunAs::for_current_user());
        if available.is_err() {
            // Says SKIP, or panics under TALLY_REQUIRE_PRIVILEGED=1.
            assert!(cluster(&format!("helper ({mode})")).is_none());
            return None;
        }
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
            .arg("devdb::tests::helper_keeps_a_static_cluster")
            .env("TALLY_DEVDB_HELPER", mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the helper");
        let mut stdout = io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while io::BufRead::read_line(&mut stdout, &mut line).expect("read") > 0 {
            // The test harness prints "test <name> ... " before it.
            if let Some((_, rest)) = line.trim_end().split_once("CLUSTER ") {
                let (pid, dir) = rest.split_once(' ').expect("pid and dir");
                // Keep reading, or the helper dies of a broken pipe.
                thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
                return Some((child, pid.parse().expect("pid"), PathBuf::from(dir)));
            }
            line.clear();
        }
        let status = child.wait();
        panic!("the helper printed no cluster ({status:?})");
    }

    #[test]
    fn a_static_cluster_is_removed_at_exit() {
        let Some((mut helper, pid, dir)) = run_helper("exit") else {
            return;
        };
        let status = helper.wait().expect("wait for the helper");
        assert!(status.success(), "the helper failed: {status}");
        assert!(
            pid > 0 && !is_running(pid),
            "postmaster {pid} outlived the process"
        );
        assert!(!dir.exists(), "{} outlived the process", dir.display());
    }

    #[test]
    fn the_server_of_a_killed_process_shuts_down() {
        let Some((mut helper, pid, dir)) = run_helper("hang") else {
            return;
        };
        assert!(
            is_running(pid),
            "the postmaster runs while the helper lives"
        );
        helper.kill().expect("SIGKILL the helper");
        helper.wait().expect("wait for the helper");
        let gone = wait_gone(&[pid], KILL_TIMEOUT);
        // Nobody is left to remove the files.
        let _ = fs::remove_dir_all(&dir);
        gone.expect("the postmaster shuts down when its process is killed");
    }

    #[test]
    fn a_failed_start_quotes_the_server_log() {
        let Some(mut cluster) = cluster("a_failed_start_quotes_the_server_log") else {
            return;
        };
        cluster.stop().expect("stop");
        cluster.options = cluster.options.clone().setting("no_such_setting", "1");
        let e = cluster
            .restart()
            .expect_err("a bad setting must fail the start");
        let text = e.to_string();
        assert!(text.contains("no_such_setting"), "{text}");
        assert!(!cluster.is_running());
    }
}
