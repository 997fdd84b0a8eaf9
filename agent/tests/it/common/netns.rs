//! Network namespaces made by the tests and the veth pairs between them: a
//! [`NetNs`] is created with IPv6 off and `lo` up and deleted on drop, a
//! [`Link`] joins two of them with a veth pair whose neighbours are static (no
//! ARP), and [`Stats`] holds an interface's counters as the kernel (or the
//! agent) reports them.

use std::{
    fs,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use super::{Agent, sh, unique};

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
        wait_oper_up(a, if_a);
        wait_oper_up(b, if_b);
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
    wait_oper_up(&link.a, name);
    wait_oper_up(&link.b, peer);
    ip
}

pub fn set_up(ns: &NetNs, iface: &str) {
    ns.exec("ip", &["link", "set", iface, "up"]);
}

/// Waits until the kernel reports the interface operationally up. Until
/// then (linkwatch runs asynchronously) its qdisc is the no-op one, which
/// drops what is sent *after* our egress hook counted it: the one documented
/// case where tally counts a packet the interface statistics do not.
pub fn wait_oper_up(ns: &NetNs, iface: &str) {
    let path = format!("/sys/class/net/{iface}/operstate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.exec("cat", &[&path]);
        if String::from_utf8_lossy(&out.stdout).trim() == "up" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{iface} did not come up within 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
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
