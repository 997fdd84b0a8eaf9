//! The demo's test hosts: one network namespace per host and one for the
//! "hub" (a router, and the internet the hosts talk to), joined by veth
//! pairs, plus one control veth per host to the root namespace, where the
//! collector listens.
//!
//! ```text
//!   host alpha ── eth0 ═══ alpha ─┐
//!   host bravo ── eth0 ═══ bravo ─┤ hub (forwards; 198.51.100.1 on lo)
//! host charlie ── eth0 ═══ charlie┘
//!   each host ── ctl0 ═══ tdemo<pid><x> (root namespace, the collector)
//! ```
//!
//! `eth0` is the counted interface; the agent excludes `ctl0`, which carries
//! only its heartbeats. IPv6 is off and every neighbour on `eth0` is static,
//! so nothing but the demo's own traffic crosses a counted interface and the
//! kernel's statistics of `eth0` are the exact figures to check against.
//!
//! Every namespace ([`Netns`], from tally-testkit) is deleted when dropped
//! (with the veths in it; a veth's peer goes with it); the counted links
//! are tally-testkit's [`VethPair`]s.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tally_testkit::netns::VethPair;
pub use tally_testkit::netns::{IfStats, Netns, ip};

/// Every namespace, pin directory and run directory of the demo starts
/// with this, then the pid of the `xtask` process that made it.
pub const PREFIX: &str = "tally-demo-";
/// Root-namespace ends of the control veths: this, the pid, a letter.
pub const LINK_PREFIX: &str = "tdemo";
/// The interface the agents count, in every host.
pub const COUNTED_IF: &str = "eth0";
/// The interface the heartbeats use, excluded from counting.
pub const CONTROL_IF: &str = "ctl0";
/// The hub's "internet" address (TEST-NET-2), on its loopback.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// One test host.
pub struct Host {
    /// `alpha`, `bravo`, `charlie`.
    pub name: &'static str,
    pub ns: Netns,
    /// The address of its counted interface.
    pub addr: Ipv4Addr,
}

/// The hosts, the hub and the collector's address on the control links.
pub struct Network {
    pub hosts: Vec<Host>,
    pub hub: Netns,
    /// Where the collector listens (on every control veth's root end).
    pub collector_addr: Ipv4Addr,
}

impl Network {
    /// Makes the namespaces and links for hosts `names` of run `run` (the
    /// pid). Whatever was made is deleted again if a step fails.
    pub fn create(run: u32, names: &[&'static str]) -> anyhow::Result<Self> {
        let control = control_subnet(run)?;
        let hub = Netns::create_host(format!("{PREFIX}{run}-hub"))?;
        hub.sysctl("net.ipv4.ip_forward", "1")?;
        hub.ip(&["addr", "add", &format!("{INTERNET}/32"), "dev", "lo"])?;
        let collector_addr = Ipv4Addr::new(10, 215, control, 1);
        let mut hosts = Vec::new();
        for (index, &name) in names.iter().enumerate() {
            let ns = Netns::create_host(format!("{PREFIX}{run}-{name}"))?;
            let n = u8::try_from(index + 1).context("too many hosts")?;
            let addr = data_link(&ns, &hub, name, n)?;
            let letter = name.chars().next().unwrap_or('x');
            control_link(
                &ns,
                &format!("{LINK_PREFIX}{run}{letter}"),
                collector_addr,
                n,
            )?;
            hosts.push(Host { name, ns, addr });
        }
        Ok(Self {
            hosts,
            hub,
            collector_addr,
        })
    }

    /// The kernel's statistics of every host's counted interface.
    pub fn kernel_counts(&self) -> anyhow::Result<Vec<IfStats>> {
        self.hosts
            .iter()
            .map(|host| Ok(host.ns.kernel_stats(COUNTED_IF)?))
            .collect()
    }

    /// [`Self::kernel_counts`] once they have not moved for a second (the last
    /// segments and acknowledgements of the closed streams are through).
    pub fn settled_counts(&self) -> anyhow::Result<Vec<IfStats>> {
        let mut last = self.kernel_counts()?;
        let mut still_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            thread::sleep(Duration::from_millis(200));
            let now = self.kernel_counts()?;
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= Duration::from_secs(1) {
                return Ok(last);
            }
            if Instant::now() > deadline {
                bail!("the counted interfaces did not go quiet within 15 s of the traffic's end");
            }
        }
    }

    /// Deletes every namespace now, reporting the first failure.
    pub fn delete(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for host in &mut self.hosts {
            result = result.and(host.ns.delete());
        }
        Ok(result.and(self.hub.delete())?)
    }
}

/// The counted link of host number `n`: `eth0` (10.216.n.1/24, default
/// route through the hub) ═ `<name>` in the hub (10.216.n.2/24), static
/// neighbours both ways, both up. Returns the host's address.
fn data_link(host: &Netns, hub: &Netns, name: &str, n: u8) -> anyhow::Result<Ipv4Addr> {
    let pair = VethPair::new(COUNTED_IF, name, [10, 216, n], [0x02, 0x7a, 0xde, n]);
    pair.create(host, hub)?;
    pair.set_up(host, hub)?;
    host.ip(&["route", "add", "default", "via", &pair.b.addr.to_string()])?;
    Ok(pair.a.addr)
}

/// The control link of host number `n`: `ctl0` (10.215.c.(n+1)/32) ═
/// `root_end` in the root namespace, which holds the collector's address
/// 10.215.c.1/32 (on every host's root end) and a route to the host.
fn control_link(host: &Netns, root_end: &str, collector: Ipv4Addr, n: u8) -> anyhow::Result<()> {
    let [a, b, c, _] = collector.octets();
    let host_addr = Ipv4Addr::new(a, b, c, n + 1);
    ip(&[
        "link", "add", root_end, "type", "veth", "peer", "name", CONTROL_IF, "netns", &host.name,
    ])?;
    ip(&["addr", "add", &format!("{collector}/32"), "dev", root_end])?;
    ip(&["link", "set", root_end, "up"])?;
    ip(&["route", "add", &format!("{host_addr}/32"), "dev", root_end])?;
    host.ip(&["addr", "add", &format!("{host_addr}/32"), "dev", CONTROL_IF])?;
    host.ip(&["link", "set", CONTROL_IF, "up"])?;
    host.ip(&[
        "route",
        "add",
        &format!("{collector}/32"),
        "dev",
        CONTROL_IF,
        "src",
        &host_addr.to_string(),
    ])?;
    Ok(())
}

/// A third octet c such that no address in 10.215.c.0/24 is configured in
/// the root namespace (another demo running at the same time uses one).
fn control_subnet(run: u32) -> anyhow::Result<u8> {
    let json = ip(&["-j", "-4", "addr", "show"])?;
    let start = run % 250;
    (0..250)
        .map(|i| u8::try_from((start + i) % 250).unwrap_or(0))
        .find(|c| !json.contains(&format!("\"10.215.{c}.")))
        .context("no free 10.215.x.0/24 subnet for the control links")
}
