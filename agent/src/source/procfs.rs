//! The fallback counter source: `/proc/net/dev`, the kernel's interface
//! statistics. They count since the interface appeared (usually since boot),
//! so the epoch is the boot (`procfs-<boot id>`, created at boot time), and a
//! first reading is only a baseline (`starts_at_zero = false`).
//!
//! # What this source guarantees, and what it cannot
//!
//! The collector sums the entries of a heartbeat and refuses a sum that goes
//! backwards within an epoch. Raw `/proc/net/dev` values can go backwards in
//! that sum: an interface disappears (its counts leave the sum), is deleted
//! and created again under the same name (its counters start again at 0), or
//! its driver resets a counter. So the source keeps, per interface name, the
//! last reading and the interface index, and [`Ledger`] folds the last
//! counts of an interface into one `(retired)` entry (ifindex 0, reported as
//! `INTERFACE_STATE_RETIRED`) when the interface
//!
//! - is gone from `/proc/net/dev`,
//! - has another ifindex than before (it was created again), or
//! - shows a counter below its last reading (a driver reset; then only the
//!   counters that went back are folded, so the others are not counted
//!   twice);
//!
//! a re-created or reset interface then counts afresh, its new values in
//! full (they started at 0). Within one agent process the summed bytes (and
//! packets) therefore never decrease and every entry's name is unique.
//!
//! What it cannot do:
//!
//! - Bytes an interface counts after the last reading and before it vanishes
//!   (or is reset) are lost: only what a reading saw is kept.
//! - The `(retired)` entry lives in memory. After an agent restart within the
//!   same boot the sum may be lower than what the collector stored for the
//!   boot's epoch, and the collector refuses it (`FAILED_PRECONDITION`). The
//!   heartbeat sender then asks for a rebase ([`Rebase`]): the source starts
//!   a new epoch `procfs-<boot id>-<Unix ns now>`, created now, whose first
//!   reading is again only a baseline. The bytes counted between the last
//!   heartbeat the collector applied and that baseline are lost (the agent
//!   logs a warning saying so). The same happens when the collector already
//!   follows a later epoch than the boot's (an earlier agent rebased, or the
//!   node counted with eBPF before): such heartbeats are stale, and the
//!   agent rebases to catch up.
//! - An interface literally named `(retired)` is not counted (its name would
//!   clash with the retired entry's).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

use super::{CounterSource, InterfaceCounters, LinkKind, Snapshot, SourceKind};
use crate::{clock, ebpf::maps::RETIRED_NAME, filter::IfaceFilter, system};

/// Reads `/proc/net/dev` of the agent's network namespace.
pub struct ProcfsSource {
    filter: IfaceFilter,
    ledger: Ledger,
    /// The epoch started by the last rebase; `None`: the boot's epoch.
    rebased: Option<Epoch>,
    /// Where the heartbeat sender asks for a new epoch (`None`: never).
    rebase: Option<Rebase>,
}

impl ProcfsSource {
    pub fn new(filter: IfaceFilter) -> Self {
        Self {
            filter,
            ledger: Ledger::default(),
            rebased: None,
            rebase: None,
        }
    }

    /// Starts a new epoch at the next snapshot after each request on `rebase`.
    pub fn with_rebase(mut self, rebase: Rebase) -> Self {
        self.rebase = Some(rebase);
        self
    }

    /// The current epoch: the boot's, or the one of the last rebase.
    fn epoch(&self, boot_id: &str) -> Epoch {
        self.rebased.clone().unwrap_or_else(|| Epoch {
            id: format!("procfs-{boot_id}"),
            created_unix_ns: boot_time_unix_ns(),
        })
    }
}

/// An epoch of the procfs counters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Epoch {
    id: String,
    created_unix_ns: u64,
}

/// The epoch a rebase starts at `now_unix_ns`: `procfs-<boot id>-<created>`,
/// created now, but always after `current` (so that the collector, which
/// follows the epoch created last, adopts it even if the clock stepped back).
fn rebased_epoch(boot_id: &str, current: &Epoch, now_unix_ns: u64) -> Epoch {
    let created_unix_ns = now_unix_ns.max(current.created_unix_ns.saturating_add(1));
    Epoch {
        id: format!("procfs-{boot_id}-{created_unix_ns}"),
        created_unix_ns,
    }
}

/// A request, from the heartbeat sender to the procfs source, for a new
/// epoch. Clones share the request: the sender calls [`Rebase::request`],
/// the report loop wakes on [`Rebase::requested`] to read at once, and the
/// source takes the request at its next snapshot.
#[derive(Debug, Clone, Default)]
pub struct Rebase(Arc<RebaseState>);

#[derive(Debug, Default)]
struct RebaseState {
    pending: AtomicBool,
    wake: Notify,
}

impl Rebase {
    /// Asks for a new epoch at the next snapshot.
    pub fn request(&self) {
        self.0.pending.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }

    /// Resolves after a request (at once if one came since the last wait).
    pub async fn requested(&self) {
        self.0.wake.notified().await;
    }

    /// Whether a new epoch was asked for; clears the request.
    fn take(&self) -> bool {
        self.0.pending.swap(false, Ordering::SeqCst)
    }
}

/// The boot time as Unix nanoseconds (from `/proc/stat`'s `btime`).
fn boot_time_unix_ns() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|s| s.trim().parse::<u64>().ok())
        })
        .map_or(0, |secs| secs.saturating_mul(1_000_000_000))
}

fn ifindex(name: &str) -> u32 {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: c_name is NUL-terminated.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) }
}

impl CounterSource for ProcfsSource {
    fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let boot_id = system::boot_id()?;
        if self.rebase.as_ref().is_some_and(Rebase::take) {
            let current = self.epoch(&boot_id);
            let next = rebased_epoch(&boot_id, &current, clock::unix_ns());
            tracing::info!(
                from = %current.id,
                to = %next.id,
                "starting a new procfs counter epoch; its first heartbeat is only a baseline"
            );
            self.rebased = Some(next);
        }
        let rows: Vec<Row> = procfs::net::dev_status()?
            .into_values()
            .filter(|dev| self.filter.counts(&dev.name))
            .map(|dev| Row {
                ifindex: ifindex(&dev.name),
                name: dev.name,
                counts: Counts {
                    rx_bytes: dev.recv_bytes,
                    tx_bytes: dev.sent_bytes,
                    rx_packets: dev.recv_packets,
                    tx_packets: dev.sent_packets,
                },
            })
            .collect();
        let interfaces = self.ledger.update(rows);
        let epoch = self.epoch(&boot_id);
        Ok(Snapshot {
            source: SourceKind::Procfs,
            epoch: epoch.id,
            epoch_created_unix_ns: epoch.created_unix_ns,
            starts_at_zero: false,
            boot_id,
            load: system::load_average()?,
            interfaces,
        })
    }
}

/// An interface's four counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Counts {
    fn plus(self, other: Counts) -> Counts {
        Counts {
            rx_bytes: self.rx_bytes.saturating_add(other.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_add(other.tx_bytes),
            rx_packets: self.rx_packets.saturating_add(other.rx_packets),
            tx_packets: self.tx_packets.saturating_add(other.tx_packets),
        }
    }

    /// The counters of `earlier` that this reading is below (the others 0):
    /// those that were reset since.
    fn reset_since(&self, earlier: &Counts) -> Counts {
        let lost = |now: u64, before: u64| if now < before { before } else { 0 };
        Counts {
            rx_bytes: lost(self.rx_bytes, earlier.rx_bytes),
            tx_bytes: lost(self.tx_bytes, earlier.tx_bytes),
            rx_packets: lost(self.rx_packets, earlier.rx_packets),
            tx_packets: lost(self.tx_packets, earlier.tx_packets),
        }
    }
}

/// One parsed `/proc/net/dev` row, with the interface's index (0 when the
/// interface vanished between reading the file and asking for its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub ifindex: u32,
    pub counts: Counts,
}

/// What the ledger remembers of an interface since its last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The index at the last reading (0: unknown then).
    ifindex: u32,
    counts: Counts,
}

/// Turns successive `/proc/net/dev` readings into entries whose summed
/// counters never decrease (see the module documentation). Pure: fed with
/// parsed rows, no I/O.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Per interface name, its last reading.
    last: BTreeMap<String, Seen>,
    /// What interfaces counted before they went away or started again.
    retired: Counts,
}

/// Why an interface's counts were retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Gone,
    Recreated,
    Reset,
}

impl Ledger {
    /// Takes one reading; returns the entries to report: `(retired)` first
    /// (once anything was retired), then the interfaces by index and name.
    /// Rows after the first of a name, and a row named `(retired)`, are
    /// ignored.
    pub fn update(&mut self, rows: impl IntoIterator<Item = Row>) -> Vec<InterfaceCounters> {
        let mut now: BTreeMap<String, Seen> = BTreeMap::new();
        let mut reported = Vec::new();
        for row in rows {
            if row.name == RETIRED_NAME || now.contains_key(&row.name) {
                continue;
            }
            if let Some(before) = self.last.remove(&row.name) {
                // An unknown index (0) on either side compares as the same:
                // missing a re-creation loses counts, never counts twice.
                let recreated =
                    before.ifindex != 0 && row.ifindex != 0 && before.ifindex != row.ifindex;
                if recreated {
                    self.retire(&row.name, before.ifindex, before.counts, Why::Recreated);
                } else {
                    // Only the counters that went back: the others go on.
                    let reset = row.counts.reset_since(&before.counts);
                    if reset != Counts::default() {
                        self.retire(&row.name, before.ifindex, reset, Why::Reset);
                    }
                }
            }
            now.insert(
                row.name.clone(),
                Seen {
                    ifindex: row.ifindex,
                    counts: row.counts,
                },
            );
            reported.push(InterfaceCounters {
                ifindex: row.ifindex,
                rx_bytes: row.counts.rx_bytes,
                tx_bytes: row.counts.tx_bytes,
                rx_packets: row.counts.rx_packets,
                tx_packets: row.counts.tx_packets,
                // Index 0: it vanished while being read (reported as gone).
                attached: row.ifindex != 0,
                name: row.name,
                // Filled by the agent from rtnetlink (crate::links).
                kind: LinkKind::Unspecified,
                default_route: false,
                master_ifindex: 0,
                link_ifindex: 0,
                // /proc/net/dev cannot tell the address families apart.
                ipv4: None,
                ipv6: None,
            });
        }
        for (name, before) in std::mem::replace(&mut self.last, now) {
            self.retire(&name, before.ifindex, before.counts, Why::Gone);
        }
        reported.sort_by(|a, b| (a.ifindex, &a.name).cmp(&(b.ifindex, &b.name)));
        if self.retired != Counts::default() {
            reported.insert(
                0,
                InterfaceCounters {
                    name: RETIRED_NAME.to_owned(),
                    ifindex: 0,
                    rx_bytes: self.retired.rx_bytes,
                    tx_bytes: self.retired.tx_bytes,
                    rx_packets: self.retired.rx_packets,
                    tx_packets: self.retired.tx_packets,
                    attached: false,
                    kind: LinkKind::Unspecified,
                    default_route: false,
                    master_ifindex: 0,
                    link_ifindex: 0,
                    ipv4: None,
                    ipv6: None,
                },
            );
        }
        reported
    }

    fn retire(&mut self, name: &str, ifindex: u32, counts: Counts, why: Why) {
        tracing::debug!(
            interface = name,
            ifindex,
            reason = ?why,
            rx_bytes = counts.rx_bytes,
            tx_bytes = counts.tx_bytes,
            "folding an interface's last counts into {RETIRED_NAME}"
        );
        self.retired = self.retired.plus(counts);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;

    fn row(name: &str, ifindex: u32, rx: u64, tx: u64) -> Row {
        Row {
            name: name.into(),
            ifindex,
            counts: Counts {
                rx_bytes: rx,
                tx_bytes: tx,
                rx_packets: rx / 100,
                tx_packets: tx / 100,
            },
        }
    }

    fn totals(entries: &[InterfaceCounters]) -> (u64, u64) {
        entries
            .iter()
            .fold((0, 0), |(rx, tx), i| (rx + i.rx_bytes, tx + i.tx_bytes))
    }

    fn entry<'a>(entries: &'a [InterfaceCounters], name: &str) -> &'a InterfaceCounters {
        entries
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name} in {entries:?}"))
    }

    #[test]
    fn reads_proc_net_dev_without_loopback() {
        let mut source = ProcfsSource::new(IfaceFilter::default());
        let snapshot = source.snapshot().expect("/proc/net/dev");
        assert!(!snapshot.starts_at_zero);
        assert!(snapshot.epoch.starts_with("procfs-"));
        assert!(
            snapshot
                .interfaces
                .iter()
                .all(|i| !i.name.starts_with("lo"))
        );
        assert!(snapshot.epoch_created_unix_ns > 0);
        // /proc/net/dev has no split by address family: none is claimed.
        assert!(
            snapshot
                .interfaces
                .iter()
                .all(|i| i.ipv4.is_none() && i.ipv6.is_none())
        );
    }

    #[test]
    fn steady_interfaces_are_reported_as_read() {
        let mut ledger = Ledger::default();
        let first = ledger.update([row("eth1", 3, 50, 60), row("eth0", 2, 100, 200)]);
        let names: Vec<&str> = first.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"], "by ifindex, no retired entry yet");
        assert!(first.iter().all(|i| i.attached));
        let second = ledger.update([row("eth0", 2, 150, 260), row("eth1", 3, 50, 61)]);
        assert_eq!(totals(&second), (200, 321));
        assert_eq!(entry(&second, "eth0").rx_packets, 1);
    }

    #[test]
    fn a_gone_interface_is_folded_into_retired() {
        let mut ledger = Ledger::default();
        ledger.update([row("eth0", 2, 100, 200), row("veth1", 7, 1_000, 2_000)]);
        let after = ledger.update([row("eth0", 2, 110, 210)]);
        let retired = entry(&after, RETIRED_NAME);
        assert_eq!(
            (retired.ifindex, retired.attached),
            (0, false),
            "{retired:?}"
        );
        assert_eq!((retired.rx_bytes, retired.tx_bytes), (1_000, 2_000));
        assert_eq!((retired.rx_packets, retired.tx_packets), (10, 20));
        assert_eq!(after[0].name, RETIRED_NAME, "the retired entry comes first");
        assert_eq!(totals(&after), (1_110, 2_210));
        // It stays, and grows with the next interface to go.
        let later = ledger.update([]);
        assert_eq!(later.len(), 1);
        assert_eq!(totals(&later), (1_110, 2_210));
    }

    #[test]
    fn a_recreated_interface_counts_afresh() {
        let mut ledger = Ledger::default();
        ledger.update([row("veth1", 7, 1_000, 2_000)]);
        // Deleted and created again between two readings: a new index, and
        // its counters started at 0 (here already past the old values).
        let after = ledger.update([row("veth1", 9, 5_000, 100)]);
        assert_eq!(entry(&after, RETIRED_NAME).rx_bytes, 1_000);
        let veth = entry(&after, "veth1");
        assert_eq!(
            (veth.ifindex, veth.rx_bytes, veth.tx_bytes),
            (9, 5_000, 100)
        );
        assert_eq!(totals(&after), (6_000, 2_100));
        assert_eq!(
            after.iter().filter(|i| i.name == "veth1").count(),
            1,
            "names stay unique"
        );
        // From then on it grows like any other.
        let next = ledger.update([row("veth1", 9, 5_500, 150)]);
        assert_eq!(totals(&next), (6_500, 2_150));
    }

    #[test]
    fn a_counter_reset_counts_afresh() {
        let mut ledger = Ledger::default();
        ledger.update([row("eth0", 2, 100, 200)]);
        // A driver reset: every counter starts again.
        let after = ledger.update([row("eth0", 2, 30, 40)]);
        assert_eq!(totals(&after), (130, 240));
        let retired = entry(&after, RETIRED_NAME);
        assert_eq!((retired.rx_bytes, retired.tx_bytes), (100, 200));
        assert_eq!((retired.rx_packets, retired.tx_packets), (1, 2));
        assert_eq!(entry(&after, "eth0").rx_bytes, 30);
        let next = ledger.update([row("eth0", 2, 50, 40)]);
        assert_eq!(totals(&next), (150, 240));
    }

    #[test]
    fn only_the_counters_that_went_back_are_retired() {
        let mut ledger = Ledger::default();
        ledger.update([row("eth0", 2, 100, 200)]);
        // Only tx went back (a 32-bit counter wrapped, a partial reset): rx
        // goes on as before, and is not counted twice.
        let after = ledger.update([row("eth0", 2, 130, 30)]);
        assert_eq!(totals(&after), (130, 230));
        let retired = entry(&after, RETIRED_NAME);
        assert_eq!((retired.rx_bytes, retired.tx_bytes), (0, 200));
        assert_eq!((retired.rx_packets, retired.tx_packets), (0, 2));
    }

    #[test]
    fn an_index_unknown_for_a_moment_is_not_a_recreation() {
        let mut ledger = Ledger::default();
        ledger.update([row("eth0", 2, 100, 200)]);
        // if_nametoindex failed (the interface vanished mid-reading).
        let racing = ledger.update([row("eth0", 0, 120, 220)]);
        assert_eq!(racing.len(), 1, "nothing retired: {racing:?}");
        assert!(!racing[0].attached);
        let back = ledger.update([row("eth0", 2, 130, 230)]);
        assert_eq!(back.len(), 1, "still nothing retired: {back:?}");
        assert_eq!(totals(&back), (130, 230));
    }

    #[test]
    fn names_are_unique_and_retired_is_never_read_from_the_kernel() {
        let mut ledger = Ledger::default();
        let out = ledger.update([
            row("eth0", 2, 1, 1),
            row("eth0", 2, 5, 5),
            row(RETIRED_NAME, 4, 1_000, 1_000),
        ]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].rx_bytes, 1);
    }

    /// Over random readings (interfaces coming, going, created again, reset,
    /// vanishing mid-reading), the sums never decrease, never exceed what
    /// the kernel counted, and names stay unique.
    #[test]
    fn sums_never_decrease_over_random_readings() {
        const NAMES: [&str; 5] = ["eth0", "eth1", "veth0", "veth1", "wg0"];
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ledger = Ledger::default();
            // The "kernel": per name, Some((ifindex, counts)) while present.
            let mut kernel: BTreeMap<&str, (u32, Counts)> = BTreeMap::new();
            let mut next_ifindex = 2;
            let mut last_totals = (0u64, 0u64);
            let mut last_packets = (0u64, 0u64);
            // Every byte the "kernel" ever counted: no sum may exceed it.
            let mut counted = (0u64, 0u64);
            for step in 0..60 {
                for name in NAMES {
                    match rng.random_range(0..20) {
                        0 => {
                            kernel.remove(name);
                        }
                        1 => {
                            kernel.insert(name, (next_ifindex, Counts::default()));
                            next_ifindex += 1;
                        }
                        2 => {
                            // A driver reset (here of one counter only).
                            if let Some((_, counts)) = kernel.get_mut(name) {
                                counts.tx_bytes = 0;
                            }
                        }
                        _ => {
                            let (_, counts) = kernel.entry(name).or_insert_with(|| {
                                next_ifindex += 1;
                                (next_ifindex, Counts::default())
                            });
                            let rx = rng.random_range(0..10_000);
                            let tx = rng.random_range(0..10_000);
                            counted = (counted.0 + rx, counted.1 + tx);
                            *counts = counts.plus(Counts {
                                rx_bytes: rx,
                                tx_bytes: tx,
                                rx_packets: rx / 1_000,
                                tx_packets: tx / 1_000,
                            });
                        }
                    }
                }
                let rows: Vec<Row> = kernel
                    .iter()
                    .map(|(name, (ifindex, counts))| Row {
                        name: (*name).to_owned(),
                        // Now and then the index cannot be had.
                        ifindex: if rng.random_range(0..10) == 0 {
                            0
                        } else {
                            *ifindex
                        },
                        counts: *counts,
                    })
                    .collect();
                let out = ledger.update(rows);
                let totals = totals(&out);
                let packets = out
                    .iter()
                    .fold((0, 0), |(rx, tx), i| (rx + i.rx_packets, tx + i.tx_packets));
                assert!(
                    totals.0 >= last_totals.0 && totals.1 >= last_totals.1,
                    "seed {seed} step {step}: bytes {last_totals:?} -> {totals:?}"
                );
                assert!(
                    packets.0 >= last_packets.0 && packets.1 >= last_packets.1,
                    "seed {seed} step {step}: packets {last_packets:?} -> {packets:?}"
                );
                assert!(
                    totals.0 <= counted.0 && totals.1 <= counted.1,
                    "seed {seed} step {step}: {totals:?} but only {counted:?} counted"
                );
                let mut names: Vec<&str> = out.iter().map(|i| i.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                assert_eq!(names.len(), out.len(), "seed {seed} step {step}: {out:?}");
                last_totals = totals;
                last_packets = packets;
            }
        }
    }

    #[test]
    fn growth_is_counted_exactly() {
        let mut ledger = Ledger::default();
        let a = totals(&ledger.update([row("eth0", 2, 100, 100), row("eth1", 3, 5, 5)]));
        // eth0 grows by 10, eth1 is reset and counts 3 since.
        let b = totals(&ledger.update([row("eth0", 2, 110, 100), row("eth1", 3, 3, 3)]));
        assert_eq!((b.0 - a.0, b.1 - a.1), (13, 3));
    }

    #[test]
    fn a_rebased_epoch_is_named_after_the_boot_and_its_creation() {
        let boot = Epoch {
            id: "procfs-6a1c0c0e".into(),
            created_unix_ns: 1_700_000_000_000_000_000,
        };
        let now = 1_700_000_123_000_000_007;
        let next = rebased_epoch("6a1c0c0e", &boot, now);
        assert_eq!(next.id, format!("procfs-6a1c0c0e-{now}"));
        assert_eq!(next.created_unix_ns, now);
        // Always later than the epoch it replaces, whatever the clock says.
        let again = rebased_epoch("6a1c0c0e", &next, now - 5);
        assert_eq!(again.created_unix_ns, now + 1);
        assert_eq!(again.id, format!("procfs-6a1c0c0e-{}", now + 1));
        // Within the contract's 64 bytes with a real boot id.
        let real = rebased_epoch("6a1c0c0e-0000-4000-8000-000000000000", &boot, now);
        assert!(real.id.len() <= tally_proto::limits::MAX_EPOCH, "{real:?}");
    }

    #[test]
    fn a_rebase_request_starts_a_new_epoch_at_the_next_snapshot() {
        let rebase = Rebase::default();
        let mut source = ProcfsSource::new(IfaceFilter::default()).with_rebase(rebase.clone());
        let boot = source.snapshot().expect("/proc/net/dev");
        let boot_id = system::boot_id().expect("boot id");
        assert_eq!(boot.epoch, format!("procfs-{boot_id}"));

        let before = clock::unix_ns();
        rebase.request();
        let rebased = source.snapshot().expect("/proc/net/dev");
        let created = rebased.epoch_created_unix_ns;
        assert_eq!(rebased.epoch, format!("procfs-{boot_id}-{created}"));
        assert!(
            created >= before && created <= clock::unix_ns(),
            "{created}"
        );
        assert!(created > boot.epoch_created_unix_ns);
        assert!(!rebased.starts_at_zero, "the first reading is a baseline");
        assert_eq!(rebased.boot_id, boot_id);

        // It stays until the next request, which makes a later one.
        let same = source.snapshot().expect("/proc/net/dev");
        assert_eq!(same.epoch, rebased.epoch);
        rebase.request();
        let third = source.snapshot().expect("/proc/net/dev");
        assert_ne!(third.epoch, rebased.epoch);
        assert!(third.epoch_created_unix_ns > created);
    }

    #[tokio::test]
    async fn a_rebase_request_wakes_the_waiter_even_if_made_before() {
        let rebase = Rebase::default();
        rebase.request();
        tokio::time::timeout(std::time::Duration::from_secs(1), rebase.requested())
            .await
            .expect("the request is not lost");
        assert!(rebase.take());
        assert!(!rebase.take(), "taken once");
    }
}
