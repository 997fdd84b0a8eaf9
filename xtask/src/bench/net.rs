//! The test network: two throwaway namespaces joined by a veth pair, guards
//! that delete them when dropped, `ip` and entering a namespace (setns).

use std::{fs, io, net::Ipv4Addr, os::fd::AsRawFd as _, path::Path, process::Command, thread};

use anyhow::{Context as _, anyhow, bail};

const VETH_A: &str = "veth-a";
const VETH_B: &str = "veth-b";
const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// A network namespace made by the benchmark, deleted when dropped.
pub(super) struct Netns {
    pub(super) name: String,
    deleted: bool,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Self> {
        run_ip(&["netns", "add", &name])?;
        Ok(Self {
            name,
            deleted: false,
        })
    }

    /// `ip -n <name> <args>`.
    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Runs `f` on a thread that has entered this namespace: interface names
    /// it resolves and sockets it creates are this namespace's.
    pub(super) fn enter<T: Send>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let path = Path::new("/run/netns").join(&self.name);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    // SAFETY: a valid namespace descriptor; setns changes the
                    // network namespace of this (short-lived) thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error())
                            .with_context(|| format!("cannot enter {}", path.display()));
                    }
                    f()
                })
                .join()
                .map_err(|_| anyhow!("the thread in namespace {} panicked", self.name))?
        })
    }

    fn delete(&mut self) -> anyhow::Result<()> {
        if !self.deleted {
            run_ip(&["netns", "delete", &self.name])?;
            self.deleted = true;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = self.delete() {
            eprintln!("bench: {error:#}");
        }
    }
}

fn run_ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("cannot run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our namespaces still listed by `ip netns list`.
pub(super) fn leftover_namespaces(prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(run_ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

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
        a.and(b)
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
