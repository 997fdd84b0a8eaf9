//! Test hosts for the agent's integration tests: network namespaces joined by
//! veth pairs, made by the test and removed afterwards; the real agent binary
//! running inside them; traffic only between those namespaces; and the
//! kernel's own view (interface statistics, BPF_PROG_QUERY) to check against.
//!
//! These tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns).
//! Without it they skip and say why; with `TALLY_REQUIRE_PRIVILEGED=1` (as CI
//! sets it) they fail instead.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_tally-agent");

static NEXT: AtomicU32 = AtomicU32::new(1);

fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn say(text: &str) {
    // Written to the real stderr, past the test harness's capture, so that a
    // skip is visible in the run's output.
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether the privileged tests can run here; prints why not, or panics when
/// `TALLY_REQUIRE_PRIVILEGED=1` demands them.
pub fn privileged(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_owned());
    }
    for tool in ["ip", "nsenter"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            missing.push(format!("`{tool}` is not installed"));
        }
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        missing.push("/sys/fs/bpf does not exist".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    if std::env::var("TALLY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("{test}: privileged test cannot run ({reason}) but TALLY_REQUIRE_PRIVILEGED=1");
    }
    say(&format!(
        "SKIP {test}: needs root with network namespaces and bpffs ({reason})"
    ));
    false
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace made by the test (deleted on drop, with its devices).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("tally-t{}-{}-{tag}", std::process::id(), unique());
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        // No IPv6: no router solicitations or DAD probes muddling the counts.
        ns.exec(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace (`ip netns exec`, which also gives
    /// it the namespace's view of /sys).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `f` on a thread that joined this namespace; sockets made there
    /// stay in it wherever they are used later.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            let file =
                fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// The kernel's statistics of an interface (`/sys/class/net/<if>/statistics`).
    pub fn kernel_stats(&self, iface: &str) -> Stats {
        let dir = format!("/sys/class/net/{iface}/statistics");
        let files: Vec<String> = [
            "rx_bytes",
            "tx_bytes",
            "rx_packets",
            "tx_packets",
            "rx_dropped",
            "tx_dropped",
        ]
        .iter()
        .map(|f| format!("{dir}/{f}"))
        .collect();
        let mut args = vec![];
        args.extend(files.iter().map(String::as_str));
        let out = self.exec("cat", &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .map(|s| s.parse().expect("number"))
            .collect();
        assert_eq!(v.len(), 6, "{text}");
        Stats {
            rx_bytes: v[0],
            tx_bytes: v[1],
            rx_packets: v[2],
            tx_packets: v[3],
            rx_dropped: v[4],
            tx_dropped: v[5],
        }
    }

    /// Waits until the interface's kernel statistics stop moving.
    pub fn settle(&self, iface: &str) -> Stats {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.kernel_stats(iface);
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = self.kernel_stats(iface);
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Interface statistics (the agent's, or the kernel's with drop counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl Stats {
    /// The four traffic counters of `self - earlier` (drops left as they are now).
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            rx_bytes: self.rx_bytes - earlier.rx_bytes,
            tx_bytes: self.tx_bytes - earlier.tx_bytes,
            rx_packets: self.rx_packets - earlier.rx_packets,
            tx_packets: self.tx_packets - earlier.tx_packets,
            rx_dropped: self.rx_dropped - earlier.rx_dropped,
            tx_dropped: self.tx_dropped - earlier.tx_dropped,
        }
    }

    pub fn traffic(&self) -> (u64, u64, u64, u64) {
        (
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
        )
    }
}

/// Two namespaces joined by a veth pair with static neighbours (no ARP).
pub struct Link {
    pub a: NetNs,
    pub b: NetNs,
    pub if_a: String,
    pub if_b: String,
    pub ip_a: Ipv4Addr,
    pub ip_b: Ipv4Addr,
}

/// Adds a veth pair `if_a` (in `a`) — `if_b` (in `b`) with addresses
/// 10.213.`subnet`.1 and .2, up, with permanent neighbour entries.
pub fn veth(
    a: &NetNs,
    b: &NetNs,
    if_a: &str,
    if_b: &str,
    subnet: u8,
    up: bool,
) -> (Ipv4Addr, Ipv4Addr) {
    let mac_a = format!("02:7a:11:{subnet:02x}:00:01");
    let mac_b = format!("02:7a:11:{subnet:02x}:00:02");
    sh(
        "ip",
        &[
            "link", "add", if_a, "address", &mac_a, "netns", &a.name, "type", "veth", "peer",
            "name", if_b, "address", &mac_b, "netns", &b.name,
        ],
    );
    let ip_a = Ipv4Addr::new(10, 213, subnet, 1);
    let ip_b = Ipv4Addr::new(10, 213, subnet, 2);
    a.exec("ip", &["addr", "add", &format!("{ip_a}/24"), "dev", if_a]);
    b.exec("ip", &["addr", "add", &format!("{ip_b}/24"), "dev", if_b]);
    a.exec(
        "ip",
        &[
            "neigh",
            "replace",
            &ip_b.to_string(),
            "lladdr",
            &mac_b,
            "dev",
            if_a,
            "nud",
            "permanent",
        ],
    );
    b.exec(
        "ip",
        &[
            "neigh",
            "replace",
            &ip_a.to_string(),
            "lladdr",
            &mac_a,
            "dev",
            if_b,
            "nud",
            "permanent",
        ],
    );
    if up {
        set_up(a, if_a);
        set_up(b, if_b);
    }
    (ip_a, ip_b)
}

/// A veth pair created while `agent` runs in `link.a`, brought up only once
/// the agent counts it (so every packet it ever carried was counted);
/// returns the address of its end in `a`.
pub fn veth_counted_from_birth(
    link: &Link,
    agent: &mut Agent,
    name: &str,
    peer: &str,
    subnet: u8,
) -> Ipv4Addr {
    let (ip, _) = veth(&link.a, &link.b, name, peer, subnet, false);
    agent.wait_for(name);
    set_up(&link.a, name);
    set_up(&link.b, peer);
    ip
}

pub fn set_up(ns: &NetNs, iface: &str) {
    ns.exec("ip", &["link", "set", iface, "up"]);
}

impl Link {
    pub fn new() -> Self {
        let a = NetNs::new("a");
        let b = NetNs::new("b");
        let (ip_a, ip_b) = veth(&a, &b, "tva", "tvb", 1, true);
        Self {
            a,
            b,
            if_a: "tva".into(),
            if_b: "tvb".into(),
            ip_a,
            ip_b,
        }
    }
}

/// Sends `bytes` over TCP from a socket in `from` to `to_ip` in `to`; returns
/// when the receiver has read them all. `pace` sleeps between 64 KiB writes.
pub fn tcp_transfer(from: &NetNs, to: &NetNs, to_ip: Ipv4Addr, bytes: usize, pace: Duration) {
    let listener = to.run(move || TcpListener::bind(SocketAddr::from((to_ip, 0))).expect("bind"));
    let addr = listener.local_addr().expect("addr");
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut stream = from
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"));
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < bytes {
        assert!(
            Instant::now() < deadline,
            "TCP transfer took longer than 60 s"
        );
        let n = chunk.len().min(bytes - sent);
        stream.write_all(&chunk[..n]).expect("write");
        sent += n;
        if !pace.is_zero() {
            thread::sleep(pace);
        }
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let got = receiver.join().expect("receiver");
    assert_eq!(got, bytes, "the receiver got every byte");
    drop(stream);
}

/// Sends `count` UDP datagrams of `size` bytes from `from` to `to_ip` in `to`,
/// paced so that the veth's backlog never overflows.
pub fn udp_burst(
    from: &NetNs,
    to: &NetNs,
    to_ip: Ipv4Addr,
    from_ip: Ipv4Addr,
    count: usize,
    size: usize,
) {
    let receiver = to.run(move || UdpSocket::bind(SocketAddr::from((to_ip, 0))).expect("bind"));
    let target = receiver.local_addr().expect("addr");
    let sender = from.run(move || UdpSocket::bind(SocketAddr::from((from_ip, 0))).expect("bind"));
    let payload = vec![0xa5u8; size];
    for i in 0..count {
        sender.send_to(&payload, target).expect("send");
        if i % 200 == 199 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    drop(receiver);
}

/// The agent, running in a namespace with its own pin directory. Dropping it
/// kills the process and removes every pin (`tally-agent detach`).
pub struct Agent {
    pub ns_path: PathBuf,
    pub pin_dir: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

pub fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/tally-test-{}-{}",
        std::process::id(),
        unique()
    ))
}

fn agent_cmd(ns_path: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns_path.display()))
        .arg("--")
        .arg(AGENT);
    cmd
}

impl Agent {
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        let logdir = tempfile::tempdir().expect("tempdir");
        let mut agent = Self {
            ns_path: ns.path(),
            pin_dir: pin_dir(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: logdir.path().join("agent.log"),
            _logdir: logdir,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = agent_cmd(&self.ns_path)
            .arg("run")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--log")
            .arg("debug")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tally-agent");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tally-agent <args> --pin-dir <ours>` in the namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        agent_cmd(&self.ns_path)
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run tally-agent")
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The interface's entry in `status --json`, if it is listed.
    pub fn iface(&self, name: &str) -> Option<serde_json::Value> {
        let status = self.status()?;
        status["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
    }

    /// One interface's counters from a `status --json` document.
    pub fn stats_in(status: &serde_json::Value, name: &str) -> Stats {
        let list = status["interfaces"].as_array().expect("interfaces");
        let i = list
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {status}"));
        let n = |k: &str| i[k].as_u64().unwrap_or_else(|| panic!("{k} in {i}"));
        Stats {
            rx_bytes: n("rx_bytes"),
            tx_bytes: n("tx_bytes"),
            rx_packets: n("rx_packets"),
            tx_packets: n("tx_packets"),
            ..Stats::default()
        }
    }

    pub fn counters(&self, name: &str) -> Stats {
        let status = self
            .status()
            .unwrap_or_else(|| panic!("no status; agent log:\n{}", self.log()));
        Self::stats_in(&status, name)
    }

    /// Waits until `name` is listed and counted.
    pub fn wait_for(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.iface(name).is_some_and(|i| i["attached"] == true) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the agent exited ({status}); its log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the agent did not start counting {name} within 20 s; its log:\n{}",
            self.log()
        );
    }

    pub fn epoch(&self) -> String {
        let status = self.status().expect("status");
        status["epoch"].as_str().expect("epoch").to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "agent exited with {status}; log:\n{}",
                        self.log()
                    );
                    return;
                }
                assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent first");
        self.spawn();
    }

    pub fn detach(&self) -> Output {
        self.cli(&["detach"])
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = self.detach();
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// The programs attached to an interface's TCX hooks, by name, as the kernel
/// reports them (BPF_PROG_QUERY), asked from inside the namespace.
pub fn tcx_programs(ns: &NetNs, iface: &str) -> Vec<(String, u32)> {
    let iface = iface.to_owned();
    ns.run(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut out = Vec::new();
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, programs) = SchedClassifier::query_tcx(&iface, hook).expect("query tcx");
            for p in programs {
                out.push((p.name_as_str().unwrap_or("?").to_owned(), p.id()));
            }
        }
        out
    })
}

/// Whether the kernel still knows a BPF program with this id.
pub fn program_exists(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

/// Asserts `ours == kernel` for the four traffic counters, explaining drops.
pub fn assert_exact(what: &str, ours: &Stats, kernel: &Stats) {
    assert_eq!(
        ours.traffic(),
        kernel.traffic(),
        "{what}: agent (rx_bytes, tx_bytes, rx_packets, tx_packets) {:?} != kernel {:?} \
         (kernel drops over the interval: rx_dropped {}, tx_dropped {}; a packet dropped after our \
         egress hook is counted by us and not by the kernel's tx statistics)",
        ours.traffic(),
        kernel.traffic(),
        kernel.rx_dropped,
        kernel.tx_dropped
    );
}
