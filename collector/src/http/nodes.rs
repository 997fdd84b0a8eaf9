//! `GET /api/v1/nodes` and `GET /api/v1/nodes/{id}`: every node with its
//! status, load and traffic (the seed's field names; counters as decimal
//! strings), its traffic by address family, its counting rule and the quota
//! threshold it reached this period, the counter set followed, its clock
//! offset and its stale heartbeats; and one node with its interfaces
//! (kind, default route, traffic by address family).

use axum::{Json, extract::State};
use chrono::{NaiveDateTime, Utc};
use serde::Serialize;
use tally_proto::v1;
use utoipa::{
    ToSchema,
    openapi::{RefOr, Schema},
};

use super::{
    AppState,
    auth::Reader,
    openapi::{self, ErrorBody, TAG_NODES},
    params::{Counter, Path, Time},
};
use crate::{billing::CountRule, error::Error, load::Load, validate, views};

/// Every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// By name (byte order), then id.
    pub nodes: Vec<Node>,
}

/// A node with its status, load and traffic counters.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    pub name: String,
    /// As the node's agent reports it.
    #[schema(required = true)]
    pub hostname: Option<String>,
    /// Heard from within the collector's `--offline-after`.
    pub online: bool,
    /// When the node's last heartbeat was applied.
    #[schema(required = true)]
    pub last_seen: Option<Time>,
    /// The load average of the last heartbeat.
    #[schema(required = true)]
    pub load: Option<Load>,
    #[schema(required = true)]
    pub kernel: Option<String>,
    #[schema(required = true)]
    pub agent_version: Option<String>,
    /// What the agent counts with (e.g. `ebpf`).
    #[schema(required = true)]
    pub source: Option<String>,
    pub traffic: Traffic,
    /// Bytes by address family since the node was enrolled, counted by
    /// the node's rule (traffic of other protocols, e.g. ARP, is in
    /// neither; nor is traffic counted before the node's agent split it).
    pub families: Families,
    /// Which interfaces the node's traffic is counted from: its own
    /// setting, else the fleet's.
    pub count_rule: CountRule,
    /// The highest quota threshold (percent of the quota) the node's usage
    /// crossed in its current period; null when none was.
    #[schema(required = true, example = 80)]
    pub quota_crossed: Option<i32>,
    /// The counter set the collector follows for the node; null before its
    /// first heartbeat.
    #[schema(required = true)]
    pub counter_set: Option<CounterSet>,
    /// The node's clock as its heartbeats show it.
    pub clock: Clock,
    /// Heartbeats answered STALE: nothing they carried was counted.
    pub stale: Stale,
}

/// A counter set: the boot it counts in, its epoch and generation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterSet {
    pub boot_id: String,
    pub epoch: String,
    /// The generation its agent gave it ("0": the agent did not say). The
    /// order of counter sets never depends on the node's clock.
    pub generation: Counter,
    /// When it began, by the node's clock (informational: the clock may
    /// have been wrong then).
    pub created_at: Time,
}

/// The node's clock at its last heartbeat, against the collector's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Clock {
    /// The node's clock minus the collector's at receipt, in milliseconds
    /// (positive: ahead); null before its first heartbeat.
    #[schema(required = true, example = -172_800_000)]
    pub offset_ms: Option<i64>,
    /// Further off than the collector's `--max-clock-skew`: check the
    /// node's time synchronisation. Its heartbeats count all the same.
    pub skewed: bool,
}

/// A node's heartbeats answered STALE.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stale {
    /// In all, since the node was enrolled (or the collector upgraded).
    pub heartbeats: Counter,
    /// In a row up to now (0 once one is counted again).
    pub run: i32,
    /// The last 3 or more in a row were stale: nothing the node sends is
    /// counted now (see `lastReason`, and the agent's log).
    pub flagged: bool,
    #[schema(required = true)]
    pub last_at: Option<Time>,
    /// Why the last one was stale.
    #[schema(required = true, value_type = Option<StaleReason>)]
    pub last_reason: Option<String>,
}

/// Documents `lastReason`: the names of tally.v1 `StaleReason`.
struct StaleReason;

impl utoipa::PartialSchema for StaleReason {
    fn schema() -> RefOr<Schema> {
        openapi::names_schema(
            "Why a heartbeat was stale (tally.v1 `StaleReason`): `earlier_reading` (a later \
             reading of the same counter set was counted already), `superseded` (its counter \
             set or boot was followed before and replaced), `older_generation` (never followed; \
             its generation is not above the followed set's), `earlier_in_boot` (never \
             followed; read, in the same boot, before the followed set).",
            v1::StaleReason::ALL
                .into_iter()
                .filter(|reason| *reason != v1::StaleReason::Unspecified)
                .map(v1::StaleReason::name),
        )
    }
}

impl ToSchema for StaleReason {}

/// Bytes sent (upload) and received (download).
#[derive(Debug, Serialize, ToSchema)]
pub struct Directions {
    pub upload: Counter,
    pub download: Counter,
}

/// A node's traffic by address family.
#[derive(Debug, Serialize, ToSchema)]
pub struct Families {
    pub ipv4: Directions,
    pub ipv6: Directions,
}

/// Bytes of one address family received (rx) and sent (tx) on an
/// interface, in the node's current counting epoch.
#[derive(Debug, Serialize, ToSchema)]
pub struct FamilyBytes {
    pub rx: Counter,
    pub tx: Counter,
}

/// The node's exact traffic counters in bytes (upload = sent, download =
/// received), as the seed's `traffic_stats` holds them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub total_upload: Counter,
    pub total_download: Counter,
    /// Since `periodStart`.
    pub period_upload: Counter,
    pub period_download: Counter,
    pub period_start: Time,
    pub updated_at: Time,
}

/// A node with its interfaces.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub node: Node,
    /// By name.
    pub interfaces: Vec<Interface>,
}

/// Documents `state`: what an interface is now, as stored
/// ([`validate::state_name`]).
struct InterfaceState;

impl utoipa::PartialSchema for InterfaceState {
    fn schema() -> RefOr<Schema> {
        openapi::names_schema(
            "What an interface is now: `attached` (counted), `gone` (went away; its counts are \
             kept), `retired` (the entry that holds the counts of interfaces gone long ago), \
             `unknown` (its agent did not say).",
            v1::InterfaceState::ALL
                .into_iter()
                .map(|state| validate::state_name(Some(state))),
        )
    }
}

impl ToSchema for InterfaceState {}

/// Documents `kind`: what kind of link an interface is, as stored
/// ([`validate::kind_name`]).
struct LinkKind;

impl utoipa::PartialSchema for LinkKind {
    fn schema() -> RefOr<Schema> {
        openapi::names_schema(
            "What kind of link an interface is, as the node's kernel reports it. `physical`: no \
             virtual kind (also what an agent that does not tell is taken as); \
             `container_bridge`: a bridge of a container runtime (`docker*`, `br-<12 hex>`, \
             `podman*`, `cni*`, `virbr*`); `other`: any other virtual kind.",
            v1::LinkKind::ALL.into_iter().map(validate::kind_name),
        )
    }
}

impl ToSchema for LinkKind {}

/// One interface: the raw counters of the node's current counting epoch
/// (they restart when the node's agent starts a new epoch).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    pub ifindex: i64,
    #[schema(value_type = InterfaceState)]
    pub state: String,
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
    pub rx_packets: Counter,
    pub tx_packets: Counter,
    pub updated_at: Time,
    #[schema(value_type = LinkKind)]
    pub kind: String,
    /// Carried an IPv4 or IPv6 default route at the last reading: an
    /// uplink, counted under the count rule `uplink` whatever its kind.
    pub default_route: bool,
    /// Null when the node's agent cannot tell the families apart (its
    /// procfs source).
    #[schema(required = true)]
    pub ipv4: Option<FamilyBytes>,
    #[schema(required = true)]
    pub ipv6: Option<FamilyBytes>,
}

impl From<views::nodes::Directions> for Directions {
    fn from(d: views::nodes::Directions) -> Self {
        Directions {
            upload: d.upload.into(),
            download: d.download.into(),
        }
    }
}

impl From<views::nodes::FamilyBytes> for FamilyBytes {
    fn from(f: views::nodes::FamilyBytes) -> Self {
        FamilyBytes {
            rx: f.rx.into(),
            tx: f.tx.into(),
        }
    }
}

impl Node {
    pub fn new(node: views::nodes::Node, now: NaiveDateTime, state: &AppState) -> Node {
        let online = node.online(now, state.offline_after);
        let clock = Clock {
            offset_ms: node.clock_offset_ms,
            skewed: node.clock_skewed(state.max_clock_skew),
        };
        let stale = Stale {
            heartbeats: node.stale.heartbeats.into(),
            run: node.stale.run,
            flagged: node.stale.flagged(),
            last_at: node.stale.last_at.map(Time),
            last_reason: node.stale.last_reason.clone(),
        };
        let traffic = node.traffic;
        Node {
            id: node.id,
            name: node.name,
            hostname: node.hostname,
            online,
            last_seen: node.last_seen.map(Time),
            load: node.load,
            kernel: node.kernel,
            agent_version: node.agent_version,
            source: node.source,
            traffic: Traffic {
                total_upload: traffic.total_upload.into(),
                total_download: traffic.total_download.into(),
                period_upload: traffic.period_upload.into(),
                period_download: traffic.period_download.into(),
                period_start: Time(traffic.period_start),
                updated_at: Time(traffic.updated_at),
            },
            families: Families {
                ipv4: node.families.ipv4.into(),
                ipv6: node.families.ipv6.into(),
            },
            count_rule: node.count_rule,
            quota_crossed: node.quota_crossed,
            counter_set: node.counter_set.map(|set| CounterSet {
                boot_id: set.boot_id,
                epoch: set.epoch,
                generation: set.generation.into(),
                created_at: Time(
                    chrono::DateTime::from_timestamp_nanos(set.created_unix_ns).naive_utc(),
                ),
            }),
            clock,
            stale,
        }
    }
}

impl From<views::nodes::Interface> for Interface {
    fn from(i: views::nodes::Interface) -> Self {
        Interface {
            name: i.name,
            ifindex: i.ifindex,
            state: i.state,
            rx_bytes: i.rx_bytes.into(),
            tx_bytes: i.tx_bytes.into(),
            rx_packets: i.rx_packets.into(),
            tx_packets: i.tx_packets.into(),
            updated_at: Time(i.updated_at),
            kind: i.kind,
            default_route: i.default_route,
            ipv4: i.ipv4.map(FamilyBytes::from),
            ipv6: i.ipv6.map(FamilyBytes::from),
        }
    }
}

/// Every node
#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    operation_id = "listNodes",
    tag = TAG_NODES,
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "Every node, by name then id", body = NodeList),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn list(_: Reader, State(state): State<AppState>) -> Result<Json<NodeList>, Error> {
    let nodes = views::nodes::list(&state.pool).await?;
    let now = Utc::now().naive_utc();
    Ok(Json(NodeList {
        nodes: nodes
            .into_iter()
            .map(|node| Node::new(node, now, &state))
            .collect(),
    }))
}

/// One node with its interfaces
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}",
    operation_id = "getNode",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id")),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node", body = NodeDetail),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn get(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<NodeDetail>, Error> {
    let node = views::nodes::get(&state.pool, &id).await?;
    let interfaces = views::nodes::interfaces(&state.pool, &id).await?;
    let now = Utc::now().naive_utc();
    Ok(Json(NodeDetail {
        node: Node::new(node, now, &state),
        interfaces: interfaces.into_iter().map(Interface::from).collect(),
    }))
}
