//! A node's load averages (1, 5 and 15 minutes, as its `/proc/loadavg`
//! says): one type for what the read model loads, what the API sends and
//! what the live events carry.

use serde::Serialize;

/// Load averages over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}
