//! The node's counting rule, end to end, on a container-like host: the real
//! agent (eBPF) in namespace `host` reports to the real collector (`serve`,
//! in namespace `inet`), which stores into a real PostgreSQL.
//!
//! `host` has an uplink veth `up0` towards `inet` with the IPv4 default
//! route, and a `docker0` bridge (a CONTAINER_BRIDGE) with two veth ports
//! whose peers are the `eth0` of two "container" namespaces; `host` routes
//! between the bridge's subnet and `inet`. The containers send and receive
//! TCP and UDP traffic of known sizes to and from `inet`: each of their
//! packets crosses a veth port, the bridge and the uplink.
//!
//! Two runs, each a fresh agent (a new pin directory: a new epoch) with its
//! own node: under countRule `all` the node's totals equal the sum of the
//! kernel's statistics over every counted interface of `host` (the seed's
//! rule: container traffic three times), under `uplink` the uplink's alone
//! (container traffic once). The heartbeats travel over a third veth pair
//! that the agent does not count (`--exclude`).
//!
//! The kernel's statistics are the ground truth, with one known difference:
//! a bridge's rx statistics leave out the Ethernet header of each frame it
//! passes up to the host, which the agent's ingress hook on it counts.
//!
//! Each run also checks what the agent says about stacking: each port's
//! master is `docker0`, a veth has no lower device, and a macvlan (left
//! down, when the kernel can make one) is stacked on the uplink.

use crate::common;

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, CONTROL_IFACE, Collector, Store, netns, privileged, reporting_args, tail, veth,
};
use tally_collector::nodes;
use tally_testkit::{
    netns::{IfStats, Netns, NetnsError, WIRE_LIKE},
    traffic::{tcp_transfer, udp_burst},
};

const COLLECTOR_PORT: u16 = 50_061;

/// The interfaces of `host` the agent counts (all but `lo` and the excluded
/// heartbeat link `tca`), besides [`STACKED`] when the kernel can make it.
const COUNTED: [&str; 4] = ["up0", "docker0", "vethc0", "vethc1"];
const UPLINK: &str = "up0";
/// A macvlan on the uplink, left down (it carries nothing): its IFLA_LINK
/// names the uplink.
const STACKED: &str = "mv0";
const BRIDGE: &str = "docker0";
/// The link-layer header of an Ethernet frame: what a bridge's rx statistics
/// leave out (it counts a frame passed up to the host after the header was
/// pulled) and its ingress hook sees.
const ETHERNET_HEADER: u64 = 14;

const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 50, 1);
const BRIDGE_MAC: &str = "02:7a:11:32:00:01";

fn container_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 50, 10 + i)
}

/// The namespaces of the container-like host.
struct ContainerHost {
    host: Netns,
    /// The far side of the uplink (and the collector's namespace).
    inet: Netns,
    containers: [Netns; 2],
    /// The interfaces the agent counts: [`COUNTED`], and [`STACKED`] if
    /// the kernel could make it.
    counted: Vec<&'static str>,
    /// `inet`'s address on the uplink.
    inet_ip: Ipv4Addr,
    /// The collector's address on the heartbeat link.
    control_ip: Ipv4Addr,
}

impl ContainerHost {
    fn build() -> Self {
        let host = netns("host");
        let inet = netns("inet");
        let containers = [netns("c0"), netns("c1")];
        let ip = |args: &[&str]| {
            host.ip(args).expect("ip in host");
        };

        // The uplink, with the default route; the heartbeat link beside it.
        let uplink = veth(UPLINK, "wan0", 1);
        uplink.create(&host, &inet).expect("the uplink");
        uplink.set_up(&host, &inet).expect("the uplink up");
        let (up_ip, inet_ip) = (uplink.a.addr, uplink.b.addr);
        ip(&["route", "add", "default", "via", &inet_ip.to_string()]);
        let control = veth(CONTROL_IFACE, "tcb", 2);
        control.create(&host, &inet).expect("the heartbeat link");
        control.set_up(&host, &inet).expect("the heartbeat link up");
        let control_ip = control.b.addr;
        host.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
        inet.ip(&[
            "route",
            "add",
            "10.213.50.0/24",
            "via",
            &up_ip.to_string(),
            "dev",
            "wan0",
        ])
        .expect("the route to the containers");

        // docker0 and one veth port per container; static neighbours
        // everywhere, so that no ARP muddles the counts.
        ip(&[
            "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        ]);
        ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE]);
        // A bridge that snoops multicast joins the all-snoopers group
        // (224.0.0.106) when it comes up: an IGMPv3 report then and its
        // repetition up to a second later, which could fall between the
        // first reading of the counts and the agent's start. Both within
        // milliseconds instead, long before anything is counted.
        host.sysctl(
            &format!("net.ipv4.conf.{BRIDGE}.igmpv3_unsolicited_report_interval"),
            "10",
        )
        .expect("IGMPv3 report interval");
        for (i, container) in (0u8..).zip(containers.iter()) {
            let port = format!("vethc{i}");
            let mac = format!("02:7a:11:32:01:{i:02x}");
            host.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &mac,
                "netns",
                &container.name,
            ])
            .expect("a container's veth pair");
            // Counted like a NIC's (see `VethPair::create`): the bridge
            // and its ports then carry frames, which their statistics count
            // as tally does, rather than 64 KiB packets they count as one.
            host.set_features(&port, WIRE_LIKE)
                .expect("a bridge port's offloads");
            container
                .set_features("eth0", WIRE_LIKE)
                .expect("a container's offloads");
            ip(&["link", "set", &port, "master", BRIDGE]);
            let c = |args: &[&str]| {
                container.ip(args).expect("ip in a container");
            };
            c(&[
                "addr",
                "add",
                &format!("{}/24", container_ip(i)),
                "dev",
                "eth0",
            ]);
            host.set_up(&port).expect("a bridge port up");
            container.set_up("eth0").expect("a container's eth0 up");
            c(&["route", "add", "default", "via", &BRIDGE_IP.to_string()]);
            c(&[
                "neigh",
                "replace",
                &BRIDGE_IP.to_string(),
                "lladdr",
                BRIDGE_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            ip(&[
                "neigh",
                "replace",
                &container_ip(i).to_string(),
                "lladdr",
                &mac,
                "dev",
                BRIDGE,
                "nud",
                "permanent",
            ]);
        }
        host.set_up(BRIDGE).expect("the bridge up");
        for name in COUNTED {
            host.wait_oper_up(name).expect("up");
        }
        for container in &containers {
            container.wait_oper_up("eth0").expect("up");
        }
        let mut counted = COUNTED.to_vec();
        if macvlan(&host, STACKED, UPLINK) {
            counted.push(STACKED);
        }
        Self {
            host,
            inet,
            containers,
            counted,
            inet_ip,
            control_ip,
        }
    }

    /// The kernel's statistics of every counted interface of `host`, once
    /// none of them moves any more.
    fn settle(&self) -> BTreeMap<&'static str, IfStats> {
        let read = || -> BTreeMap<&'static str, IfStats> {
            self.counted
                .iter()
                .map(|name| (*name, self.host.kernel_stats(name).expect("stats")))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = read();
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = read();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    fn ifindex(&self, name: &str) -> u64 {
        self.host
            .exec("cat", &[&format!("/sys/class/net/{name}/ifindex")])
            .expect("cat ifindex")
            .trim()
            .parse()
            .expect("an ifindex")
    }

    /// Bounded traffic between the containers and `inet`, both ways: TCP
    /// from container 0 out and into container 1, UDP out of container 1.
    fn traffic(&self) {
        let [c0, c1] = &self.containers;
        let pace = Duration::from_millis(2);
        thread::scope(|scope| {
            scope.spawn(|| {
                tcp_transfer(c0, &self.inet, self.inet_ip, 3 << 20, pace)
                    .expect("TCP out of container 0")
            });
            scope.spawn(|| {
                tcp_transfer(&self.inet, c1, container_ip(1), 2 << 20, pace)
                    .expect("TCP into container 1")
            });
        });
        udp_burst(c1, container_ip(1), &self.inet, self.inet_ip, 600, 1_000)
            .expect("UDP out of container 1");
    }
}

/// Adds a macvlan `name` on `parent`, left down; `false` (with the reason
/// printed) when the kernel cannot make one.
fn macvlan(ns: &Netns, name: &str, parent: &str) -> bool {
    let err = match ns.ip(&[
        "link", "add", "link", parent, "name", name, "type", "macvlan", "mode", "bridge",
    ]) {
        Ok(_) => return true,
        Err(NetnsError::Ip { stderr, .. }) => stderr,
        Err(error) => panic!("ip link add {name} type macvlan: {error}"),
    };
    assert!(
        err.contains("Unknown device type") || err.contains("not supported"),
        "ip link add {name} type macvlan: {err}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIP part of count_rules: this kernel cannot make a macvlan ({})",
        err.trim()
    );
    false
}

/// `(rx_bytes, tx_bytes)` of the kernel's counts of `name` between two
/// readings, as the agent counts them: a bridge's rx statistics leave out
/// the Ethernet header of each frame passed up to the host, which its
/// ingress hook counts.
fn counted(
    name: &str,
    start: &BTreeMap<&str, IfStats>,
    end: &BTreeMap<&str, IfStats>,
) -> (u64, u64) {
    let stats = end[name]
        .checked_since(&start[name])
        .expect("counters only grow");
    let header = if name == BRIDGE {
        ETHERNET_HEADER * stats.rx_packets
    } else {
        0
    };
    (stats.rx_bytes + header, stats.tx_bytes)
}

/// What the two rules must count over a run: `(download, upload)` of every
/// counted interface, and of the uplink alone.
fn expected(start: &BTreeMap<&str, IfStats>, end: &BTreeMap<&str, IfStats>) -> [(u64, u64); 2] {
    let all = start.keys().fold((0, 0), |(rx, tx), name| {
        let (r, t) = counted(name, start, end);
        (rx + r, tx + t)
    });
    [all, counted(UPLINK, start, end)]
}

/// `tally-collector <args>` against the test's database.
fn collector_cli(url: &str, args: &[&str]) -> String {
    let binary = common::Collector::binary();
    let out = Command::new(&binary)
        .args(args)
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    assert!(
        out.status.success(),
        "tally-collector {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One run: a fresh agent reporting for `node` while the containers send
/// and receive; returns what the node stored once the agent stopped, and
/// what each rule should have counted.
struct Run<'a> {
    net: &'a ContainerHost,
    store: &'a Store,
    collector: &'a Collector,
}

/// What a run counted, and what it should have.
struct Outcome {
    /// `(totalDownload, totalUpload)` once they equal `want` (or at the
    /// deadline), and after the agent's stop.
    stored: Option<(u64, u64)>,
    after_stop: Option<(u64, u64)>,
    /// What `all` and `uplink` count over the run.
    rules: [(u64, u64); 2],
    context: String,
}

impl Run<'_> {
    fn run(&self, node: &nodes::Added, token_file: &Path, rule: usize) -> Outcome {
        let url = self.collector.url();
        let start = self.net.settle();
        let mut agent = Agent::start(&self.net.host, &reporting_args(&url, token_file));
        for name in &self.net.counted {
            agent.wait_for(name);
        }
        self.check_stacking(&agent);

        self.net.traffic();
        let end = self.net.settle();
        let rules = expected(&start, &end);
        let want = rules[rule];

        let stored = self
            .store
            .wait_for_totals(&node.id, want, Duration::from_secs(20));
        let agent_view: Vec<String> = self
            .net
            .counted
            .iter()
            .map(|name| {
                let ours = agent.counters(name);
                format!(
                    "{name}: agent (rx, tx) ({}, {}), kernel (bridge rx + headers) {:?}",
                    ours.rx_bytes,
                    ours.tx_bytes,
                    counted(name, &start, &end)
                )
            })
            .collect();
        agent.stop();
        let after_stop = self.store.totals(&node.id);
        let context = format!(
            "per interface:\n{}\nagent log (tail):\n{}\ncollector log (tail):\n{}",
            agent_view.join("\n"),
            tail(&agent.log(), 40),
            tail(&self.collector.log(), 40)
        );
        Outcome {
            stored,
            after_stop,
            rules,
            context,
        }
    }

    /// The agent reports each port's bridge as its master, no lower device
    /// for a veth (whose IFLA_LINK is its peer, here in another namespace),
    /// and the uplink as the macvlan's.
    fn check_stacking(&self, agent: &Agent) {
        let bridge = self.net.ifindex(BRIDGE);
        let mut want = vec![
            (UPLINK, 0, 0),
            (BRIDGE, 0, 0),
            ("vethc0", bridge, 0),
            ("vethc1", bridge, 0),
        ];
        if self.net.counted.contains(&STACKED) {
            want.push((STACKED, 0, self.net.ifindex(UPLINK)));
        }
        for (name, master, lower) in want {
            let entry = agent
                .iface(name)
                .unwrap_or_else(|| panic!("{name} in the status; log:\n{}", agent.log()));
            assert_eq!(
                (
                    entry["master_ifindex"].as_u64(),
                    entry["link_ifindex"].as_u64()
                ),
                (Some(master), Some(lower)),
                "{name}: {entry}"
            );
        }
    }
}

#[test]
fn uplink_counts_container_traffic_once_and_all_counts_every_interface() {
    let test = "uplink_counts_container_traffic_once_and_all_counts_every_interface";
    if !privileged(test) {
        return;
    }
    let Some(store) = Store::start_or_skip(test) else {
        return;
    };
    let url = &store.url;
    let (all_node, all_token) = store.add_node("rule-all");
    let (uplink_node, uplink_token) = store.add_node("rule-uplink");
    // `all` is the fleet default; say it anyway, and `uplink` for the other.
    collector_cli(url, &["billing", "set", "rule-all", "--count-rule", "all"]);
    let shown = collector_cli(
        url,
        &["billing", "set", "rule-uplink", "--count-rule", "uplink"],
    );
    assert!(shown.contains("uplink"), "{shown}");

    let net = ContainerHost::build();
    let collector = store.collector(
        &net.inet,
        SocketAddr::from((net.control_ip, COLLECTOR_PORT)),
    );
    let run = Run {
        net: &net,
        store: &store,
        collector: &collector,
    };

    // (a) "all but loopback": every counted interface's traffic.
    let all = run.run(&all_node, &all_token, 0);
    let [every, uplink] = all.rules;
    assert!(
        every.0 > 2 * uplink.0 && every.1 > 2 * uplink.1,
        "the container traffic crossed the bridge and a port besides the uplink: \
         all {every:?}, uplink {uplink:?}"
    );
    assert_eq!(
        all.stored,
        Some(every),
        "rule all: stored (download, upload) must equal the kernel's (rx, tx) summed over {:?}\n{}",
        net.counted,
        all.context
    );
    assert_eq!(
        all.after_stop,
        Some(every),
        "rule all: nothing more after the stop\n{}",
        all.context
    );

    // (b) "physical and uplink only", a fresh agent and epoch: the uplink's
    // traffic alone.
    let up = run.run(&uplink_node, &uplink_token, 1);
    let [every, uplink] = up.rules;
    assert!(
        uplink.0 > 2 << 20 && uplink.1 > 3 << 20,
        "the containers' traffic crossed the uplink: {uplink:?}"
    );
    assert_ne!(every, uplink);
    assert_eq!(
        up.stored,
        Some(uplink),
        "rule uplink: stored (download, upload) must equal the kernel's (rx, tx) of {UPLINK} \
         only (summed over every interface: {every:?})\n{}",
        up.context
    );
    assert_eq!(
        up.after_stop,
        Some(uplink),
        "rule uplink: nothing more after the stop\n{}",
        up.context
    );

    // The second run's heartbeats went to its own node only.
    let first = store.totals(&all_node.id);
    assert_eq!(
        first, all.after_stop,
        "the first node is untouched by the second run"
    );
}
