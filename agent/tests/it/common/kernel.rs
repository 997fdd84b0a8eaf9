//! The kernel's own view, to check the agent against: which programs sit on an
//! interface's TCX hooks (BPF_PROG_QUERY), whether a BPF program id still
//! exists, and an exact comparison of the agent's counters with the kernel's
//! interface statistics that explains any drops when they differ.

use tally_testkit::netns::{IfStats, Netns};

/// The programs attached to an interface's TCX hooks, by name, as the kernel
/// reports them (BPF_PROG_QUERY), asked from inside the namespace.
pub fn tcx_programs(ns: &Netns, iface: &str) -> Vec<(String, u32)> {
    let iface = iface.to_owned();
    ns.run(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut out = Vec::new();
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, programs) = SchedClassifier::query_tcx(&iface, hook).expect("query tcx");
            for p in programs {
                out.push((p.name_as_str().unwrap_or("?").to_owned(), p.id()));
            }
        }
        out
    })
    .expect("run in the namespace")
}

/// Whether the kernel still knows a BPF program with this id.
pub fn program_exists(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

/// Asserts `ours == kernel` for the four traffic counters, printing the
/// differences (ours − kernel) and explaining drops.
pub fn assert_exact(what: &str, ours: &IfStats, kernel: &IfStats) {
    let (o, k) = (ours.traffic(), kernel.traffic());
    let diff = |a: u64, b: u64| i128::from(a) - i128::from(b);
    assert_eq!(
        o,
        k,
        "{what}: agent (rx_bytes, tx_bytes, rx_packets, tx_packets) {o:?} != kernel {k:?}, \
         agent − kernel = ({}, {}, {}, {}) \
         (kernel drops over the interval: rx_dropped {}, tx_dropped {}; a packet dropped after our \
         egress hook is counted by us and not by the kernel's tx statistics)",
        diff(o.0, k.0),
        diff(o.1, k.1),
        diff(o.2, k.2),
        diff(o.3, k.3),
        kernel.rx_dropped,
        kernel.tx_dropped
    );
}
