//! The interfaces of the agent's network namespace, their classes (link kind,
//! default route), and a stream of their changes: rtnetlink's link group and
//! its IPv4 and IPv6 route groups, so that interfaces that appear later are
//! counted, ones that go are let go, and the uplinks are known without a
//! dump per reading.
//!
//! Dumps happen only after a notification that matters: a link change (which
//! may also take routes away: the kernel removes IPv4 routes of a link that
//! goes down without announcing it), a change to a default route of the main
//! table, or a lost notification (the socket's buffer overran). Other route
//! changes are read and dropped. (The agent's periodic resync lists the links
//! again, and the routes only when the links turned out to have changed.)

use std::collections::BTreeSet;

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup, RouteMessageBuilder,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
};

pub use crate::links::Link;
use crate::links::{self, LinkClasses};

type Events = UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// A handle for dumping links and routes plus the receiver of their change
/// notifications.
pub struct NetWatch {
    handle: Handle,
    events: Events,
}

/// What a burst of notifications changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Links appeared, went or changed: list them again.
    pub links: bool,
    /// A default route of the main table may have changed: dump the routes
    /// again. A link notification sets it too: the kernel removes the IPv4
    /// routes of a link that goes down without announcing them.
    pub default_routes: bool,
}

impl Changes {
    fn any(self) -> bool {
        self.links || self.default_routes
    }

    /// Everything, as after lost notifications.
    pub fn all() -> Self {
        Self {
            links: true,
            default_routes: true,
        }
    }

    /// Adds what one notification says.
    fn add(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) {
        match &message.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
            ) => *self = Self::all(),
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route),
            ) => self.default_routes |= links::is_main_default(route),
            NetlinkPayload::Overrun(_) => {
                tracing::warn!(
                    "netlink notifications were lost; listing interfaces and routes again"
                );
                *self = Self::all();
            }
            _ => {}
        }
    }
}

impl NetWatch {
    /// Opens the netlink socket (subscribed to link and route changes) and
    /// spawns its driver on the current tokio runtime.
    pub fn open() -> std::io::Result<Self> {
        let (connection, handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])?;
        tokio::spawn(connection);
        Ok(Self { handle, events })
    }

    /// Every interface of the namespace, by ifindex.
    pub async fn links(&self) -> Result<Vec<Link>, rtnetlink::Error> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            out.extend(Link::of(&msg));
        }
        out.sort_by(|a, b| (a.ifindex, &a.name).cmp(&(b.ifindex, &b.name)));
        Ok(out)
    }

    /// The interfaces that carry an IPv4 or IPv6 default route of the main
    /// table (two route dumps).
    pub async fn default_route_interfaces(&self) -> Result<BTreeSet<u32>, rtnetlink::Error> {
        let mut out = BTreeSet::new();
        let requests = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for request in requests {
            let mut stream = self.handle.route().get(request).execute();
            while let Some(route) = stream.try_next().await? {
                out.extend(links::default_route_interfaces(&route));
            }
        }
        Ok(out)
    }

    /// Dumps the routes and sets `classes`' uplinks from them. Logs when the
    /// uplinks change, and a failure (leaving them as they were).
    pub async fn update_uplinks(&self, classes: &mut LinkClasses) {
        match self.default_route_interfaces().await {
            Ok(uplinks) => {
                if classes.set_uplinks(uplinks) {
                    tracing::info!(uplinks = ?classes.uplink_names(), "interfaces with a default route");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list the default routes"),
        }
    }

    /// Waits for the next notification that matters (`None` when the socket
    /// closed). Several in a burst are drained together.
    pub async fn changed(&mut self) -> Option<Changes> {
        loop {
            let mut changes = Changes::default();
            let (first, _) = self.events.next().await?;
            changes.add(&first);
            let mut notifications = 1u32;
            while let Some(Some((next, _))) = self.events.next().now_or_never() {
                changes.add(&next);
                notifications = notifications.saturating_add(1);
            }
            if changes.any() {
                tracing::debug!(
                    notifications,
                    links = changes.links,
                    default_routes = changes.default_routes,
                    "netlink: links or default routes changed"
                );
                return Some(changes);
            }
        }
    }
}

/// The classes of the namespace's links now (for one-off commands such as
/// `status`; the running agent follows notifications instead).
pub fn current_classes() -> anyhow::Result<LinkClasses> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let watch = NetWatch::open().context("cannot open a netlink socket")?;
        let links = watch
            .links()
            .await
            .context("cannot list the network interfaces")?;
        let uplinks = watch
            .default_route_interfaces()
            .await
            .context("cannot list the default routes")?;
        let mut classes = LinkClasses::default();
        classes.set_links(&links);
        classes.set_uplinks(uplinks);
        Ok(classes)
    })
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::{
        link::LinkMessage,
        route::{RouteAttribute, RouteHeader, RouteMessage},
    };

    use super::*;
    use crate::links::LinkKind;

    fn route(prefix: u8) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.destination_prefix_length = prefix;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.attributes.push(RouteAttribute::Oif(2));
        route
    }

    fn changes(messages: Vec<RouteNetlinkMessage>) -> Changes {
        let mut changes = Changes::default();
        for message in messages {
            changes.add(&NetlinkMessage::from(message));
        }
        changes
    }

    #[test]
    fn only_links_and_default_routes_matter() {
        let none = changes(vec![
            RouteNetlinkMessage::NewRoute(route(24)),
            RouteNetlinkMessage::DelRoute(route(32)),
        ]);
        assert!(!none.any());
        let routes = changes(vec![
            RouteNetlinkMessage::NewRoute(route(24)),
            RouteNetlinkMessage::DelRoute(route(0)),
        ]);
        assert_eq!(
            routes,
            Changes {
                links: false,
                default_routes: true
            }
        );
        let link = changes(vec![RouteNetlinkMessage::DelLink(LinkMessage::default())]);
        assert_eq!(link, Changes::all(), "a link change may take routes away");
    }

    #[test]
    fn lost_notifications_change_everything() {
        let mut changes = Changes::default();
        changes.add(&NetlinkMessage::new(
            Default::default(),
            NetlinkPayload::Overrun(Vec::new()),
        ));
        assert_eq!(changes, Changes::all());
    }

    #[tokio::test]
    async fn this_namespace_is_listed_with_classes() {
        let watch = NetWatch::open().expect("netlink socket");
        let links = watch.links().await.expect("link dump");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
        assert_eq!(lo.kind, LinkKind::Physical, "loopback has no link kind");
        assert_eq!((lo.master_ifindex, lo.link_ifindex), (0, 0), "{lo:?}");
        let uplinks = watch.default_route_interfaces().await.expect("route dump");
        // Whatever the host's routes, they name interfaces that exist.
        for ifindex in uplinks {
            assert!(links.iter().any(|l| l.ifindex == ifindex), "{ifindex}");
        }
    }
}
