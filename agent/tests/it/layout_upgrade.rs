//! Upgrading from an agent of counter layout 1 (before the IPv4/IPv6 split)
//! or 2 (before packets of several wire frames counted as those frames).
//! Its pinned maps are planted here as such an agent leaves them (its
//! value sizes, an epoch, counts in the fast array, the hash map and the
//! retired entry, a fold a crash interrupted); the agent must not fail on
//! them, nor count on in them: it starts a new counter set (new epoch, with
//! the split and the wire rule) and keeps the old set's final counts,
//! exactly and once, in the reboot journal as that epoch's last heartbeat,
//! which the sender delivers before any other.

use crate::common;

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::{Agent, Link, privileged};
use prost::Message as _;
use tally_proto::v1::{HeartbeatRequest, InterfaceState};

const TOKEN: &str = "tly_test.node-7_secret";

/// `bpf(2)` commands and map types used here (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_F_NO_PREALLOC: u32 = 1;

/// `union bpf_attr`, large enough for the commands above.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put(&mut self, offset: usize, bytes: &[u8]) -> &mut Self {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }
    fn call(&mut self, cmd: libc::c_long, what: &str) -> i64 {
        // SAFETY: bpf(2) with an attribute buffer of the size given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
        rc
    }
}

/// Creates a map like layout 1's and pins it at `path`.
fn create_pinned(
    path: &Path,
    name: &str,
    map_type: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> OwnedFd {
    let mut attr = Attr::new();
    let mut obj_name = [0u8; 16];
    obj_name[..name.len()].copy_from_slice(name.as_bytes());
    attr.put(0, &map_type.to_ne_bytes())
        .put(4, &4u32.to_ne_bytes())
        .put(8, &value_size.to_ne_bytes())
        .put(12, &max_entries.to_ne_bytes())
        .put(16, &flags.to_ne_bytes())
        .put(28, &obj_name);
    let fd = attr.call(BPF_MAP_CREATE, &format!("create {name}"));
    // SAFETY: bpf(BPF_MAP_CREATE) returned a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut attr = Attr::new();
    attr.put(0, &(path.as_ptr() as u64).to_ne_bytes())
        .put(8, &(fd.as_raw_fd() as u32).to_ne_bytes());
    attr.call(BPF_OBJ_PIN, &format!("pin {name}"));
    fd
}

fn update(fd: &OwnedFd, key: u32, value: &[u8]) {
    let key = key.to_ne_bytes();
    let mut attr = Attr::new();
    attr.put(0, &(fd.as_raw_fd() as u32).to_ne_bytes())
        .put(8, &(key.as_ptr() as u64).to_ne_bytes())
        .put(16, &(value.as_ptr() as u64).to_ne_bytes());
    attr.call(BPF_MAP_UPDATE_ELEM, "update");
}

/// Counters as layout 2 (and 3) has them: rx bytes, rx packets, tx bytes,
/// tx packets, then the same for IPv4 and for IPv6. Layout 1 has the first
/// four only.
type Counts = [u64; 12];

/// The counters of `c` as an agent of `layout` wrote them.
fn counts_bytes(c: Counts, layout: u32) -> Vec<u8> {
    let fields = if layout == 1 { 4 } else { 12 };
    c[..fields].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// One value per possible CPU, `c` on the first, `more` on the second.
fn per_cpu(cpus: usize, c: Counts, more: Counts, layout: u32) -> Vec<u8> {
    let mut out = counts_bytes(c, layout);
    for cpu in 1..cpus {
        out.extend(counts_bytes(if cpu == 1 { more } else { [0; 12] }, layout));
    }
    out
}

fn plus(a: Counts, b: Counts) -> Counts {
    std::array::from_fn(|i| a[i] + b[i])
}

/// Totals of four values, and IPv4 and IPv6 parts that differ from them
/// and from each other (layout 1 drops the parts).
fn counts(rx_bytes: u64, rx_packets: u64, tx_bytes: u64, tx_packets: u64) -> Counts {
    let t = [rx_bytes, rx_packets, tx_bytes, tx_packets];
    let mut out = [0; 12];
    for i in 0..4 {
        out[i] = t[i];
        out[4 + i] = t[i] / 2;
        out[8 + i] = t[i] / 3;
    }
    out
}

fn iface_info(name: &str, state: u32) -> Vec<u8> {
    let mut out = [0u8; 16].to_vec();
    out[..name.len()].copy_from_slice(name.as_bytes());
    out.extend(state.to_ne_bytes());
    out.extend(1u32.to_ne_bytes()); // TCX
    out.extend(1_700_000_000_000_000_000u64.to_ne_bytes());
    out.extend(
        if state == 2 {
            1_700_000_100_000_000_000u64
        } else {
            0
        }
        .to_ne_bytes(),
    );
    out
}

const OLD_EPOCH: [u8; 16] = [
    0x0d, 0x1d, 0x2d, 0x3d, 0x4d, 0x5d, 0x6d, 0x7d, 0x8d, 0x9d, 0xad, 0xbd, 0xcd, 0xdd, 0xed, 0xfd,
];
const OLD_CREATED: u64 = 1_700_000_000_000_000_000;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the planted old set holds, as the journal must report it.
struct Planted {
    /// (ifindex, name, state, counts)
    expected: Vec<(u32, String, InterfaceState, Counts)>,
}

/// Plants the maps of `layout` (1 or 2) in `dir`: the veth
/// (`veth_ifindex`, attached) with counts on two CPUs, a gone interface in
/// the fast array and one in the hash map, the retired entry, and a fold of
/// the first gone one that a crash interrupted after its counts were added
/// to the retired entry.
fn plant(dir: &Path, veth: &str, veth_ifindex: u32, layout: u32) -> Planted {
    fs::create_dir_all(dir.join("links")).expect("pin dir");
    let cpus = aya::util::nr_cpus().expect("CPUs");
    let counters_size: u32 = if layout == 1 { 32 } else { 96 };
    let meta_size = 8 + 4 + 4 + 16 + 8 + 8 + counters_size;
    let meta = create_pinned(
        &dir.join("TALLY_META"),
        "TALLY_META",
        BPF_MAP_TYPE_ARRAY,
        meta_size,
        1,
        0,
    );
    let fast = create_pinned(
        &dir.join("TALLY_FAST"),
        "TALLY_FAST",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        counters_size,
        4096,
        0,
    );
    let hash = create_pinned(
        &dir.join("TALLY_COUNTERS"),
        "TALLY_COUNTERS",
        BPF_MAP_TYPE_PERCPU_HASH,
        counters_size,
        16_384,
        BPF_F_NO_PREALLOC,
    );
    let ifaces = create_pinned(
        &dir.join("TALLY_IFACES"),
        "TALLY_IFACES",
        BPF_MAP_TYPE_HASH,
        40,
        16_384,
        BPF_F_NO_PREALLOC,
    );

    let veth_counts = counts(5_000, 50, 6_000, 60);
    let veth_more = counts(1_500, 1, 60, 1);
    let gone_fast = counts(700, 7, 800, 8);
    let gone_hash = counts(9_000, 90, 9_500, 95);
    let retired_before = counts(1_000, 10, 2_000, 20);
    // The fold of ifindex 77 got as far as adding its counts to the retired
    // entry; its own entry and record are still there.
    let retired = plus(retired_before, gone_fast);

    let mut meta_value = Vec::new();
    meta_value.extend(u64::from_le_bytes(*b"tallyctr").to_ne_bytes());
    meta_value.extend(layout.to_ne_bytes());
    meta_value.extend(77u32.to_ne_bytes()); // folding ifindex 77
    meta_value.extend(OLD_EPOCH);
    meta_value.extend(OLD_CREATED.to_ne_bytes());
    meta_value.extend(1u64.to_ne_bytes());
    meta_value.extend(counts_bytes(retired_before, layout));
    assert_eq!(meta_value.len(), meta_size as usize);
    update(&meta, 0, &meta_value);

    let none = [0; 12];
    update(&fast, 0, &per_cpu(cpus, retired, none, layout));
    update(
        &fast,
        veth_ifindex,
        &per_cpu(cpus, veth_counts, veth_more, layout),
    );
    update(&fast, 77, &per_cpu(cpus, gone_fast, none, layout));
    update(&hash, 5_000, &per_cpu(cpus, gone_hash, none, layout));
    update(&ifaces, veth_ifindex, &iface_info(veth, 1));
    update(&ifaces, 77, &iface_info("gone77", 2));
    update(&ifaces, 5_000, &iface_info("gone5000", 2));

    let veth_total = if cpus > 1 {
        plus(veth_counts, veth_more)
    } else {
        veth_counts
    };
    Planted {
        expected: vec![
            (0, "(retired)".into(), InterfaceState::Retired, retired),
            // 77's counts are in the retired entry already: not again.
            (
                veth_ifindex,
                veth.into(),
                InterfaceState::Attached,
                veth_total,
            ),
            (5_000, "gone5000".into(), InterfaceState::Gone, gone_hash),
        ],
    }
}

/// The heartbeats in the reboot journal (format 1: a 20-byte header, then
/// length-delimited `HeartbeatRequest`s).
///
/// The agent attaches to the old set's interfaces (which is what `status`
/// shows) before it reads the old set's final counts and writes them here,
/// so this waits for the file (bounded); it appears whole, by a rename.
fn journal(state_dir: &Path) -> Vec<HeartbeatRequest> {
    let path = state_dir.join("journal");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let bytes = fs::read(&path).expect("the reboot journal (within 10 s)");
    assert_eq!(&bytes[..8], b"TALLYJNL");
    let mut rest = &bytes[20..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(HeartbeatRequest::decode_length_delimited(&mut rest).expect("a heartbeat"));
    }
    out
}

#[test]
fn counters_of_layout_1_are_taken_over_and_their_last_counts_kept_for_the_collector() {
    if !privileged(
        "counters_of_layout_1_are_taken_over_and_their_last_counts_kept_for_the_collector",
    ) {
        return;
    }
    take_over(1);
}

#[test]
fn counters_of_layout_2_are_taken_over_and_their_last_counts_kept_for_the_collector() {
    if !privileged(
        "counters_of_layout_2_are_taken_over_and_their_last_counts_kept_for_the_collector",
    ) {
        return;
    }
    take_over(2);
}

fn take_over(layout: u32) {
    let link = Link::new();
    // A collector nobody answers at: the journal keeps what is to be sent.
    let mut agent = Agent::start_with_env(
        &link.a,
        &["--collector", "http://127.0.0.1:9", "--insecure-plaintext"],
        &[("TALLY_TOKEN", TOKEN)],
    );
    agent.wait_for(&link.if_a);
    // Leave the agent's pin directory empty (SIGKILL: no journal either),
    // then put an earlier agent's counters there.
    agent.kill9();
    assert!(agent.detach().status.success(), "detach");
    let _ = fs::remove_file(agent.state_dir.join("journal"));
    let ifindex: u32 = link
        .a
        .exec("cat", &[&format!("/sys/class/net/{}/ifindex", link.if_a)])
        .expect("cat ifindex")
        .trim()
        .parse()
        .expect("ifindex");
    let planted = plant(&agent.pin_dir, &link.if_a, ifindex, layout);

    agent.restart();
    agent.wait_for(&link.if_a);
    let log = agent.log();
    assert!(
        log.contains(&format!("layout {layout}")),
        "the take-over is logged:\n{log}"
    );

    // The new set: its own epoch, counting with the split.
    let status = agent.status().expect("status");
    assert_ne!(status["epoch"], hex(&OLD_EPOCH), "a new epoch");
    let veth = agent.iface(&link.if_a).expect("the veth");
    assert!(
        veth["ipv4"].is_object() && veth["ipv6"].is_object(),
        "{veth}"
    );
    for gone in ["gone77", "gone5000"] {
        assert!(
            agent.iface(gone).is_none(),
            "{gone}'s counts belong to the old set: {status}"
        );
    }

    // The old set's last heartbeat, waiting for the collector.
    let journal = journal(&agent.state_dir);
    assert_eq!(journal.len(), 1, "{journal:?}");
    let last = &journal[0];
    assert_eq!(last.epoch, hex(&OLD_EPOCH));
    assert_eq!(last.epoch_created_unix_ns, OLD_CREATED);
    assert!(last.counters_start_at_zero);
    assert_eq!(last.source, "ebpf");
    let got: Vec<(u32, String, InterfaceState, Counts)> = last
        .interfaces
        .iter()
        .map(|i| {
            let mut c = [0; 12];
            c[..4].copy_from_slice(&[i.rx_bytes, i.rx_packets, i.tx_bytes, i.tx_packets]);
            if layout == 1 {
                assert!(
                    i.ipv4.is_none() && i.ipv6.is_none(),
                    "layout 1 had no split: {i:?}"
                );
            } else {
                for (at, part) in [(4, &i.ipv4), (8, &i.ipv6)] {
                    let part = part.as_ref().expect("layout 2 has the split");
                    c[at..at + 4].copy_from_slice(&[
                        part.rx_bytes,
                        part.rx_packets,
                        part.tx_bytes,
                        part.tx_packets,
                    ]);
                }
            }
            (i.ifindex, i.name.clone(), i.state(), c)
        })
        .collect();
    let expected: Vec<_> = planted
        .expected
        .into_iter()
        .map(|(ifindex, name, state, mut c)| {
            if layout == 1 {
                c[4..].fill(0);
            }
            (ifindex, name, state, c)
        })
        .collect();
    assert_eq!(got, expected, "the old set's final counts, each once");
}
