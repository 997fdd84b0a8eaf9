//! Offload features by their ethtool names (`rx-gro`,
//! `tx-tcp-segmentation`, ...), read and set with the `SIOCETHTOOL` ioctl
//! as `ethtool -k` / `-K` do: there is no ethtool in the VM. Works in the
//! network namespace of the calling thread.

use std::{ffi::c_void, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

use anyhow::{Context as _, bail};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The offloads that would hand a veth a packet of several frames whole:
/// off, the kernel segments in software after the TC egress hook and the
/// veth's statistics count frames, as a NIC's do (see the host tests'
/// `VethPair::create`).
pub const WIRE_LIKE: &[(&str, bool)] = &[
    ("tx-tcp-segmentation", false),
    ("tx-tcp-ecn-segmentation", false),
    ("tx-tcp-mangleid-segmentation", false),
    ("tx-tcp6-segmentation", false),
    ("tx-udp-segmentation", false),
];

/// `struct ifreq` with `ifr_data`: the name and a pointer, padded to the
/// union's size.
#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut c_void,
    _pad: [u8; 16],
}

fn ioctl(iface: &str, data: *mut c_void) -> anyhow::Result<i32> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a socket for SIOCETHTOOL");
    }
    // SAFETY: a descriptor we just made.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = IfreqData {
        name: [0; 16],
        data,
        _pad: [0; 16],
    };
    if iface.len() >= request.name.len() {
        bail!("interface name {iface:?} is too long");
    }
    request.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a command
    // buffer the caller sized for the command.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("SIOCETHTOOL on {iface}"));
    }
    Ok(rc)
}

/// One feature's state, as `ethtool -k` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub active: bool,
    /// `[fixed]`: the driver does not let it change.
    pub fixed: bool,
}

/// An interface's feature names and states.
pub struct Features {
    names: Vec<String>,
    /// Per 32 features: available, requested, active, never changed.
    blocks: Vec<[u32; 4]>,
}

impl Features {
    pub fn of(iface: &str) -> anyhow::Result<Self> {
        let names = names(iface)?;
        let size = names.len().div_ceil(32);
        let mut buf = vec![0u32; 2 + 4 * size];
        buf[0] = ETHTOOL_GFEATURES;
        buf[1] = u32::try_from(size).context("feature blocks")?;
        ioctl(iface, buf.as_mut_ptr().cast())?;
        let blocks = buf[2..]
            .chunks_exact(4)
            .map(|b| [b[0], b[1], b[2], b[3]])
            .collect();
        Ok(Self { names, blocks })
    }

    fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .with_context(|| format!("the kernel knows no feature {name:?}"))
    }

    pub fn get(&self, name: &str) -> anyhow::Result<Feature> {
        let i = self.index(name)?;
        let [available, _, active, never_changed] = self.blocks[i / 32];
        let bit = 1 << (i % 32);
        Ok(Feature {
            active: active & bit != 0,
            fixed: available & bit == 0 || never_changed & bit != 0,
        })
    }

    /// `name on`, `name off [fixed]`, ... for the log.
    pub fn describe(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|name| match self.get(name) {
                Ok(f) => format!(
                    "{name} {}{}",
                    if f.active { "on" } else { "off" },
                    if f.fixed { " [fixed]" } else { "" }
                ),
                Err(_) => format!("{name} (unknown)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `struct ethtool_sset_info` asking for one string set's size.
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    mask: u64,
    count: u32,
    _pad: u32,
}

/// The kernel's names of the feature bits, in bit order.
fn names(iface: &str) -> anyhow::Result<Vec<String>> {
    let mut info = SsetInfo {
        cmd: ETHTOOL_GSSET_INFO,
        reserved: 0,
        mask: 1 << ETH_SS_FEATURES,
        count: 0,
        _pad: 0,
    };
    ioctl(iface, (&raw mut info).cast())?;
    if info.mask & (1 << ETH_SS_FEATURES) == 0 {
        bail!("{iface} has no feature names");
    }
    let count = info.count;
    // struct ethtool_gstrings: cmd, string set, length, then the strings.
    let len = count as usize;
    let mut buf = vec![0u32; 3 + len * ETH_GSTRING_LEN / 4];
    buf[0] = ETHTOOL_GSTRINGS;
    buf[1] = ETH_SS_FEATURES;
    buf[2] = count;
    ioctl(iface, buf.as_mut_ptr().cast())?;
    let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks_exact(ETH_GSTRING_LEN)
        .map(|s| {
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        })
        .collect())
}

/// Sets features of `iface` by name (`ethtool -K`); an unknown name is an
/// error, a feature the driver keeps fixed stays as it is (see
/// [`Features::describe`]).
pub fn set(iface: &str, wanted: &[(&str, bool)]) -> anyhow::Result<()> {
    let features = Features::of(iface)?;
    let size = features.blocks.len();
    // struct ethtool_sfeatures: cmd, size, then (valid, requested) pairs.
    let mut buf = vec![0u32; 2 + 2 * size];
    buf[0] = ETHTOOL_SFEATURES;
    buf[1] = u32::try_from(size).context("feature blocks")?;
    for (name, on) in wanted {
        let i = features.index(name)?;
        if features.get(name)?.fixed {
            continue;
        }
        let bit = 1 << (i % 32);
        buf[2 + 2 * (i / 32)] |= bit;
        if *on {
            buf[3 + 2 * (i / 32)] |= bit;
        }
    }
    ioctl(iface, buf.as_mut_ptr().cast())?;
    Ok(())
}
