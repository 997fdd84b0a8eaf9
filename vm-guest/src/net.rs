//! The guest's links through rtnetlink (a VM's initramfs has no iproute2):
//! a network namespace held open by a file descriptor, the veth pair between
//! it and the root namespace, the other link kinds the agent classifies,
//! and the tc filters on a hook as the kernel lists them.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, RawFd},
    thread,
};

use anyhow::{Context as _, bail};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkDummy, LinkMacVlan, LinkUnspec, LinkVeth, LinkVlan, LinkWireguard,
    packet_route::{
        link::MacVlanMode,
        tc::{TcAttribute, TcFilterBpfOption, TcOption},
    },
};

/// A network namespace of its own, alive while this is.
pub struct Netns {
    file: File,
}

impl Netns {
    /// A new, empty namespace (made by a thread that leaves it again).
    pub fn create() -> anyhow::Result<Self> {
        let file = thread::spawn(|| -> anyhow::Result<File> {
            // SAFETY: unshare only changes this short-lived thread's namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            File::open("/proc/thread-self/ns/net").context("opening the new namespace")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??;
        Ok(Self { file })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a thread inside the namespace (sockets it makes stay
    /// there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let fd = self.fd();
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns moves only this scoped thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in the namespace panicked"))?
        })
    }
}

/// An rtnetlink connection of the namespace it was opened in.
pub struct Rtnl {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Rtnl {
    /// Opens a connection in the calling thread's namespace.
    pub fn open() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("a tokio runtime")?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().context("an rtnetlink socket")?;
            tokio::spawn(connection);
            anyhow::Ok(handle)
        })?;
        Ok(Self { runtime, handle })
    }

    /// The ifindex of `name`.
    pub fn index(&self, name: &str) -> anyhow::Result<u32> {
        self.runtime.block_on(async {
            let mut links = self
                .handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute();
            match links.try_next().await {
                Ok(Some(link)) => Ok(link.header.index),
                Ok(None) => bail!("no link {name}"),
                Err(error) => bail!("looking up {name}: {error}"),
            }
        })
    }

    /// The veth pair `name`-`peer`, `peer` moved into `netns`.
    pub fn add_veth(&self, name: &str, peer: &str, netns: &Netns) -> anyhow::Result<()> {
        self.add(&format!("veth {name}"), LinkVeth::new(name, peer).build())?;
        let index = self.index(peer)?;
        self.runtime
            .block_on(
                self.handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .setns_by_fd(netns.fd())
                            .build(),
                    )
                    .execute(),
            )
            .with_context(|| format!("moving {peer} into the namespace"))
    }

    /// A link of another kind: `vlan` (id 10), `macvlan` (bridge mode, both
    /// on `parent`), `bridge`, `dummy` or `wireguard`.
    pub fn add_kind(&self, kind: &str, name: &str, parent: &str) -> anyhow::Result<()> {
        let message = match kind {
            "vlan" => LinkVlan::new(name, self.index(parent)?, 10).build(),
            "macvlan" => LinkMacVlan::new(name, self.index(parent)?, MacVlanMode::Bridge).build(),
            "bridge" => LinkBridge::new(name).build(),
            "dummy" => LinkDummy::new(name).build(),
            "wireguard" => LinkWireguard::new(name).build(),
            other => bail!("no such link kind here: {other}"),
        };
        self.add(&format!("{kind} {name}"), message)
    }

    fn add(
        &self,
        what: &str,
        message: rtnetlink::packet_route::link::LinkMessage,
    ) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.handle.link().add(message).execute())
            .with_context(|| format!("creating {what}"))
    }

    /// Sets `name` up.
    pub fn up(&self, name: &str) -> anyhow::Result<()> {
        let index = self.index(name)?;
        self.runtime
            .block_on(
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute(),
            )
            .with_context(|| format!("setting {name} up"))
    }

    /// Gives `name` the address `addr/24`.
    pub fn address(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        let index = self.index(name)?;
        self.runtime
            .block_on(self.handle.address().add(index, addr.into(), 24).execute())
            .with_context(|| format!("adding {addr}/24 to {name}"))
    }

    /// Adds `addr`/64 to `name`.
    pub fn address_v6(&self, name: &str, addr: std::net::Ipv6Addr) -> anyhow::Result<()> {
        let index = self.index(name)?;
        self.runtime
            .block_on(self.handle.address().add(index, addr.into(), 64).execute())
            .with_context(|| format!("adding {addr}/64 to {name}"))
    }

    /// The BPF filters on one hook of `name`, as the kernel lists them:
    /// `(program name, program id)`.
    pub fn bpf_filters(&self, name: &str, hook: Hook) -> anyhow::Result<Vec<(String, u32)>> {
        let index = i32::try_from(self.index(name)?).context("ifindex")?;
        self.runtime.block_on(async {
            let request = self.handle.traffic_filter(index).get();
            let request = match hook {
                Hook::Ingress => request.ingress(),
                Hook::Egress => request.egress(),
            };
            let mut filters = request.execute();
            let mut found = Vec::new();
            while let Some(filter) = filters
                .try_next()
                .await
                .with_context(|| format!("tc filter dump of {name}"))?
            {
                let is_bpf = filter
                    .attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == "bpf"));
                if !is_bpf {
                    continue;
                }
                let (mut program, mut id) = (String::new(), 0);
                for attr in &filter.attributes {
                    let TcAttribute::Options(options) = attr else {
                        continue;
                    };
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => program.clone_from(n),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = *i,
                            _ => {}
                        }
                    }
                }
                // A dump lists the filter's chain head too, without options.
                if id != 0 {
                    found.push((program, id));
                }
            }
            Ok(found)
        })
    }
}

/// A TC hook.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    Ingress,
    Egress,
}

/// Writes `value` to `/proc/sys/<key>` (in the calling thread's network
/// namespace for `net/` keys).
pub fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}
