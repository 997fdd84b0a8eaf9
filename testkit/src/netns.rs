//! Network namespaces for the tests, the demo and the benchmarks: a
//! [`Netns`] made with `ip netns add`, entered by a short-lived thread
//! (`setns`) so that sockets and interface names are its own, configured
//! with `ip -n`, its interfaces' kernel statistics ([`IfStats`]) read from
//! inside, and deleted (with the veths in it) when dropped; and
//! [`VethPair`], a veth pair between two of them with static neighbours.

use std::{
    fs::{self, File},
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

/// What can go wrong with a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run at all.
    #[error("cannot run `ip {args}` (is iproute2 installed?): {source}")]
    Spawn {
        /// Its arguments.
        args: String,
        /// Why not.
        source: io::Error,
    },
    /// `ip` ran and failed.
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Ip {
        /// Its arguments.
        args: String,
        /// How it exited.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// A file of the namespace could not be opened, read or written, or
    /// the namespace could not be entered.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The namespace was deleted already.
    #[error("namespace {0} is deleted")]
    Deleted(String),
    /// The closure run inside the namespace panicked.
    #[error("a thread in namespace {0} panicked")]
    Panicked(String),
    /// An interface's statistics are not six numbers.
    #[error("unexpected contents of {dir}: {text:?}")]
    Stats {
        /// The statistics directory.
        dir: String,
        /// What was read.
        text: String,
    },
    /// An interface did not come up in time.
    #[error("{iface} in {namespace} did not come up within 10 s")]
    NotUp {
        /// The interface.
        iface: String,
        /// Its namespace.
        namespace: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    /// Its name in `ip netns list` (and `/run/netns`).
    pub name: String,
    /// Held open to enter the namespace; closed before it is deleted.
    file: Option<File>,
}

impl Netns {
    /// `ip netns add <name>`; nothing else is set up in it.
    pub fn create(name: String) -> Result<Self, NetnsError> {
        ip(&["netns", "add", &name])?;
        let mut ns = Self { name, file: None };
        let path = ns.path();
        ns.file =
            Some(File::open(&path).map_err(io_error(format!("cannot open {}", path.display())))?);
        Ok(ns)
    }

    /// [`Self::create`], then IPv6 off ([`Self::disable_ipv6`]) and `lo`
    /// up: a host whose interfaces carry only what it is made to send.
    pub fn create_host(name: String) -> Result<Self, NetnsError> {
        let ns = Self::create(name)?;
        ns.disable_ipv6()?;
        ns.set_up("lo")?;
        Ok(ns)
    }

    /// Where `ip` keeps it: `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A descriptor of the namespace, for `setns` in a child process.
    pub fn raw_fd(&self) -> Result<RawFd, NetnsError> {
        self.file
            .as_ref()
            .map(File::as_raw_fd)
            .ok_or_else(|| NetnsError::Deleted(self.name.clone()))
    }

    /// `ip -n <name> <args>`: its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec <name> <program> <args>`: its stdout. The program
    /// also sees the namespace's `/sys` (its interfaces' files).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ethtool -K <iface> <feature> on|off ...` inside the namespace: sets
    /// offload features by their ethtool names (`tso`, `gro`,
    /// `tx-udp-segmentation`, ...). Needs the ethtool package.
    pub fn set_features(&self, iface: &str, features: &[(&str, bool)]) -> Result<(), NetnsError> {
        let mut args = vec!["-K", iface];
        for (name, on) in features {
            args.push(name);
            args.push(if *on { "on" } else { "off" });
        }
        self.exec("ethtool", &args).map(drop)
    }

    /// `ip -n <name> link set <iface> up` (without waiting for it: see
    /// [`Self::wait_oper_up`]).
    pub fn set_up(&self, iface: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "set", iface, "up"]).map(drop)
    }

    /// [`Self::enter`] for a closure that returns its value (not a
    /// `Result`): fails only if the namespace cannot be entered or `f`
    /// panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        self.enter(|| Ok::<_, NetnsError>(f()))
    }

    /// Runs `f` on a thread that entered this namespace: sockets it makes,
    /// interface names it resolves and `/proc/sys/net` files it opens are
    /// this namespace's.
    pub fn enter<T: Send, E: Send + From<NetnsError>>(
        &self,
        f: impl FnOnce() -> Result<T, E> + Send,
    ) -> Result<T, E> {
        let fd = self.raw_fd()?;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: a valid namespace descriptor; setns changes
                    // the network namespace of this short-lived thread only.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        let error = io::Error::last_os_error();
                        let what = format!("cannot enter namespace {}", self.name);
                        return Err(io_error(what)(error).into());
                    }
                    f()
                })
                .join()
                .map_err(|_| NetnsError::Panicked(self.name.clone()))?
        })
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` →
    /// `/proc/sys/net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| fs::write(&path, value).map_err(io_error(format!("cannot write {path}"))))
    }

    /// Turns IPv6 off (no router solicitations or DAD probes on counted
    /// interfaces); a kernel without IPv6 has nothing to turn off.
    pub fn disable_ipv6(&self) -> Result<(), NetnsError> {
        self.enter(|| {
            for key in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
                match fs::write(&path, "1") {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    other => other.map_err(io_error(format!("cannot write {path}")))?,
                }
            }
            Ok(())
        })
    }

    /// The kernel's statistics of `iface`, read from
    /// `/sys/class/net/<iface>/statistics` inside the namespace.
    pub fn kernel_stats(&self, iface: &str) -> Result<IfStats, NetnsError> {
        let dir = format!("/sys/class/net/{iface}/statistics");
        let files = [
            "rx_bytes",
            "tx_bytes",
            "rx_packets",
            "tx_packets",
            "rx_dropped",
            "tx_dropped",
        ]
        .map(|file| format!("{dir}/{file}"));
        let text = self.exec("cat", &files.each_ref().map(String::as_str))?;
        let unexpected = || NetnsError::Stats {
            dir: dir.clone(),
            text: text.clone(),
        };
        let values: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| unexpected())?;
        let [
            rx_bytes,
            tx_bytes,
            rx_packets,
            tx_packets,
            rx_dropped,
            tx_dropped,
        ] = values[..]
        else {
            return Err(unexpected());
        };
        Ok(IfStats {
            rx_bytes,
            tx_bytes,
            rx_packets,
            tx_packets,
            rx_dropped,
            tx_dropped,
        })
    }

    /// The kernel's statistics of `iface` once they stop moving: read every
    /// 300 ms until two readings agree, or the last reading after 10 s.
    pub fn settle(&self, iface: &str) -> Result<IfStats, NetnsError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.kernel_stats(iface)?;
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = self.kernel_stats(iface)?;
            if now == last || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Waits until the kernel reports `iface` operationally up (until then
    /// its qdisc drops what is sent, after an egress hook counted it).
    pub fn wait_oper_up(&self, iface: &str) -> Result<(), NetnsError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let json = self.ip(&["-j", "link", "show", "dev", iface])?;
            if json.contains("\"operstate\":\"UP\"") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(NetnsError::NotUp {
                    iface: iface.to_owned(),
                    namespace: self.name.clone(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes the namespace now (once; dropping it does it otherwise).
    pub fn delete(&mut self) -> Result<(), NetnsError> {
        // Our descriptor would keep the namespace (and its veths) alive.
        if self.file.take().is_some() {
            ip(&["netns", "delete", &self.name])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = self.delete() {
            eprintln!("tally: {error}");
        }
    }
}

/// An interface's counters as the kernel keeps them (or as something that
/// counts the same interface reports them, its drops left at zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl IfStats {
    /// What was counted since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
        }
    }

    /// What was counted since `earlier`; `None` if a counter went down (the
    /// interface was replaced, or whatever counted it lost counts).
    pub fn checked_since(&self, earlier: &Self) -> Option<Self> {
        Some(Self {
            rx_bytes: self.rx_bytes.checked_sub(earlier.rx_bytes)?,
            tx_bytes: self.tx_bytes.checked_sub(earlier.tx_bytes)?,
            rx_packets: self.rx_packets.checked_sub(earlier.rx_packets)?,
            tx_packets: self.tx_packets.checked_sub(earlier.tx_packets)?,
            rx_dropped: self.rx_dropped.checked_sub(earlier.rx_dropped)?,
            tx_dropped: self.tx_dropped.checked_sub(earlier.tx_dropped)?,
        })
    }

    /// The traffic counters without the drops: `(rx_bytes, tx_bytes,
    /// rx_packets, tx_packets)`.
    pub fn traffic(&self) -> (u64, u64, u64, u64) {
        (
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
        )
    }
}

/// The offload features a [`VethPair`]'s ends are made with: no TCP or UDP
/// segmentation offload (generic segmentation in software stays on, GRO
/// stays off as veth has it).
pub const WIRE_LIKE: &[(&str, bool)] = &[("tso", false), ("tx-udp-segmentation", false)];

/// A veth pair between two namespaces: each end has an IPv4 address (in a
/// /24) and a permanent neighbour entry for the other end, so that no ARP
/// crosses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The end in the first namespace.
    pub a: VethEnd,
    /// The end in the second namespace.
    pub b: VethEnd,
}

/// One end of a [`VethPair`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethEnd {
    /// The interface's name in its namespace.
    pub iface: String,
    /// Its IPv4 address (in a /24).
    pub addr: Ipv4Addr,
    /// Its MAC address.
    pub mac: [u8; 6],
}

impl VethEnd {
    /// The MAC address as `ip` writes it: `02:7a:11:01:00:01`.
    pub fn mac_text(&self) -> String {
        self.mac.map(|octet| format!("{octet:02x}")).join(":")
    }
}

impl VethPair {
    /// Ends `if_a` and `if_b` on the /24 whose first three octets are
    /// `subnet`: addresses `subnet`.1 and `subnet`.2, MAC addresses
    /// `mac`:00:01 and `mac`:00:02 (locally administered ones start with
    /// 0x02). Nothing is made yet: see [`Self::create`].
    pub fn new(if_a: &str, if_b: &str, subnet: [u8; 3], mac: [u8; 4]) -> Self {
        let [s0, s1, s2] = subnet;
        let [m0, m1, m2, m3] = mac;
        let end = |iface: &str, n: u8| VethEnd {
            iface: iface.to_owned(),
            addr: Ipv4Addr::new(s0, s1, s2, n),
            mac: [m0, m1, m2, m3, 0, n],
        };
        Self {
            a: end(if_a, 1),
            b: end(if_b, 2),
        }
    }

    /// Makes the pair, end `a` in namespace `a` and end `b` in `b`, each
    /// with its address and the other's neighbour entry; both ends stay
    /// down ([`Self::set_up`]). What a failed step leaves goes with the
    /// namespaces.
    ///
    /// Both ends count like a NIC: [`WIRE_LIKE`] turns off the offloads that
    /// would hand the veth driver a packet of several frames whole. A veth
    /// counts one packet per socket buffer it is handed, where a NIC counts
    /// the frames it sends; without TCP and UDP segmentation offload the
    /// kernel cuts such packets into frames in software (after the TC egress
    /// hook) and the veth's statistics count the frames that tally counts.
    pub fn create(&self, a: &Netns, b: &Netns) -> Result<(), NetnsError> {
        let (mac_a, mac_b) = (self.a.mac_text(), self.b.mac_text());
        ip(&[
            "link",
            "add",
            &self.a.iface,
            "address",
            &mac_a,
            "netns",
            &a.name,
            "type",
            "veth",
            "peer",
            "name",
            &self.b.iface,
            "address",
            &mac_b,
            "netns",
            &b.name,
        ])?;
        for (ns, end) in [(a, &self.a), (b, &self.b)] {
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", end.addr),
                "dev",
                &end.iface,
            ])?;
        }
        for (ns, end, peer, peer_mac) in
            [(a, &self.a, &self.b, &mac_b), (b, &self.b, &self.a, &mac_a)]
        {
            ns.ip(&[
                "neigh",
                "replace",
                &peer.addr.to_string(),
                "lladdr",
                peer_mac,
                "dev",
                &end.iface,
                "nud",
                "permanent",
            ])?;
        }
        a.set_features(&self.a.iface, WIRE_LIKE)?;
        b.set_features(&self.b.iface, WIRE_LIKE)?;
        Ok(())
    }

    /// Sets both ends up, and waits until the kernel reports both
    /// operationally up ([`Netns::wait_oper_up`]).
    pub fn set_up(&self, a: &Netns, b: &Netns) -> Result<(), NetnsError> {
        a.set_up(&self.a.iface)?;
        b.set_up(&self.b.iface)?;
        a.wait_oper_up(&self.a.iface)?;
        b.wait_oper_up(&self.b.iface)
    }
}

/// The namespaces in `ip netns list` whose names start with `prefix`.
pub fn namespaces_named(prefix: &str) -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Runs `ip <args>`: its stdout, or an error with its stderr.
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
