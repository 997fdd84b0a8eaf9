//! Real `tally-agent` and `tally-collector` processes for the tests and the
//! demo: where the binaries are ([`Binaries`]), and a long-running child
//! ([`Process`]) logging to a file, optionally inside a network namespace
//! (`setns` before `exec`; [`enter_netns`] for one-shot commands), that is
//! waited for (an address that accepts connections, a line in its log),
//! stopped (SIGTERM, then SIGKILL), killed as a crash would, started again
//! with the same command line, and stopped when dropped. Its errors quote
//! the end of its log.

use std::{
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// How long a process may take to exit after SIGTERM before it is killed,
/// unless [`Builder::stop_timeout`] says otherwise.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How many lines of the log an error quotes, unless
/// [`Builder::quoted_lines`] says otherwise.
pub const QUOTED_LINES: usize = 20;
/// The command that builds both binaries.
pub const BUILD_COMMAND: &str = "cargo build -p tally-agent -p tally-collector";

/// How often the waits look again.
const POLL: Duration = Duration::from_millis(20);

/// What can go wrong with a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A binary is not where it should be.
    #[error("{} is missing: build it (`{}`)", path.display(), BUILD_COMMAND)]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The log file could not be opened or read.
    #[error("cannot open {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// The network namespace could not be opened or entered.
    #[error("cannot enter the network namespace {}: {source}", path.display())]
    Netns {
        /// `/run/netns/<name>`.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// The command could not be started.
    #[error("cannot start {what} ({command}): {source}")]
    Spawn {
        /// The process's name in messages.
        what: String,
        /// The command line.
        command: String,
        /// Why not.
        source: io::Error,
    },
    /// The child could not be waited for or signalled.
    #[error("cannot wait for {what}: {source}")]
    Wait {
        /// The process's name in messages.
        what: String,
        /// Why not.
        source: io::Error,
    },
    /// It exited while it should have been running.
    #[error("{what} exited ({status}); the end of {}:\n{tail}", log.display())]
    Exited {
        /// The process's name in messages.
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of it.
        tail: String,
    },
    /// It was asked to stop and exited unsuccessfully.
    #[error("{what} exited with {status}; the end of {}:\n{tail}", log.display())]
    Failed {
        /// The process's name in messages.
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of it.
        tail: String,
    },
    /// It was stopped, killed or seen to exit already.
    #[error("{what} was already stopped")]
    Stopped {
        /// The process's name in messages.
        what: String,
    },
    /// It is running, and must not be for what was asked.
    #[error("{what} is still running")]
    Running {
        /// The process's name in messages.
        what: String,
    },
    /// It ignored SIGTERM for too long and was killed.
    #[error("{what} did not stop within {timeout:?} of SIGTERM and was killed")]
    StopTimeout {
        /// The process's name in messages.
        what: String,
        /// How long it had.
        timeout: Duration,
    },
    /// What was waited for did not happen in time.
    #[error("gave up waiting for {waited_for} after {timeout:?}; the end of {}:\n{tail}", log.display())]
    Timeout {
        /// What was waited for.
        waited_for: String,
        /// How long.
        timeout: Duration,
        /// The process's log file.
        log: PathBuf,
        /// The end of it.
        tail: String,
    },
}

/// `tally-agent` and `tally-collector`, as built by [`BUILD_COMMAND`].
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `tally-agent`.
    pub agent: PathBuf,
    /// `tally-collector`.
    pub collector: PathBuf,
}

impl Binaries {
    /// Both binaries in `dir` (e.g. `target/debug`); an error naming the
    /// command that builds them if one is missing.
    pub fn in_dir(dir: &Path) -> Result<Self, ProcessError> {
        let bins = Self {
            agent: dir.join("tally-agent"),
            collector: dir.join("tally-collector"),
        };
        for bin in [&bins.agent, &bins.collector] {
            if !bin.is_file() {
                return Err(ProcessError::Missing { path: bin.clone() });
            }
        }
        Ok(bins)
    }

    /// Both binaries in the directory of `binary` (e.g. a test's
    /// `CARGO_BIN_EXE_tally-agent`).
    pub fn beside(binary: &Path) -> Result<Self, ProcessError> {
        Self::in_dir(binary.parent().unwrap_or(Path::new(".")))
    }
}

/// Makes `command` run in the network namespace at `path`
/// (`/run/netns/<name>`): the namespace is opened now, held open by the
/// command, and entered (`setns`) in the child before `exec`.
pub fn enter_netns(command: &mut Command, path: &Path) -> Result<(), ProcessError> {
    let file = File::open(path).map_err(|source| ProcessError::Netns {
        path: path.to_owned(),
        source,
    })?;
    add_setns(command, Arc::new(file));
    Ok(())
}

fn add_setns(command: &mut Command, netns: Arc<File>) {
    // SAFETY: setns is async-signal-safe and touches no memory of the
    // parent; the descriptor stays open as long as the command holds it.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How to run a [`Process`]: made by [`Process::builder`], run by
/// [`Builder::start`].
#[must_use]
pub struct Builder {
    what: String,
    command: Command,
    log: PathBuf,
    netns: Option<PathBuf>,
    process_group: bool,
    death_signal: Option<libc::c_int>,
    stop_timeout: Duration,
    quoted_lines: usize,
}

impl Builder {
    /// Runs it inside the network namespace at `path`
    /// (`/run/netns/<name>`); [`Process::wait_listening`] then connects
    /// from inside it too.
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Runs it in a process group of its own: a Ctrl-C in the terminal
    /// reaches only the parent, which stops it in its own time.
    pub fn own_process_group(mut self) -> Self {
        self.process_group = true;
        self
    }

    /// Has the kernel send it `signal` when its parent dies. The kernel
    /// ties this to the thread that started it: start it from a thread that
    /// lives as long as the process should.
    pub fn parent_death_signal(mut self, signal: libc::c_int) -> Self {
        self.death_signal = Some(signal);
        self
    }

    /// How long it may take to exit after SIGTERM ([`STOP_TIMEOUT`]).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How many lines of the log errors quote ([`QUOTED_LINES`]).
    pub fn quoted_lines(mut self, lines: usize) -> Self {
        self.quoted_lines = lines;
        self
    }

    /// Starts it (stdin from /dev/null, stdout and stderr appended to the
    /// log), and does not wait for anything.
    pub fn start(self) -> Result<Process, ProcessError> {
        let Self {
            what,
            mut command,
            log,
            netns,
            process_group,
            death_signal,
            stop_timeout,
            quoted_lines,
        } = self;
        let netns = match netns {
            Some(path) => {
                let file = File::open(&path).map_err(|source| ProcessError::Netns {
                    path: path.clone(),
                    source,
                })?;
                let file = Arc::new(file);
                add_setns(&mut command, Arc::clone(&file));
                Some((path, file))
            }
            None => None,
        };
        if process_group {
            command.process_group(0);
        }
        if let Some(signal) = death_signal {
            let parent = std::process::id();
            // SAFETY: prctl and getppid are async-signal-safe and touch no
            // memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent died before prctl: nobody would signal us.
                    if u32::try_from(libc::getppid()).ok() != Some(parent) {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        command.stdin(Stdio::null());
        let mut process = Process {
            what,
            command,
            log,
            netns,
            stop_timeout,
            quoted_lines,
            child: None,
            log_start: 0,
        };
        process.spawn()?;
        Ok(process)
    }
}

/// A long-running child process with its log file; stopped (SIGTERM, then
/// SIGKILL) when dropped.
pub struct Process {
    what: String,
    command: Command,
    log: PathBuf,
    /// The namespace it runs in: its path, and the file held open.
    netns: Option<(PathBuf, Arc<File>)>,
    stop_timeout: Duration,
    quoted_lines: usize,
    child: Option<Child>,
    /// Where the current run's output starts in the log.
    log_start: u64,
}

impl Process {
    /// How to run `command` (its program, arguments and environment as the
    /// caller set them) with its output appended to `log`; `what` names it
    /// in messages (`tally-collector`, `the agent of alpha`).
    pub fn builder(what: impl Into<String>, command: Command, log: impl Into<PathBuf>) -> Builder {
        Builder {
            what: what.into(),
            command,
            log: log.into(),
            netns: None,
            process_group: false,
            death_signal: None,
            stop_timeout: STOP_TIMEOUT,
            quoted_lines: QUOTED_LINES,
        }
    }

    fn spawn(&mut self) -> Result<(), ProcessError> {
        let log_error = |source| ProcessError::Log {
            path: self.log.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_error)?;
        self.log_start = file.metadata().map_err(log_error)?.len();
        let stdout = file.try_clone().map_err(log_error)?;
        self.command.stdout(stdout).stderr(file);
        let child = self.command.spawn().map_err(|source| ProcessError::Spawn {
            what: self.what.clone(),
            command: format!("{:?}", self.command),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Its name in messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its process id, while it has not been stopped, killed or seen to
    /// exit.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it was started and has not been stopped, killed or seen to
    /// exit since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// An error if it has exited (quoting its log), or was stopped.
    pub fn ensure_running(&mut self) -> Result<(), ProcessError> {
        let Some(child) = self.child.as_mut() else {
            return Err(ProcessError::Stopped {
                what: self.what.clone(),
            });
        };
        let status = child.try_wait().map_err(|source| ProcessError::Wait {
            what: self.what.clone(),
            source,
        })?;
        if let Some(status) = status {
            self.child = None;
            return Err(ProcessError::Exited {
                what: self.what.clone(),
                status,
                log: self.log.clone(),
                tail: self.log_tail(),
            });
        }
        Ok(())
    }

    /// Waits until `address` accepts TCP connections (made from inside its
    /// namespace when it runs in one), while the process runs.
    pub fn wait_listening(
        &mut self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<(), ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if self.connects(address)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout(format!("{} to listen on {address}", self.what), timeout));
            }
            thread::sleep(POLL);
        }
    }

    /// Whether a connection to `address` succeeds, from its namespace.
    fn connects(&self, address: SocketAddr) -> Result<bool, ProcessError> {
        let connect = || TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok();
        let Some((path, file)) = &self.netns else {
            return Ok(connect());
        };
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: a valid namespace descriptor; setns changes the
                    // network namespace of this short-lived thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(ProcessError::Netns {
                            path: path.clone(),
                            source: io::Error::last_os_error(),
                        });
                    }
                    Ok(connect())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(ProcessError::Netns {
                        path: path.clone(),
                        source: io::Error::other("the connecting thread panicked"),
                    })
                })
        })
    }

    /// Waits until a line that this run wrote to the log gives `found` a
    /// value (e.g. the address it logs that it listens on), while the
    /// process runs. `waited_for` says what for, in the error.
    pub fn wait_for_line<T>(
        &mut self,
        waited_for: &str,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read before checking that it runs: what it wrote before it
            // exited counts.
            let text = self.this_run()?;
            // Whole lines only: the last may still be being written.
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            if let Some(value) = whole.lines().find_map(&mut found) {
                return Ok(value);
            }
            self.ensure_running()?;
            if Instant::now() > deadline {
                return Err(self.timeout(waited_for.to_owned(), timeout));
            }
            thread::sleep(POLL);
        }
    }

    /// What this run (since the last start) wrote to the log.
    fn this_run(&self) -> Result<String, ProcessError> {
        let log_error = |source| ProcessError::Log {
            path: self.log.clone(),
            source,
        };
        let mut file = File::open(&self.log).map_err(log_error)?;
        file.seek(SeekFrom::Start(self.log_start))
            .map_err(log_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(log_error)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn timeout(&self, waited_for: String, timeout: Duration) -> ProcessError {
        ProcessError::Timeout {
            waited_for,
            timeout,
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    /// Sends SIGTERM (and does not wait).
    pub fn terminate(&self) {
        if let Some(child) = &self.child
            && let Ok(pid) = i32::try_from(child.id())
        {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Waits for it to exit after [`terminate`](Self::terminate); SIGKILL
    /// after the stop timeout (an error then).
    pub fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        let Some(mut child) = self.child.take() else {
            return Err(ProcessError::Stopped {
                what: self.what.clone(),
            });
        };
        let deadline = Instant::now() + self.stop_timeout;
        loop {
            let status = child.try_wait().map_err(|source| ProcessError::Wait {
                what: self.what.clone(),
                source,
            })?;
            if let Some(status) = status {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::StopTimeout {
                    what: self.what.clone(),
                    timeout: self.stop_timeout,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM and wait; an error unless it exits successfully.
    pub fn stop(&mut self) -> Result<(), ProcessError> {
        self.terminate();
        let status = self.wait()?;
        if !status.success() {
            return Err(ProcessError::Failed {
                what: self.what.clone(),
                status,
                log: self.log.clone(),
                tail: self.log_tail(),
            });
        }
        Ok(())
    }

    /// SIGKILL, as a crash would, and reaps it; nothing if it is not
    /// running.
    pub fn kill(&mut self) -> Result<(), ProcessError> {
        if let Some(mut child) = self.child.take() {
            let error = |source| ProcessError::Wait {
                what: self.what.clone(),
                source,
            };
            child.kill().map_err(error)?;
            child.wait().map_err(error)?;
        }
        Ok(())
    }

    /// Starts it again with the same command line, appending to the same
    /// log, after it was stopped, killed or exited; an error while it runs.
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        if let Some(child) = self.child.as_mut() {
            let exited = child.try_wait().map_err(|source| ProcessError::Wait {
                what: self.what.clone(),
                source,
            })?;
            if exited.is_none() {
                return Err(ProcessError::Running {
                    what: self.what.clone(),
                });
            }
        }
        self.spawn()
    }

    /// Everything in the log (of every run).
    pub fn log(&self) -> Result<String, ProcessError> {
        fs::read_to_string(&self.log).map_err(|source| ProcessError::Log {
            path: self.log.clone(),
            source,
        })
    }

    /// The last lines of the log (as many as errors quote).
    pub fn log_tail(&self) -> String {
        crate::devdb::tail(&self.log, self.quoted_lines)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
            if let Err(error) = self.wait() {
                eprintln!("tally-testkit: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn the_log_holds_both_streams_and_errors_quote_its_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("p.log");
        let mut process = Process::builder("the shell", shell("echo out; echo err >&2"), &log)
            .start()
            .expect("start");
        let error = process
            .wait_for_line("never", Duration::from_secs(10), |_| None::<()>)
            .expect_err("it exits");
        let text = error.to_string();
        assert!(
            text.starts_with("the shell exited (exit status: 0)"),
            "{text}"
        );
        assert!(text.contains("out\nerr"), "{text}");
        assert!(!process.is_running());
        assert!(matches!(
            process.ensure_running(),
            Err(ProcessError::Stopped { .. })
        ));
    }

    #[test]
    fn a_line_of_this_run_is_found_and_a_restart_appends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("p.log");
        let mut process = Process::builder(
            "the shell",
            shell("echo run; echo port=7; exec sleep 30"),
            &log,
        )
        .start()
        .expect("start");
        let port = process.wait_for_line("the port", Duration::from_secs(10), |line| {
            line.strip_prefix("port=")?.parse::<u16>().ok()
        });
        assert_eq!(port.expect("found"), 7);
        assert!(matches!(
            process.restart(),
            Err(ProcessError::Running { .. })
        ));
        process.kill().expect("kill");
        assert!(process.pid().is_none());
        process.restart().expect("restart");
        process
            .wait_for_line("the second run", Duration::from_secs(10), |line| {
                (line == "run").then_some(())
            })
            .expect("found");
        process.stop().expect_err("sleep dies of SIGTERM");
        assert_eq!(process.log().expect("log").matches("run\n").count(), 2);
    }

    #[test]
    fn stop_kills_what_ignores_sigterm() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut process = Process::builder(
            "the shell",
            shell("trap '' TERM; echo ready; while :; do sleep 0.1; done"),
            dir.path().join("p.log"),
        )
        .stop_timeout(Duration::from_millis(300))
        .own_process_group()
        .parent_death_signal(libc::SIGKILL)
        .start()
        .expect("start");
        process
            .wait_for_line("ready", Duration::from_secs(10), |line| {
                (line == "ready").then_some(())
            })
            .expect("ready");
        assert!(matches!(
            process.stop(),
            Err(ProcessError::StopTimeout { .. })
        ));
    }

    #[test]
    fn waits_until_an_address_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut process =
            Process::builder("sleep", shell("exec sleep 30"), dir.path().join("p.log"))
                .start()
                .expect("start");
        process
            .wait_listening(address, Duration::from_secs(10))
            .expect("listens");
        drop(listener);
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let error = process
            .wait_listening(closed, Duration::from_millis(200))
            .expect_err("nothing listens");
        assert!(matches!(error, ProcessError::Timeout { .. }), "{error}");
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = Binaries::in_dir(dir.path()).expect_err("empty");
        assert!(
            error.to_string().ends_with(&format!(
                "tally-agent is missing: build it (`{BUILD_COMMAND}`)"
            )),
            "{error}"
        );
    }
}
