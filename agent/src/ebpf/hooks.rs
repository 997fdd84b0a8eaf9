//! Attaching one program to one TC hook of one interface, and undoing it:
//! TCX links pinned on bpffs (kernel 6.6+), or `cls_bpf` filters on the
//! clsact qdisc via netlink.

use std::{io, path::Path};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};

use super::error::EngineError;
use crate::pins::Hook;

/// Priority and handle of our `cls_bpf` filters in netlink mode.
pub const NETLINK_PRIORITY: u16 = 0x7a11;
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0x7a11);

/// What [`super::engine::Engine::attach`] did to one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Attached afresh; its counters start now.
    New,
    /// Took over the attachment a previous agent left; counting never stopped.
    Adopted,
}

fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

/// Where our program goes among other TCX programs on the hook: first on
/// ingress and last on egress, so that it sees what the kernel's interface
/// statistics see even when another program drops packets (the driver counts
/// rx before TC ingress, and tx after TC egress).
fn tcx_order(hook: Hook) -> LinkOrder {
    match hook {
        Hook::Ingress => LinkOrder::first(),
        Hook::Egress => LinkOrder::last(),
    }
}

/// Attaches `program` to one hook of `name` through a TCX link pinned at
/// `pin`, or adopts the link pinned there (swapping the program in
/// atomically).
pub fn attach_tcx(
    program: &mut SchedClassifier,
    pin: &Path,
    name: &str,
    hook: Hook,
) -> Result<Attached, EngineError> {
    let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| EngineError::Attach {
        iface: name.to_owned(),
        hook: hook.as_str(),
        source,
    };
    match PinnedLink::from_pin(pin) {
        Ok(pinned) => {
            let fd_link: FdLink = pinned.into();
            let replaced: Result<_, Box<dyn std::error::Error + Send + Sync>> =
                match SchedClassifierLink::try_from(fd_link) {
                    Ok(link) => program.attach_to_link(link).map_err(Into::into),
                    Err(e) => Err(e.into()),
                };
            match replaced {
                Ok(id) => {
                    // The pin keeps the link; our descriptor may close.
                    drop(program.take_link(id).map_err(|e| attach_err(e.into()))?);
                    return Ok(Attached::Adopted);
                }
                Err(error) => {
                    tracing::warn!(iface = %name, hook = hook.as_str(), %error, "pinned link unusable; attaching afresh");
                    remove_link_pin(pin);
                }
            }
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(iface = %name, hook = hook.as_str(), %error, "cannot open pinned link; attaching afresh");
            remove_link_pin(pin);
        }
    }
    let id = program
        .attach_with_options(
            name,
            attach_type(hook),
            TcAttachOptions::TcxOrder(tcx_order(hook)),
        )
        .map_err(|e| attach_err(e.into()))?;
    let link = program.take_link(id).map_err(|e| attach_err(e.into()))?;
    let fd_link = FdLink::try_from(link).map_err(|e| attach_err(e.into()))?;
    fd_link.pin(pin).map_err(|source| EngineError::PinLink {
        iface: name.to_owned(),
        hook: hook.as_str(),
        path: pin.display().to_string(),
        source,
    })?;
    Ok(Attached::New)
}

/// Attaches `program` to one hook of `name` as a `cls_bpf` filter on the
/// clsact qdisc (added if missing; an existing qdisc and its filters stay),
/// or adopts our filter from a previous run (replacing its program in place).
pub fn attach_netlink(
    program: &mut SchedClassifier,
    name: &str,
    hook: Hook,
) -> Result<Attached, EngineError> {
    let attach_err = |source: ProgramError| EngineError::Attach {
        iface: name.to_owned(),
        hook: hook.as_str(),
        source: source.into(),
    };
    match tc::qdisc_add_clsact(name) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(attach_err(ProgramError::from(e))),
    }
    let options = NlOptions {
        priority: NETLINK_PRIORITY,
        handle: NETLINK_HANDLE,
        classid: None,
    };
    let (id, how) = match program.attach_with_options(
        name,
        attach_type(hook),
        TcAttachOptions::Netlink(options),
    ) {
        Ok(id) => (id, Attached::New),
        Err(ProgramError::TcError(TcError::NetlinkError(e)))
            if e.raw_os_error() == Some(libc::EEXIST) =>
        {
            // Our filter from a previous run: replace its program in place.
            let existing = SchedClassifierLink::attached(
                name,
                attach_type(hook),
                NETLINK_PRIORITY,
                NETLINK_HANDLE,
                None,
            )
            .map_err(|e| attach_err(ProgramError::from(TcError::IoError(e))))?;
            (
                program.attach_to_link(existing).map_err(attach_err)?,
                Attached::Adopted,
            )
        }
        Err(source) => return Err(attach_err(source)),
    };
    // The filter must outlive this process: never let the link detach on drop.
    let link = program.take_link(id).map_err(attach_err)?;
    std::mem::forget(link);
    Ok(how)
}

/// Removes our `cls_bpf` filter from one hook of `name` (if it is there).
pub fn detach_netlink(name: &str, hook: Hook) -> bool {
    match SchedClassifierLink::attached(
        name,
        attach_type(hook),
        NETLINK_PRIORITY,
        NETLINK_HANDLE,
        None,
    ) {
        Ok(link) => {
            use aya::programs::links::Link as _;
            link.detach().is_ok()
        }
        Err(_) => false,
    }
}

/// Unpins (and so destroys) a pinned link; a missing pin is fine.
pub fn remove_link_pin(path: &std::path::Path) {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            if let Err(error) = link.unpin() {
                tracing::warn!(path = %path.display(), %error, "cannot unpin link");
            }
        }
        Err(_) => {
            if let Err(error) = std::fs::remove_file(path)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove link pin");
            }
        }
    }
}
/// The name of the interface with `ifindex` in this network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
