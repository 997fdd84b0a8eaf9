//! The interfaces of the agent's network namespace, and a stream of their
//! changes (rtnetlink's link group), so that interfaces that appear later are
//! counted and ones that go are let go.

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_route::link::{LinkAttribute, LinkMessage},
};

/// A handle for listing links plus the receiver of link change notifications.
pub struct NetWatch {
    handle: Handle,
    events: UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

impl NetWatch {
    /// Opens the netlink socket (subscribed to link changes) and spawns its
    /// driver on the current tokio runtime.
    pub fn open() -> std::io::Result<Self> {
        let (connection, handle, events) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
        tokio::spawn(connection);
        Ok(Self { handle, events })
    }

    /// Every interface of the namespace as `(ifindex, name)`.
    pub async fn links(&self) -> Result<Vec<(u32, String)>, rtnetlink::Error> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            if let Some(name) = name_of(&msg) {
                links.push((msg.header.index, name));
            }
        }
        links.sort();
        Ok(links)
    }

    /// Waits for the next link change notification (`None` when the socket
    /// closed). Several changes in a burst are drained together.
    pub async fn changed(&mut self) -> Option<()> {
        self.events.next().await?;
        while let Some(Some(_)) = self.events.next().now_or_never() {}
        Some(())
    }
}
