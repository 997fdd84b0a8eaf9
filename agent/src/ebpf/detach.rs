//! `tally-agent detach`: removes every attachment and pin the agent made
//! under one pin directory, and nothing else.

use std::{fs, io};

use tally_common::ATTACH_NETLINK;

use super::{
    hooks::{detach_netlink, ifname, remove_link_pin},
    maps::pinned_ifaces,
};
use crate::pins::{Hook, PinLayout, PinLock};

/// What `detach` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DetachReport {
    pub links_unpinned: usize,
    pub netlink_filters_removed: usize,
    pub maps_unpinned: usize,
    pub dir_removed: bool,
}

/// Removes links, netlink filters, maps and the pin directory.
pub fn detach_all(layout: &PinLayout) -> io::Result<DetachReport> {
    let mut report = DetachReport::default();
    if !layout.dir().exists() {
        return Ok(report);
    }
    let _lock = PinLock::acquire(layout)?;
    for (_, _, path) in layout.pinned_links()? {
        remove_link_pin(&path);
        report.links_unpinned += 1;
    }
    // Only the interface records are needed: their layout is the same in
    // every version, so this works on another version's counters too.
    if let Ok(records) = pinned_ifaces(layout) {
        for (ifindex, info) in records {
            if info.attach_mode != ATTACH_NETLINK {
                continue;
            }
            if let Some(name) = ifname(ifindex) {
                for hook in Hook::BOTH {
                    if detach_netlink(&name, hook) {
                        report.netlink_filters_removed += 1;
                    }
                }
            }
        }
    }
    for path in [
        layout.fast(),
        layout.counters(),
        layout.ifaces(),
        layout.meta(),
    ] {
        match fs::remove_file(&path) {
            Ok(()) => report.maps_unpinned += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot unpin {}: {e}", path.display()),
                ));
            }
        }
    }
    match fs::remove_dir(layout.links_dir()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot remove {}: {e}", layout.links_dir().display()),
            ));
        }
    }
    match fs::remove_dir(layout.dir()) {
        Ok(()) => report.dir_removed = true,
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot remove {} ({e}); something else was left in it",
                    layout.dir().display()
                ),
            ));
        }
    }
    Ok(report)
}
