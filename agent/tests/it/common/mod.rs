//! Test hosts for the agent's integration tests: network namespaces joined by
//! veth pairs (tally-testkit's, named and numbered here), made by the test
//! and removed afterwards; the real agent binary running inside them; a real
//! collector; and the kernel's own view (BPF_PROG_QUERY) to check against.
//! Traffic between the namespaces and their interface statistics come from
//! tally-testkit (`traffic`, `netns`).
//!
//! These tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns).
//! Without it they skip and say why; with `TALLY_REQUIRE_PRIVILEGED=1` (as CI
//! sets it) they fail instead.

mod agent;
mod collector;
mod kernel;
mod netns;

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

pub use agent::{Agent, pin_dir};
pub use collector::{CONTROL_IFACE, Collector, Store, control_link, reporting_args, send_as, tail};
pub use kernel::{assert_exact, program_exists, tcx_programs};
pub use netns::{Link, netns, veth, veth_counted_from_birth};

pub const AGENT: &str = env!("CARGO_BIN_EXE_tally-agent");

/// How many lines of a process's log a failure quotes.
pub const QUOTED_LINES: usize = 200;

static NEXT: AtomicU32 = AtomicU32::new(1);

fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether the privileged tests can run here; prints why not, or panics when
/// `TALLY_REQUIRE_PRIVILEGED=1` demands them.
pub fn privileged(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_owned());
    }
    for tool in ["ip", "unshare"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            missing.push(format!("`{tool}` is not installed"));
        }
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        missing.push("/sys/fs/bpf does not exist".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    tally_testkit::skip::skip(
        test,
        &format!("needs root with network namespaces and bpffs ({reason})"),
    );
    false
}
