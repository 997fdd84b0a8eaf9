//! tally's gRPC contract, `tally.v1` (see `proto/tally/v1/heartbeat.proto`,
//! where every field is documented).

/// The `tally.v1` package: messages, the `Heartbeat` client and server.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tally.v1");
}

impl v1::LinkKind {
    /// The kind's name in JSON, logs and the database: `physical`, `vlan`,
    /// `bond`, `bridge`, `container_bridge`, `veth`, `tun`, `tap`,
    /// `wireguard`, `macvlan`, `vxlan`, `other`, or `unspecified`.
    pub fn name(self) -> &'static str {
        match self {
            v1::LinkKind::Unspecified => "unspecified",
            v1::LinkKind::Physical => "physical",
            v1::LinkKind::Vlan => "vlan",
            v1::LinkKind::Bond => "bond",
            v1::LinkKind::Bridge => "bridge",
            v1::LinkKind::ContainerBridge => "container_bridge",
            v1::LinkKind::Veth => "veth",
            v1::LinkKind::Tun => "tun",
            v1::LinkKind::Tap => "tap",
            v1::LinkKind::Wireguard => "wireguard",
            v1::LinkKind::Macvlan => "macvlan",
            v1::LinkKind::Vxlan => "vxlan",
            v1::LinkKind::Other => "other",
        }
    }
}

/// Limits every heartbeat is checked against (the contract's numbers).
pub mod limits {
    /// Most interface entries in one heartbeat.
    pub const MAX_INTERFACES: usize = 16_385;
    /// Longest interface name, in bytes.
    pub const MAX_INTERFACE_NAME: usize = 16;
    /// Longest epoch id, in bytes.
    pub const MAX_EPOCH: usize = 64;
    /// Longest boot id, in bytes.
    pub const MAX_BOOT_ID: usize = 64;
    /// Longest host name, in bytes.
    pub const MAX_HOSTNAME: usize = 253;
    /// Longest kernel release, in bytes.
    pub const MAX_KERNEL_RELEASE: usize = 256;
    /// Longest agent version, in bytes.
    pub const MAX_AGENT_VERSION: usize = 64;
    /// Longest source name, in bytes.
    pub const MAX_SOURCE: usize = 16;
    /// Largest encoded heartbeat the collector decodes (16,385 entries fit).
    pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
    /// The shortest heartbeat interval an agent uses, in milliseconds.
    pub const MIN_INTERVAL_MS: u32 = 1_000;
}
