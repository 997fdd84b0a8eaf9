//! `GET /api/v1/nodes` and `GET /api/v1/nodes/{id}`: every node with its
//! status, load and traffic (the seed's field names; counters as decimal
//! strings), and one node with its interfaces.

use axum::{Json, extract::State};
use chrono::{NaiveDateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    AppState,
    auth::Reader,
    openapi::{ErrorBody, TAG_NODES},
    params::{Counter, Path, Time},
};
use crate::{error::Error, views};

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
}

/// Load averages over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
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

/// What an interface is now.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only documents the values of `state`")]
enum InterfaceState {
    /// Counted.
    Attached,
    /// Went away; its counts are kept.
    Gone,
    /// The entry that holds the counts of interfaces gone long ago.
    Retired,
}

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
}

impl From<views::nodes::Load> for Load {
    fn from(load: views::nodes::Load) -> Self {
        Load {
            one: load.one,
            five: load.five,
            fifteen: load.fifteen,
        }
    }
}

impl Node {
    pub fn new(node: views::nodes::Node, now: NaiveDateTime, state: &AppState) -> Node {
        let online = node.online(now, state.offline_after);
        let traffic = node.traffic;
        Node {
            id: node.id,
            name: node.name,
            hostname: node.hostname,
            online,
            last_seen: node.last_seen.map(Time),
            load: node.load.map(Load::from),
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
