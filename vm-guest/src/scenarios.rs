//! What `vm-test` checks in each VM, in order, on a veth pair `tv0` (root
//! namespace, counted) – `tv1` (the peer's namespace), both without TCP or
//! UDP segmentation offload so that their statistics count wire frames
//! ([`ethtool::WIRE_LIKE`]):
//!
//! 1. `tcx-refused`: `--attach tcx` on a kernel without TCX fails with the
//!    documented message (only where `auto` must pick netlink);
//! 2. `attach-auto`: the agent (reporting to the collector on the host)
//!    attaches in the mode this kernel offers, seen in its log and in the
//!    kernel's filter list;
//! 3. `exact-counting`: TCP and UDP both ways; the agent's rx/tx bytes and
//!    packets equal the kernel's statistics exactly;
//! 4. `kill-9-restart`: SIGKILL during a transfer and a restart adopt the
//!    pinned counters with the same epoch, nothing lost;
//! 5. `last-heartbeat`: SIGTERM delivers a last heartbeat; then the kernel's
//!    counts since before the start are printed for the host's check;
//! 6. `detach`: no filter, program, map or pin is left (the kernel's view);
//! 7. `nic-offloads`: the VM's NIC with GRO (and TSO where it has it) on
//!    and off, traffic from the host: exact (see [`crate::nic`]);
//! 8. `veth-gro`: TCP over IPv6 and over a VLAN on a second veth pair with
//!    GRO on: exact (see [`crate::gro`]);
//! 9. `link-classes`: vlan, macvlan, bridge, dummy, wireguard, veth and the
//!    VM's NIC get the kinds the link-classes test expects;
//! 10. `procfs`: the /proc/net/dev source reads the kernel's counts, and
//!     `run --source procfs` runs.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    Config, Report,
    agent::{self, Agent},
    ethtool, gro,
    net::{Hook, Netns, Rtnl, sysctl},
    nic, say,
    stats::{Counts, expect_exact},
    traffic::{Direction, Ends},
};

pub const COUNTED: &str = "tv0";
const PEER: &str = "tv1";
const ROOT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PIN_DIR: &str = "/sys/fs/bpf/tally";
const PROGRAMS: [&str; 2] = ["tally_ingress", "tally_egress"];

/// The veth pair and its namespaces.
pub struct Lab {
    peer_ns: Netns,
    root: Rtnl,
}

impl Lab {
    pub fn build() -> anyhow::Result<Self> {
        let peer_ns = Netns::create()?;
        let root = Rtnl::open()?;
        root.add_veth(COUNTED, PEER, &peer_ns)?;
        // No IPv6 chatter (router solicitations, DAD) on the pair: the
        // kernel's counts then hold only the test's traffic.
        sysctl(&format!("net/ipv6/conf/{COUNTED}/disable_ipv6"), "1")?;
        root.address(COUNTED, ROOT_IP)?;
        ethtool::set(COUNTED, ethtool::WIRE_LIKE)?;
        root.up(COUNTED)?;
        peer_ns.run(|| {
            sysctl(&format!("net/ipv6/conf/{PEER}/disable_ipv6"), "1")?;
            ethtool::set(PEER, ethtool::WIRE_LIKE)?;
            let peer = Rtnl::open()?;
            peer.address(PEER, PEER_IP)?;
            peer.up(PEER)?;
            peer.up("lo")
        })?;
        let lab = Self { peer_ns, root };
        // The first packets of a pair that just came up may be lost
        // (carrier); one exchange before any counting.
        lab.ends().tcp(Direction::Out, 1024)?;
        Ok(lab)
    }

    pub fn ends(&self) -> Ends<'_> {
        Ends {
            root: ROOT_IP.into(),
            peer: PEER_IP.into(),
            peer_ns: &self.peer_ns,
        }
    }

    /// The counted veth's ifindex.
    pub fn counted_ifindex(&self) -> anyhow::Result<u32> {
        self.root.index(COUNTED)
    }

    /// Our programs' filters on the counted veth, as the kernel lists them.
    fn filters(&self) -> anyhow::Result<[Vec<(String, u32)>; 2]> {
        Ok([
            self.root.bpf_filters(COUNTED, Hook::Ingress)?,
            self.root.bpf_filters(COUNTED, Hook::Egress)?,
        ])
    }

    /// In netlink mode exactly one filter of ours per hook (`tally_ingress`,
    /// `tally_egress`); in TCX mode none.
    fn expect_filters(&self, mode: &str) -> anyhow::Result<()> {
        let filters = self.filters()?;
        for (hook, (program, found)) in ["ingress", "egress"]
            .iter()
            .zip(PROGRAMS.iter().zip(&filters))
        {
            let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
            let want: Vec<&str> = if mode == "netlink" {
                vec![program]
            } else {
                vec![]
            };
            ensure!(
                names == want,
                "the kernel lists the BPF filters {names:?} on the {hook} of {COUNTED}, \
                 expected {want:?} in {mode} mode"
            );
        }
        Ok(())
    }
}

pub fn run_all(config: &Config, report: &mut Report) {
    let lab = match Lab::build() {
        Ok(lab) => lab,
        Err(error) => return report.run("setup", || Err(error)),
    };
    if config.attach_mode == "netlink" {
        report.run("tcx-refused", tcx_refused);
    }
    let kernel_start = Counts::of_kernel_settled(COUNTED);
    let mut reporting: Option<Agent> = None;
    report.run("attach-auto", || {
        let agent = attach_auto(config, &lab)?;
        reporting = Some(agent);
        Ok(())
    });
    if let (Some(agent), Ok(kernel_start)) = (reporting.as_mut(), kernel_start) {
        report.run("exact-counting", || exact_counting(&lab, agent));
        report.run("kill-9-restart", || kill_9_restart(config, &lab, agent));
        report.run("last-heartbeat", || last_heartbeat(agent, kernel_start));
        report.run("detach", || detach(&lab, agent));
    }
    report.run("nic-offloads", nic::offloads);
    report.run("veth-gro", gro::veth_gro);
    report.run("link-classes", link_classes);
    report.run("procfs", procfs);
}

fn tcx_refused() -> anyhow::Result<()> {
    let pin_dir = "/sys/fs/bpf/tally-tcx";
    let mut agent = Agent::start("agent-tcx", pin_dir, &["--attach", "tcx"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "--attach tcx still runs after 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let log = agent.log();
    ensure!(!status.success(), "--attach tcx ran; its log:\n{log}");
    let documented = "--attach tcx needs kernel 6.6 or newer; use --attach auto or netlink";
    ensure!(
        log.contains(documented),
        "--attach tcx failed without the documented message; its log:\n{log}"
    );
    Ok(())
}

fn attach_auto(config: &Config, lab: &Lab) -> anyhow::Result<Agent> {
    let mut agent = Agent::start(
        "agent",
        PIN_DIR,
        &[
            "--include",
            COUNTED,
            "--interval",
            "1s",
            "--collector",
            &config.collector,
            "--insecure-plaintext",
            "--token-file",
            &config.token_file,
            "--state-dir",
            "/tmp/agent-state",
        ],
    )?;
    agent.wait_attached(&[COUNTED])?;
    let log = agent.log();
    let mode_line = log
        .lines()
        .find(|line| line.contains("attach mode"))
        .with_context(|| format!("no attach mode in the log:\n{log}"))?;
    ensure!(
        mode_line.contains(&format!("mode={}", config.attach_mode))
            || mode_line.contains(&format!("mode=\"{}\"", config.attach_mode)),
        "auto must pick {} on this kernel: {mode_line}",
        config.attach_mode
    );
    lab.expect_filters(&config.attach_mode)?;
    Ok(agent)
}

fn exact_counting(lab: &Lab, agent: &Agent) -> anyhow::Result<()> {
    let start = agent.readings(COUNTED)?;
    let ends = lab.ends();
    ends.tcp(Direction::Out, 4 << 20)?;
    ends.tcp(Direction::In, 4 << 20)?;
    ends.udp(Direction::Out, 2_000, 64)?;
    ends.udp(Direction::In, 2_000, 1_200)?;
    agent.expect_exact_since(COUNTED, start, "TCP and UDP both ways")
}

fn kill_9_restart(config: &Config, lab: &Lab, agent: &mut Agent) -> anyhow::Result<()> {
    let start = agent.readings(COUNTED)?;
    let epoch = agent.status()?["epoch"].clone();
    let ends = lab.ends();
    let before_restart = agent.log().len();
    thread::scope(|scope| -> anyhow::Result<()> {
        let transfer = scope.spawn(|| ends.tcp(Direction::In, 16 << 20));
        thread::sleep(Duration::from_millis(300));
        agent.kill9()?;
        thread::sleep(Duration::from_millis(1_500));
        agent.restart()?;
        let joined = transfer
            .join()
            .map_err(|_| anyhow::anyhow!("the transfer panicked"))?;
        joined.context("the transfer during the kill")
    })?;
    // The status reads the pins, which outlive the agent: wait for the
    // restarted one to say it is attached.
    let restarted = agent.wait_for_log(before_restart, "attached; counting")?;
    ensure!(
        restarted.contains("adopted the pinned counter set"),
        "the restarted agent did not adopt its counters; its log:\n{restarted}"
    );
    ends.udp(Direction::Out, 1_000, 200)?;
    let after = agent.status()?["epoch"].clone();
    ensure!(
        after == epoch,
        "the epoch changed from {epoch} to {after} across the restart"
    );
    lab.expect_filters(&config.attach_mode)?;
    agent.expect_exact_since(COUNTED, start, "across kill -9 and restart")
}

fn last_heartbeat(agent: &mut Agent, kernel_start: Counts) -> anyhow::Result<()> {
    agent.stop()?;
    let log = agent.log();
    ensure!(
        log.contains("last heartbeat delivered"),
        "SIGTERM did not deliver a last heartbeat; the agent's log:\n{log}"
    );
    let kernel = Counts::of_kernel_settled(COUNTED)?.since(kernel_start)?;
    say(&format!(
        "tally-vm: e2e {} {}",
        kernel.rx_bytes, kernel.tx_bytes
    ));
    Ok(())
}

/// The ids of the maps pinned in `dir`.
fn pinned_map_ids(dir: &std::path::Path) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.context("a pin")?.path();
        if let Ok(map) = aya::maps::MapData::from_pin(&path) {
            ids.push(map.info().context("map info")?.id());
        }
    }
    Ok(ids)
}

fn detach(lab: &Lab, agent: &Agent) -> anyhow::Result<()> {
    let programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|name| PROGRAMS.contains(&name)))
        .map(|p| p.id())
        .collect();
    ensure!(
        programs.len() == 2,
        "two programs of ours before detach, the kernel lists {programs:?}"
    );
    let maps = pinned_map_ids(&agent.pin_dir)?;
    ensure!(!maps.is_empty(), "no pinned map before detach");
    let out = agent.cli(&["detach"])?;
    ensure!(
        out.status.success(),
        "detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !agent.pin_dir.exists(),
        "{} is still there",
        agent.pin_dir.display()
    );
    let filters = lab.filters()?;
    ensure!(
        filters.iter().all(Vec::is_empty),
        "BPF filters left on {COUNTED}: {filters:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let programs_left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        let maps_left: Vec<u32> = aya::maps::loaded_maps()
            .filter_map(Result::ok)
            .map(|m| m.id())
            .filter(|id| maps.contains(id))
            .collect();
        if programs_left.is_empty() && maps_left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "5 s after detach the kernel still has programs {programs_left:?} and maps {maps_left:?}"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `name -> (kind, default_route)` of the interfaces a status lists.
fn classes(status: &serde_json::Value) -> BTreeMap<String, (String, bool)> {
    status["interfaces"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| {
                    Some((
                        i["name"].as_str()?.to_owned(),
                        (
                            i["kind"].as_str()?.to_owned(),
                            i["default_route"].as_bool()?,
                        ),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn expect_classes(
    source: &str,
    status: &serde_json::Value,
    want: &BTreeMap<String, (String, bool)>,
) -> anyhow::Result<()> {
    let got = classes(status);
    let wrong: Vec<String> = want
        .iter()
        .filter(|(name, class)| got.get(*name) != Some(class))
        .map(|(name, class)| format!("{name}: want {class:?}, got {:?}", got.get(name)))
        .collect();
    ensure!(wrong.is_empty(), "{source}: {}", wrong.join("; "));
    Ok(())
}

fn link_classes() -> anyhow::Result<()> {
    let root = Rtnl::open()?;
    let links = [
        ("vlan", "tv0.10", "vlan"),
        ("macvlan", "mv0", "macvlan"),
        ("bridge", "br0", "bridge"),
        // (The dummy module makes a dummy0 of its own when loaded.)
        ("dummy", "dummy9", "other"),
        ("wireguard", "wg0", "wireguard"),
    ];
    let mut want: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (kind, name, class) in links {
        root.add_kind(kind, name, COUNTED)?;
        root.up(name)?;
        want.insert(name.to_owned(), (class.to_owned(), false));
    }
    want.insert(COUNTED.to_owned(), ("veth".to_owned(), false));
    // The VM's NIC (virtio-net) carries the default route.
    want.insert("eth0".to_owned(), ("physical".to_owned(), true));
    let names: Vec<&str> = want.keys().map(String::as_str).collect();

    let mut agent = Agent::start(
        "agent-classes",
        "/sys/fs/bpf/tally-classes",
        &["--interval", "1s"],
    )?;
    let status = agent.wait_attached(&names)?;
    expect_classes("status (eBPF)", &status, &want)?;
    let procfs = agent::json_of(&agent.cli(&["status", "--source", "procfs", "--json"])?)?;
    expect_classes("status --source procfs", &procfs, &want)?;
    agent.stop()?;
    let out = agent.cli(&["detach"])?;
    ensure!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn procfs() -> anyhow::Result<()> {
    let mut agent = Agent::start(
        "agent-procfs",
        "/sys/fs/bpf/tally-procfs",
        &["--source", "procfs", "--interval", "1s"],
    )?;
    thread::sleep(Duration::from_secs(3));
    ensure!(
        agent.try_wait()?.is_none(),
        "run --source procfs exited; its log:\n{}",
        agent.log()
    );
    let kernel = Counts::of_kernel_settled(COUNTED)?;
    let status = agent::json_of(&agent.cli(&["status", "--source", "procfs", "--json"])?)?;
    expect_exact(
        "status --source procfs against /sys",
        Counts::of_status(&status, COUNTED)?,
        kernel,
    )?;
    agent.stop()
}
