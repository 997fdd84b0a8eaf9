//! Process plumbing of the throwaway clusters: binaries, directories,
//! ports, starting, signalling and waiting for the server's processes, and
//! the exit handler.

use super::*;
/// Checks that the binaries a cluster needs are in `dir`.
pub(super) fn check_binaries(dir: &Path) -> Result<(), DevDbError> {
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

/// Creates the cluster's temporary directory (others may pass through it but
/// not list it) and its socket directory (0700: no other local user reaches
/// the socket), both owned by the server's user, in `parent` or else in the
/// system's temporary directory.
pub(super) fn make_temp_dir(
    run_as: Option<RunAs>,
    parent: Option<&Path>,
) -> Result<tempfile::TempDir, DevDbError> {
    // A Unix socket path has at most 107 bytes: stay in /tmp if the base is long.
    let mut base = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
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
    for (path, mode) in [(dir.path(), 0o711), (sock.as_path(), 0o700)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
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
pub(super) fn pick_port(socket_dir: &Path) -> u16 {
    loop {
        let random = RandomState::new().hash_one(Instant::now());
        let port = 20_000 + u16::try_from(random % 40_000).unwrap_or(0);
        if !socket_dir.join(format!(".s.PGSQL.{port}")).exists() {
            return port;
        }
    }
}

/// A free TCP port on 127.0.0.1 (the system's pick) whose socket file does
/// not exist in `socket_dir`.
pub(super) fn pick_tcp_port(socket_dir: &Path) -> Result<u16, DevDbError> {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io_error("cannot find a free TCP port"))?;
        let port = listener
            .local_addr()
            .map_err(io_error("cannot find a free TCP port"))?
            .port();
        if !socket_dir.join(format!(".s.PGSQL.{port}")).exists() {
            return Ok(port);
        }
    }
}

/// A random password of 32 hex digits (from the OS's generator).
pub(super) fn random_password() -> String {
    use rand::{SeedableRng as _, TryRngCore as _, rngs::StdRng};
    let mut bytes = [0_u8; 16];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        // Never on Linux; a time-seeded password still keeps others out
        // of a cluster that lives for one test.
        StdRng::seed_from_u64(RandomState::new().hash_one(Instant::now()))
            .try_fill_bytes(&mut bytes)
            .unwrap_or_default();
    }
    bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// The status line of `postmaster.pid` ("starting", "ready", ...) if the file
/// belongs to the postmaster `pid` (a crashed server leaves a stale one).
pub(super) fn read_status(pid_file: &Path, pid: u32) -> Option<String> {
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
pub(super) fn shut_down(
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
pub(super) fn kill_tree(mut postmaster: Child) -> Result<(), DevDbError> {
    let children = send_kill_tree(pid_of(&postmaster));
    postmaster
        .wait()
        .map_err(io_error("cannot wait for the killed postmaster"))?;
    wait_gone(&children, KILL_TIMEOUT)
}

/// Sends SIGKILL to the postmaster `pid` and all its children; returns the
/// children's pids.
pub(super) fn send_kill_tree(pid: i32) -> Vec<i32> {
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
pub(super) fn spawn_postmaster(mut command: Command) -> io::Result<Child> {
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
pub(super) mod exit_handler {
    use super::*;

    struct Entry {
        id: u64,
        dir: PathBuf,
        postmaster: Option<i32>,
    }

    static LIVE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

    /// Adds a cluster's directory to the list; returns the cluster's id.
    pub(in crate::devdb) fn register(dir: &Path) -> u64 {
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
    pub(in crate::devdb) fn set_postmaster(id: u64, pid: Option<i32>) {
        with_list(|list| {
            if let Some(entry) = list.iter_mut().find(|entry| entry.id == id) {
                entry.postmaster = pid;
            }
        });
    }

    /// Forgets a cluster that was dropped.
    pub(in crate::devdb) fn unregister(id: u64) {
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
pub(super) fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<ExitStatus>, DevDbError> {
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
pub(super) fn wait_gone(pids: &[i32], timeout: Duration) -> Result<(), DevDbError> {
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

pub(super) fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub(super) fn send(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
pub(super) fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` exists and is not a zombie.
pub(super) fn is_running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// The processes whose parent is `parent`.
pub(super) fn children_of(parent: i32) -> Vec<i32> {
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

/// The last `lines` lines of a text file (reading at most its last 64 KiB),
/// e.g. a server's log for an error message.
pub fn tail(path: &Path, lines: usize) -> io::Result<String> {
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
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything but unreserved characters (and `/` if
/// `keep_slash`, for a query value that is a path).
pub(super) fn percent_encode(text: &str, keep_slash: bool) -> String {
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
