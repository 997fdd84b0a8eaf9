//! The test network: two throwaway namespaces (tally-testkit's [`Netns`],
//! deleted when dropped) joined by a veth pair.

use std::net::Ipv4Addr;

use anyhow::Context as _;
pub(super) use tally_testkit::netns::Netns;

const VETH_A: &str = "veth-a";
const VETH_B: &str = "veth-b";
const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// One end of the test network.
pub(super) struct Side {
    pub(super) ns: Netns,
    pub(super) veth: &'static str,
    pub(super) addr: Ipv4Addr,
    pub(super) ifindex: u32,
}

/// Two namespaces joined by a veth pair, 10.213.0.1/24 (A) and .2 (B).
pub(super) struct TestNet {
    pub(super) prefix: String,
    pub(super) a: Side,
    pub(super) b: Side,
}

impl TestNet {
    pub(super) fn create() -> anyhow::Result<Self> {
        let prefix = format!("tallyb-{}-", std::process::id());
        // Each namespace is deleted by its guard if a later step fails.
        let ns_a = Netns::create(format!("{prefix}a"))?;
        let ns_b = Netns::create(format!("{prefix}b"))?;
        // Distinct ifindexes, so that each veth has its own counters (fresh
        // namespaces would give both the same one).
        ns_a.ip(&[
            "link", "add", VETH_A, "index", "11", "type", "veth", "peer", "name", VETH_B, "index",
            "12", "netns", &ns_b.name,
        ])?;
        let a = Side::configure(ns_a, VETH_A, ADDR_A)?;
        let b = Side::configure(ns_b, VETH_B, ADDR_B)?;
        eprintln!(
            "bench: namespaces {} ({}, {}) and {} ({}, {})",
            a.ns.name, a.veth, a.addr, b.ns.name, b.veth, b.addr
        );
        Ok(Self { prefix, a, b })
    }

    pub(super) fn side(&self, which: End) -> &Side {
        match which {
            End::A => &self.a,
            End::B => &self.b,
        }
    }

    pub(super) fn delete(&mut self) -> anyhow::Result<()> {
        let a = self.a.ns.delete();
        let b = self.b.ns.delete();
        Ok(a.and(b)?)
    }
}

impl Side {
    fn configure(ns: Netns, veth: &'static str, addr: Ipv4Addr) -> anyhow::Result<Self> {
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", veth])?;
        ns.ip(&["link", "set", veth, "up"])?;
        let json = ns.ip(&["-j", "link", "show", "dev", veth])?;
        let links: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("cannot parse `ip -j`: {json}"))?;
        let ifindex = links
            .get(0)
            .and_then(|link| link.get("ifindex"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {veth} in `ip -j`: {json}"))?;
        Ok(Self {
            ns,
            veth,
            addr,
            ifindex,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum End {
    A,
    B,
}
